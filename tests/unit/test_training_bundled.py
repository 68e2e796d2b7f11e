"""The shipped bundled model: labelled honestly, and as good as it claims.

On the held-out real daily closes (never seen in training) its WQL and MASE are no worse
than the random walk's (parity is the physical limit for prices) and better than seasonal
naive's and AutoETS's; on structured series it clearly beats the random walk.
"""

from __future__ import annotations

import json

import pytest
import torch
from chronos import BaseChronosPipeline, Chronos2Pipeline

from training.bundle import BUNDLED_DIR, BUNDLED_ID, LABEL, METADATA_FILE
from training.suites import run_suite


@pytest.fixture(scope="module")
def bundled() -> Chronos2Pipeline:
    torch.set_num_threads(1)
    pipeline = BaseChronosPipeline.from_pretrained(str(BUNDLED_DIR), device_map="cpu")
    assert isinstance(pipeline, Chronos2Pipeline)
    return pipeline


def _metrics(result, model: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return result.summary.set_index("model").loc[model].to_dict()


def test_files_size_and_label() -> None:
    files = {p.name for p in BUNDLED_DIR.iterdir()}
    assert {"config.json", "model.safetensors", METADATA_FILE, "MODEL_CARD.md"} <= files
    assert (BUNDLED_DIR / "model.safetensors").stat().st_size < 8_000_000
    meta = json.loads((BUNDLED_DIR / METADATA_FILE).read_text())
    assert meta["id"] == BUNDLED_ID and meta["label"] == LABEL and meta["bundled"] is True
    assert "not an Amazon model" in meta["label"]
    assert meta["data"]["kind"] == "synthetic only"
    assert "not an Amazon" in (BUNDLED_DIR / "MODEL_CARD.md").read_text()


def test_serving_labels_it_as_bundled() -> None:
    from serving.models import describe, resolve_model
    from tickcast.settings import load_settings

    resolved = resolve_model(load_settings(), "bundled")
    pipeline = BaseChronosPipeline.from_pretrained(resolved.location, device_map="cpu")
    info = describe(pipeline, resolved, "cpu", "float32")
    assert info.bundled and info.id == BUNDLED_ID and info.label == LABEL


def test_parity_with_naive_on_held_out_real_daily_closes(bundled: Chronos2Pipeline) -> None:
    result = run_suite("real_daily", {"bundled": bundled}, target="close")
    model = _metrics(result, "bundled")
    naive = _metrics(result, "naive")
    # no worse than the random walk: parity is the physical limit for prices
    assert model["WQL"] <= naive["WQL"]
    assert model["MASE"] <= naive["MASE"]
    for baseline in ("seasonal_naive", "auto_ets"):
        other = _metrics(result, baseline)
        assert model["WQL"] < other["WQL"], baseline
        assert model["MASE"] < other["MASE"], baseline
    assert 0.7 <= model["coverage_80"] <= 0.9


@pytest.mark.parametrize("suite", ["intraday_volume", "seasonal"])
def test_clearly_beats_naive_on_structured_series(bundled: Chronos2Pipeline, suite: str) -> None:
    result = run_suite(suite, {"bundled": bundled}, baselines=("naive",))
    model = _metrics(result, "bundled")
    assert model["WQL_vs_naive"] < 0.8
    assert model["MASE_vs_naive"] < 0.8


def test_beats_naive_on_real_daily_volume(bundled: Chronos2Pipeline) -> None:
    result = run_suite("real_daily", {"bundled": bundled}, baselines=("naive",), target="volume")
    model = _metrics(result, "bundled")
    assert model["WQL_vs_naive"] < 0.95 and model["MASE_vs_naive"] < 0.95
