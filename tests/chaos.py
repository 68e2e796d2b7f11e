"""Chaos-test helpers: kill process groups, freeze a process, and compare a Delta table's
data files with the files its log ever committed.

A Delta write first puts its data files, then commits a log entry naming them. A data file
that exists but that no version of the log references is therefore the trace of a write
interrupted between the two; :func:`uncommitted_data_files` finds such files, and
:meth:`WriteWatch.kill_between_write_and_commit` produces one on purpose by freezing a
writer the moment a new data file appears and killing it only if the commit has not
happened.

The log is read here directly (its JSON commits and Parquet checkpoints), not through
delta-rs: this is a check of the format the writers leave behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq

from tickcast.lake import Lake

_LOG = "_delta_log"


def kill_group(pid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL the process group that ``pid`` leads, as a crash or an OOM kill would, and wait
    until no process of the group is left.

    ``pid`` must lead its own group (started with ``start_new_session=True``, as tickcast
    starts every local service): signalling the group of anything else could hit the test
    runner itself, so that is refused.
    """
    from tickcast.infra.process import group_alive, pid_alive

    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        raise AssertionError(f"process {pid} is not running: nothing to kill") from None
    if pgid != pid:
        raise ValueError(f"process {pid} does not lead its own process group ({pgid}); start it in a new session")
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    # pid_alive reaps children tickcast.infra started; a Popen the caller owns is reaped by its wait().
    while pid_alive(pid) or group_alive(pid):
        assert time.monotonic() < deadline, f"process group {pid} survived SIGKILL for {timeout_s} s"
        time.sleep(0.05)


def freeze(pid: int, timeout_s: float = 10.0) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it is stopped.

    Once this returns the process makes no further system call, so nothing it writes can
    appear in a local folder any more (a write to a remote store may still be on the wire).
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for task in tasks.iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # a thread that just ended
        if all(state in ("T", "t") for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop within {timeout_s} s of SIGSTOP"
        time.sleep(0.001)


def data_files(lake: Lake, table: str) -> set[str]:
    """The Parquet data files in a table's folder, as paths relative to the table root
    (the form of the log's ``add.path``, decoded); the log's own checkpoints excluded."""
    prefix = f"{table}/"
    return {
        path[len(prefix) :]
        for path in lake.list_files(table, ".parquet")
        if not path[len(prefix) :].startswith(f"{_LOG}/")
    }


def _read_commit(text: str) -> tuple[set[str], dict[str, int]]:
    paths, txns = set(), {}
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "add" in action:
            paths.add(unquote(action["add"]["path"]))
        elif "txn" in action:
            txns[action["txn"]["appId"]] = int(action["txn"]["version"])
    return paths, txns


def _read_checkpoint(data: bytes) -> tuple[set[str], dict[str, int]]:
    import pyarrow as pa

    table = pq.read_table(pa.BufferReader(data), columns=["add", "txn"])
    adds, txns = table.column("add").combine_chunks(), table.column("txn").combine_chunks()
    paths = {unquote(path) for path in adds.field("path").to_pylist() if path is not None}
    versions = {
        app: int(version)
        for app, version in zip(txns.field("appId").to_pylist(), txns.field("version").to_pylist(), strict=True)
        if app is not None
    }
    return paths, versions


#: Log file name -> the data files it adds and the application transactions it records.
LogCache = dict[str, tuple[set[str], dict[str, int]]]


def _read_log(lake: Lake, table: str, cache: LogCache | None) -> LogCache:
    cache = {} if cache is None else cache
    for path in lake.list_files(f"{table}/{_LOG}"):
        name = path.rsplit("/", 1)[1]
        if name in cache:
            continue  # log files never change once written
        if name.endswith(".json"):
            cache[name] = _read_commit(lake.read_bytes(path).decode())
        elif ".checkpoint" in name and name.endswith(".parquet"):
            cache[name] = _read_checkpoint(lake.read_bytes(path))
    return cache


def committed_files(lake: Lake, table: str, cache: LogCache | None = None) -> set[str]:
    """Every data file that any version of the table's log adds (the union of the ``add``
    actions of all JSON commits and checkpoints), relative to the table root and decoded.

    Files a later version removed (optimize, merge) still count: they were committed once.
    ``cache`` (filled as it goes) lets a poller read each log file only once.
    """
    return set().union(*(paths for paths, _ in _read_log(lake, table, cache).values()))


def transaction_versions(lake: Lake, table: str, cache: LogCache | None = None) -> dict[str, int]:
    """The highest version of each application transaction the table's log recorded (for
    the sink: app id of a Kafka partition -> last offset committed)."""
    out: dict[str, int] = {}
    for _, txns in _read_log(lake, table, cache).values():
        for app, version in txns.items():
            out[app] = max(version, out.get(app, version))
    return out


def uncommitted_data_files(lake: Lake, table: str) -> set[str]:
    """Data files in the table's folder that no version of its log ever referenced: writes
    cut off between their data files and their commit (or commits that lost a race)."""
    return data_files(lake, table) - committed_files(lake, table)


class _DirWatch:
    """Files that appear in a folder tree from now on, as the kernel reports them (Linux
    inotify through ctypes): the watcher wakes the moment a file is renamed or created into
    place, which polling cannot match. Folders created later are watched as
    they appear; folders named ``skip`` are not."""

    _CREATE, _MOVED_TO, _ISDIR = 0x100, 0x80, 0x40000000
    _HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (name follows)

    def __init__(self, root: Path, skip: str) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.skip = skip
        self.dirs: dict[int, Path] = {}
        self.pending: list[Path] = []
        self._watch(root, existing_are_new=False)

    def _watch(self, folder: Path, existing_are_new: bool) -> None:
        if folder.name == self.skip:
            return
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(folder), self._CREATE | self._MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch on {folder} failed")
        self.dirs[wd] = folder
        for entry in os.scandir(folder):
            if entry.is_dir():
                self._watch(Path(entry.path), existing_are_new)
            elif existing_are_new:  # in a folder that just appeared, before its watch took hold
                self.pending.append(Path(entry.path))

    def new_files(self, timeout_s: float) -> list[Path]:
        """Files created or renamed into the tree since the last call (waits up to ``timeout_s``)."""
        if not self.pending and select.select([self.fd], [], [], timeout_s)[0]:
            data = os.read(self.fd, 256 * 1024)
            offset = 0
            while offset < len(data):
                wd, mask, _, size = self._HEADER.unpack_from(data, offset)
                offset += self._HEADER.size
                name = data[offset : offset + size].rstrip(b"\0").decode()
                offset += size
                folder = self.dirs.get(wd)
                if folder is None or not name:
                    continue
                if mask & self._ISDIR:
                    self._watch(folder / name, existing_are_new=True)
                else:
                    self.pending.append(folder / name)
        found, self.pending = self.pending, []
        return found

    def close(self) -> None:
        os.close(self.fd)


def watch_cpu() -> int:
    """The CPU a :class:`WriteWatch` and the writer it watches share (the last one allowed)."""
    return max(os.sched_getaffinity(0))


def idle_on_cpu(argv: list[str], cpu: int) -> list[str]:
    """A command line that runs ``argv`` pinned to ``cpu`` under ``SCHED_IDLE``: on that CPU
    any ordinary process preempts it the moment it wakes. Both settings survive ``exec`` and
    pass to every thread the process starts."""
    code = (
        f"import os, sys; os.sched_setaffinity(0, {{{cpu}}}); "
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


class WriteWatch:
    """Watches a local table's folder for new data files, to kill its writer between a
    data-file write and its commit. Open it (``with``) before the writes to watch begin:
    files that appear while nobody waits are kept for the next
    :meth:`kill_between_write_and_commit`.

    Winning the race, by construction: the writer runs under :func:`idle_on_cpu` on ``cpu``
    and, while the watch is open, the watching thread is pinned to the same CPU. The rename
    that puts a data file in place wakes the watcher (inotify), which preempts the writer
    on that CPU before the writer is back in its own code, and stops it (SIGSTOP) before it
    can start the commit. So the writer must only run while the watcher waits on inotify:
    freeze it (:func:`freeze`) around anything else that blocks the watching thread.
    Without the shared CPU (inotify alone, two busy cores) the commit beat the freeze in 15
    of 15 single-file writes; with it, the first write is caught.

    Only for a local (``file://``) lake: there a frozen process cannot finish a commit,
    while a request to a remote store may still be on the wire.
    """

    def __init__(self, lake: Lake, table: str, cpu: int) -> None:
        assert lake.is_local, "WriteWatch needs a file:// lake (see its docstring)"
        self.lake, self.table, self.cpu = lake, table, cpu
        self.root = Path(lake.path(table))
        self.log_cache: LogCache = {}
        self._dirs: _DirWatch | None = None
        self._affinity: set[int] | None = None
        self.beaten = 0  # commits that beat the freeze (how close the watch gets)

    def __enter__(self) -> WriteWatch:
        self._affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.cpu})  # this thread only: the one that waits on inotify
        self._dirs = _DirWatch(self.root, skip=_LOG)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dirs is not None:
            self._dirs.close()
            self._dirs = None
        if self._affinity is not None:
            os.sched_setaffinity(0, self._affinity)

    def kill_between_write_and_commit(self, pid: int, keep_going: Callable[[], bool]) -> set[str]:
        """SIGKILL ``pid`` between a data-file write and its commit; returns the files written.

        The moment a data file appears in the table folder (inotify), the writer is frozen
        (:func:`freeze`) and the log is read. If no version references the new file, the
        commit cannot happen any more: the writer is killed and the new files are returned
        (paths relative to the table root). If the commit beat the freeze, the writer
        resumes and the watch goes on. Returns an empty set when ``keep_going()`` (asked a
        few times a second, and after each new file) turns false before a kill landed.

        ``keep_going`` runs on the watching thread: it must not block (no network call), or
        the writer runs meanwhile unwatched; :func:`transaction_versions` with
        :attr:`log_cache` is a cheap way to see whether the writer has committed.
        """
        assert self._dirs is not None, "open the WriteWatch first (with ...)"
        while keep_going():
            # Data files only: object_store stages a write under "<name>#<n>", then renames it.
            found = self._dirs.new_files(0.2)
            new = {str(p.relative_to(self.root)) for p in found if p.name.endswith(".parquet")}
            if not new:
                continue
            freeze(pid)
            uncommitted = new - committed_files(self.lake, self.table, self.log_cache)
            if uncommitted:
                os.kill(pid, signal.SIGKILL)
                return uncommitted
            os.kill(pid, signal.SIGCONT)
            self.beaten += 1
        return set()


__all__ = [
    "WriteWatch",
    "committed_files",
    "data_files",
    "freeze",
    "idle_on_cpu",
    "kill_group",
    "transaction_versions",
    "uncommitted_data_files",
    "watch_cpu",
]
