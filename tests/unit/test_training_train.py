"""Training from scratch, resuming after a crash, LoRA, and the registry on a file:// lake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from chronos import BaseChronosPipeline, Chronos2Pipeline

from tickcast.errors import ModelError
from tickcast.lake import Lake
from tickcast.settings import load_settings
from training.registry import get_entry, latest_version, list_models, list_versions, register_model
from training.synthetic import SyntheticSeries
from training.train import TrainConfig, build_model, count_parameters, last_checkpoint, train_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(**kw: object) -> TrainConfig:
    base = {
        "num_steps": 6,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "prediction_length": 16,
        "save_steps": 3,
        "logging_steps": 1,
        "progress": False,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _weights(pipeline: Chronos2Pipeline) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipeline.model.state_dict().items()}


def test_build_model_is_deterministic_and_sized() -> None:
    a, b = build_model("tiny", seed=1), build_model("tiny", seed=1)
    assert isinstance(a, Chronos2Pipeline)
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True))
    assert 500_000 < count_parameters(build_model("small")) < 2_000_000


def test_train_from_scratch_saves_a_loadable_model(tmp_path: Path) -> None:
    corpus = SyntheticSeries(500, seed=0, min_length=64, max_length=200)
    result = train_model(build_model("tiny"), corpus, _config(), tmp_path / "work")
    assert result.steps == 6 and result.resumed_from is None
    assert [s for s, _ in result.losses] == [1, 2, 3, 4, 5, 6]
    loaded = BaseChronosPipeline.from_pretrained(str(result.path))
    quantiles, _ = loaded.predict_quantiles([torch.arange(50.0)], prediction_length=8)
    assert quantiles[0].shape == (1, 8, 9)
    summary = json.loads((tmp_path / "work" / "train_result.json").read_text())
    assert summary["steps"] == 6


def test_a_crashed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    corpus = SyntheticSeries(500, seed=0, min_length=64, max_length=200)
    work = tmp_path / "work"
    full = train_model(build_model("tiny"), corpus, _config(), work)
    # Simulate a crash after the checkpoint at step 3: drop everything written later.
    shutil.rmtree(work / "checkpoint-6")
    shutil.rmtree(work / "final")
    (work / "train_result.json").unlink()
    assert last_checkpoint(work) == work / "checkpoint-3"
    resumed = train_model(build_model("tiny"), corpus, _config(), work)
    assert resumed.resumed_from == 3
    assert resumed.steps == 6
    assert [s for s, _ in resumed.losses][-3:] == [4, 5, 6]
    # The optimizer, scheduler and step were restored, so the resumed run ends close to the
    # uninterrupted one (the data windows after the restart are fresh random draws).
    assert abs(resumed.losses[-1][1] - full.losses[-1][1]) < 0.5 * full.losses[-1][1]
    # A finished run started again returns its result without training.
    again = train_model(build_model("tiny"), corpus, _config(), work)
    assert again.steps == 6
    assert all(
        torch.equal(a, b)
        for a, b in zip(_weights(again.pipeline).values(), _weights(resumed.pipeline).values(), strict=True)
    )


def test_lora_finetuning_merges_the_adapter(tmp_path: Path) -> None:
    base = build_model("tiny", seed=2)
    series = [np.sin(np.arange(300) / 5.0) * 10 + 50 + i for i in range(4)]
    result = train_model(base, series, _config(finetune_mode="lora", num_steps=2, save_steps=0), tmp_path / "lora")
    assert not (result.path / "adapter_config.json").exists()
    loaded = BaseChronosPipeline.from_pretrained(str(result.path))
    assert isinstance(loaded, Chronos2Pipeline)
    changed = [name for name, w in _weights(loaded).items() if not torch.allclose(w, base.model.state_dict()[name])]
    # LoRA touched attention projections only (plus the output layer), not the embeddings
    assert changed and all(("self_attention" in n) or ("output_patch_embedding" in n) for n in changed)


def test_registry_versions_and_metadata(tmp_path: Path) -> None:
    lake = Lake(load_settings(lake={"url": f"file://{tmp_path}/lake"}).lake)
    model_dir = tmp_path / "m"
    build_model("tiny").save_pretrained(model_dir)
    first = register_model(lake, "demo", model_dir, label="demo model", base_model=None, metrics={"x": 1})
    second = register_model(lake, "demo", model_dir, label="demo model", base_model="demo/1")
    assert (first.version, second.version) == ("1", "2")
    assert list_versions(lake, "demo") == ["1", "2"] and latest_version(lake, "demo") == "2"
    assert list_models(lake) == ["demo"]
    entry = get_entry(lake, "demo", "1")
    assert (
        entry.metrics == {"x": 1} and entry.id == "demo" and entry.parameters == count_parameters(build_model("tiny"))
    )
    assert set(entry.files) == {"config.json", "model.safetensors"}
    with pytest.raises(ModelError, match="already exists"):
        register_model(lake, "demo", model_dir, label="x", base_model=None, version="1")
    with pytest.raises(ModelError, match="not valid"):
        register_model(lake, "Bad Name", model_dir, label="x", base_model=None)
    # an interrupted upload (no metadata yet) is not a version
    lake.write_bytes("models/demo/3/config.json", b"{}")
    assert list_versions(lake, "demo") == ["1", "2"]
    loaded = BaseChronosPipeline.from_pretrained(lake.path("models/demo/2"))
    assert isinstance(loaded, Chronos2Pipeline)


def test_a_work_dir_of_another_run_is_not_resumed(tmp_path: Path) -> None:
    corpus = SyntheticSeries(200, seed=0, min_length=64, max_length=200)
    work = tmp_path / "work"
    train_model(build_model("tiny"), corpus, _config(num_steps=2, save_steps=1), work)
    with pytest.raises(ModelError, match="other settings"):
        train_model(build_model("tiny"), corpus, _config(num_steps=3, save_steps=1), work)
    fresh = train_model(build_model("tiny"), corpus, _config(num_steps=3, save_steps=1), work, resume=False)
    assert fresh.steps == 3 and fresh.resumed_from is None
