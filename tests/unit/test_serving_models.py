"""Model resolution: local directory, the lake's registry (file:// here), hub, bundled, errors;
and what may be loaded: safetensors only, hub commits pinned, cache downloads kept inside the cache."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from serving import models
from serving.models import METADATA_FILE, check_cache_key, download_prefix, load_pipeline, resolve_model
from serving.tiny_models import build_tiny_model
from tickcast.errors import ConfigError, ModelError
from tickcast.lake import Lake
from tickcast.settings import Settings, load_settings

SMALL_BOLT = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "d_kv": 16}
COMMIT = "254b5357164a84326913b0695216f690752ac55d"
PINNED = f"amazon/chronos-2@{COMMIT}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("bolt-tiny", tmp_path_factory.mktemp("m") / "bolt", context_length=128, **SMALL_BOLT)


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return load_settings(
        lake={"url": f"file://{tmp_path / 'lake'}"},
        infra={"cache_dir": str(tmp_path / "cache")},
        serving={"hub_model": PINNED},
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
        resolve_model(cfg, f"nobody/nothing@{COMMIT}")
    assert time.monotonic() - started < 5
    assert "unreachable" in err.value.message and "TICKCAST_SERVING__MODEL" in (err.value.fix or "")
    with pytest.raises(ModelError):
        resolve_model(cfg, "")


def test_auto_falls_back_to_the_bundled_model(
    cfg: Settings, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "BUNDLED_DIR", tiny.parent / "absent")
    with pytest.raises(ModelError) as err:
        resolve_model(cfg, "auto")
    assert "bundled model is missing" in err.value.message and "README" in (err.value.fix or "")
    # a bundled checkpoint carries the SHA-256 of its files, which resolving checks
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny, bundled)
    (bundled / models.METADATA_FILE).write_text(json.dumps({"sha256": models.checkpoint_sha256(bundled)}))
    monkeypatch.setattr(models, "BUNDLED_DIR", bundled)
    resolved = resolve_model(cfg, "auto")
    assert resolved.source == "bundled" and resolve_model(cfg, "bundled").location == str(bundled)
    _, info = load_pipeline(resolved, "cpu")
    assert info.bundled and "not an Amazon checkpoint" in info.label


def _pickle_only(tiny: Path, directory: Path) -> Path:
    """A copy of ``tiny`` whose weights are a pickle (``pytorch_model.bin``) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny, directory)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    return directory


def test_pickle_weights_are_refused_with_a_fix(cfg: Settings, tiny: Path, tmp_path: Path) -> None:
    pickled = _pickle_only(tiny, tmp_path / "pickled")
    with pytest.raises(ModelError) as err:
        load_pipeline(resolve_model(cfg, str(pickled)), "cpu")
    assert "pytorch_model.bin" in err.value.message and "safetensors only" in err.value.message
    assert "safe_serialization=True" in (err.value.fix or "")
    # from the registry: refused before anything is loaded
    lake = Lake(cfg.lake)
    upload(lake, pickled, "models/pickled/1")
    with pytest.raises(ModelError, match="no safetensors weights"):
        resolve_model(cfg, "pickled/1")


def test_an_unmerged_lora_adapter_is_refused(cfg: Settings, tiny: Path, tmp_path: Path) -> None:
    """peft would load the adapter's base from the hub unpinned; tickcast serves merged models only."""
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny, adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "amazon/chronos-2"}))
    with pytest.raises(ModelError, match="unmerged LoRA adapter") as err:
        load_pipeline(resolve_model(cfg, str(adapter)), "cpu")
    assert "merge_and_unload" in (err.value.fix or "")
    upload(Lake(cfg.lake), adapter, "models/adapter/1")
    with pytest.raises(ModelError, match="unmerged LoRA adapter"):
        resolve_model(cfg, "adapter/1")


def test_pickle_files_next_to_safetensors_are_never_downloaded(cfg: Settings, tiny: Path, tmp_path: Path) -> None:
    both = shutil.copytree(tiny, tmp_path / "both")
    shutil.copy(_pickle_only(tiny, tmp_path / "p") / "pytorch_model.bin", both / "pytorch_model.bin")
    (both / "training_args.bin").write_bytes(b"\x80\x04not really a pickle")  # what HF's Trainer leaves
    upload(Lake(cfg.lake), both, "models/both/1")
    resolved = resolve_model(cfg, "both/1")
    names = {p.name for p in Path(resolved.location).iterdir()}
    assert "model.safetensors" in names and not names & {"pytorch_model.bin", "training_args.bin"}
    _, info = load_pipeline(resolved, "cpu")
    assert info.kind == "bolt"
    # a local directory with both loads the safetensors weights
    _, local = load_pipeline(resolve_model(cfg, str(both)), "cpu")
    assert local.kind == "bolt"


@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./config.json", "a/./b", "..", "", "a\\..\\b", "C:/x"],
)
def test_keys_that_leave_the_cache_are_refused(key: str) -> None:
    with pytest.raises(ModelError) as err:
        check_cache_key(key, "s3://lake/models/x/1")
    assert "outside the model cache" in err.value.message and "s3://lake/models/x/1" in err.value.message


def test_a_registry_entry_with_a_refused_key_writes_nothing(cfg: Settings, tiny: Path, tmp_path: Path) -> None:
    """A real file whose name holds a backslash (legal on Linux and in S3) stops the whole download."""
    lake = Lake(cfg.lake)
    upload(lake, tiny, "models/odd/1")
    lake.write_bytes("models/odd/1/sub\\..\\..\\escape", b"x")  # (a leading '.' would be skipped as hidden)
    cache = tmp_path / "cache-root"
    with pytest.raises(ModelError, match="outside the model cache"):
        download_prefix(lake, "models/odd/1", cache)
    assert not cache.exists() or not any(cache.rglob("*"))
    for key in ("config.json", "model.safetensors", "sub/dir/file.json"):
        assert check_cache_key(key, "x") == key


def test_hub_models_must_be_pinned_to_a_commit(cfg: Settings) -> None:
    from serving.forecaster import Forecaster

    with pytest.raises(ModelError) as err:
        resolve_model(cfg, "amazon/chronos-2")
    assert "not pinned" in err.value.message and PINNED in (err.value.fix or "")
    for moving in ("main", "v1.0", COMMIT[:12], COMMIT.upper()):
        with pytest.raises(ModelError, match="not a commit"):
            resolve_model(cfg, f"amazon/chronos-2@{moving}")
    with pytest.raises(ModelError, match="not pinned"):
        Forecaster.from_pretrained("amazon/chronos-bolt-small")
    with pytest.raises(ConfigError) as bad:
        load_settings(serving={"hub_model": "amazon/chronos-2"})
    assert bad.value.setting == "TICKCAST_SERVING__HUB_MODEL" and "40-character commit" in bad.value.message
    assert load_settings().serving.hub_model == PINNED  # the default is pinned
    assert load_settings(serving={"hub_model": ""}).serving.hub_model == ""  # empty: never the hub


def test_a_pinned_hub_model_loads_that_commit_from_the_hub_cache(
    cfg: Settings, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub cache layout (models--ORG--NAME/snapshots/COMMIT) with a real checkpoint: the pinned
    commit resolves and loads offline; another commit of the same model is not silently used."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    shutil.copytree(tiny, cache / "models--someorg--tiny" / "snapshots" / COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    resolved = resolve_model(cfg, f"someorg/tiny@{COMMIT}")
    assert (resolved.source, resolved.id, resolved.version) == ("hub", "someorg/tiny", COMMIT[:12])
    _, info = load_pipeline(resolved, "cpu")
    assert info.source == "hub" and info.kind == "bolt"
    other = "0" * 40
    with pytest.raises(ModelError, match="no cached copy of that commit"):
        resolve_model(cfg, f"someorg/tiny@{other}")
