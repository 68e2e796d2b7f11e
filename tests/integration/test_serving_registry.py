"""Models from the lake's registry on MinIO (s3://), loaded through from_pretrained like any other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serving.forecaster import Forecaster
from serving.models import resolve_model
from serving.tiny_models import build_tiny_model
from tickcast.errors import ModelError
from tickcast.lake import Lake
from tickcast.settings import Settings

pytestmark = pytest.mark.integration


def test_registry_entry_on_minio_matches_the_local_checkpoint(
    s3_settings: Settings, lake_as: Callable[[str], Settings], tmp_path: Path
) -> None:
    local = build_tiny_model("chronos2-tiny", tmp_path / "c2", context_length=256, max_horizon=32)
    lake = Lake(s3_settings.lake)
    for path in sorted(local.iterdir()):
        lake.write_bytes(f"models/tiny/1/{path.name}", path.read_bytes())
    # the entry is written as the batch job would (root here), read as the serving workload
    serving = lake_as("serving")
    settings = serving.model_copy(update={"infra": serving.infra.model_copy(update={"cache_dir": tmp_path / "cache"})})

    by_name = resolve_model(settings, "tiny/1")
    by_uri = resolve_model(settings, lake.uri("models/tiny/1"))
    assert by_name.source == by_uri.source == "registry"
    assert (by_name.id, by_name.version) == (by_uri.id, by_uri.version) == ("tiny", "1")
    assert by_name.where.startswith("s3://") and Path(by_name.location).is_relative_to(tmp_path / "cache")
    assert resolve_model(settings, "tiny/latest").version == "1"

    remote = Forecaster.load(settings, "tiny/1")
    assert remote.info.source == "registry" and remote.info.kind == "chronos2"
    series = [np.linspace(10, 20, 50), np.sin(np.arange(120)) + 5]
    a = remote.predict(series, horizon=7)
    b = Forecaster.from_pretrained(str(local), device="cpu").predict(series, horizon=7)
    np.testing.assert_array_equal(a.quantiles, b.quantiles)

    with pytest.raises(ModelError, match="not an entry of the model registry"):
        resolve_model(settings, "tiny/9")  # not in the registry, and not a pinned hub id
