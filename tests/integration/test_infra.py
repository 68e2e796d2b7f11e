"""The local infrastructure, started for real: a KRaft Kafka broker and MinIO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, TEST_INFRA, LocalInfra, wait_for_topics

from tickcast.errors import InfraError
from tickcast.infra.manager import InfraManager
from tickcast.infra.process import port_open
from tickcast.settings import load_settings

pytestmark = pytest.mark.integration


def _cli(*args: str, state_dir: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        {
            "TICKCAST_INFRA__STATE_DIR": state_dir or TEST_INFRA["state_dir"],
            "TICKCAST_INFRA__KAFKA_PORT": str(TEST_INFRA["kafka_port"]),
            "TICKCAST_INFRA__KAFKA_CONTROLLER_PORT": str(TEST_INFRA["kafka_controller_port"]),
            "TICKCAST_INFRA__MINIO_PORT": str(TEST_INFRA["minio_port"]),
            "TICKCAST_INFRA__MINIO_CONSOLE_PORT": str(TEST_INFRA["minio_console_port"]),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "tickcast", "infra", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_reports_both_services_healthy(infra: LocalInfra) -> None:
    statuses = {s.name: s for s in infra.manager.status()}
    assert set(statuses) == {"kafka", "minio"}
    for name, port in (("kafka", TEST_INFRA["kafka_port"]), ("minio", TEST_INFRA["minio_port"])):
        status = statuses[name]
        assert status.enabled and status.running and status.healthy, status
        assert status.address == f"127.0.0.1:{port}"
        if status.managed:
            assert status.pid is not None and Path(status.log_path).is_file()
    assert infra.manager.healthy()


def test_cli_status_json_and_table(infra: LocalInfra) -> None:
    result = _cli("status", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["kafka"]["healthy"] and rows["minio"]["healthy"]

    table = _cli("status")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["SERVICE", "STATE"]
    assert "healthy" in table.stdout


def test_up_again_reuses_the_running_services(infra: LocalInfra) -> None:
    before = {s.name: s.pid for s in infra.manager.status()}
    assert infra.manager.start_service("kafka") in ("reused", "external")
    assert infra.manager.start_service("minio") in ("reused", "external")
    assert {s.name: s.pid for s in infra.manager.status()} == before


def test_other_state_folder_reuses_and_leaves_services_running(infra: LocalInfra, tmp_path: Path) -> None:
    # the same Kafka users (policy-enforced mode): the broker then answers this folder's admin login
    users = Path(TEST_INFRA["state_dir"]) / "kafka" / "users.json"
    if users.is_file():
        (tmp_path / "other" / "kafka").mkdir(parents=True)
        shutil.copy2(users, tmp_path / "other" / "kafka" / "users.json")
    other = InfraManager(load_settings(infra={**TEST_INFRA, "state_dir": str(tmp_path / "other")}))
    assert other.start_service("kafka") == "external"
    with pytest.raises(InfraError, match="not started from"):
        other.stop_service("kafka")

    down = _cli("down", state_dir=str(tmp_path / "other"))
    assert down.returncode == 0, down.stderr
    assert "left running" in down.stderr
    assert infra.manager.healthy()


def test_kcat_lists_the_broker_and_a_topic(infra: LocalInfra, unique_topic: Callable[..., str]) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed")
    topic = unique_topic(partitions=2)
    kafka = infra.settings.kafka
    login: list[str] = []
    if kafka.sasl_password is not None:
        # the admin's login from a 0600 file, not the command line
        config = Path(infra.settings.infra.state_dir) / "kafka" / "kcat-test.properties"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                f"security.protocol={kafka.security_protocol}\nsasl.mechanisms={kafka.sasl_mechanism}\n"
                f"sasl.username={kafka.sasl_username}\nsasl.password={kafka.sasl_password.get_secret_value()}\n"
            )
        login = ["-F", str(config)]
    result = subprocess.run(
        [kcat, *login, "-b", infra.kafka_bootstrap, "-L", "-J", "-m", "10"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    metadata = json.loads(result.stdout)
    assert [(b["id"], b["name"]) for b in metadata["brokers"]] == [(1, infra.kafka_bootstrap)]
    topics = {t["topic"]: t for t in metadata["topics"]}
    assert len(topics[topic]["partitions"]) == 2


def test_boto3_lists_minio_buckets_and_round_trips_an_object(infra: LocalInfra, s3_settings: Any) -> None:
    bucket = s3_settings.lake.url.removeprefix("s3://").split("/", 1)[0]
    client = infra.s3_client()
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    client.put_object(Bucket=bucket, Key="lake/hello.txt", Body=b"hi")
    assert client.get_object(Bucket=bucket, Key="lake/hello.txt")["Body"].read() == b"hi"


def test_kafka_restart_keeps_topics_and_records(private_infra: Callable[..., LocalInfra]) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from tickcast.kafka import common_config

    local = private_infra()
    login = common_config(local.settings.kafka)  # its own admin in policy-enforced mode
    state_dir = str(local.settings.infra.state_dir)
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**login)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    wait_for_topics(local.kafka_bootstrap, [topic], state_dir=state_dir)
    producer = KafkaProducer(**login, acks="all")
    producer.send(topic, key=b"AAPL", value=b"kept").get(timeout=30)
    producer.close()
    pid = local.manager.status()[0].pid

    assert local.manager.stop_service("kafka") is True
    assert not port_open("127.0.0.1", local.manager.service("kafka").port)
    assert local.manager.status()[0].running is False
    assert local.manager.start_service("kafka") == "started"
    assert local.manager.status()[0].pid != pid

    wait_for_topics(local.kafka_bootstrap, [topic], state_dir=state_dir)
    consumer = KafkaConsumer(topic, **login, auto_offset_reset="earliest")
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while not values and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            values.extend(record.value for record in records)
    consumer.close()
    assert values == [b"kept"]
