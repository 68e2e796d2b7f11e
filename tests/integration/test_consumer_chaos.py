"""Acceptance: exactly-once through SIGKILLs, a broker restart and object-store outages.

Runs on a private Kafka + MinIO (the ``private_infra`` fixture), because it stops and
restarts both; the shared test infrastructure stays up for everyone else. The sink runs
as real processes (``python -m consumer``) on an ``s3://`` lake in MinIO. At the end the
lake is counted with pyarrow, not with the sink's own counters.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from conftest import REPO_ROOT, LocalInfra
from pydantic import SecretStr

from consumer.layout import MARKER_ROOT
from tickcast.contracts import Bar
from tickcast.kafka import ensure_topics, make_admin, make_consumer, make_producer
from tickcast.lake import BAR_PARTITIONS, Lake
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

    # 2. The broker restarts under a running sink, which must ride it out.
    more(4000)
    proc, log = sinks.start()
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    time.sleep(rng.uniform(0.0, 3.0))
    manager.stop_service("kafka")
    time.sleep(2)
    manager.start_service("kafka")
    more(3000)
    wait_until("the sink to catch up after the broker restart", caught_up, 180, [(proc, log)])
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # 3. The object store goes away for a while: the sink pauses, keeps its data, resumes.
    more(4000)
    proc, log = sinks.start()
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    time.sleep(rng.uniform(0.0, 3.0))
    manager.stop_service("minio")
    more(2000)
    time.sleep(8)
    assert proc.poll() is None, f"the sink must survive a short store outage:\n{log.read_text()[-3000:]}"
    manager.start_service("minio")
    wait_until("the sink to catch up after the store outage", caught_up, 180, [(proc, log)])
    noticed = ("lake write failed", "lake recovery failed", "committed marker(s)")
    assert any(text in log.read_text() for text in noticed), "the outage went unnoticed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # 4. An outage longer than the limit stops the sink with exit code 2, committing nothing new.
    proc, log = sinks.start(TICKCAST_CONSUMER__STORE_OUTAGE_LIMIT_S="4")
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    time.sleep(2)
    before = group_offsets(settings, settings.consumer.group_id)
    manager.stop_service("minio")
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

    # The lake holds exactly the produced bars, each once: counted over the lake itself.
    lake = Lake(settings.lake)
    table = lake.read_table("bars", BAR_PARTITIONS)
    assert table is not None
    keys = pc.binary_join_element_wise(table["ticker"], pc.cast(table["start"], "string"), "|")
    provenance = pc.binary_join_element_wise(
        pc.cast(table["_partition"], "string"), pc.cast(table["_offset"], "string"), "|"
    )
    volumes = sorted(int(v) for v in table["volume"].to_pylist())
    logs = [(tmp_path / f"sink-{i}.log").read_text() for i in range(1, sinks.runs + 1)]
    removed = sum(int(w.split()[1]) for text in logs for w in re.findall(r"removed \d+ uncommitted", text))
    print(f"chaos: {produced} produced, {table.num_rows} in the lake, {sinks.runs} runs, {removed} flushes undone")
    assert table.num_rows == produced
    assert len(pc.unique(keys)) == produced
    assert len(pc.unique(provenance)) == produced
    assert volumes == list(range(produced))
    assert lake.list_files(MARKER_ROOT) == []
    # The two invalid records reached the DLQ (at least once: replays may resend them).
    dlq_ends = end_offsets(settings, dlq)
    assert sum(dlq_ends.values()) >= len(invalid)
