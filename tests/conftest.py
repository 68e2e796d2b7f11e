"""Shared fixtures: the real test infrastructure (Kafka + MinIO) and settings that point at it.

The test infrastructure runs on its own ports (Kafka 19092/19093, MinIO 19000/19001) with its
state in ``.tickcast/test-infra``, so it never collides with a developer's ``tickcast infra up``
on the default ports. A session that finds it running reuses it and leaves it running; a
session that had to start it stops it at the end (unless ``TICKCAST_TEST_KEEP_INFRA=1``).

Overrides (environment): ``TICKCAST_TEST_INFRA_DIR``, ``TICKCAST_TEST_KAFKA_PORT``,
``TICKCAST_TEST_KAFKA_CONTROLLER_PORT``, ``TICKCAST_TEST_MINIO_PORT``,
``TICKCAST_TEST_MINIO_CONSOLE_PORT``, ``TICKCAST_TEST_KEEP_INFRA``.

Kafka runs policy-enforced, as ``tickcast up`` runs it: SASL logins and ACLs generated from
``pulumi/tickcast_infra/kafka_access.py``. Test settings log in as the super user ``admin``
(tests create their own topics and groups); ``kafka_as(workload)`` gives a workload's own
SCRAM user, and integration and e2e tests see the admin's ``TICKCAST_KAFKA__SASL_*`` variables
in their environment, so the ``tickcast`` processes they start can log in.
``TICKCAST_TEST_KAFKA_WORKLOAD_USERS=0`` runs an open broker instead.
"""

from __future__ import annotations

import os

# Before anything imports huggingface, transformers or ray: no network, no phone-home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tickcast.infra.kafka_server import kafka_metadata
from tickcast.infra.manager import InfraManager
from tickcast.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]

TEST_INFRA: dict[str, Any] = {
    "state_dir": os.environ.get("TICKCAST_TEST_INFRA_DIR", str(REPO_ROOT / ".tickcast" / "test-infra")),
    "kafka_port": int(os.environ.get("TICKCAST_TEST_KAFKA_PORT", "19092")),
    "kafka_controller_port": int(os.environ.get("TICKCAST_TEST_KAFKA_CONTROLLER_PORT", "19093")),
    "minio_port": int(os.environ.get("TICKCAST_TEST_MINIO_PORT", "19000")),
    "minio_console_port": int(os.environ.get("TICKCAST_TEST_MINIO_CONSOLE_PORT", "19001")),
    "minio_enabled": True,
    "kafka_workload_users": os.environ.get("TICKCAST_TEST_KAFKA_WORKLOAD_USERS", "1") not in ("0", "false"),
    # A cold start on two busy cores (JIT, first topic creation) can be slow.
    "start_timeout_s": 180.0,
}
KEEP_INFRA = os.environ.get("TICKCAST_TEST_KEEP_INFRA", "") not in ("", "0", "false")


def _progress(line: str) -> None:
    # Straight to the terminal: a cold run builds MinIO for minutes and should say so.
    print(f"[test-infra] {line}", file=sys.__stderr__, flush=True)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def kafka_admin_overrides(infra: dict[str, Any]) -> dict[str, Any]:
    """The ``kafka`` settings group of the super user of the broker of ``infra`` (nothing for an open broker)."""
    from tickcast.infra import kafka_acls

    if not infra.get("kafka_workload_users", True):
        return {}
    admin = kafka_acls.load_users(Path(infra["state_dir"]))[kafka_acls.ADMIN]
    return {
        "security_protocol": kafka_acls.SECURITY_PROTOCOL,
        "sasl_mechanism": admin.mechanism,
        "sasl_username": admin.name,
        "sasl_password": admin.password.get_secret_value(),
    }


def infra_overrides(infra: dict[str, Any]) -> dict[str, Any]:
    """Settings overrides (kafka, lake, infra groups) that point at the infrastructure ``infra``."""
    return {
        "infra": dict(infra),
        "kafka": {
            "bootstrap_servers": f"127.0.0.1:{infra['kafka_port']}",
            "request_timeout_s": 10.0,
            **kafka_admin_overrides(infra),
        },
        "lake": {
            "s3_endpoint_url": f"http://127.0.0.1:{infra['minio_port']}",
            "s3_access_key_id": "tickcast",
            "s3_secret_access_key": "tickcast-local-only",
            "s3_region": "us-east-1",
        },
    }


@dataclass
class LocalInfra:
    """A running Kafka (+ MinIO) and how to reach it."""

    manager: InfraManager
    settings: Settings
    started: list[str] = field(default_factory=list)

    @property
    def kafka_bootstrap(self) -> str:
        """``host:port`` of the broker."""
        return self.settings.kafka.bootstrap_servers

    @property
    def s3_endpoint(self) -> str:
        """``http://host:port`` of MinIO."""
        assert self.settings.lake.s3_endpoint_url is not None
        return self.settings.lake.s3_endpoint_url

    def s3_client(self) -> Any:
        """A plain boto3 S3 client for MinIO with the root credentials."""
        import boto3
        from botocore.config import Config

        lake = self.settings.lake
        assert lake.s3_access_key_id is not None and lake.s3_secret_access_key is not None
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=lake.s3_access_key_id.get_secret_value(),
            aws_secret_access_key=lake.s3_secret_access_key.get_secret_value(),
            region_name=lake.s3_region,
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
        )


def _start(infra_values: dict[str, Any]) -> LocalInfra:
    settings = load_settings(**infra_overrides(infra_values))
    manager = InfraManager(settings, progress=_progress)
    started = [
        name for name in ("kafka", "minio") if manager.enabled(name) and manager.start_service(name) == "started"
    ]
    return LocalInfra(manager=manager, settings=settings, started=started)


@pytest.fixture(scope="session")
def infra() -> Iterator[LocalInfra]:
    """The shared test Kafka + MinIO: started (or reused) once per session."""
    local = _start(TEST_INFRA)
    yield local
    if local.started and not KEEP_INFRA:
        local.manager.down(local.started)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings pointing at the test infrastructure, lake on a fresh ``file://`` folder.

    Keyword arguments are nested overrides merged on top, e.g.
    ``make_settings(consumer={"flush_records": 10})``.
    """

    def build(**overrides: Any) -> Settings:
        base = infra_overrides(TEST_INFRA)
        base["lake"]["url"] = f"file://{tmp_path / 'lake'}"
        return load_settings(**_deep_merge(base, overrides))

    return build


@pytest.fixture
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    """Settings for the test infrastructure with the lake on a tmp ``file://`` folder.

    In a test marked ``integration`` this also starts (or reuses) the infrastructure.
    """
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("infra")
    return make_settings()


@pytest.fixture
def s3_settings(infra: LocalInfra, make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    """Settings with the lake at ``s3://<fresh bucket>/lake`` on the test MinIO (bucket removed after)."""
    bucket = f"tc-test-{uuid.uuid4().hex[:12]}"
    client = infra.s3_client()
    client.create_bucket(Bucket=bucket)
    yield make_settings(lake={"url": f"s3://{bucket}/lake"})
    # A test may have taken MinIO down; then the bucket stays with MinIO's data.
    if infra.manager.service("minio").probe():
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def lake_as(infra: LocalInfra, s3_settings: Settings) -> Callable[[str], Settings]:
    """Factory: ``lake_as("consumer") -> Settings``: ``s3_settings`` with that workload's own MinIO user.

    The policy-enforced local mode, as ``tickcast up`` runs services: every workload's user
    and policy (generated from ``pulumi/tickcast_infra/lake_access.py``) are applied for this
    test's bucket, and the settings carry the workload's keys instead of the root ones, so an
    operation its grants lack is denied by MinIO. ``s3_settings`` keeps the root keys for set-up.
    """
    from tickcast.infra.minio_server import MINIO_VERSION
    from tickcast.infra.minio_users import MinioUsers, bucket_and_prefix

    applied: dict[str, Any] = {}

    def build(workload: str) -> Settings:
        if not applied:
            users = MinioUsers(infra.settings.infra, MINIO_VERSION, _progress)
            applied.update(users.apply(*bucket_and_prefix(s3_settings.lake.url)))
        if workload not in applied:
            raise KeyError(f"no MinIO user for workload {workload!r}; workloads: {', '.join(sorted(applied))}")
        lake = applied[workload].lake_settings(s3_settings.lake)
        return s3_settings.model_copy(update={"lake": lake})

    return build


@pytest.fixture(scope="session")
def kafka_admin(infra: LocalInfra) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` on the test broker (the super user)."""
    from kafka.admin import KafkaAdminClient

    from tickcast.kafka import common_config

    admin = KafkaAdminClient(**common_config(infra.settings.kafka), client_id="tickcast-tests")
    yield admin
    admin.close()


def kafka_env(settings: Settings) -> dict[str, str]:
    """``TICKCAST_KAFKA__*`` login variables of ``settings`` (empty for an open broker), for the
    environment of a ``tickcast`` process a test starts with a minimal environment."""
    from tickcast.infra import kafka_acls

    kafka = settings.kafka
    if kafka.sasl_username is None or kafka.sasl_mechanism is None or kafka.sasl_password is None:
        return {}
    user = kafka_acls.KafkaUser(kafka.sasl_username, kafka.sasl_mechanism, kafka.sasl_password)
    return kafka_acls.client_env(user)


@pytest.fixture(autouse=True)
def _kafka_admin_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Integration and e2e tests: ``TICKCAST_KAFKA__SASL_*`` of the test broker's super user in the
    environment, so ``tickcast`` processes a test starts (and settings loaded from the
    environment) log in. A platform started by a test gives its services their own users."""
    if request.node.get_closest_marker("integration") is None and request.node.get_closest_marker("e2e") is None:
        return
    from tickcast.settings import env_name

    for name, value in kafka_admin_overrides(TEST_INFRA).items():
        monkeypatch.setenv(env_name("kafka", name), value)


@pytest.fixture
def kafka_as(infra: LocalInfra, make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Settings]]:
    """Factory: ``kafka_as("producer", **overrides) -> Settings`` logged in to the test broker as
    that workload's own SCRAM user, whose ACLs are generated from ``kafka_access.py`` for the
    topic and group names of these settings (the infra applies them for the default names; a
    test that renames topics or groups gets ACLs for its names, removed after the test).

    Keyword arguments are nested overrides as for ``make_settings``. What the grant lacks is
    denied by the broker.
    """
    from tickcast.infra import kafka_acls

    applied: list[Settings] = []

    def build(workload: str, **overrides: Any) -> Settings:
        if not TEST_INFRA["kafka_workload_users"]:
            pytest.fail("kafka_as needs the policy-enforced broker (TICKCAST_TEST_KAFKA_WORKLOAD_USERS unset)")
        settings = make_settings(**overrides)
        if kafka_acls.names_from_settings(settings) != kafka_acls.names_from_settings(infra.settings):
            kafka_acls.apply(settings)
            applied.append(settings)
        return settings.model_copy(update={"kafka": kafka_acls.workload_settings(settings, workload)})

    yield build
    for settings in applied:
        kafka_acls.remove_acls(settings)


def wait_for_topics(bootstrap: str, names: list[str], timeout_s: float = 30.0, state_dir: str | None = None) -> None:
    """Block until the broker's metadata lists every topic in ``names``.

    ``state_dir``: the broker's state folder, whose admin logs in (default: the shared test broker's).
    """
    from tickcast.infra import kafka_acls

    host, port = bootstrap.rsplit(":", 1)
    login = None
    if TEST_INFRA["kafka_workload_users"]:
        admin = kafka_acls.load_users(Path(state_dir or TEST_INFRA["state_dir"]))[kafka_acls.ADMIN]
        login = (admin.name, admin.password.get_secret_value())
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(names) - set(kafka_metadata(host, int(port), sasl_plain=login).topics)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(missing)} not in the broker's metadata after {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest, infra: LocalInfra, kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``unique_topic(prefix="t", partitions=3, config=None) -> name`` creates a fresh topic.

    Names carry the test's name and a random suffix; the topics are deleted after the test.
    """
    from kafka.admin import NewTopic

    created: list[str] = []
    test_name = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name)[:60]

    def create(prefix: str = "t", partitions: int = 3, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}.{test_name}.{uuid.uuid4().hex[:8]}"
        kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config or {})]
        )
        created.append(name)
        wait_for_topics(infra.kafka_bootstrap, [name])
        return name

    yield create
    if created and infra.manager.service("kafka").probe():
        kafka_admin.delete_topics(created)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(size: int) -> int:
    """A free port whose next ``size`` ports are free too (Serve's port and its direct-ingress range)."""
    for _ in range(50):
        base = free_port()
        if base + size <= 65535 and all(_bindable(p) for p in range(base, base + size + 1)):
            return base
    pytest.fail(f"found no {size + 1} free consecutive ports on 127.0.0.1")


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C a process started with ``start_new_session=True`` (e.g. ``tickcast serve``, which then
    shuts Serve and Ray down), SIGKILL its group if it has not ended within 90 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def private_infra(tmp_path: Path) -> Iterator[Callable[..., LocalInfra]]:
    """Factory: ``private_infra(minio=False) -> LocalInfra``, a fresh Kafka (+ MinIO) of this test alone.

    On free ports with its state under ``tmp_path``; stopped after the test. Use it for tests
    that stop, restart or break a service, so the shared infrastructure stays up for others.
    """
    instances: list[LocalInfra] = []

    def create(minio: bool = False) -> LocalInfra:
        values = {
            **TEST_INFRA,
            "state_dir": str(tmp_path / f"infra-{len(instances)}"),
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
            "minio_port": free_port(),
            "minio_console_port": free_port(),
            "minio_enabled": minio,
        }
        local = _start(values)
        instances.append(local)
        return local

    yield create
    for local in instances:
        local.manager.down()


def build_micro_bolt(path: Path) -> Path:
    """A one-layer, random-weight Bolt checkpoint (context 64, horizon 8): fast enough for a
    Serve replica on two shared cores in integration tests."""
    from serving.tiny_models import build_tiny_model

    return build_tiny_model(
        "bolt-tiny",
        path,
        context_length=64,
        max_horizon=8,
        d_model=64,
        d_ff=128,
        d_kv=32,
        num_heads=2,
        num_layers=1,
        num_decoder_layers=1,
    )
