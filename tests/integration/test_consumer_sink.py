"""The sink against the real broker and MinIO: exact counts, DLQ, resuming from the table,
re-sent bars, S3, metrics, scaling out (several sinks committing to one table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import deltalake
import duckdb
import pytest
from conftest import REPO_ROOT, free_port
from pydantic import SecretStr

from consumer.sink import Sink, app_id
from tickcast.contracts import Bar
from tickcast.kafka import make_admin, make_consumer, make_producer
from tickcast.lake import BARS, BarWriter, Lake, bars_to_table, read_bars, tables
from tickcast.service import ObservabilityServer, StopFlag
from tickcast.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
TICKERS = [f"T{i:02d}" for i in range(12)]


def bar_values(n: int, offset: int = 0, close: float = 10.5) -> list[tuple[bytes, bytes]]:
    """n distinct valid bars as (key, value), spread over tickers and two days."""
    out = []
    for i in range(offset, offset + n):
        ticker = TICKERS[i % len(TICKERS)]
        start = T0 + timedelta(minutes=7 * (i // len(TICKERS)))
        bar = Bar(ticker, "minute", start, start + timedelta(minutes=1), 10, 11, 9, close, float(i), 10.2, i, "test")
        out.append((ticker.encode(), bar.to_json()))
    return out


def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = make_producer(settings.kafka)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(30)
    finally:
        producer.close()


def sink_settings(base: Settings, topic: str, dlq: str, **consumer: Any) -> Settings:
    kafka = base.kafka.model_copy(update={"topic_bars": topic, "topic_dlq": dlq})
    cfg = {"group_id": f"sink-{uuid.uuid4().hex[:8]}", "flush_records": 700, "flush_interval_s": 2.0}
    cfg.update(consumer)
    return base.model_copy(update={"kafka": kafka, "consumer": base.consumer.model_copy(update=cfg)})


def external_counts(settings: Settings) -> tuple[int, int]:
    """(rows, distinct bar keys) of the bars table, counted by delta-rs + DuckDB, not by tickcast."""
    lake = Lake(settings.lake)
    table = deltalake.DeltaTable(lake.table_uri("bars"), storage_options=lake.storage_options).to_pyarrow_table(
        columns=["ticker", "interval", "start"]
    )
    con = duckdb.connect()
    con.register("bars", table)
    rows, keys = con.execute("select count(*), count(distinct (ticker, interval, start)) from bars").fetchone()  # type: ignore[misc]
    return int(rows), int(keys)


def assert_exact(settings: Settings, expected: int) -> None:
    """Each of ``expected`` bars exactly once in the table, by a reader that is not tickcast."""
    assert external_counts(settings) == (expected, expected)


def committed_everything(settings: Settings, group: str, topic: str) -> bool:
    from kafka import TopicPartition

    admin = make_admin(settings.kafka)
    consumer = make_consumer(settings.kafka, None)
    try:
        committed = admin.list_group_offsets({group: None}).get(group, {})
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        return bool(parts) and all(committed.get(tp) and committed[tp].offset == ends[tp] for tp in parts)
    finally:
        consumer.close()
        admin.close()


def test_each_bar_lands_once_invalid_records_go_to_the_dlq(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    topic, dlq = unique_topic("bars", partitions=3), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq)
    good = bar_values(3000)
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"X", b"not json"),
        (b"X", json.dumps({"schema_version": 1, "ticker": "X"}).encode()),
        (b"T00", good[0][1].replace(b'"volume":0.0', b'"volume":-1.0')),
        (b"T01", None),
    ]
    produce(s, topic, [*good[:1500], *bad, *good[1500:]])

    stats = Sink(s).run(max_records=len(good) + len(bad), timeout=120)
    assert stats.committed == 3004 and stats.rejected >= 4  # a rebalance may re-read (and resend)
    assert_exact(s, 3000)
    assert committed_everything(s, s.consumer.group_id, topic)
    # the table records every partition's last offset in its own log
    lake = Lake(s.lake)
    recorded = [tables.transaction_version(lake, BARS, app_id(s.consumer.group_id, topic, p)) for p in range(3)]
    assert all(v is not None for v in recorded) and sum(v + 1 for v in recorded if v is not None) == 3004

    reader = make_consumer(s.kafka, None, consumer_timeout_ms=5000)
    from kafka import TopicPartition

    reader.assign([TopicPartition(dlq, 0)])
    reader.seek_to_beginning()
    records: list[Any] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        batch = [r for recs in reader.poll(timeout_ms=1000).values() for r in recs]
        records += batch
        if len(records) >= 4 and not batch:
            break
    reader.close()
    assert len(records) >= 4  # at least once
    headers = [dict(r.headers) for r in records]
    assert all(h["original.topic"] == topic.encode() for h in headers)
    reasons = sorted(h["reason"].decode() for h in headers)
    assert any(r.startswith("not JSON") for r in reasons)
    assert "missing field 'interval'" in reasons
    assert "volume is -1.0, must be >= 0" in reasons
    assert "record has no value" in reasons
    assert {r.value for r in records} == {v for _, v in bad}


def test_the_table_position_wins_over_the_group_offset(settings: Settings, unique_topic: Callable[..., str]) -> None:
    """A crash after the table commit and before the Kafka commit: the next sink resumes after
    what the table recorded, so nothing is written twice."""
    topic, dlq = unique_topic("bars", partitions=1), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, flush_records=100)
    values = bar_values(500)
    produce(s, topic, values)  # type: ignore[arg-type]
    # what a crashed sink left: offsets 0..299 committed to the table, none to Kafka
    lake = Lake(s.lake)
    first = [Bar.from_json(v) for _, v in values[:300]]
    BarWriter(lake).write(bars_to_table(first), txns=[(app_id(s.consumer.group_id, topic, 0), 299)])
    stats = Sink(s).run(max_records=200, timeout=60)
    assert stats.committed == 200 and stats.merges == 0
    assert_exact(s, 500)


def test_bars_sent_again_with_new_offsets_land_once_latest_wins(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    topic, dlq = unique_topic("bars", partitions=2), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, flush_records=250)
    produce(s, topic, bar_values(1000))  # type: ignore[arg-type]
    assert Sink(s).run(max_records=1000, timeout=60).committed == 1000
    # a backfill re-run over the first 300 bars, corrected: other offsets, other close
    produce(s, topic, bar_values(300, close=10.75))  # type: ignore[arg-type]
    stats = Sink(s).run(max_records=300, timeout=60)
    assert stats.committed == 300 and stats.merges >= 1
    assert_exact(s, 1000)
    t00 = read_bars(Lake(s.lake), "T00", "minute")
    closes = t00["close"].to_pylist()
    assert t00.num_rows == 84 and closes[:25] == [10.75] * 25 and set(closes[25:]) == {10.5}


def test_restart_resumes_from_the_commit(settings: Settings, unique_topic: Callable[..., str]) -> None:
    topic, dlq = unique_topic("bars", partitions=2), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, flush_records=300)
    produce(s, topic, bar_values(1000))  # type: ignore[arg-type]
    assert Sink(s).run(max_records=450, timeout=60).committed == 450
    produce(s, topic, bar_values(500, offset=1000))  # type: ignore[arg-type]
    assert Sink(s).run(max_records=1050, timeout=60).committed == 1050
    assert_exact(s, 1500)


def test_s3_lake_on_minio(lake_as: Callable[[str], Settings], unique_topic: Callable[..., str]) -> None:
    """As the consumer workload's MinIO user: every write and read of the sink is granted."""
    topic, dlq = unique_topic("bars", partitions=2), unique_topic("dlq", partitions=1)
    s = sink_settings(lake_as("consumer"), topic, dlq, flush_records=400)
    produce(s, topic, bar_values(1200))  # type: ignore[arg-type]
    stats = Sink(s).run(max_records=1200, timeout=90)
    assert stats.committed == 1200 and stats.commits > 0
    assert_exact(s, 1200)
    assert set(Lake(s.lake).bar_tickers("minute")) == set(TICKERS)


def test_metrics_and_health(settings: Settings, unique_topic: Callable[..., str]) -> None:
    topic, dlq = unique_topic("bars", partitions=2), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, flush_records=200)
    produce(s, topic, [*bar_values(600), (b"X", b"{}")])  # type: ignore[list-item]
    stop = StopFlag()
    sink = Sink(s, stop=stop)
    server = ObservabilityServer(free_port(), sink.health, host="127.0.0.1").start()
    worker = threading.Thread(target=sink.run, kwargs={"timeout": 60}, daemon=True)
    worker.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        deadline = time.monotonic() + 60
        while sink.stats.committed < 601 and time.monotonic() < deadline:
            time.sleep(0.2)
        health = json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=5).read())
        assert health["ok"] is True and sorted(health["assigned"]) == [0, 1]
        time.sleep(1.2)  # the lag gauge updates once a second
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    finally:
        stop.set()
        worker.join(30)
        server.stop()
    for name in (
        f'tickcast_sink_records_total{{result="valid",topic="{topic}"}}',
        f'tickcast_sink_dlq_records_total{{topic="{topic}"}} ',  # at least once: a rebalance may resend
        f'tickcast_sink_committed_records_total{{topic="{topic}"}} 601.0',
        f'tickcast_sink_flush_seconds_count{{topic="{topic}"}}',
        f'tickcast_sink_commit_lag_seconds_count{{topic="{topic}"}}',
        f'tickcast_sink_consumer_lag{{partition="0",topic="{topic}"}} 0.0',
    ):
        assert name in text, name
    assert_exact(s, 600)


def sink_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    env = dict(os.environ)
    for group in ("kafka", "lake", "consumer"):
        for name, value in getattr(settings, group):
            if value is None:
                continue
            key = f"TICKCAST_{group.upper()}__{name.upper()}"
            env[key] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    env.update(extra)
    return env


def test_two_processes_share_the_partitions(
    settings: Settings, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, dlq = unique_topic("bars", partitions=4), unique_topic("dlq", partitions=1)
    # Big flushes: the second sink joins before the first has committed anything, the case
    # where a lazily positioned consumer would hand back records fetched before the rebalance.
    s = sink_settings(
        settings, topic, dlq, flush_records=100_000, flush_interval_s=5.0, session_timeout_s=6.0, metrics_port=0
    )
    produce(s, topic, bar_values(20000))  # type: ignore[arg-type]
    env = sink_env(s, TICKCAST_LOG_LEVEL="INFO")
    logs = [tmp_path / f"sink-{i}.log" for i in range(2)]
    procs: list[subprocess.Popen[str]] = []

    def start(log: Path) -> None:
        with log.open("w") as handle:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "consumer"], cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                    text=True,
                )
            )  # fmt: skip

    def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert all(p.poll() is None for p in procs), "a sink died:\n" + "\n".join(
                x.read_text()[-2000:] for x in logs
            )
            time.sleep(0.2)

    try:
        start(logs[0])
        wait_for("the first sink's partitions", lambda: "assigned" in logs[0].read_text())
        time.sleep(0.3)
        start(logs[1])  # joins while the first works through the backlog: a rebalance mid-stream
        wait_for("the second sink's partitions", lambda: "assigned" in logs[1].read_text())
        produce(s, topic, bar_values(4000, offset=20000))  # type: ignore[arg-type]
        wait_for("everything committed", lambda: committed_everything(s, s.consumer.group_id, topic))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], [t[-2000:] for t in texts]
    stats = [json.loads(t.strip().splitlines()[-1]) for t in texts]
    assert all(st["committed"] > 0 for st in stats), stats
    assert "expected offset" not in "".join(texts)
    assert_exact(s, 24000)


def test_three_sink_processes_commit_to_one_table_on_minio(
    lake_as: Callable[[str], Settings], unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Scale-out on S3: three sinks, each owning partitions, commit to one table at the same
    time (conditional-put commits on MinIO, as the consumer workload's user): no commit lost,
    each bar once."""
    topic, dlq = unique_topic("bars", partitions=6), unique_topic("dlq", partitions=1)
    s = sink_settings(
        lake_as("consumer"), topic, dlq, flush_records=200, flush_interval_s=1.0, session_timeout_s=6.0, metrics_port=0
    )
    env = sink_env(s, TICKCAST_LOG_LEVEL="INFO")
    logs = [tmp_path / f"sink-{i}.log" for i in range(3)]
    procs = []
    try:
        for log in logs:
            with log.open("w") as handle:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "consumer"], cwd=REPO_ROOT, env=env, stdout=handle,
                        stderr=subprocess.STDOUT, text=True,
                    )
                )  # fmt: skip
        deadline = time.monotonic() + 120
        # every sink owns partitions before the bars arrive, so all three write at once
        while not all("resumes at offset" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, "the three sinks did not share the partitions"
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.3)
        produce(s, topic, bar_values(6000))  # type: ignore[arg-type]
        while not committed_everything(s, s.consumer.group_id, topic):
            assert time.monotonic() < deadline + 60, [log.read_text()[-2000:] for log in logs]
            time.sleep(0.5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0, 0], [t[-2000:] for t in texts]
    stats = [json.loads(t.strip().splitlines()[-1]) for t in texts]
    assert all(st["commits"] > 0 for st in stats), stats
    assert_exact(s, 6000)
    lake = Lake(s.lake)
    recorded = [tables.transaction_version(lake, BARS, app_id(s.consumer.group_id, topic, p)) for p in range(6)]
    assert sum(v + 1 for v in recorded if v is not None) == 6000


def test_store_down_at_start_stops_with_exit_code_2(settings: Settings, unique_topic: Callable[..., str]) -> None:
    topic, dlq = unique_topic("bars", partitions=1), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, store_outage_limit_s=2.0, metrics_port=0)
    lake = s.lake.model_copy(
        update={
            "url": "s3://nowhere/lake",
            "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
            "s3_access_key_id": SecretStr("x"),
            "s3_secret_access_key": SecretStr("y"),
            "s3_timeout_s": 1.0,
        }
    )
    env = sink_env(s.model_copy(update={"lake": lake}))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tickcast", "consume", "--timeout", "30"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tickcast: error: the lake has been unreachable for 2 s"), last
    assert "fix:" in last
    assert time.monotonic() - started < 60
