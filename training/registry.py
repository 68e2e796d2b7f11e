"""The model registry in the lake: ``models/<name>/<version>/``.

Each version is a directory that Chronos' ``from_pretrained`` loads as it is (config.json,
model.safetensors, ...), plus ``tickcast_model.json`` with what a user needs to trust it:
base model, training data window, steps, metrics, label and creation time.

The metadata file has the name serving reads (:data:`serving.models.METADATA_FILE`), so the
label and base model written here are what ``GET /v1/models`` shows. Files are uploaded
weights first, ``config.json`` next and the metadata last: a version without metadata is
an interrupted upload and is not listed, and serving (which looks for ``config.json``)
never sees a config without its weights. Versions are ``1``, ``2``, ... (the next free
number unless one is given); an existing version is never overwritten unless asked.
Loading goes through :func:`serving.models.resolve_model` (``NAME/VERSION``, ``NAME/latest``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.models import METADATA_FILE
from tickcast.errors import ModelError

if TYPE_CHECKING:
    from tickcast.lake import Lake

PREFIX = "models"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


@dataclass
class ModelEntry:
    """Metadata of one registered model version (the content of the metadata file).

    ``id`` equals ``name``; serving reads ``id``, ``version``, ``label`` and ``base_model``.
    """

    name: str
    version: str
    label: str
    created_at: str
    base_model: str | None
    architecture: str = "Chronos2Model"
    parameters: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or self.name

    @property
    def path(self) -> str:
        """Lake-relative directory of the version."""
        return f"{PREFIX}/{self.name}/{self.version}"

    @property
    def ref(self) -> str:
        """The ``NAME/VERSION`` reference serving and the CLI accept."""
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelEntry:
        """Parse metadata, ignoring unknown keys (newer writers may add some)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ModelError(
            f"model name {name!r} is not valid", "use lower-case letters, digits, '.', '_' or '-' (at most 64)"
        )


def list_models(lake: Lake) -> list[str]:
    """Names with at least one complete version."""
    return [n for n in lake.list_dirs(PREFIX) if list_versions(lake, n)]


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def list_versions(lake: Lake, name: str) -> list[str]:
    """Complete versions of ``name``, oldest first (numbers numerically)."""
    versions = [v for v in lake.list_dirs(f"{PREFIX}/{name}") if lake.exists(f"{PREFIX}/{name}/{v}/{METADATA_FILE}")]
    return sorted(versions, key=_version_key)


def latest_version(lake: Lake, name: str) -> str:
    """The newest complete version of ``name``; raises ModelError when there is none."""
    versions = list_versions(lake, name)
    if not versions:
        raise ModelError(
            f"no registered model {name!r} in the lake at {lake.url}",
            "register one with `tickcast train` or check TICKCAST_LAKE__URL",
        )
    return versions[-1]


def get_entry(lake: Lake, name: str, version: str = "latest") -> ModelEntry:
    """The metadata of ``name/version`` (``latest`` for the newest)."""
    if version == "latest":
        version = latest_version(lake, name)
    try:
        raw = lake.read_bytes(f"{PREFIX}/{name}/{version}/{METADATA_FILE}")
    except FileNotFoundError:
        raise ModelError(
            f"model {name}/{version} is not in the registry at {lake.url}",
            f"choose one of {', '.join(list_versions(lake, name)) or 'none (register one first)'}",
        ) from None
    return ModelEntry.from_dict(json.loads(raw))


def register_model(
    lake: Lake,
    name: str,
    model_dir: str | Path,
    *,
    label: str,
    base_model: str | None,
    version: str | None = None,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> ModelEntry:
    """Upload a saved Chronos model directory as ``models/<name>/<version>/`` with metadata.

    Args:
        lake: the lake.
        name: registry name (lower-case, digits, ``.``, ``_``, ``-``).
        model_dir: a directory written by ``save_pretrained``.
        label: one line saying what the model is (shown by serving and the dashboard).
        base_model: what training started from (hub id, registry ref, path; None: scratch).
        version: version to write; None takes the next free number.
        data, training, metrics: free-form metadata (data window, steps, backtest scores).
        overwrite: replace an existing version.

    Returns:
        The entry as written.
    """
    _check_name(name)
    source = Path(model_dir)
    if not (source / "config.json").is_file():
        raise ModelError(f"{source} is not a saved model (no config.json)", "pass the directory save_pretrained wrote")
    if version is None:
        numbers = [int(v) for v in lake.list_dirs(f"{PREFIX}/{name}") if v.isdigit()]
        version = str(max(numbers, default=0) + 1)
    elif not VERSION_RE.match(version) or version == "latest":
        raise ModelError(f"version {version!r} is not valid", "use letters, digits, '.', '_' or '-', not 'latest'")
    prefix = f"{PREFIX}/{name}/{version}"
    if lake.exists(f"{prefix}/{METADATA_FILE}") and not overwrite:
        raise ModelError(f"model {name}/{version} already exists in the registry", "pick another version or overwrite")
    files = sorted(
        (p for p in source.rglob("*") if p.is_file() and p.name != METADATA_FILE and not p.name.startswith(".")),
        key=lambda p: (p.name == "config.json", p.as_posix()),  # config.json after the weights
    )
    parameters = None
    config = json.loads((source / "config.json").read_text())
    architecture = (config.get("architectures") or ["unknown"])[0]
    try:
        from safetensors import safe_open

        weights = source / "model.safetensors"
        if weights.is_file():
            with safe_open(str(weights), framework="numpy") as handle:
                parameters = 0
                for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    shape = handle.get_slice(key).get_shape()
                    count = 1
                    for dim in shape:
                        count *= int(dim)
                    parameters += count
    except ImportError:
        parameters = None
    for path in files:
        lake.write_bytes(f"{prefix}/{path.relative_to(source).as_posix()}", path.read_bytes())
    entry = ModelEntry(
        name=name,
        version=version,
        label=label,
        created_at=datetime.now(UTC).isoformat(),
        base_model=base_model,
        architecture=architecture,
        parameters=parameters,
        data=dict(data or {}),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        files=[p.relative_to(source).as_posix() for p in files],
    )
    lake.write_bytes(f"{prefix}/{METADATA_FILE}", json.dumps(entry.to_dict(), indent=2, default=str).encode())
    return entry
