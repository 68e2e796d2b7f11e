"""The plain Forecaster (no Ray) on tiny random-weight Chronos-2, Bolt and T5 checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from forecast_reference import assert_forecasts_close, torch_threads

from serving.forecaster import Forecaster, ForecastJob, level_key
from serving.tiny_models import TINY_MARKER, build_tiny_model

SMALL_BOLT = {"d_model": 64, "d_ff": 128, "num_layers": 1, "num_heads": 2, "d_kv": 32}


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """One thread for the module, restored after it (the Forecaster and the raw pipeline share it)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bolt": build_tiny_model("bolt-tiny", root / "bolt", context_length=256, **SMALL_BOLT),
        "chronos2": build_tiny_model("chronos2-tiny", root / "c2", context_length=256, max_horizon=64),
        "t5": build_tiny_model("t5-tiny", root / "t5", context_length=64, max_horizon=16),
    }


def _series(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(100 + rng.standard_normal(n).cumsum()).astype(np.float32) for n in lengths]


def _raw(forecaster: Forecaster, series: list[np.ndarray], horizon: int, levels: list[float]) -> np.ndarray:
    q, _ = forecaster.pipeline.predict_quantiles(
        [torch.tensor(s) for s in series], prediction_length=horizon, quantile_levels=levels
    )
    if isinstance(q, list):  # Chronos-2 returns one tensor per series
        q = torch.cat([x[:1] for x in q])
    return q.numpy()


def test_tiny_checkpoints_are_real_and_labelled(models: dict[str, Path]) -> None:
    for kind, path in models.items():
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file(), kind
        assert "random" in json.loads((path / TINY_MARKER).read_text())["weights"]
    info = Forecaster.from_pretrained(str(models["chronos2"]), device="cpu").info
    assert info.kind == "chronos2" and info.supports_covariates and info.parameters < 1_000_000
    assert "random weights" in info.label and not info.bundled
    assert (info.context_length, info.max_horizon) == (256, 64)


@pytest.mark.parametrize("kind", ["bolt", "chronos2"])
def test_predict_matches_the_pipeline_for_mixed_lengths(models: dict[str, Path], kind: str) -> None:
    forecaster = Forecaster.from_pretrained(str(models[kind]), device="cpu")
    assert forecaster.info.device == "cpu" and forecaster.info.dtype == "float32"
    series = _series(1, [5, 40, 300])  # 300 > context: trimmed from the left like the pipeline does
    out = forecaster.predict(series, horizon=6, quantile_levels=[0.1, 0.5, 0.9])
    assert out.mean.shape == (3, 6) and out.quantiles.shape == (3, 6, 3)
    context = forecaster.info.context_length
    assert_forecasts_close(out.quantiles, _raw(forecaster, series, 6, [0.1, 0.5, 0.9]), series, context)
    one = out.series(1)
    assert set(one["quantiles"]) == {"0.1", "0.5", "0.9"} and len(one["mean"]) == 6


def test_t5_gives_shapes_and_ordered_quantiles(models: dict[str, Path]) -> None:
    forecaster = Forecaster.from_pretrained(str(models["t5"]), device="cpu")
    assert forecaster.info.kind == "t5" and forecaster.info.quantiles is None
    out = forecaster.predict(_series(2, [10, 30]), horizon=4, quantile_levels=[0.1, 0.9])
    assert out.quantiles.shape == (2, 4, 2)
    assert (out.quantiles[..., 0] <= out.quantiles[..., 1] + 1e-6).all()  # sample quantiles are ordered


def test_jobs_share_calls_and_get_their_own_levels_back(models: dict[str, Path]) -> None:
    forecaster = Forecaster.from_pretrained(str(models["bolt"]), device="cpu", max_batch_size=2)
    a, b, c = _series(3, [20, 50, 80])
    jobs = [
        ForecastJob([a], 4, (0.1, 0.5)),
        ForecastJob([b, c], 4, (0.9,)),
        ForecastJob([c], 2, (0.5,)),
        ForecastJob([a], 4, (0.25, 0.75)),  # not native levels: its own call
    ]
    outs = forecaster.predict_jobs(jobs)
    assert [o.quantiles.shape for o in outs] == [(1, 4, 2), (2, 4, 1), (1, 2, 1), (1, 4, 2)]
    alone = [forecaster.predict(j.series, j.horizon, j.quantile_levels) for j in jobs]
    for job, merged, single in zip(jobs, outs, alone, strict=True):
        # other batch compositions: equal up to float32 reordering
        assert_forecasts_close(merged.quantiles, single.quantiles, job.series, forecaster.info.context_length)
        assert merged.quantile_levels == single.quantile_levels


def test_chronos2_uses_covariates_and_bolt_reports_ignoring_them(models: dict[str, Path]) -> None:
    series = _series(4, [30, 60])
    rng = np.random.default_rng(5)
    past = [{"volume": rng.random(len(s)) * 1000} for s in series]
    future = [{"volume": rng.random(8) * 1000} for _ in series]
    c2 = Forecaster.from_pretrained(str(models["chronos2"]), device="cpu")
    with_cov = c2.predict(series, 8, past_covariates=past, future_covariates=future)
    plain = c2.predict(series, 8)
    assert with_cov.covariates_used and not plain.covariates_used
    inputs = [
        {"target": s, "past_covariates": p, "future_covariates": f}
        for s, p, f in zip(series, past, future, strict=True)
    ]
    q, _ = c2.pipeline.predict_quantiles(inputs, prediction_length=8, quantile_levels=[0.1, 0.5, 0.9])
    raw = torch.cat([x[:1] for x in q]).numpy()
    assert_forecasts_close(with_cov.quantiles, raw, series, c2.info.context_length)
    bolt = Forecaster.from_pretrained(str(models["bolt"]), device="cpu")
    assert not bolt.predict(series, 8, past_covariates=past).covariates_used


def test_level_keys_match_the_forecast_contract() -> None:
    assert [level_key(q) for q in (0.1, 0.5, 0.25, 0.9)] == ["0.1", "0.5", "0.25", "0.9"]
