"""Restart counts of the local platform's services, shared between processes.

``tickcast up`` supervises every service it started and records each restart here, in the
state folder; ``tickcast status`` and the dashboard's Pipeline page read the same file, so
a person sees which service crashed, how often and why, from any terminal.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RestartRecord:
    """What the supervisor knows of one service's crashes.

    Attributes:
        service: the service's name (``kafka``, ``consumer``, ...).
        restarts: how many times ``up`` restarted it since ``up`` started.
        last_exit: why it last went down (``exit code 1``, ``killed by SIGKILL``, ...).
        last_restart_at: when it was last restarted (ISO-8601, UTC).
        state: ``running``, ``backing off`` (waiting to restart) or ``restarting``.
        recent: the times (Unix seconds) of restarts inside the crash-loop window.
    """

    service: str
    restarts: int = 0
    last_exit: str | None = None
    last_restart_at: str | None = None
    state: str = "running"
    recent: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


def restarts_path(state_dir: Path | str) -> Path:
    """The file ``up`` writes restart counts to, under the state folder."""
    return Path(state_dir).expanduser().resolve() / "run" / "restarts.json"


def write_restarts(state_dir: Path | str, records: dict[str, RestartRecord]) -> None:
    """Replace the restart file atomically (readers never see half a file)."""
    path = restarts_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({name: record.to_dict() for name, record in records.items()}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".restarts-")
    with os.fdopen(fd, "w") as out:
        out.write(payload)
    os.replace(tmp, path)


def read_restarts(state_dir: Path | str) -> dict[str, RestartRecord]:
    """The restart counts ``up`` recorded; empty when no ``up`` has supervised this state folder."""
    try:
        raw = json.loads(restarts_path(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    records = {}
    for name, entry in raw.items() if isinstance(raw, dict) else ():
        if isinstance(entry, dict):
            known = {k: v for k, v in entry.items() if k in RestartRecord.__dataclass_fields__}
            records[name] = RestartRecord(**{"service": name, **known})
    return records


def clear_restarts(state_dir: Path | str) -> None:
    """Forget earlier counts (a new ``up`` starts from zero)."""
    restarts_path(state_dir).unlink(missing_ok=True)
