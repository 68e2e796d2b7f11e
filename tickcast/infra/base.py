"""What every local service shares: install, start (or reuse), stop, status.

A subclass says how to install itself, which command runs it and how to probe its health;
this class handles the rest the same way for Kafka and MinIO: reuse a healthy server already
on the port (ours or anyone's), refuse a port held by something else with the setting to
change, and never start a second copy.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.settings import InfraSettings, env_name

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: How a ``start`` found or made the service.
StartOutcome = Literal["started", "reused", "external"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``status`` sees it.

    ``managed`` is True when this state folder started the process (pid file and live
    process); a healthy server on the port that we did not start is running but unmanaged.
    """

    name: str
    enabled: bool
    running: bool
    healthy: bool
    managed: bool
    pid: int | None
    address: str
    log_path: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class Port:
    """A port a service binds and the setting that chooses it."""

    port: int
    setting: str  # the InfraSettings field name


class LocalService(ABC):
    """A service run from the state folder as a detached process."""

    name: str = ""
    #: How long a server found on the port may take to answer before the port counts as taken.
    reuse_wait_s: float = 5.0

    def __init__(self, infra: InfraSettings, progress: Progress | None = None) -> None:
        self.infra = infra
        self.state_dir = infra.state_dir.expanduser().resolve()
        self.cache_dir = infra.cache_dir.expanduser().resolve()
        self.progress: Progress = progress or log.info
        self.log_path = self.state_dir / "logs" / f"{self.name}.log"
        self.pid_path = self.state_dir / "run" / f"{self.name}.pid"
        self.lock_path = self.state_dir / "run" / f"{self.name}.lock"

    # -- what a subclass provides -------------------------------------------------------

    @property
    @abstractmethod
    def ports(self) -> list[Port]:
        """The ports the service binds; the first is the one clients use."""

    @abstractmethod
    def is_installed(self) -> bool:
        """Whether the binaries are in the cache."""

    @abstractmethod
    def install(self) -> None:
        """Put the binaries in the cache (no-op when they are there)."""

    @abstractmethod
    def prepare(self) -> None:
        """Write config and initialise data before a start."""

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that run the service."""

    @abstractmethod
    def probe(self, timeout_s: float = 2.0) -> bool:
        """Whether a healthy server of this kind answers on the client port."""

    @property
    def marker(self) -> str:
        """A string in the command line unique to this state folder."""
        return str(self.state_dir / self.name)

    @property
    def stop_grace_s(self) -> float:
        """How long to wait after SIGTERM before SIGKILL."""
        return 30.0

    # -- shared behaviour ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self.ports[0].port

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{HOST}:{self.port}"

    def pid(self) -> int | None:
        """The pid of the process this state folder started, if it runs."""
        return process.running_pid(self.pid_path)

    def _port_conflict(self, port: Port, what: str) -> InfraError:
        setting = env_name("infra", port.setting)
        return InfraError(
            f"port {port.port} on {HOST} is taken by {what}, so {self.name} cannot start",
            f"stop whatever listens there, or choose a free port with {setting}",
        )

    def start(self) -> StartOutcome:
        """Start the service, or reuse a healthy one already serving the port.

        Raises:
            InfraError: when a port is taken by something unhealthy, the service fails
                to start, or it does not become healthy within ``start_timeout_s``.
        """
        with process.file_lock(self.lock_path):
            pid = self.pid()
            if pid is not None:
                process.wait_until_healthy(
                    self.name, self.probe, pid=pid, log_path=self.log_path, timeout_s=self.infra.start_timeout_s
                )
                return "reused"
            if process.port_open(HOST, self.port):
                if self._probe_for(self.reuse_wait_s):
                    self.progress(f"{self.name}: a healthy server already listens on {self.address}; reusing it")
                    return "external"
                raise self._port_conflict(self.ports[0], f"something that is not a healthy {self.name}")
            for extra in self.ports[1:]:
                if process.port_open(HOST, extra.port):
                    raise self._port_conflict(extra, "another process")
            self.install()
            self.prepare()
            argv, env = self.command()
            started = time.monotonic()
            pid = process.start_detached(
                argv, pid_path=self.pid_path, log_path=self.log_path, marker=self.marker, env=env
            )
            process.wait_until_healthy(
                self.name, self.probe, pid=pid, log_path=self.log_path, timeout_s=self.infra.start_timeout_s
            )
            self.progress(
                f"{self.name}: healthy on {self.address} (pid {pid}, {time.monotonic() - started:.1f} s); "
                f"log {self.log_path}"
            )
            return "started"

    def _probe_for(self, seconds: float) -> bool:
        # A server another state folder is starting right now opens its port a moment
        # before it answers, so give it a few seconds before calling the port taken.
        deadline = time.monotonic() + seconds
        while True:
            if self.probe():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def stop(self, *, strict: bool = False) -> bool:
        """Stop the process this state folder started.

        Args:
            strict: raise when the port is served by a process we did not start (so a
                test that wants the service down learns it cannot take it down).

        Returns:
            True when a process was stopped.
        """
        with process.file_lock(self.lock_path):
            stopped = process.stop_process(self.pid_path, self.stop_grace_s)
            if not stopped and strict and process.port_open(HOST, self.port):
                raise InfraError(
                    f"{self.name} on {self.address} was not started from {self.state_dir}, so it is not stopped",
                    "stop it from the state folder that started it (TICKCAST_INFRA__STATE_DIR), "
                    "or use a private instance",
                )
            if stopped:
                self.progress(f"{self.name}: stopped")
            return stopped

    def status(self, enabled: bool = True) -> ServiceStatus:
        """The service's current state (never raises for a stopped service)."""
        pid = self.pid()
        listening = pid is not None or process.port_open(HOST, self.port)
        healthy = listening and self.probe()
        if pid is not None:
            detail = "started from this state folder"
        elif listening:
            detail = "served by a process this state folder did not start"
        else:
            detail = "not running" if enabled else "disabled"
        return ServiceStatus(
            name=self.name,
            enabled=enabled,
            running=listening,
            healthy=healthy,
            managed=pid is not None,
            pid=pid,
            address=self.address,
            log_path=str(self.log_path),
            detail=detail,
        )


def inherited_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment plus ``extra``, for child processes.

    Build tools need PATH, HOME, proxies and their own settings (GOPATH, MAVEN_OPTS), so the
    child inherits the environment; this is the one place infra code touches it.
    """
    env = dict(os.environ)
    env.update(extra)
    return env
