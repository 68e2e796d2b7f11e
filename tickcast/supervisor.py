"""Keep the local platform's services running: restart what crashed, give up on a crash loop.

``tickcast up`` hands every service it started (Kafka and MinIO included) to a
:class:`Supervisor`. A service whose process is gone and whose port no longer answers has
crashed: what is left of its process group is killed (a crashed Ray head leaves workers
behind, as a crashed pod would), and it is started again after a wait that doubles with each
crash in the window (1 s, 2 s, 4 s, ... up to ``restart_backoff_max_s``), the way Kubernetes
backs off a crash-looping container. When a service needs more than ``crash_loop_restarts``
restarts within ``crash_loop_window_min`` minutes, restarting it again would only hide the
problem: the supervisor returns a one-line reason and ``up`` stops everything.

Counts are written to the state folder (:mod:`tickcast.restarts`) after every change, so
``tickcast status`` and the dashboard show them from other processes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tickcast.errors import TickcastError
from tickcast.restarts import RestartRecord, clear_restarts, write_restarts
from tickcast.settings import PlatformSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Supervised:
    """One service as the supervisor sees it.

    Attributes:
        name: the service's name.
        pid: the pid of its process (also its process group), or None when it is not running.
        alive: whether it still runs (its process, or a healthy server on its port).
        restart: start it again and wait until healthy; raises TickcastError when it cannot.
        log_path: its log, named in messages.
        exit_reason: why the process with this pid ended (``exit code 1``, ``killed by
            SIGKILL``), when known.
    """

    name: str
    pid: Callable[[], int | None]
    alive: Callable[[], bool]
    restart: Callable[[], object]
    log_path: Path
    exit_reason: Callable[[int], str | None] = lambda _pid: None


class CrashLoop(TickcastError):
    """A service crashed more often than the crash-loop setting allows.

    Attributes:
        service: the service's name.
        log_path: its log, whose tail tells why.
    """

    def __init__(self, service: str, log_path: Path, message: str, fix: str) -> None:
        self.service = service
        self.log_path = log_path
        super().__init__(message, fix)


class Supervisor:
    """Restart crashed services with exponential backoff; detect crash loops.

    Args:
        services: in start order; checked in that order, so Kafka comes back before the
            services that need it.
        state_dir: where restart counts are written.
        policy: backoff and crash-loop settings.
        progress: one line per event worth telling a person.
        clock: seconds (wall clock, recorded in the restart file); a test passes its own.
    """

    def __init__(
        self,
        services: Sequence[Supervised],
        state_dir: Path | str,
        policy: PlatformSettings,
        progress: Callable[[str], None] = log.info,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.services = list(services)
        self.state_dir = Path(state_dir)
        self.policy = policy
        self.progress = progress
        self.clock = clock
        self.records = {s.name: RestartRecord(s.name) for s in self.services}
        self._last_pid: dict[str, int | None] = {s.name: s.pid() for s in self.services}
        self._next_attempt: dict[str, float] = {}
        clear_restarts(self.state_dir)
        self._save()

    def _save(self) -> None:
        write_restarts(self.state_dir, self.records)

    @property
    def window_s(self) -> float:
        """The crash-loop window in seconds."""
        return self.policy.crash_loop_window_min * 60.0

    def backoff_s(self, recent_restarts: int) -> float:
        """The wait before the next restart after ``recent_restarts`` restarts in the window."""
        return float(min(self.policy.restart_backoff_initial_s * 2**recent_restarts, self.policy.restart_backoff_max_s))

    def check(self, stop: Callable[[], bool] = lambda: False) -> None:
        """One pass over every service: note crashes, restart those whose backoff has passed.

        Raises:
            CrashLoop: a service crashed again after ``crash_loop_restarts`` restarts within
                the window; the message is the one-line reason ``up`` prints.
        """
        for service in self.services:
            if stop():
                return
            record = self.records[service.name]
            if record.state == "running":
                if service.alive():
                    self._last_pid[service.name] = service.pid() or self._last_pid[service.name]
                    continue
                self._crashed(service, self._describe_exit(service))
            elif self.clock() >= self._next_attempt[service.name]:
                self._restart(service)

    def _describe_exit(self, service: Supervised) -> str:
        pid = self._last_pid.get(service.name)
        reason = service.exit_reason(pid) if pid is not None else None
        return reason or "its process is gone and its port does not answer"

    def _crashed(self, service: Supervised, reason: str) -> None:
        record = self.records[service.name]
        now = self.clock()
        record.recent = [t for t in record.recent if now - t < self.window_s]
        record.last_exit = reason
        if len(record.recent) >= self.policy.crash_loop_restarts:
            record.state = "crash loop"
            self._save()
            raise CrashLoop(
                service.name,
                service.log_path,
                f"{service.name} crashed again ({reason}) after {len(record.recent)} restarts within "
                f"{self.policy.crash_loop_window_min:g} min",
                f"see its log {service.log_path}; raise TICKCAST_PLATFORM__CRASH_LOOP_RESTARTS to keep retrying",
            )
        self._kill_leftovers(service)
        delay = self.backoff_s(len(record.recent))
        record.state = "backing off"
        self._next_attempt[service.name] = now + delay
        self._save()
        self.progress(f"{service.name} stopped unexpectedly ({reason}); restarting in {delay:g} s")

    def _kill_leftovers(self, service: Supervised) -> None:
        # The crashed process led its own process group; children it left (Ray's workers,
        # a JVM's helpers) would hold ports the new process needs.
        pid = self._last_pid.get(service.name)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        log.info("killed what was left of %s's process group %d", service.name, pid)

    def _restart(self, service: Supervised) -> None:
        record = self.records[service.name]
        record.state = "restarting"
        record.restarts += 1
        now = self.clock()
        record.recent.append(now)
        record.last_restart_at = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")
        self._save()
        try:
            service.restart()
        except TickcastError as exc:
            record.state = "running"  # so _crashed below records the failed start as a crash
            # The message's first line only: a failed start appends its log's tail, and the
            # reason is printed as one line (the log's path is named with it).
            self._crashed(service, f"restart failed: {exc.message.splitlines()[0].rstrip(':')}")
            return
        self._last_pid[service.name] = service.pid()
        record.state = "running"
        self._save()
        self.progress(f"{service.name} restarted (restart {record.restarts}, pid {service.pid() or '-'})")

    def run(self, stop: Callable[[], bool]) -> None:
        """Check every ``supervise_interval_s`` until ``stop()`` is true.

        Raises:
            CrashLoop: as :meth:`check`.
        """
        while not stop():
            self.check(stop)
            deadline = time.monotonic() + self.policy.supervise_interval_s
            while not stop() and time.monotonic() < deadline:
                time.sleep(min(0.2, self.policy.supervise_interval_s))
