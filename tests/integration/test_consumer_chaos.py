"""Acceptance: exactly-once through SIGKILLs of the sink, the broker and MinIO, re-sent bars
and a concurrent optimize.

Runs on a private Kafka + MinIO (the ``private_infra`` fixture), because it kills and
restarts both; the shared test infrastructure stays up for everyone else. The sink runs
as real processes (``python -m consumer``) on an ``s3://`` lake in MinIO. At the end the
bars table is counted by delta-rs and DuckDB, not by tickcast or the sink's counters.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import deltalake
import duckdb
import pytest
from conftest import REPO_ROOT, LocalInfra
from pydantic import SecretStr

from tickcast.contracts import Bar
from tickcast.infra.manager import InfraManager
from tickcast.kafka import ensure_topics, make_admin, make_consumer, make_producer
from tickcast.lake import Lake
from tickcast.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

T0 = datetime(2024, 5, 6, 13, 30, tzinfo=UTC)
TICKERS = [f"C{i:02d}" for i in range(16)]


def bars(first: int, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(first, first + n):
        ticker = TICKERS[i % len(TICKERS)]
        start = T0 + timedelta(minutes=i // len(TICKERS))
        bar = Bar(ticker, "minute", start, start + timedelta(minutes=1), 10, 11, 9, 10.5, float(i), None, i, "chaos")
        out.append((ticker.encode(), bar.to_json()))
    return out


def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings.kafka)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(60)
    finally:
        producer.close()


def group_offsets(settings: Settings, group: str) -> dict[int, int]:
    admin = make_admin(settings.kafka)
    try:
        return {tp.partition: om.offset for tp, om in admin.list_group_offsets({group: None}).get(group, {}).items()}
    finally:
        admin.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    consumer = make_consumer(settings.kafka, None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def sink_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for group in ("kafka", "lake", "consumer"):
        for name, value in getattr(settings, group):
            if value is not None:
                secret = isinstance(value, SecretStr)
                env[f"TICKCAST_{group.upper()}__{name.upper()}"] = value.get_secret_value() if secret else str(value)
    env["TICKCAST_LOG_LEVEL"] = "INFO"
    return env


class Sinks:
    """Starts ``python -m consumer`` processes with their logs in files."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.env = sink_env(settings)
        self.logs = logs
        self.runs = 0
        self.procs: list[subprocess.Popen[str]] = []

    def kill_all(self) -> None:
        """SIGKILL every sink still running (after a failed assertion)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def start(self, **env: str) -> tuple[subprocess.Popen[str], Path]:
        self.runs += 1
        log = self.logs / f"sink-{self.runs}.log"
        handle = log.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer"],
            cwd=REPO_ROOT,
            env={**self.env, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        handle.close()
        self.procs.append(proc)
        return proc, log


def kill_service(manager: InfraManager, name: str) -> None:
    """SIGKILL a local service (its whole process group), as a crash or an OOM kill would."""
    pid = manager.service(name).pid()
    assert pid is not None, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while manager.service(name).pid() is not None:
        assert time.monotonic() < deadline, f"{name} survived SIGKILL"
        time.sleep(0.1)


def start_optimize(settings: Settings, log: Path) -> subprocess.Popen[str]:
    """``tickcast lake optimize`` of the bars table as its own process, next to the sink."""
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "tickcast", "lake", "optimize", "--table", "bars"],
            cwd=REPO_ROOT,
            env=sink_env(settings),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_until(what: str, check: Callable[[], bool], timeout: float, procs: list[Any] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not check():
        for proc, log in procs:
            assert proc.poll() is None, f"sink died (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_exactly_once_through_kills_broker_restart_and_store_outage(
    private_infra: Callable[..., LocalInfra], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed = int(os.environ.get("TICKCAST_CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))
    rng = random.Random(seed)
    print(f"chaos seed {seed} (rerun with TICKCAST_CHAOS_SEED={seed})")
    local = private_infra(minio=True)
    manager = local.manager
    bucket = f"chaos-{uuid.uuid4().hex[:8]}"
    local.s3_client().create_bucket(Bucket=bucket)
    topic, dlq = f"bars-chaos-{uuid.uuid4().hex[:6]}", f"dlq-chaos-{uuid.uuid4().hex[:6]}"
    base = local.settings
    settings = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"topic_bars": topic, "topic_dlq": dlq}),
            "lake": base.lake.model_copy(update={"url": f"s3://{bucket}/lake", "s3_timeout_s": 3.0}),
            "consumer": base.consumer.model_copy(
                update={
                    "group_id": f"chaos-{uuid.uuid4().hex[:6]}",
                    "flush_records": 250,  # many flushes: kills often land between write and commit
                    "flush_interval_s": 1.0,
                    "session_timeout_s": 6.0,
                    "store_outage_limit_s": 90.0,
                    "metrics_port": 0,
                }
            ),
        }
    )
    ensure_topics(settings.kafka, {topic: 4, dlq: 1})
    sinks = Sinks(settings, tmp_path)
    request.addfinalizer(sinks.kill_all)  # before the private infrastructure goes
    produced = 0
    invalid = [(b"C00", b"{broken"), (b"C01", b'{"schema_version":1}')]
    produce(settings, topic, invalid)

    def more(n: int) -> None:
        nonlocal produced
        produce(settings, topic, bars(produced, n))
        produced += n

    def caught_up() -> bool:
        ends, done = end_offsets(settings, topic), group_offsets(settings, settings.consumer.group_id)
        return all(done.get(p) == end for p, end in ends.items())

    def assigned(log: Path) -> Callable[[], bool]:
        return lambda: "assigned" in log.read_text()

    # 1. SIGKILL at random points: once while starting or joining, then while consuming,
    #    writing and committing.
    for round_ in range(5):
        more(5000)
        proc, log = sinks.start()
        if round_:
            wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
            time.sleep(rng.uniform(0.0, 2.0))  # while it works through the backlog
        else:
            time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    # 2. The broker is killed (SIGKILL) under a running sink and restarted; the sink rides it
    #    out. Meanwhile 1,000 bars it already stored arrive again with new offsets (a backfill
    #    re-run), and an optimize rewrites the table's partitions next to the sink.
    more(4000)
    produce(settings, topic, bars(0, 1000))
    proc, log = sinks.start()
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    optimizer = start_optimize(settings, tmp_path / "optimize.log")
    time.sleep(rng.uniform(0.0, 3.0))
    kill_service(manager, "kafka")
    time.sleep(2)
    manager.start_service("kafka")
    more(3000)
    wait_until("the sink to catch up after the broker restart", caught_up, 180, [(proc, log)])
    assert optimizer.wait(180) in (0, 1), (tmp_path / "optimize.log").read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # 3. The object store goes away for a while: the sink pauses, keeps its data, resumes.
    more(4000)
    proc, log = sinks.start()
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    time.sleep(rng.uniform(0.0, 3.0))
    kill_service(manager, "minio")
    more(2000)
    time.sleep(8)
    assert proc.poll() is None, f"the sink must survive a short store outage:\n{log.read_text()[-3000:]}"
    manager.start_service("minio")
    wait_until("the sink to catch up after the store outage", caught_up, 180, [(proc, log)])
    noticed = ("lake write failed", "reading the table's positions failed")
    assert any(text in log.read_text() for text in noticed), "the outage went unnoticed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # 4. An outage longer than the limit stops the sink with exit code 2, committing nothing new.
    proc, log = sinks.start(TICKCAST_CONSUMER__STORE_OUTAGE_LIMIT_S="4")
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    time.sleep(2)
    before = group_offsets(settings, settings.consumer.group_id)
    kill_service(manager, "minio")
    more(300)
    proc.wait(120)
    assert proc.returncode == 2, log.read_text()[-3000:]
    assert "the lake has failed for" in log.read_text().strip().splitlines()[-1]
    assert group_offsets(settings, settings.consumer.group_id) == before
    manager.start_service("minio")

    # 5. A last run to the end, stopped gracefully.
    proc, log = sinks.start()
    wait_until("the final sink to catch up", caught_up, 240, [(proc, log)])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    stats = json.loads(log.read_text().strip().splitlines()[-1])
    assert stats["rejected"] >= 0

    # The table holds exactly the produced bars, each once, counted by delta-rs and DuckDB.
    lake = Lake(settings.lake)
    table = deltalake.DeltaTable(lake.table_uri("bars"), storage_options=lake.storage_options).to_pyarrow_table(
        columns=["ticker", "interval", "start", "volume"]
    )
    con = duckdb.connect()
    con.register("bars", table)
    rows, keys, volumes, low, high = con.execute(
        "select count(*), count(distinct (ticker, interval, start)), count(distinct volume), min(volume), "
        "max(volume) from bars"
    ).fetchone()  # type: ignore[misc]
    print(f"chaos: {produced} produced (+1000 re-sent), {rows} rows in the table, {sinks.runs} sink runs")
    assert (rows, keys, volumes) == (produced, produced, produced)
    assert (low, high) == (0, produced - 1)
    # the re-sent bars were merged (not appended), and the optimize committed next to the sink
    operations = [
        entry["operation"]
        for entry in deltalake.DeltaTable(lake.table_uri("bars"), storage_options=lake.storage_options).history()
    ]
    assert "MERGE" in operations, operations
