"""Fine-tune a tiny Chronos-2 on lake bars, register it, and load it back through serving.

Runs against a ``file://`` lake and the MinIO ``s3://`` lake, then serves the registered
model with the Ray Serve app and asks it for a forecast over HTTP.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tickcast.errors import ModelError
from tickcast.lake import Lake
from tickcast.settings import Settings
from training.finetune import finetune
from training.registry import get_entry
from training.samples import write_sample_to_lake
from training.targets import bars_version
from training.train import TrainConfig, build_model

pytestmark = pytest.mark.integration

SINCE = datetime(2018, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_base(tmp_path: Path) -> str:
    """A freshly initialized tiny Chronos-2 saved as a local checkpoint directory."""
    directory = tmp_path / "tiny-base"
    build_model("tiny", seed=0).save_pretrained(directory)
    return str(directory)


def _config() -> TrainConfig:
    return TrainConfig(
        num_steps=4,
        batch_size=4,
        learning_rate=1e-4,
        prediction_length=8,
        save_steps=2,
        logging_steps=1,
        progress=False,
    )


def _finetune_and_load(
    settings: Settings, tiny_base: str, work: Path, *, setup: Settings | None = None, serving: Settings | None = None
) -> None:
    """Fine-tune with ``settings`` (the batch workload's), after ``setup`` wrote the bars, and load
    the entry back with ``serving``; each defaults to ``settings``."""
    from serving.forecaster import Forecaster

    assert write_sample_to_lake(Lake((setup or settings).lake), start=SINCE) == 2 * 251
    lake = Lake(settings.lake)
    entry, result = finetune(
        settings,
        tiny_base,
        "spx-tiny",
        target="log_return",
        interval="day",
        config=_config(),
        augment=0.5,
        holdout=16,
        work_dir=work,
    )
    assert entry.ref == "spx-tiny/1"
    assert result is not None and result.steps == 4
    stored = get_entry(lake, "spx-tiny", "latest")
    assert stored.base_model == str(Path(tiny_base).resolve())
    assert stored.data["target"] == "log_return" and stored.data["tickers"] == ["IXIC", "SPX"]
    assert stored.data["synthetic_fraction"] == 0.5
    assert stored.data["table_versions"] == {"bars": bars_version(lake)} and stored.data["as_of"] is None
    assert stored.training["steps_done"] == 4
    holdout = {row["model"]: row for row in stored.metrics["holdout"]}
    assert set(holdout) == {"finetuned", "base", "naive"}
    assert all(np.isfinite(row["WQL"]) for row in holdout.values())

    forecaster = Forecaster.load(serving or settings, "spx-tiny/1")
    assert forecaster.info.source == "registry"
    assert (forecaster.info.id, forecaster.info.version) == ("spx-tiny", "1")
    assert forecaster.info.label == entry.label
    out = forecaster.predict(
        [np.random.default_rng(0).normal(0, 0.01, 120)], horizon=8, quantile_levels=[0.1, 0.5, 0.9]
    )
    assert out.mean.shape == (1, 8) and out.quantiles.shape == (1, 8, 3)
    assert np.all(np.isfinite(out.quantiles))

    # The same run again is already registered: nothing is trained or written.
    same, nothing = finetune(
        settings,
        tiny_base,
        "spx-tiny",
        target="log_return",
        interval="day",
        config=_config(),
        augment=0.5,
        holdout=16,
        work_dir=work,
    )
    assert same.ref == "spx-tiny/1" and nothing is None
    # Training the same name from another base registers the next version.
    again, _ = finetune(settings, "spx-tiny/1", "spx-tiny", target="log_return", config=_config(), work_dir=work / "2")
    assert again.ref == "spx-tiny/2" and again.base_model is not None


def test_finetune_as_of_an_old_bars_version_records_it(settings: Settings, tiny_base: str, tmp_path: Path) -> None:
    lake = Lake(settings.lake)
    write_sample_to_lake(lake, ["SPX"], start=SINCE)
    version = bars_version(lake)
    assert version is not None
    write_sample_to_lake(lake, ["IXIC"], start=SINCE)  # bars that arrive after the version
    entry, result = finetune(
        settings, tiny_base, "as-of", target="close", as_of=version, config=_config(), work_dir=tmp_path / "w"
    )
    assert result is not None
    stored = get_entry(lake, "as-of", entry.version)
    assert stored.data["table_versions"] == {"bars": version} and stored.data["as_of"] == version
    assert stored.data["tickers"] == ["SPX"] and stored.data["values_per_series"] == {"SPX": 251}
    # The same run (same as_of) is already registered; the newest bars make another run.
    same, nothing = finetune(
        settings, tiny_base, "as-of", target="close", as_of=version, config=_config(), work_dir=tmp_path / "w"
    )
    assert same.ref == entry.ref and nothing is None
    with pytest.raises(ModelError, match="as of 0"):
        finetune(settings, tiny_base, "as-of", target="close", as_of=0, config=_config(), work_dir=tmp_path / "x")


def test_finetune_into_file_lake_and_load_back(settings: Settings, tiny_base: str, tmp_path: Path) -> None:
    _finetune_and_load(settings, tiny_base, tmp_path / "work")


def test_finetune_into_minio_lake_and_load_back(
    s3_settings: Settings, lake_as: Callable[[str], Settings], tiny_base: str, tmp_path: Path
) -> None:
    """On MinIO as the workloads run on EKS: the batch job's user trains and registers, the
    serving user loads; a grant missing from lake_access.py is refused by MinIO."""
    assert s3_settings.lake.url.startswith("s3://")
    _finetune_and_load(lake_as("batch"), tiny_base, tmp_path / "work", setup=s3_settings, serving=lake_as("serving"))


def test_registered_model_is_served_by_the_serve_app(settings: Settings, tiny_base: str, tmp_path: Path) -> None:
    """The registry entry loads in a Ray Serve replica and answers POST /v1/forecast."""
    import httpx
    import ray
    from ray import serve

    from serving.app import make_app

    lake = Lake(settings.lake)
    write_sample_to_lake(lake, ["SPX"], start=SINCE)
    entry, _ = finetune(settings, tiny_base, "served", target="close", config=_config(), work_dir=tmp_path / "w")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = make_app(settings, {"model": entry.ref, "num_cpus": 0.5})
        serve.run(app, name="training-test", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            models = client.get("/v1/models").json()
            body = {"series": [list(np.linspace(2500, 2600, 64))], "horizon": 8, "quantile_levels": [0.1, 0.5, 0.9]}
            reply = client.post("/v1/forecast", json=body)
        assert reply.status_code == 200, reply.text
        forecast = reply.json()["forecasts"][0]
        assert len(forecast["mean"]) == 8
        assert set(forecast["quantiles"]) == {"0.1", "0.5", "0.9"}
        assert "served" in str(models)
    finally:
        if own_ray:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete("training-test")
