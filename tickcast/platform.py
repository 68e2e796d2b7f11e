"""The whole platform on one machine: ``tickcast up``, ``tickcast down``, ``tickcast status``.

``up`` starts, in order and each only once healthy: the infrastructure (Kafka; MinIO only
when the lake is on a local S3 endpoint), Ray Serve with the resolved model, the consumer,
the streaming forecaster, the producer and the dashboard. Each runs as its own detached
process group with a pid file and a log under the state folder, so ``tickcast down`` from
another terminal stops exactly what ``up`` started, and nothing is left behind.

While it runs, ``up`` supervises what it started (:mod:`tickcast.supervisor`): a crashed
service is restarted with exponential backoff, and a crash loop stops everything. ``tickcast
down`` from another terminal signals that ``up`` (its pid is in ``run/up.pid``), which stops
everything and exits 0.

Restarts resume rather than repeat: Kafka keeps its log and the consumer groups their
offsets under the state folder, the lake keeps what was written, and the replay producer
checkpoints its position, so a second ``up`` continues where the first stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tickcast.api_token import TOKEN_SETTING, ensure_local_token
from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import HOST, LocalService, Port, Progress, ServiceStatus, inherited_env
from tickcast.infra.manager import SERVICE_NAMES, InfraManager
from tickcast.infra.minio_users import SERVICE_WORKLOADS, LakeCredentials, service_env
from tickcast.restarts import RestartRecord
from tickcast.settings import KafkaSettings, Settings
from tickcast.supervisor import Supervised, Supervisor

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Written into ``up``'s pid file; ``down`` signals only a live tickcast process.
UP_MARKER = "tickcast up"
#: The services that get the forecast API's bearer token: Serve and the two that call it.
API_TOKEN_SERVICES = frozenset({"serve", "forecaster", "dashboard"})


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass(frozen=True)
class AppSpec:
    """One tickcast service of the platform: how to run it and how to probe it."""

    name: str
    args: tuple[str, ...]
    port: int
    port_setting: str  # the environment variable that moves the port
    health_path: str
    start_timeout_s: float = 120.0
    grace_s: float = 20.0
    env: tuple[tuple[str, str], ...] = ()  # settings this service needs on top of the user's


class AppService(LocalService):
    """A tickcast service (``tickcast <command>``) run as a detached process."""

    def __init__(self, settings: Settings, spec: AppSpec, progress: Progress | None = None) -> None:
        self.name = spec.name
        super().__init__(settings.infra, progress)
        self.spec = spec
        #: Its own MinIO keys in policy-enforced mode (set by ``Platform.up``), else None.
        self.lake_credentials: LakeCredentials | None = None
        #: The forecast API's bearer token for the services that call or serve it (set by ``Platform.up``).
        self.api_token: str | None = None
        #: Its own Kafka user's TICKCAST_KAFKA__SASL_* variables in policy-enforced mode (set by ``Platform.up``).
        self.kafka_env: dict[str, str] = {}

    @property
    def ports(self) -> list[Port]:
        return [Port(self.spec.port, self.spec.port_setting)]

    def is_installed(self) -> bool:
        return True

    def install(self) -> None:
        return None

    def prepare(self) -> None:
        return None

    def command(self) -> tuple[list[str], dict[str, str]]:
        # --instance carries the marker that identifies this process in `ps` and pid checks.
        argv = [sys.executable, "-m", "tickcast", "--instance", self.marker, *self.spec.args]
        env = inherited_env(dict(self.spec.env))
        if self.lake_credentials is not None:
            env = service_env(env, self.lake_credentials)
        if self.api_token is not None:
            env[TOKEN_SETTING] = self.api_token
        env.update(self.kafka_env)
        return argv, env

    def probe(self, timeout_s: float = 2.0) -> bool:
        return http_ok(f"http://{HOST}:{self.spec.port}{self.spec.health_path}", timeout_s)

    @property
    def stop_grace_s(self) -> float:
        return self.spec.grace_s

    def _port_conflict(self, port: Port, what: str) -> InfraError:
        return InfraError(
            f"port {port.port} on {HOST} is taken by {what}, so {self.name} cannot start",
            f"stop whatever listens there, or choose a free port with {port.setting}",
        )

    def start(self) -> str:  # type: ignore[override]
        # App services wait for their own, longer start timeout (Ray takes a while on 2 cores).
        original = self.infra
        self.infra = original.model_copy(
            update={"start_timeout_s": max(original.start_timeout_s, self.spec.start_timeout_s)}
        )
        try:
            return super().start()
        finally:
            self.infra = original


#: The bundled sample of real daily bars the offline platform replays.
SAMPLE_FILE = REPO_ROOT / "training" / "data" / "daily_real.parquet"
#: The sample's last this many trading days are replayed live, one every two seconds
#: (43,200 market seconds a wall second); everything before them is caught up at once.
LIVE_TAIL_BARS = 1500
LIVE_SPEED = "43200"


def producer_args(settings: Settings) -> tuple[str, ...]:
    """The producer of the offline platform: Polygon live when a key is set, else the sample replay.

    The replay resumes after the bars the topic already holds, so a second ``up`` continues
    where the first stopped, and lingers (healthy) once the sample is exhausted.
    """
    if settings.polygon.api_key is not None and settings.producer.source == "polygon-ws":
        return ("produce", "--source", "polygon-ws", "--linger")
    return (
        "produce",
        "--source",
        "replay",
        "--file",
        str(SAMPLE_FILE),
        "--interval",
        "day",
        "--speed",
        LIVE_SPEED,
        "--live-tail",
        str(LIVE_TAIL_BARS),
        "--resume",
        "--linger",
        "--no-progress",
    )


def replays_sample(settings: Settings) -> bool:
    """Whether the platform's producer replays the bundled daily sample (no Polygon key)."""
    return producer_args(settings)[2] == "replay"


def app_specs(settings: Settings) -> list[AppSpec]:
    """The platform's services in start order."""
    # The sample is daily bars: the forecaster follows that interval unless told otherwise.
    forecaster_env: tuple[tuple[str, str], ...] = ()
    if replays_sample(settings) and "TICKCAST_FORECASTER__INTERVAL" not in os.environ:
        forecaster_env = (("TICKCAST_FORECASTER__INTERVAL", "day"),)
    return [
        AppSpec("serve", ("serve",), settings.serving.port, "TICKCAST_SERVING__PORT", "/healthz", 240.0, 30.0),
        AppSpec(
            "consumer", ("consume",), settings.consumer.metrics_port, "TICKCAST_CONSUMER__METRICS_PORT", "/healthz"
        ),
        AppSpec(
            "forecaster",
            ("forecaster",),
            settings.forecaster.metrics_port,
            "TICKCAST_FORECASTER__METRICS_PORT",
            "/healthz",
            env=forecaster_env,
        ),
        AppSpec(
            "producer",
            producer_args(settings),
            settings.producer.metrics_port,
            "TICKCAST_PRODUCER__METRICS_PORT",
            "/healthz",
        ),
        AppSpec(
            "dashboard", ("dashboard",), settings.dashboard.port, "TICKCAST_DASHBOARD__PORT", "/_stcore/health", 90.0
        ),
    ]


def infra_settings_for_platform(settings: Settings) -> Settings:
    """The platform needs MinIO only when the lake is on a local S3 endpoint."""
    local_s3 = settings.lake.url.startswith("s3://") and (settings.lake.s3_endpoint_url or "").startswith(
        ("http://127.0.0.1", "http://localhost")
    )
    return settings.model_copy(update={"infra": settings.infra.model_copy(update={"minio_enabled": local_s3})})


class Platform:
    """Start, stop and report the whole local platform."""

    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self.settings = infra_settings_for_platform(settings)
        self.progress: Progress = progress or log.info
        self.infra = InfraManager(self.settings, self.progress)
        self.apps = {spec.name: AppService(self.settings, spec, self.progress) for spec in app_specs(self.settings)}
        #: The app services ``up`` started (``--only`` narrows them); the supervisor watches these.
        self.started: list[str] = list(self.apps)

    def up(self, only: Sequence[str] | None = None, stop: Callable[[], bool] = lambda: False) -> list[ServiceStatus]:
        """Start everything (idempotent), each step once the previous is healthy.

        ``stop()`` is checked between steps, so ``tickcast down`` during a long start ends it.
        """
        from tickcast.kafka import ensure_topics

        names = [n for n in self.apps if not only or n in only]
        self.started = names
        total = len(names) + 1
        started = time.monotonic()
        self.progress(f"[1/{total}] infrastructure (state in {self.infra.state_dir})")
        self.infra.up()
        self.give_lake_credentials()
        self.give_api_token()
        self.give_kafka_users()
        self.check_lake_layout()
        ensure_topics(self.kafka_admin_settings())
        for i, name in enumerate(names, start=2):
            if stop():
                return self.status()
            self.progress(f"[{i}/{total}] {name}")
            self.apps[name].start()
        self.progress(f"platform up in {time.monotonic() - started:.0f} s")
        return self.status()

    def give_lake_credentials(self) -> None:
        """In policy-enforced mode, give each service its own workload's MinIO keys (else leave them).

        Raises:
            InfraError: for a service with no workload in the grants (it would run as root).
        """
        credentials = self.infra.lake_credentials()
        for name, app in self.apps.items():
            if not credentials:
                app.lake_credentials = None
                continue
            workload = SERVICE_WORKLOADS.get(name)
            if workload not in credentials:
                raise InfraError(
                    f"service {name} has no lake grants, so it cannot run in policy-enforced mode",
                    "add it to SERVICE_WORKLOADS in tickcast/infra/minio_users.py (and its workload to "
                    "pulumi/tickcast_infra/lake_access.py), or set TICKCAST_INFRA__MINIO_WORKLOAD_USERS=false",
                )
            app.lake_credentials = credentials[workload]

    def give_kafka_users(self) -> None:
        """In policy-enforced mode, each service logs in to Kafka as its own workload's SCRAM user
        (none for a service without Kafka grants), whatever SASL settings the environment holds."""
        from tickcast.infra import kafka_acls

        for name, app in self.apps.items():
            app.kafka_env = {}
            if self.settings.infra.kafka_workload_users:
                app.kafka_env = kafka_acls.workload_env(self.settings, SERVICE_WORKLOADS.get(name, name))

    def kafka_admin_settings(self) -> KafkaSettings:
        """The Kafka settings the platform itself uses (topic creation): the local admin in
        policy-enforced mode, else the configured ones."""
        from tickcast.infra import kafka_acls

        if self.settings.infra.kafka_workload_users:
            return kafka_acls.admin_settings(self.settings)
        return self.settings.kafka

    def give_api_token(self) -> None:
        """Give Serve and its callers (forecaster, dashboard) the API token, so the local API requires it.

        The token is ``TICKCAST_SERVING__AUTH_TOKEN`` when the user set it, else the one kept in
        the state folder (created on the first ``up``, mode 0600). It travels only in the
        environment of those three services, never on a command line or in a log.
        """
        configured = self.settings.serving.auth_token
        token = configured.get_secret_value() if configured else ensure_local_token(self.infra.state_dir)
        for name, app in self.apps.items():
            app.api_token = token if name in API_TOKEN_SERVICES else None

    def check_lake_layout(self) -> None:
        """Refuse to start on a lake that still holds tables in the earlier (Hive Parquet) layout.

        Raises:
            TickcastError: naming the tables and the command that converts them.
        """
        from tickcast.errors import TickcastError
        from tickcast.lake import Lake
        from tickcast.lake.migrate import needs_migration

        url = self.settings.lake.url
        pending = needs_migration(Lake(self.settings.lake))
        if pending:
            raise TickcastError(
                f"the lake at {url} holds {', '.join(pending)} in the earlier Parquet layout, "
                "which this version reads as Delta tables",
                f"convert it once with `tickcast lake migrate --from {url}` (in place, nothing lost; "
                "add --delete-source to drop the old files), then run make up again",
            )

    def down(self) -> list[ServiceStatus]:
        """Stop the services in reverse start order, then the infrastructure."""
        for name in reversed(list(self.apps)):
            self.apps[name].stop()
        self.infra.down()
        return self.status()

    def stop_up(self, timeout_s: float = 300.0) -> bool:
        """Ask a supervising ``tickcast up`` of this state folder to stop everything, and wait.

        Returns:
            True when an ``up`` was running (and has now ended).

        Raises:
            InfraError: when it does not end within ``timeout_s``.
        """
        pid = running_up_pid(self.infra.state_dir)
        if pid is None or pid == os.getpid():
            return False
        self.progress(f"asking `tickcast up` (pid {pid}) to stop everything")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process.pid_alive(pid):
            if time.monotonic() > deadline:
                raise InfraError(
                    f"`tickcast up` (pid {pid}) did not stop within {timeout_s:.0f} s",
                    f"look at its terminal, or stop it with `kill {pid}`",
                )
            time.sleep(0.2)
        return True

    def status(self) -> list[ServiceStatus]:
        """Every service's state, infrastructure first."""
        return self.infra.status() + [app.status() for app in self.apps.values()]

    def urls(self) -> dict[str, str]:
        """Where a person looks."""
        s = self.settings
        return {
            "dashboard": f"http://{s.dashboard.host}:{s.dashboard.port}",
            "forecast API": f"{s.serving.url}/docs",
            "kafka": s.kafka.bootstrap_servers,
            "lake": s.lake.url,
            "metrics": ", ".join(
                f"http://{HOST}:{p}/metrics"
                for p in (s.producer.metrics_port, s.consumer.metrics_port, s.forecaster.metrics_port)
            ),
            "logs": str(Path(self.infra.state_dir) / "logs"),
        }

    def supervisor(self) -> Supervisor:
        """A supervisor over every service ``up`` started, infrastructure first."""
        services = []
        for name in SERVICE_NAMES:
            if not self.infra.enabled(name):
                continue
            infra = self.infra.service(name)
            services.append(
                Supervised(
                    name=name,
                    pid=infra.pid,
                    alive=lambda s=infra: s.pid() is not None or s.probe(),  # type: ignore[misc]
                    restart=lambda n=name: self.infra.start_service(n),  # type: ignore[misc]
                    log_path=infra.log_path,
                    exit_reason=process.exit_reason,
                )
            )
        for app in (self.apps[name] for name in self.started):
            services.append(
                Supervised(
                    name=app.name,
                    pid=app.pid,
                    alive=lambda a=app: a.pid() is not None or a.probe(),  # type: ignore[misc]
                    restart=app.start,
                    log_path=app.log_path,
                    exit_reason=process.exit_reason,
                )
            )
        return Supervisor(services, self.infra.state_dir, self.settings.platform, self.progress)


def up_pid_path(state_dir: Path | str) -> Path:
    """Where a supervising ``tickcast up`` records its pid."""
    return Path(state_dir) / "run" / "up.pid"


def record_up_pid(state_dir: Path | str) -> Path:
    """Record this process as the supervising ``up`` of ``state_dir`` (``down`` signals it)."""
    path = up_pid_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "marker": UP_MARKER, "started_at": time.time()}))
    return path


def running_up_pid(state_dir: Path | str) -> int | None:
    """The pid of the ``tickcast up`` supervising ``state_dir``, if one runs."""
    path = up_pid_path(state_dir)
    record = process.read_pid(path)
    if record is None or not process.pid_alive(record.pid):
        return None
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return None
    # The pid may have been reused since by a process that is not tickcast.
    return record.pid if b"tickcast" in cmdline else None


def render_status(statuses: Sequence[ServiceStatus], restarts: Mapping[str, RestartRecord] | None = None) -> str:
    """A small table for people, with restart counts when ``up`` supervises the services."""
    restarts = restarts or {}
    rows = [f"{'service':<11} {'health':<9} {'pid':>7} {'restarts':>8}  address", "-" * 70]
    for s in statuses:
        if not s.enabled and not s.running:
            health = "disabled"
        else:
            health = "healthy" if s.healthy else ("starting" if s.running else "down")
        record = restarts.get(s.name)
        count = str(record.restarts) if record else "-"
        line = f"{s.name:<11} {health:<9} {s.pid or '-':>7} {count:>8}  {s.address}"
        if record and record.restarts and record.last_exit:
            line += f"  (last exit: {record.last_exit})"
        rows.append(line)
    return "\n".join(rows)


def status_json(statuses: Sequence[ServiceStatus], restarts: Mapping[str, RestartRecord] | None = None) -> str:
    """Machine-readable status; each service carries its restart record (or null)."""
    restarts = restarts or {}
    return json.dumps(
        [{**s.to_dict(), "restarts": restarts[s.name].to_dict() if s.name in restarts else None} for s in statuses],
        indent=2,
    )


def log_tail(log_path: Path | str, lines: int = 15) -> str:
    """The end of a service's log."""
    return process.log_tail(Path(log_path), lines)
