"""Which Chronos model to serve, where it comes from, and loading it.

A model spec (``TICKCAST_SERVING__MODEL``) is resolved in this order:

1. an explicit spec:
   - ``bundled``: the checkpoint shipped in the repository under ``models/bundled/``;
   - ``s3://bucket/prefix``: a checkpoint directory in S3 (or MinIO), downloaded to a local cache;
   - a local directory (``/path``, ``./path`` or ``file:///path``);
   - ``NAME/VERSION`` (or ``NAME/latest``): an entry of the lake's model registry
     ``models/<NAME>/<VERSION>/``, downloaded to a local cache;
   - anything else is a hub id pinned to a commit, ``REPO@COMMIT`` such as
     ``amazon/chronos-2@254b5357164a84326913b0695216f690752ac55d``, loaded from the hub (or
     the local hub cache when the hub cannot be reached);
2. ``auto``: the hub model ``TICKCAST_SERVING__HUB_MODEL`` when the hub is reachable (or
   the model is in the local hub cache), otherwise
3. the bundled model.

An explicit spec that cannot be found is an error, never a silent fallback: serving a
different model than the one configured would mislabel every forecast.

What gets loaded is checked, because a checkpoint is code as much as data:

- weights load from safetensors only; pickle weights (``pytorch_model.bin``, ``*.pt``,
  ``*.ckpt``) can run arbitrary code when unpickled, so a checkpoint with only those is
  refused, and pickle files next to safetensors weights are never downloaded or read;
- a hub model is pinned to a 40-character commit, so the weights served cannot change
  under a deployment when someone pushes to the model's repository;
- files downloaded from S3 or the registry land inside the cache folder or nowhere: a key
  with ``..`` segments, an absolute path or an empty segment is refused before anything
  is written;
- the bundled model's ``metadata.json`` records the SHA-256 of its weights and config
  (written by ``tickcast bundle-model``); resolving ``bundled`` checks the files against it,
  so a damaged or swapped checkpoint (a Git LFS pointer, a partial checkout, a local edit)
  is refused instead of served under the bundled model's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from serving.tiny_models import TINY_MARKER
from tickcast.errors import ModelError, StoreUnavailable

if TYPE_CHECKING:
    from tickcast.lake import Lake
    from tickcast.settings import Settings

log = logging.getLogger(__name__)

ModelKind = Literal["chronos2", "bolt", "t5"]
ModelSource = Literal["hub", "local", "registry", "bundled"]

#: Where the repository keeps its bundled checkpoint.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models" / "bundled"
#: Optional metadata next to a checkpoint (registry entries and the bundled model).
METADATA_FILE = "metadata.json"
#: The registry's folder in the lake.
REGISTRY_PREFIX = "models"

_REGISTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HUB_ID_RE = _REGISTRY_RE  # ORG/NAME: the same shape; a registry entry wins when both exist
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
#: Weight files that are Python pickles: loading one can execute code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: An example of a pinned hub spec, for error messages.
PINNED_EXAMPLE = "amazon/chronos-2@254b5357164a84326913b0695216f690752ac55d"
_PIPELINE_KINDS: dict[str, ModelKind] = {
    "Chronos2Pipeline": "chronos2",
    "ChronosBoltPipeline": "bolt",
    "ChronosPipeline": "t5",
}
_logged_choices: set[tuple[str, str]] = set()
_log_lock = threading.Lock()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: a local checkpoint directory or a hub id, and its origin."""

    spec: str
    source: ModelSource
    location: str
    id: str
    version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    revision: str | None = None  # the hub commit, when ``location`` is a hub id

    @property
    def where(self) -> str:
        """Where the model came from, for people: the registry URI, hub id or directory."""
        return self.origin or self.location


@dataclass(frozen=True)
class ModelInfo:
    """What is being served; the API shows it at ``GET /v1/models``.

    ``bundled`` is True for the checkpoint tickcast trains itself on synthetic series and
    ships in the repository, so nobody mistakes it for an Amazon checkpoint.
    """

    id: str
    version: str
    kind: ModelKind
    source: ModelSource
    location: str
    context_length: int
    max_horizon: int
    quantiles: tuple[float, ...] | None
    supports_covariates: bool
    bundled: bool
    label: str
    parameters: int
    device: str
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        data = asdict(self)
        data["quantiles"] = list(self.quantiles) if self.quantiles is not None else None
        return data


# -- resolution ------------------------------------------------------------------------------
def hub_available(timeout_s: float = 2.0) -> bool:
    """Whether the model hub can be reached. ``HF_HUB_OFFLINE=1`` answers False at once."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    import httpx

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError:
        return False
    return True


def _hub_cached(repo_id: str, revision: str) -> str | None:
    """The local snapshot directory of a hub model's commit already in the hub cache, if any."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # any miss (not cached, malformed id) means "not available offline"
        return None
    return path if (Path(path) / "config.json").exists() else None


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """Split a pinned hub spec ``ORG/NAME@COMMIT`` into the repository id and the commit.

    Raises:
        ModelError: when the spec is not a hub id or carries no 40-character commit.
    """
    repo_id, at, revision = spec.partition("@")
    if not _HUB_ID_RE.match(repo_id):
        raise ModelError(
            f"model {spec[:200]!r} is not a local directory, an s3:// prefix, a registry entry NAME/VERSION "
            "or a hub id ORG/NAME@COMMIT",
            "set TICKCAST_SERVING__MODEL to one of those, `bundled`, or `auto`",
        )
    if not at:
        raise ModelError(
            f"hub model {repo_id!r} is not pinned to a commit, so the weights served could change with "
            "any push to its repository",
            f"append @ and the 40-character commit of the revision you reviewed, e.g. {PINNED_EXAMPLE} "
            "(in TICKCAST_SERVING__MODEL or TICKCAST_SERVING__HUB_MODEL)",
        )
    if not _COMMIT_RE.match(revision):
        raise ModelError(
            f"hub model {repo_id!r} is pinned to {revision[:60]!r}, which is not a commit (branches and tags move)",
            f"use the full 40-character lowercase commit hash, e.g. {PINNED_EXAMPLE}",
        )
    return repo_id, revision


def _read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


#: Files of the bundled checkpoint whose SHA-256 ``metadata.json`` records (under ``sha256``).
HASHED_FILES: tuple[str, ...] = ("config.json", "model.safetensors")


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(directory: Path) -> dict[str, str]:
    """``{file name: SHA-256}`` of the :data:`HASHED_FILES` of a checkpoint directory."""
    return {name: file_sha256(directory / name) for name in HASHED_FILES}


def verify_bundled(directory: Path, meta: dict[str, Any]) -> None:
    """Check the bundled checkpoint's files against the SHA-256 its ``metadata.json`` records.

    Raises:
        ModelError: the metadata records no hashes, a file is missing, or a file's hash differs;
            the message names the file and both hashes and says how to get the right files back.
    """
    fix = (
        "restore the committed files with `git checkout -- models/bundled` (with Git LFS: `git lfs pull`), "
        "or rebuild them with `tickcast bundle-model --seed 0`, which writes the weights and their hashes together"
    )
    recorded = meta.get("sha256")
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(n), str) for n in HASHED_FILES):
        raise ModelError(
            f"{directory / METADATA_FILE} records no SHA-256 for {', '.join(HASHED_FILES)}, so the bundled "
            "weights cannot be verified",
            fix,
        )
    for name in HASHED_FILES:
        path = directory / name
        if not path.is_file():
            raise ModelError(f"the bundled model is missing {path}", fix)
        actual = file_sha256(path)
        if actual != recorded[name]:
            raise ModelError(
                f"{path} has SHA-256 {actual}, but {METADATA_FILE} records {recorded[name]}: "
                "the bundled checkpoint was changed or damaged",
                fix,
            )


def _fingerprint(directory: Path) -> str:
    """A short, cheap content id of a checkpoint: config plus size and ends of the weights."""
    digest = hashlib.sha1()
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()[:12]


def _local(spec: str, directory: Path, source: ModelSource) -> ResolvedModel:
    meta = _read_metadata(directory)
    default_id = "tickcast-bundled" if source == "bundled" else directory.name
    return ResolvedModel(
        spec=spec,
        source=source,
        location=str(directory),
        id=str(meta.get("id") or meta.get("name") or default_id),
        version=str(meta.get("version") or _fingerprint(directory)),
        metadata=meta,
    )


def _cache_root(settings: Settings) -> Path:
    return Path(settings.infra.cache_dir).expanduser() / "models"


def download_prefix(lake: Lake, prefix: str, cache_root: Path) -> Path:
    """Copy every file under ``prefix`` of ``lake`` into a local cache directory.

    The cache is keyed by the prefix's URI and reused while the remote files keep their
    names and sizes; a changed entry is downloaded again into a fresh directory, which
    replaces the old one atomically.
    """
    import pyarrow.fs as pafs

    uri = lake.uri(prefix)
    target = cache_root / hashlib.sha1(uri.encode()).hexdigest()[:16]
    base = lake.path(prefix)
    infos = lake.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    listed = {
        info.path[len(base) + 1 :]: int(info.size or 0)
        for info in infos
        if info.type == pafs.FileType.File and not info.base_name.startswith(".")
    }
    for key in listed:
        check_cache_key(key, uri)
    if "config.json" not in listed:
        raise ModelError(
            f"no Chronos checkpoint at {uri} (config.json missing)",
            "upload a directory written by save_pretrained (e.g. with `tickcast train`, which registers models)",
        )
    files = {key: size for key, size in listed.items() if not _is_pickle(key)}
    check_safetensors(list(listed), uri)
    skipped = sorted(set(listed) - set(files))
    if skipped:
        log.info("not downloading pickle files %s of %s: tickcast loads safetensors only", skipped, uri)
    manifest = target / ".tickcast-manifest.json"
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()) == files:
                return target
        except ValueError:
            pass
    staging = cache_root / f".{target.name}.{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        inside = staging.resolve()
        for rel in files:
            dest = staging / rel
            if not dest.resolve().is_relative_to(inside):  # belt and braces after check_cache_key
                raise ModelError(f"model file {rel!r} at {uri} would land outside the cache", _KEY_FIX)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(lake.read_bytes(f"{prefix}/{rel}"))
        (staging / manifest.name).write_text(json.dumps(files))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("downloaded model %s to %s", uri, target)
    return target


_KEY_FIX = "re-upload the checkpoint with plain relative names (what save_pretrained writes), nothing else"


def check_cache_key(key: str, where: str) -> str:
    """Refuse a remote file name that could write outside the model cache.

    S3 keys are free-form strings: ``a/../../x``, ``/etc/x`` or ``a//b`` are all valid keys,
    and joined to a local folder they point elsewhere. Only plain relative names pass.

    Raises:
        ModelError: naming the key (truncated) and where it was found.
    """
    parts = key.split("/")
    bad = (
        not key
        or key.startswith(("/", "\\"))
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive, C:
    )
    if bad:
        raise ModelError(
            f"refusing model file {key[:200]!r} at {where}: its name has '..', '.', an empty segment, a "
            "backslash or an absolute path, which would write outside the model cache",
            _KEY_FIX,
        )
    return key


def _is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


#: An unmerged PEFT (LoRA) adapter: loading it makes transformers fetch the base model named in
#: it from the hub at no pinned revision, so what is served could change under the same name.
ADAPTER_CONFIG = "adapter_config.json"


def check_safetensors(names: list[str], where: str) -> None:
    """Refuse a checkpoint whose weights are pickle files only, or that is an unmerged adapter.

    Raises:
        ModelError: naming the pickle files and how to convert them, or the adapter and how to
            merge it.
    """
    if ADAPTER_CONFIG in {Path(name).name for name in names}:
        raise ModelError(
            f"the checkpoint at {where} is an unmerged LoRA adapter ({ADAPTER_CONFIG}): loading it would fetch "
            "its base model from the hub at no pinned revision",
            "merge the adapter into its base and save the full model (`tickcast train --mode lora` does: "
            "merge_and_unload() then save_pretrained(directory, safe_serialization=True))",
        )
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = sorted(name for name in names if _is_pickle(name))
    found = f"it holds pickle weights ({', '.join(pickles[:5])})" if pickles else "it holds no weights"
    raise ModelError(
        f"no safetensors weights in the checkpoint at {where}: {found}. tickcast loads safetensors only, "
        "because unpickling weights can run arbitrary code",
        "load the checkpoint in a trusted environment and save it again with "
        "save_pretrained(directory, safe_serialization=True), which writes model.safetensors",
    )


def _registry_versions(lake: Lake, name: str) -> list[str]:
    def key(version: str) -> tuple[Any, ...]:
        return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-_]", version))

    return sorted(lake.list_dirs(f"{REGISTRY_PREFIX}/{name}"), key=key)


def resolve_model(settings: Settings, spec: str | None = None) -> ResolvedModel:
    """Turn a model spec (default ``settings.serving.model``) into a loadable location.

    Raises:
        ModelError: when the spec names nothing that exists, saying how to fix it.
    """
    spec = (spec if spec is not None else settings.serving.model).strip()
    resolved = _resolve(settings, spec)
    with _log_lock:
        key = (spec, resolved.location)
        if key not in _logged_choices:  # log the choice once per process
            _logged_choices.add(key)
            log.info(
                "model %r resolved to %s %s version %s (%s)",
                spec,
                resolved.source,
                resolved.id,
                resolved.version,
                resolved.where,
            )
    return resolved


def _resolve(settings: Settings, spec: str) -> ResolvedModel:
    if not spec:
        raise ModelError("empty model spec", "set TICKCAST_SERVING__MODEL, e.g. to auto")
    if spec == "auto":
        return _resolve_auto(settings)
    if spec == "bundled":
        return _resolve_bundled()
    if spec.startswith("s3://"):
        return _resolve_s3(settings, spec)
    if spec.startswith("file://"):
        spec_path = Path(spec.removeprefix("file://")).expanduser()
        return _resolve_local_dir(spec, spec_path)
    path = Path(spec).expanduser()
    if spec.startswith(("/", ".", "~")) or path.is_dir():
        return _resolve_local_dir(spec, path)
    lake_problem = ""
    if _REGISTRY_RE.match(spec):
        try:
            found = _resolve_registry(settings, spec)
        except StoreUnavailable as exc:
            found, lake_problem = None, f"; the registry could not be read ({exc.message})"
        if found is not None:
            return found
        if "@" not in spec:
            # NAME/VERSION and ORG/NAME look alike: say why neither reading works.
            raise ModelError(
                f"model {spec[:200]!r} is not an entry of the model registry{lake_problem}, and as a hub id it is "
                "not pinned to a commit",
                "check the registry's NAME/VERSION (`NAME/latest` for the newest), or pin a hub model: append @ "
                f"and the 40-character commit of the revision you reviewed, e.g. {PINNED_EXAMPLE}",
            )
    try:
        return _resolve_hub(spec)
    except ModelError as exc:
        if lake_problem:
            raise ModelError(exc.message + lake_problem, exc.fix) from None
        raise


def _resolve_local_dir(spec: str, path: Path) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model directory {path} has no config.json",
            "point TICKCAST_SERVING__MODEL at a directory written by save_pretrained",
        )
    return _local(spec, path.resolve(), "local")


def _resolve_bundled() -> ResolvedModel:
    if not (BUNDLED_DIR / "config.json").is_file():
        raise ModelError(
            f"the bundled model is missing ({BUNDLED_DIR} has no config.json)",
            "build it with the training command described in the README's Models section, or set "
            "TICKCAST_SERVING__MODEL to a hub id, a local checkpoint directory or a registry entry NAME/VERSION",
        )
    resolved = _local("bundled", BUNDLED_DIR, "bundled")
    verify_bundled(BUNDLED_DIR, resolved.metadata)
    return resolved


def _resolve_auto(settings: Settings) -> ResolvedModel:
    hub_id = settings.serving.hub_model
    if hub_id:
        try:
            return _resolve_hub(hub_id, spec="auto")
        except ModelError as exc:
            log.info("hub model %s not available (%s); using the bundled model", hub_id, exc.message)
    return _resolve_bundled()


def _resolve_hub(hub_spec: str, spec: str | None = None) -> ResolvedModel:
    spec = spec or hub_spec
    repo_id, revision = parse_hub_spec(hub_spec)
    cached = _hub_cached(repo_id, revision)
    if cached is not None:
        return ResolvedModel(spec, "hub", cached, repo_id, revision[:12], _read_metadata(Path(cached)), origin=hub_spec)
    if hub_available():
        return ResolvedModel(spec, "hub", repo_id, repo_id, revision[:12], origin=hub_spec, revision=revision)
    raise ModelError(
        f"model {repo_id!r} is not a local directory or registry entry, and the model hub is unreachable "
        "(offline or HF_HUB_OFFLINE=1) with no cached copy of that commit",
        "set TICKCAST_SERVING__MODEL to a local checkpoint directory, a registry entry NAME/VERSION, "
        "`bundled`, or `auto` (hub when reachable, else the bundled model)",
    )


def _resolve_registry(settings: Settings, spec: str) -> ResolvedModel | None:
    from tickcast.lake import Lake

    name, version = spec.split("/", 1)
    lake = Lake(settings.lake)
    if version == "latest":
        # newest version whose upload finished (metadata is written last), else newest loadable one
        versions = list(reversed(_registry_versions(lake, name)))
        complete = [v for v in versions if lake.exists(f"{REGISTRY_PREFIX}/{name}/{v}/{METADATA_FILE}")]
        loadable = [v for v in versions if lake.exists(f"{REGISTRY_PREFIX}/{name}/{v}/config.json")]
        if not (complete or loadable):
            return None
        version = (complete or loadable)[0]
    prefix = f"{REGISTRY_PREFIX}/{name}/{version}"
    if not lake.exists(f"{prefix}/config.json"):
        return None
    directory = download_prefix(lake, prefix, _cache_root(settings))
    meta = _read_metadata(directory)
    return ResolvedModel(spec, "registry", str(directory), name, version, meta, origin=lake.uri(prefix))


def _resolve_s3(settings: Settings, spec: str) -> ResolvedModel:
    from tickcast.lake import Lake

    bucket_and_prefix = spec.removeprefix("s3://").rstrip("/")
    if "/" not in bucket_and_prefix:
        raise ModelError(f"{spec!r} names a bucket, not a checkpoint prefix", "use s3://bucket/models/NAME/VERSION")
    # The lake's endpoint and credentials apply to any s3:// model location.
    lake = Lake(settings.lake.model_copy(update={"url": f"s3://{bucket_and_prefix}"}))
    directory = download_prefix(lake, "", _cache_root(settings))
    meta = _read_metadata(directory)
    parts = bucket_and_prefix.split("/")
    if len(parts) >= 4 and parts[-3] == REGISTRY_PREFIX:
        default_id, default_version = parts[-2], parts[-1]
    else:
        default_id, default_version = parts[-1], _fingerprint(directory)
    return ResolvedModel(
        spec,
        "registry",
        str(directory),
        str(meta.get("id") or meta.get("name") or default_id),
        str(meta.get("version") or default_version),
        meta,
        origin=spec,
    )


# -- loading ---------------------------------------------------------------------------------
def pick_device(device: str = "auto") -> str:
    """``auto`` means CUDA when a GPU is visible, otherwise CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: ``TICKCAST_SERVING__DTYPE`` values and the torch dtype each names (``auto`` picks by device).
DTYPES = ("auto", "float32", "bfloat16")


def load_pipeline(resolved: ResolvedModel, device: str = "auto", dtype: str = "auto") -> tuple[Any, ModelInfo]:
    """Load a resolved model with ``BaseChronosPipeline.from_pretrained``.

    ``dtype`` ``auto``: CPU runs in fp32; CUDA in bf16, as the Chronos authors recommend for
    GPUs; ``float32`` or ``bfloat16`` force one. Weights load from safetensors only, and a
    hub model at its pinned commit only.

    Raises:
        ModelError: when the checkpoint cannot be loaded, or holds pickle weights only.
    """
    import torch
    from chronos import BaseChronosPipeline

    device = pick_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but no GPU is visible", "set TICKCAST_SERVING__DEVICE=auto or cpu")
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}", f"set TICKCAST_SERVING__DTYPE to one of {', '.join(DTYPES)}")
    auto = torch.bfloat16 if device == "cuda" else torch.float32
    torch_dtype = auto if dtype == "auto" else getattr(torch, dtype)
    from transformers.utils import logging as hf_logging

    kwargs: dict[str, Any] = {"device_map": device, "dtype": torch_dtype, "use_safetensors": True}
    directory = Path(resolved.location)
    if directory.is_dir():
        check_safetensors([p.name for p in directory.iterdir() if p.is_file()], resolved.where)
    elif resolved.source == "hub":
        # a hub id: only a pinned commit is ever fetched (resolve_model pins every hub spec)
        if resolved.revision is None:
            raise ModelError(f"hub model {resolved.id!r} has no pinned commit", f"use e.g. {PINNED_EXAMPLE}")
        kwargs["revision"] = resolved.revision
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor progress bar per replica start is noise
    try:
        pipeline = BaseChronosPipeline.from_pretrained(resolved.location, **kwargs)
    except (OSError, ValueError, AssertionError, KeyError, TypeError) as exc:
        raise ModelError(
            f"could not load model {resolved.id} from {resolved.where}: {_first_line(exc)}",
            "check that the directory holds a Chronos checkpoint (config.json and model.safetensors)",
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    info = describe(pipeline, resolved, device, str(torch_dtype).removeprefix("torch."))
    return pipeline, info


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def describe(pipeline: Any, resolved: ResolvedModel, device: str, dtype: str) -> ModelInfo:
    """The :class:`ModelInfo` of a loaded pipeline."""
    kind = _PIPELINE_KINDS.get(type(pipeline).__name__)
    if kind is None:
        raise ModelError(f"unsupported pipeline {type(pipeline).__name__}", "use a Chronos-2, Bolt or T5 checkpoint")
    if kind == "t5":
        context_length = int(pipeline.model.config.context_length)
        max_horizon = int(pipeline.model.config.prediction_length)
        quantiles = None
    else:
        context_length = int(pipeline.model_context_length)
        max_horizon = int(pipeline.model_prediction_length)
        quantiles = tuple(float(q) for q in pipeline.quantiles)
    params = sum(p.numel() for p in pipeline.inner_model.parameters())
    bundled = resolved.source == "bundled"
    meta = resolved.metadata
    if meta.get("label"):
        label = str(meta["label"])
    elif bundled:
        label = (
            "bundled: a small Chronos-2-architecture model trained by tickcast on synthetic series; "
            "not an Amazon checkpoint"
        )
    elif resolved.source == "hub":
        label = f"hub model {resolved.id}"
    elif resolved.source == "registry":
        base = meta.get("base_model")
        label = f"registry model {resolved.id}/{resolved.version}" + (f" (from {base})" if base else "")
    else:
        label = f"local checkpoint {resolved.location}"
    if (Path(resolved.location) / TINY_MARKER).exists():
        label += " [random weights: a test model built from a config, not trained]"
    return ModelInfo(
        id=resolved.id,
        version=resolved.version,
        kind=kind,
        source=resolved.source,
        location=resolved.where,
        context_length=context_length,
        max_horizon=max_horizon,
        quantiles=quantiles,
        supports_covariates=kind == "chronos2",
        bundled=bundled,
        label=label,
        parameters=int(params),
        device=device,
        dtype=dtype,
    )
