"""Policy-enforced local lake: every workload's own MinIO user, its policy from the Pulumi statements.

``tickcast.infra.minio_users`` turns ``s3_statements(LAKE_ACCESS[workload], ...)`` (the function
Pulumi builds the IAM roles from) into a MinIO user and policy per workload. Here each user,
in its own process configured only through ``TICKCAST_LAKE__*`` as a service is, reads, writes
and vacuums every table and blob prefix (``lake_ops_as_workload.py``): what the grants allow
succeeds, the rest is refused by MinIO itself (S3 ``AccessDenied``; tickcast checks nothing).
The real service code runs under its own user too: the sink (as ``tickcast-consumer``), a
Polygon REST backfill with its checkpoint and open/close rows (as ``tickcast-producer``), and a
consumer that ``Platform`` starts with its own keys in its environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import test_producer_backfill as backfill
from conftest import TEST_INFRA, LocalInfra, free_port
from test_consumer_sink import assert_exact, bar_values, sink_settings
from test_consumer_sink import produce as produce_records
from test_producer_backfill import server, topics  # noqa: F401  (fixtures of the backfill test)

from tickcast.infra.minio_server import MINIO_VERSION
from tickcast.infra.minio_users import (
    SERVICE_WORKLOADS,
    LakeCredentials,
    MinioUsers,
    lake_access,
    policy_document,
    user_name,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = REPO_ROOT / "pulumi" / "tests" / "lake_grants_probe.py"
RUNNER = Path(__file__).with_name("lake_ops_as_workload.py")
PREFIX = "lake"
ACCESS: dict[str, dict[str, str]] = lake_access().LAKE_ACCESS
#: Maintenance last: its vacuum deletes the garbage the others must fail to delete.
ORDER = sorted(ACCESS, key=lambda w: (w == "maintenance", w))


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TICKCAST_ or AWS_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TICKCAST_LAKE__", "TICKCAST_INFRA__"))}
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def _run_json(argv: list[str], env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, f"{argv[1:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def users(infra: LocalInfra) -> MinioUsers:
    """The test infrastructure's workload users (program built, secrets in its state folder)."""
    return MinioUsers(infra.settings.infra, MINIO_VERSION, lambda line: print(line, file=sys.__stderr__))


@pytest.fixture(scope="module")
def grants_lake(infra: LocalInfra, users: MinioUsers) -> Iterator[tuple[str, dict[str, LakeCredentials]]]:
    """A bucket holding every table and blob (the probe's set-up, root keys), with the users applied."""
    bucket = f"tc-users-{uuid.uuid4().hex[:10]}"
    python = sys.executable
    # The probe finds the test infrastructure through conftest's TICKCAST_TEST_* variables.
    ready = _run_json([python, str(PROBE), "setup", "--bucket", bucket, "--prefix", PREFIX], _clean_env())
    assert "skip" not in ready, ready
    credentials = users.apply(bucket, PREFIX)
    yield bucket, credentials
    _run_json([python, str(PROBE), "cleanup", "--bucket", bucket], _clean_env())


@pytest.fixture(scope="module")
def outcomes(infra: LocalInfra, grants_lake: tuple[str, dict[str, LakeCredentials]]) -> dict[str, dict[str, str]]:
    """Every workload's outcome of every operation, each run as its own user in its own process."""
    bucket, credentials = grants_lake
    results = {}
    for workload in ORDER:
        env = _clean_env(
            TICKCAST_LAKE__URL=f"s3://{bucket}/{PREFIX}",
            TICKCAST_LAKE__S3_ENDPOINT_URL=infra.s3_endpoint,
            TICKCAST_LAKE__S3_REGION="us-east-1",
            **credentials[workload].env(),
        )
        results[workload] = _run_json([sys.executable, str(RUNNER), workload], env)
    return results


def _writes(outcome: dict[str, str]) -> list[str]:
    """The operations that changed something and succeeded."""
    return sorted(op for op, v in outcome.items() if v == "ok" and op.split()[0] in ("write", "vacuum", "optimize"))


def test_each_workload_user_can_do_exactly_what_its_grants_allow(outcomes: dict[str, dict[str, str]]) -> None:
    from lake_ops_as_workload import load_probe

    blobs = list(load_probe().BLOBS)
    mismatches = []
    for workload, got in outcomes.items():
        want = lake_access().expected_outcomes(workload, blobs)
        assert set(got) == set(want), (workload, sorted(set(got) ^ set(want)))
        mismatches += [f"{workload}: {op}: got {got[op]}, want {want[op]}" for op in want if got[op] != want[op]]
    assert not mismatches, "\n".join(mismatches)


def test_the_producer_cannot_write_bar_data(outcomes: dict[str, dict[str, str]]) -> None:
    assert outcomes["producer"]["write bars"] == "denied"
    assert outcomes["producer"]["vacuum bars"] == "denied"
    assert outcomes["producer"]["read bars"] == "ok"  # a resumed replay reads them


def test_the_dashboard_cannot_write_anything(outcomes: dict[str, dict[str, str]]) -> None:
    assert _writes(outcomes["dashboard"]) == []
    assert outcomes["dashboard"]["read bars"] == "ok"


def test_serving_writes_nothing_but_its_batch_forecasts(outcomes: dict[str, dict[str, str]]) -> None:
    # The forecasts grant is `tickcast batch-forecast`'s (it runs on Serve's Ray cluster, as serving).
    assert _writes(outcomes["serving"]) == ["write forecasts"]
    assert ACCESS["serving"]["forecasts"] == "write"


def test_nobody_but_the_consumer_and_maintenance_writes_the_bars_table(outcomes: dict[str, dict[str, str]]) -> None:
    writers = sorted(w for w, outcome in outcomes.items() if outcome["write bars"] == "ok")
    assert writers == ["consumer", "maintenance"]
    vacuumers = sorted(w for w, outcome in outcomes.items() if outcome["vacuum bars"] == "ok")
    assert vacuumers == ["maintenance"]


def test_secrets_are_private_stable_and_stale_users_go(
    users: MinioUsers, grants_lake: tuple[str, dict[str, LakeCredentials]]
) -> None:
    bucket, first = grants_lake
    path = users.credentials_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(first) == set(w for w, grants in ACCESS.items() if grants)
    assert all(c.access_key_id == user_name(w) for w, c in first.items())
    # A user tickcast once managed but no workload has any more: applying again removes it.
    retired = {
        "endpoint": f"127.0.0.1:{users.infra.minio_port}",
        "root_user": users.infra.minio_root_user,
        "root_password": users.infra.minio_root_password.get_secret_value(),
        "prefix": "tickcast-",
        "users": [
            {
                "name": "tickcast-retired",
                "secret": "retired-secret-1",
                "policy": policy_document("dashboard", bucket, PREFIX),
            }
        ],
    }
    proc = subprocess.run([str(users.binary)], input=json.dumps(retired), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines: list[str] = []
    again = MinioUsers(users.infra, MINIO_VERSION, lines.append).apply(bucket, PREFIX)
    assert {w: c.secret_access_key.get_secret_value() for w, c in again.items()} == {
        w: c.secret_access_key.get_secret_value() for w, c in first.items()
    }
    assert "removed policy tickcast-retired, user tickcast-retired" in lines[-1]
    values = [c.secret_access_key.get_secret_value() for c in again.values()]
    assert not any(value in line for line in lines for value in values)  # never logged


def _produce_bars(infra: LocalInfra, topic: str, count: int) -> None:
    from tickcast.contracts import Bar
    from tickcast.kafka import make_producer

    start = datetime(2024, 1, 2, tzinfo=UTC)
    producer = make_producer(infra.settings.kafka)
    for i in range(count):
        when = start + timedelta(days=i)
        bar = Bar(
            ticker="GRNT",
            interval="day",
            start=when,
            end=when + timedelta(days=1),
            open=10.0,
            high=11.0,
            low=9.0,
            close=10.5,
            volume=100.0,
            source="test",
        )
        producer.send(topic, key=b"GRNT", value=bar.to_json())
    producer.flush()
    producer.close()


def test_the_platform_runs_each_service_as_its_own_user(
    infra: LocalInfra, s3_settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unique_topic: Any
) -> None:
    from tickcast.lake import Lake, read_bars
    from tickcast.platform import Platform
    from tickcast.settings import load_settings

    topic, dlq = unique_topic("bars"), unique_topic("dlq")
    metrics_port = free_port()
    # What a user sets for `make up` on the local MinIO: the lake URL, the endpoint and the root
    # keys (the platform's own set-up uses them; no service gets them).
    env = {
        "TICKCAST_INFRA__STATE_DIR": str(TEST_INFRA["state_dir"]),
        "TICKCAST_INFRA__MINIO_PORT": str(TEST_INFRA["minio_port"]),
        "TICKCAST_INFRA__MINIO_CONSOLE_PORT": str(TEST_INFRA["minio_console_port"]),
        "TICKCAST_INFRA__KAFKA_PORT": str(TEST_INFRA["kafka_port"]),
        "TICKCAST_INFRA__KAFKA_CONTROLLER_PORT": str(TEST_INFRA["kafka_controller_port"]),
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "TICKCAST_KAFKA__TOPIC_BARS": topic,
        "TICKCAST_KAFKA__TOPIC_DLQ": dlq,
        "TICKCAST_KAFKA__TOPIC_FORECASTS": f"{topic}.forecasts",
        "TICKCAST_KAFKA__TOPIC_OPEN_CLOSE": f"{topic}.open_close",
        "TICKCAST_LAKE__URL": s3_settings.lake.url,
        "TICKCAST_LAKE__S3_ENDPOINT_URL": infra.s3_endpoint,
        "TICKCAST_LAKE__S3_ACCESS_KEY_ID": "tickcast",
        "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY": "tickcast-local-only",
        "TICKCAST_CONSUMER__METRICS_PORT": str(metrics_port),
        "TICKCAST_CONSUMER__GROUP_ID": f"grants-{uuid.uuid4().hex[:8]}",
        "TICKCAST_CONSUMER__FLUSH_INTERVAL_S": "1",
        "TICKCAST_INFRA__START_TIMEOUT_S": "180",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    platform = Platform(load_settings())
    assert platform.infra.policy_enforced()
    platform.infra.up()
    platform.give_lake_credentials()
    stored = json.loads(platform.infra.service("minio").users.credentials_path.read_text())  # type: ignore[attr-defined]
    for name, app in platform.apps.items():
        _, child_env = app.command()
        workload = SERVICE_WORKLOADS[name]
        assert child_env["TICKCAST_LAKE__S3_ACCESS_KEY_ID"] == user_name(workload), name
        assert child_env["TICKCAST_LAKE__S3_SECRET_ACCESS_KEY"] == stored[workload], name
        assert "TICKCAST_INFRA__MINIO_ROOT_PASSWORD" not in child_env and "AWS_SECRET_ACCESS_KEY" not in child_env

    consumer = platform.apps["consumer"]
    consumer.start()
    try:
        pid = consumer.pid()
        assert pid is not None
        environ = dict(
            entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry
        )
        assert environ["TICKCAST_LAKE__S3_ACCESS_KEY_ID"] == "tickcast-consumer"
        _produce_bars(infra, topic, 5)
        lake = Lake(s3_settings.lake)  # root keys: the test reads what the consumer wrote
        deadline = time.monotonic() + 120
        while read_bars(lake, "GRNT", interval="day").num_rows < 5:
            assert time.monotonic() < deadline, consumer.log_path.read_text()[-3000:]
            time.sleep(1)
        log = consumer.log_path.read_text()
        assert "tickcast-local-only" not in log and stored["consumer"] not in log  # keys never logged
    finally:
        consumer.stop()


def test_the_sink_lands_bars_as_the_consumer_user(lake_as: Any, unique_topic: Any) -> None:
    from consumer.sink import Sink

    topic, dlq = unique_topic("bars", partitions=2), unique_topic("dlq", partitions=1)
    settings = sink_settings(lake_as("consumer"), topic, dlq, flush_records=400)
    assert settings.lake.s3_access_key_id is not None
    assert settings.lake.s3_access_key_id.get_secret_value() == "tickcast-consumer"
    produce_records(settings, topic, bar_values(1200))  # type: ignore[arg-type]
    stats = Sink(settings).run(max_records=1200, timeout=90)
    assert stats.committed == 1200 and stats.commits > 0
    assert_exact(settings, 1200)


def test_a_backfill_keeps_its_checkpoint_and_open_close_as_the_producer_user(
    make_settings: Any,
    lake_as: Any,
    topics: Any,  # noqa: F811  (the imported fixture)
    server: Any,  # noqa: F811
) -> None:
    lake = lake_as("producer").lake
    settings = backfill.producer_settings(make_settings, topics, server, lake_url=lake.url)
    settings = settings.model_copy(update={"lake": lake})
    opts = backfill.ProduceOptions(
        source="polygon-rest",
        tickers=("AAPL", "MSFT"),
        interval="hour",
        start=backfill.FIRST,
        end=backfill.LAST,
        open_close=True,
        progress=False,
        max_bars=30,
    )
    first = backfill.produce(settings, opts)
    assert first["stopped_early"] and first["sent"] == 30  # the checkpoint in _state/producer was written
    rest = backfill.produce(settings, dataclasses.replace(opts, max_bars=None))
    assert rest["resumed"] and rest["sent"] == 2 * 48 - 30 and rest["open_close"] == 4
