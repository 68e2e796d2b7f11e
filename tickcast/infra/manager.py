"""The local infrastructure as one unit: install, up, down, status, and per-service start/stop.

``up`` is idempotent: a service that is already healthy on its port (started by this state
folder or by anyone else) is reused, never duplicated. ``down`` stops only what this state
folder started. When the lake is ``s3://`` on the local MinIO, every start of MinIO also applies
the per-workload users and policies (:mod:`tickcast.infra.minio_users`).
"""

from __future__ import annotations

import logging

from tickcast.errors import InfraError
from tickcast.infra.base import LocalService, Progress, ServiceStatus, StartOutcome
from tickcast.infra.kafka_server import KafkaServer
from tickcast.infra.minio_server import MinioServer
from tickcast.infra.minio_users import LakeCredentials, bucket_and_prefix, uses_local_minio
from tickcast.settings import Settings

log = logging.getLogger(__name__)

#: Every service in start order.
SERVICE_NAMES: tuple[str, ...] = ("kafka", "minio")


class InfraManager:
    """Kafka (always) and MinIO (when ``infra.minio_enabled``) for one state folder.

    Args:
        settings: the process's settings; ``infra`` chooses ports and folders, ``kafka``
            the broker's topic defaults.
        progress: called with one line per step worth telling a person (default: log INFO).
    """

    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self.settings = settings
        self.progress: Progress = progress or log.info
        self._services: dict[str, LocalService] = {
            "kafka": KafkaServer(settings.infra, settings.kafka, self.progress),
            "minio": MinioServer(settings.infra, self.progress),
        }

    @property
    def state_dir(self) -> str:
        """The absolute state folder."""
        return str(self._services["kafka"].state_dir)

    def enabled(self, name: str) -> bool:
        """Whether ``up`` starts service ``name``."""
        return name == "kafka" or (name == "minio" and self.settings.infra.minio_enabled)

    def service(self, name: str) -> LocalService:
        """The service called ``name`` (``kafka`` or ``minio``).

        Raises:
            InfraError: for an unknown name.
        """
        try:
            return self._services[name]
        except KeyError:
            raise InfraError(f"unknown service {name!r}", f"use one of {', '.join(SERVICE_NAMES)}") from None

    def _selected(self, names: list[str] | None) -> list[str]:
        if names:
            for name in names:
                self.service(name)
            return [n for n in SERVICE_NAMES if n in names]
        return [n for n in SERVICE_NAMES if self.enabled(n)]

    def install(self, names: list[str] | None = None) -> None:
        """Put every enabled service's binaries in the cache (no-op for those already there)."""
        for name in self._selected(names):
            service = self.service(name)
            if service.is_installed():
                self.progress(f"{name}: installed")
            else:
                service.install()

    def up(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Install what is missing and start (or reuse) every enabled service.

        Raises:
            InfraError: naming the setting to change when a port is taken by something
                unhealthy, or with the log's tail when a service fails to start.
        """
        for name in self._selected(names):
            self.start_service(name)
        return self.status()

    def down(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Stop every service this state folder started, in reverse start order.

        Services served by someone else's process are left alone (and reported as such).
        """
        selected = names or list(SERVICE_NAMES)  # also stop a service disabled since it started
        for name in reversed(self._selected(selected)):
            service = self.service(name)
            if not service.stop() and service.status().running:
                self.progress(f"{name}: left running on {service.address} (not started from {self.state_dir})")
        return self.status()

    def start_service(self, name: str) -> StartOutcome:
        """Start (or reuse) one service and wait until it is healthy.

        Returns:
            ``started``, ``reused`` (ours, already running) or ``external`` (someone else's).
        """
        outcome = self.service(name).start()
        if outcome == "reused":
            self.progress(f"{name}: already running on {self.service(name).address}")
        if name == "minio" and self.policy_enforced():
            self.apply_lake_users()  # creates the lake bucket too
        elif name == "minio" and uses_local_minio(self.settings.lake, self.settings.infra):
            minio = self.service("minio")
            assert isinstance(minio, MinioServer)
            minio.users.ensure_bucket(bucket_and_prefix(self.settings.lake.url)[0])
        if name == "kafka" and self.settings.infra.kafka_workload_users:
            self.apply_kafka_acls()
        return outcome

    def apply_kafka_acls(self) -> None:
        """Create or update every workload's SCRAM user and its ACLs from the Pulumi grants (idempotent).

        Raises:
            InfraError: when the broker refuses (see :func:`tickcast.infra.kafka_acls.apply`).
        """
        from tickcast.infra import kafka_acls

        kafka_acls.apply(self.settings, self.progress)

    def policy_enforced(self) -> bool:
        """Whether services get their own MinIO users: the mode is on and the lake is on this MinIO."""
        infra = self.settings.infra
        return infra.minio_enabled and infra.minio_workload_users and uses_local_minio(self.settings.lake, infra)

    def apply_lake_users(self) -> dict[str, LakeCredentials]:
        """Create or update every workload's MinIO user and policy for the configured lake (idempotent).

        Raises:
            InfraError: when MinIO refuses, or the lake is not ``s3://``.
        """
        minio = self.service("minio")
        assert isinstance(minio, MinioServer)
        bucket, prefix = bucket_and_prefix(self.settings.lake.url)
        return minio.users.apply(bucket, prefix)

    def lake_credentials(self) -> dict[str, LakeCredentials]:
        """Each workload's MinIO keys in policy-enforced mode (as the last start applied them), else empty."""
        if not self.policy_enforced():
            return {}
        minio = self.service("minio")
        assert isinstance(minio, MinioServer)
        return minio.users.credentials()

    def stop_service(self, name: str, *, strict: bool = True) -> bool:
        """Stop one service this state folder started.

        Args:
            strict: raise :class:`InfraError` when the port is served by a process this state
                folder did not start, instead of silently leaving it up.

        Returns:
            True when a process was stopped, False when it was not running.
        """
        return self.service(name).stop(strict=strict)

    def status(self) -> list[ServiceStatus]:
        """Every service's state; disabled services are listed too."""
        return [self.service(name).status(enabled=self.enabled(name)) for name in SERVICE_NAMES]

    def healthy(self) -> bool:
        """Whether every enabled service is healthy."""
        return all(s.healthy for s in self.status() if s.enabled)
