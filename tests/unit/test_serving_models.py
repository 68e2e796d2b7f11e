"""Model resolution: local directory, the lake's registry (file:// here), hub, bundled, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serving import models
from serving.models import METADATA_FILE, load_pipeline, resolve_model
from serving.tiny_models import build_tiny_model
from tickcast.errors import ModelError
from tickcast.lake import Lake
from tickcast.settings import Settings, load_settings

SMALL_BOLT = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "d_kv": 16}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("bolt-tiny", tmp_path_factory.mktemp("m") / "bolt", context_length=128, **SMALL_BOLT)


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return load_settings(
        lake={"url": f"file://{tmp_path / 'lake'}"},
        infra={"cache_dir": str(tmp_path / "cache")},
        serving={"hub_model": "amazon/chronos-2"},
    )


def upload(lake: Lake, source: Path, prefix: str, metadata: dict | None = None) -> None:
    for path in sorted(source.iterdir()):
        lake.write_bytes(f"{prefix}/{path.name}", path.read_bytes())
    if metadata is not None:
        lake.write_bytes(f"{prefix}/{METADATA_FILE}", json.dumps(metadata).encode())


def test_local_directory(cfg: Settings, tiny: Path) -> None:
    resolved = resolve_model(cfg, str(tiny))
    assert (resolved.source, resolved.id, resolved.location) == ("local", "bolt", str(tiny))
    assert resolve_model(cfg, f"file://{tiny}").version == resolved.version  # content fingerprint
    _, info = load_pipeline(resolved, "cpu")
    assert (info.kind, info.source, info.context_length, info.max_horizon) == ("bolt", "local", 128, 64)
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(cfg, str(tiny.parent))


def test_registry_entry_downloads_once_and_latest_picks_the_newest(cfg: Settings, tiny: Path) -> None:
    lake = Lake(cfg.lake)
    upload(lake, tiny, "models/tiny/1", {"label": "tiny one", "base_model": "scratch"})
    upload(lake, tiny, "models/tiny/2", {"label": "tiny two"})
    upload(lake, tiny, "models/tiny/10")  # config but no metadata yet: an upload in progress
    first = resolve_model(cfg, "tiny/1")
    assert (first.source, first.id, first.version) == ("registry", "tiny", "1")
    assert first.where == lake.uri("models/tiny/1") and Path(first.location).is_dir()
    assert Path(first.location).is_relative_to(cfg.infra.cache_dir)
    stamp = (Path(first.location) / "config.json").stat().st_mtime_ns
    assert resolve_model(cfg, "tiny/1").location == first.location
    assert (Path(first.location) / "config.json").stat().st_mtime_ns == stamp  # cached, not downloaded again
    assert resolve_model(cfg, "tiny/latest").version == "2"
    _, info = load_pipeline(first, "cpu")
    assert info.source == "registry" and info.label.startswith("tiny one") and info.location.endswith("models/tiny/1")


def test_unknown_models_fail_fast_with_a_fix(cfg: Settings) -> None:
    # HF_HUB_OFFLINE=1 (tests/conftest.py): the hub counts as unreachable at once
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        resolve_model(cfg, "nobody/nothing")
    assert time.monotonic() - started < 5
    assert "unreachable" in err.value.message and "TICKCAST_SERVING__MODEL" in (err.value.fix or "")
    with pytest.raises(ModelError):
        resolve_model(cfg, "")


def test_auto_falls_back_to_the_bundled_model(cfg: Settings, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "BUNDLED_DIR", tiny.parent / "absent")
    with pytest.raises(ModelError) as err:
        resolve_model(cfg, "auto")
    assert "bundled model is missing" in err.value.message and "README" in (err.value.fix or "")
    monkeypatch.setattr(models, "BUNDLED_DIR", tiny)
    resolved = resolve_model(cfg, "auto")
    assert resolved.source == "bundled" and resolve_model(cfg, "bundled").location == str(tiny)
    _, info = load_pipeline(resolved, "cpu")
    assert info.bundled and "not an Amazon checkpoint" in info.label
