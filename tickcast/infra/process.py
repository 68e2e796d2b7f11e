"""Background processes for the local services: start detached, check, stop, wait until healthy.

Each service runs in its own session (``start_new_session=True``), so stopping it signals the
whole process group and leaves no orphans. A small JSON pid file under the state folder
records the pid and a *marker* (a path unique to that state folder) that must appear in the
process's command line: after a reboot the pid may belong to an unrelated process, and the
marker check keeps us from signalling it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tickcast.errors import InfraError

log = logging.getLogger(__name__)

#: Logs above this size are rotated to ``<name>.1`` when the service starts again.
LOG_ROTATE_BYTES = 32 * 1024 * 1024

# Children this interpreter started; polling them through Popen reaps them, so a stopped
# service does not linger as a zombie that still answers ``kill(pid, 0)``.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
# How those children ended (Popen's returncode: negative for a signal), for ``exit_reason``.
_EXIT_CODES: dict[int, int] = {}


@dataclass(frozen=True)
class PidRecord:
    """What the pid file of a running service holds."""

    pid: int
    marker: str
    started_at: float


def require_executable(name: str, purpose: str, fix: str) -> str:
    """The full path of ``name`` on PATH.

    Raises:
        InfraError: saying what ``name`` is needed for and how to install it.
    """
    found = shutil.which(name)
    if found is None:
        raise InfraError(f"`{name}` was not found on PATH; it is needed to {purpose}", fix)
    return found


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _EXIT_CODES[pid] = child.returncode
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # Field 3 of /proc/PID/stat is the state; "Z" is a zombie nobody has reaped yet.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_path: Path) -> PidRecord | None:
    """The pid record, or ``None`` when the file is missing or unreadable."""
    try:
        data = json.loads(pid_path.read_text())
        return PidRecord(pid=int(data["pid"]), marker=str(data["marker"]), started_at=float(data["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_pid(pid_path: Path) -> int | None:
    """The pid of the service recorded in ``pid_path`` if it still runs, else ``None``.

    A stale pid file (process gone, or the pid reused by an unrelated process) is removed.
    """
    record = read_pid(pid_path)
    if record is None:
        return None
    if pid_alive(record.pid) and (record.pid in _CHILDREN or record.marker in _cmdline(record.pid)):
        return record.pid
    pid_path.unlink(missing_ok=True)
    return None


def _rotate(log_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))


def start_detached(
    argv: Sequence[str],
    *,
    pid_path: Path,
    log_path: Path,
    marker: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``.

    ``marker`` must occur in the command line; it identifies the process later.

    Returns:
        The pid, which is also the process-group id.
    """
    if marker not in " ".join(argv):
        raise ValueError(f"marker {marker!r} does not occur in the command line")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    _rotate(log_path)
    with log_path.open("ab") as out:
        out.write(
            f"\n==== tickcast: starting {Path(argv[0]).name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode()
        )
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    tmp = pid_path.with_name(pid_path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(PidRecord(pid=proc.pid, marker=marker, started_at=time.time()))))
    tmp.replace(pid_path)
    return proc.pid


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        # Our services lead their own group (start_new_session); anything else gets a plain kill.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies; a group of only zombies is finished.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop_process(pid_path: Path, grace_s: float) -> bool:
    """Stop the service in ``pid_path``: SIGTERM to its group, SIGKILL after ``grace_s``.

    Returns:
        True when a running process was stopped, False when none was running.
    """
    pid = running_pid(pid_path)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (pid_alive(pid) or group_alive(pid)):
        time.sleep(0.2)
    if pid_alive(pid) or group_alive(pid):
        log.warning("pid %d did not stop within %.0f s of SIGTERM; sending SIGKILL", pid, grace_s)
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (pid_alive(pid) or group_alive(pid)):
            time.sleep(0.1)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    pid_path.unlink(missing_ok=True)
    return True


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with log_path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until_healthy(
    name: str,
    probe: Callable[[], bool],
    *,
    pid: int,
    log_path: Path,
    timeout_s: float,
    interval_s: float = 0.5,
) -> float:
    """Poll ``probe`` until it returns True, the process dies, or ``timeout_s`` passes.

    Returns:
        The seconds it took.

    Raises:
        InfraError: when the process exits or the timeout passes, with the log's tail.
    """
    started = time.monotonic()
    while True:
        if probe():
            return time.monotonic() - started
        if not pid_alive(pid):
            tail = log_tail(log_path)
            raise InfraError(
                f"{name} exited while starting; last lines of {log_path}:\n{tail}",
                f"read {log_path} for the cause",
            )
        if time.monotonic() - started > timeout_s:
            raise InfraError(
                f"{name} (pid {pid}) did not become healthy within {timeout_s:.0f} s; "
                f"last lines of {log_path}:\n{log_tail(log_path)}",
                "read the log; on a slow machine raise TICKCAST_INFRA__START_TIMEOUT_S",
            )
        time.sleep(interval_s)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two ``up`` calls on one state folder do not race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Seconds between "still running" lines of :func:`run_logged`: often enough that a person
#: watching a first-time build sees it is alive, rare enough not to bury the other lines.
HEARTBEAT_S = 20.0


def _last_line(log_path: Path, width: int = 100) -> str:
    """The last non-empty line of a log, at most ``width`` characters ('' if none).

    A long line keeps its end: for a download that is the file name and the size.
    """
    lines = [line.strip() for line in log_tail(log_path, 5).splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return last if len(last) <= width else "..." + last[-(width - 3) :]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def describe_exit(returncode: int) -> str:
    """Popen's return code in words: ``exit code 3``, ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def run_logged(
    argv: Sequence[str],
    *,
    what: str,
    fix: str,
    progress: Callable[[str], None],
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> float:
    """Run a one-off command (a build, a download) with its output in ``log_path``.

    The command's stdout and stderr go to ``log_path`` (replaced, headed by the command
    line), not to the console: a build prints thousands of lines. Every ``heartbeat_s``
    seconds ``progress`` gets one line, ``"  ... still <what> (45 s): <last log line>"``, so
    a long first-time step never looks hung. ``argv`` is written to the log, so it must hold
    no secret (pass those in ``env``).

    Returns:
        The seconds the command took.

    Raises:
        InfraError: when the command fails, naming the log and quoting its last lines.
    """
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        out.write(f"$ {' '.join(argv)}\n# started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        out.flush()
        # Measured before the command starts: it may write its first line before Popen returns.
        seen_size = _file_size(log_path)
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            next_beat = started + heartbeat_s
            while True:
                try:
                    # Wakes at once when the command ends, else at the next heartbeat.
                    proc.wait(timeout=max(0.0, next_beat - time.monotonic()))
                    break
                except subprocess.TimeoutExpired:
                    # Quote the tool's latest line only when it is new: a compile step prints
                    # nothing for minutes, and repeating an old "downloading X" would mislead.
                    size = _file_size(log_path)
                    last = _last_line(log_path) if size != seen_size else ""
                    seen_size = size
                    elapsed = time.monotonic() - started
                    progress(f"  ... still {what} ({elapsed:.0f} s){': ' + last if last else ''}")
                    next_beat += heartbeat_s
        except BaseException:
            # Ctrl-C (or a failing progress callback): do not leave the build running behind us.
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise InfraError(
            f"{what} failed ({describe_exit(proc.returncode)}); last lines of {log_path}:\n{log_tail(log_path, 30)}",
            fix,
        )
    return time.monotonic() - started


def exit_reason(pid: int) -> str | None:
    """How a service this interpreter started ended (``exit code 1``, ``killed by SIGKILL``).

    None when unknown: the process was started by another ``tickcast`` process, or still runs.
    """
    if pid_alive(pid) or pid not in _EXIT_CODES:
        return None
    return describe_exit(_EXIT_CODES[pid])
