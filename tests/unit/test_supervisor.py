"""The supervisor restarts real processes that die, backs off, and stops on a crash loop.

Each service here is a real child process (``sleep``) killed with real signals; only the
clock is the test's, so the backoff is checked without waiting for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.restarts import read_restarts, restarts_path
from tickcast.settings import PlatformSettings
from tickcast.supervisor import CrashLoop, Supervised, Supervisor

POLICY = PlatformSettings(restart_backoff_initial_s=1.0, restart_backoff_max_s=4.0, crash_loop_restarts=3)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class SleepService:
    """A service whose process is a real ``sleep`` started detached through tickcast's own code."""

    def __init__(self, tmp_path: Path, name: str = "worker", fail_restarts: int = 0) -> None:
        self.name = name
        self.pid_path = tmp_path / "run" / f"{name}.pid"
        self.log_path = tmp_path / "logs" / f"{name}.log"
        self.marker = str(tmp_path / name)
        self.fail_restarts = fail_restarts
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        if self.starts > 1 and self.fail_restarts:
            self.fail_restarts -= 1
            raise InfraError(f"{self.name} did not become healthy; last lines of its log:\nboom\n", "look at its log")
        argv = [sys.executable, "-c", "import sys, time; time.sleep(600)", self.marker]
        process.start_detached(argv, pid_path=self.pid_path, log_path=self.log_path, marker=self.marker)

    def pid(self) -> int | None:
        return process.running_pid(self.pid_path)

    def supervised(self) -> Supervised:
        return Supervised(
            name=self.name,
            pid=self.pid,
            alive=lambda: self.pid() is not None,
            restart=self.start,
            log_path=self.log_path,
            exit_reason=process.exit_reason,
        )

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        pid = self.pid()
        assert pid is not None
        os.kill(pid, sig)
        wait_gone(pid)
        return pid


def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until ``pid`` has ended (a signal is delivered asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while process.pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs {timeout_s:.0f} s after its kill"
        time.sleep(0.01)


@pytest.fixture
def worker(tmp_path: Path):  # type: ignore[no-untyped-def]
    service = SleepService(tmp_path)
    service.start()
    yield service
    if (pid := service.pid()) is not None:
        os.killpg(pid, signal.SIGKILL)


def test_a_killed_service_is_restarted_after_its_backoff_and_counted(tmp_path: Path, worker: SleepService) -> None:
    clock, lines = Clock(), []
    supervisor = Supervisor([worker.supervised()], tmp_path, POLICY, lines.append, clock)
    first = worker.pid()
    supervisor.check()
    assert worker.pid() == first and read_restarts(tmp_path)["worker"].restarts == 0

    worker.kill()
    supervisor.check()
    record = read_restarts(tmp_path)["worker"]
    assert record.state == "backing off" and record.last_exit == "killed by SIGKILL"
    assert lines[-1] == "worker stopped unexpectedly (killed by SIGKILL); restarting in 1 s"
    clock.now += 0.5
    supervisor.check()
    assert worker.pid() is None  # still waiting out the backoff
    clock.now += 0.5
    supervisor.check()
    second = worker.pid()
    assert second is not None and second != first
    record = read_restarts(tmp_path)["worker"]
    assert (record.restarts, record.state) == (1, "running") and record.last_restart_at
    assert lines[-1] == f"worker restarted (restart 1, pid {second})"


def test_an_exit_code_is_reported(tmp_path: Path, worker: SleepService) -> None:
    supervisor = Supervisor([worker.supervised()], tmp_path, POLICY, lambda _l: None, Clock())
    worker.kill(signal.SIGTERM)
    supervisor.check()
    assert read_restarts(tmp_path)["worker"].last_exit == "killed by SIGTERM"
    # A process that exits with a code of its own.
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process._CHILDREN[proc.pid] = proc
    proc.wait()
    assert not process.pid_alive(proc.pid) and process.exit_reason(proc.pid) == "exit code 3"


def test_backoff_doubles_up_to_the_cap() -> None:
    supervisor = Supervisor([], "/tmp/unused-supervisor-state", POLICY, lambda _l: None, Clock())
    assert [supervisor.backoff_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    restarts_path("/tmp/unused-supervisor-state").unlink(missing_ok=True)


def test_a_crash_loop_stops_with_a_one_line_reason(tmp_path: Path, worker: SleepService) -> None:
    clock = Clock()
    supervisor = Supervisor([worker.supervised()], tmp_path, POLICY, lambda _l: None, clock)
    waits = []
    for _ in range(POLICY.crash_loop_restarts):
        worker.kill()
        supervisor.check()
        waits.append(supervisor._next_attempt["worker"] - clock.now)
        clock.now += 60  # within the 10-minute window
        supervisor.check()
        assert worker.pid() is not None
    assert waits == [1.0, 2.0, 4.0]
    worker.kill()
    with pytest.raises(CrashLoop) as raised:
        supervisor.check()
    assert raised.value.service == "worker" and raised.value.log_path == worker.log_path
    assert "worker crashed again (killed by SIGKILL) after 3 restarts within 10 min" in raised.value.one_line()
    assert "TICKCAST_PLATFORM__CRASH_LOOP_RESTARTS" in raised.value.one_line()
    assert read_restarts(tmp_path)["worker"].state == "crash loop"


def test_crashes_outside_the_window_do_not_add_up(tmp_path: Path, worker: SleepService) -> None:
    clock = Clock()
    supervisor = Supervisor([worker.supervised()], tmp_path, POLICY, lambda _l: None, clock)
    for _ in range(POLICY.crash_loop_restarts + 2):
        worker.kill()
        supervisor.check()
        clock.now += POLICY.crash_loop_window_min * 60 + 1  # each crash after the window
        supervisor.check()
        assert worker.pid() is not None
    assert read_restarts(tmp_path)["worker"].restarts == POLICY.crash_loop_restarts + 2


def test_a_restart_that_fails_counts_as_a_crash(tmp_path: Path) -> None:
    service = SleepService(tmp_path, fail_restarts=1)
    service.start()
    clock = Clock()
    supervisor = Supervisor([service.supervised()], tmp_path, POLICY, lambda _l: None, clock)
    try:
        service.kill()
        supervisor.check()
        clock.now += 1
        supervisor.check()  # the restart raises
        record = read_restarts(tmp_path)["worker"]
        # One line: the log's tail the start error carries stays in the log.
        assert record.state == "backing off"
        assert record.last_exit == "restart failed: worker did not become healthy; last lines of its log"
        assert supervisor._next_attempt["worker"] - clock.now == 2.0
        clock.now += 2
        supervisor.check()
        assert service.pid() is not None and read_restarts(tmp_path)["worker"].restarts == 2
    finally:
        if (pid := service.pid()) is not None:
            os.killpg(pid, signal.SIGKILL)


def test_leftover_children_of_a_crashed_service_are_killed(tmp_path: Path) -> None:
    """A crashed Ray head leaves workers in its process group; they would hold its ports."""
    marker = str(tmp_path / "parent")
    child_pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time, pathlib;"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"pathlib.Path({str(child_pid_file)!r}).write_text(str(c.pid)); time.sleep(600)"
    )
    pid_path = tmp_path / "run" / "parent.pid"
    process.start_detached(
        [sys.executable, "-c", code, marker], pid_path=pid_path, log_path=tmp_path / "p.log", marker=marker
    )
    deadline = time.monotonic() + 30
    while not child_pid_file.exists() or not child_pid_file.read_text():
        assert time.monotonic() < deadline, "the parent never started its child"
        time.sleep(0.05)
    child = int(child_pid_file.read_text())
    service = Supervised(
        "parent",
        pid=lambda: process.running_pid(pid_path),
        alive=lambda: process.running_pid(pid_path) is not None,
        restart=lambda: None,
        log_path=tmp_path / "p.log",
        exit_reason=process.exit_reason,
    )
    supervisor = Supervisor([service], tmp_path, POLICY, lambda _l: None, Clock())
    parent = process.running_pid(pid_path)
    assert parent is not None
    os.kill(parent, signal.SIGKILL)
    wait_gone(parent)
    assert process.pid_alive(child)  # orphaned, still running in the dead parent's group
    supervisor.check()
    wait_gone(child)
