"""Secret files under the state folder: created once, atomically, readable by their owner only."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def create_once(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) unless the file exists; keep what is there.

    The data goes to a private temporary file that is then hard-linked into place, so two
    processes starting at once agree on one file and nobody reads a half-written one.
    """
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask says
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: its file stands
    finally:
        tmp.unlink(missing_ok=True)
