"""Shared fixtures: the real test infrastructure (Kafka + MinIO) and settings that point at it.

The test infrastructure runs on its own ports (Kafka 19092/19093, MinIO 19000/19001) with its
state in ``.tickcast/test-infra``, so it never collides with a developer's ``tickcast infra up``
on the default ports. A session that finds it running reuses it and leaves it running; a
session that had to start it stops it at the end (unless ``TICKCAST_TEST_KEEP_INFRA=1``).

Overrides (environment): ``TICKCAST_TEST_INFRA_DIR``, ``TICKCAST_TEST_KAFKA_PORT``,
``TICKCAST_TEST_KAFKA_CONTROLLER_PORT``, ``TICKCAST_TEST_MINIO_PORT``,
``TICKCAST_TEST_MINIO_CONSOLE_PORT``, ``TICKCAST_TEST_KEEP_INFRA``.
"""

from __future__ import annotations

import os

# Before anything imports huggingface, transformers or ray: no network, no phone-home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import re
import socket
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


def infra_overrides(infra: dict[str, Any]) -> dict[str, Any]:
    """Settings overrides (kafka, lake, infra groups) that point at the infrastructure ``infra``."""
    return {
        "infra": dict(infra),
        "kafka": {"bootstrap_servers": f"127.0.0.1:{infra['kafka_port']}", "request_timeout_s": 10.0},
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


@pytest.fixture(scope="session")
def kafka_admin(infra: LocalInfra) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` on the test broker."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap, client_id="tickcast-tests")
    yield admin
    admin.close()


def wait_for_topics(bootstrap: str, names: list[str], timeout_s: float = 30.0) -> None:
    """Block until the broker's metadata lists every topic in ``names``."""
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(names) - set(kafka_metadata(host, int(port)).topics)
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
