"""Acceptance: exactly-once through SIGKILLs of the sink, the broker and MinIO, re-sent bars
and a concurrent optimize, and a sink killed between a data-file write and its commit.

The sink runs as real processes (``python -m consumer``), each in its own session so a
kill takes exactly it. Two cases:

* ``s3://`` lake in MinIO, on a private Kafka + MinIO (the ``private_infra`` fixture),
  because it SIGKILLs both (their whole process groups) and restarts them on the same data
  folders; the shared test infrastructure stays up for everyone else. The test plays the
  supervisor: a sink that exits is started again, as ``tickcast up`` would.
* ``file://`` lake on the shared Kafka: a sink is frozen the moment a new data file appears
  and killed if no log version references it yet, so a kill provably lands between a write
  and its commit (:class:`chaos.WriteWatch`). That needs a local folder:
  a frozen process cannot finish a local rename, while a commit request to MinIO may
  already be on the wire.

At the end the bars table is counted through the Delta log twice, by tickcast's reader
(duplicates not folded) and by delta-rs + DuckDB, not by the sink's counters.
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
from chaos import (
    WriteWatch,
    committed_files,
    data_files,
    freeze,
    idle_on_cpu,
    kill_group,
    transaction_versions,
    uncommitted_data_files,
    watch_cpu,
)
from conftest import REPO_ROOT, LocalInfra
from pydantic import SecretStr

from consumer.sink import app_id
from tickcast.contracts import INTERVALS, Bar
from tickcast.infra.manager import InfraManager
from tickcast.kafka import ensure_topics, make_admin, make_consumer, make_producer
from tickcast.lake import BARS, Lake, tables
from tickcast.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

T0 = datetime(2024, 5, 6, 13, 30, tzinfo=UTC)
#: Commits watched for a kill between a data-file write and its commit: by construction the
#: first should do (see chaos.WriteWatch); the others cover a watcher woken late by a busy
#: machine. And the bars each commit holds.
BETWEEN_ATTEMPTS = 10
CHUNK = 200
TICKERS = [f"C{i:02d}" for i in range(16)]


def bars(first: int, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(first, first + n):
        ticker = TICKERS[i % len(TICKERS)]
        start = T0 + timedelta(minutes=i // len(TICKERS))
        bar = Bar(ticker, "minute", start, start + timedelta(minutes=1), 10, 11, 9, 10.5, float(i), None, i, "chaos")
        out.append((ticker.encode(), bar.to_json()))
    return out


def spread_bars(first: int, n: int) -> list[tuple[bytes, bytes]]:
    """Bars ``first .. first+n-1`` spread over all four intervals, so each commit writes four
    data files (one per ``interval`` partition), each ticker's bars in time order."""
    out = []
    names = sorted(INTERVALS)
    for i in range(first, first + n):
        interval, j = names[i % len(names)], i // len(names)
        ticker = TICKERS[j % len(TICKERS)]
        start = T0 + (j // len(TICKERS)) * INTERVALS[interval]
        bar = Bar(ticker, interval, start, start + INTERVALS[interval], 10, 11, 9, 10.5, float(i), None, i, "chaos")
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

    def start(self, idle_cpu: int | None = None, **env: str) -> tuple[subprocess.Popen[str], Path]:
        """Start one sink (extra ``TICKCAST_*`` variables in ``env``; with ``idle_cpu``, pinned
        to that CPU under SCHED_IDLE, see :class:`chaos.WriteWatch`); returns it and its log."""
        self.runs += 1
        log = self.logs / f"sink-{self.runs}.log"
        handle = log.open("w")
        argv = [sys.executable, "-m", "consumer"]
        proc = subprocess.Popen(
            argv if idle_cpu is None else idle_on_cpu(argv, idle_cpu),
            cwd=REPO_ROOT,
            env={**self.env, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: kill_group takes it and nothing else
        )
        handle.close()
        self.procs.append(proc)
        return proc, log


def assigned(log: Path) -> Callable[[], bool]:
    """Whether the sink logging to ``log`` has got its partitions."""
    return lambda: "assigned" in log.read_text()


def kill_service(manager: InfraManager, name: str) -> None:
    """SIGKILL a local service (its whole process group), as a crash or an OOM kill would."""
    pid = manager.service(name).pid()
    assert pid is not None, f"{name} is not running"
    kill_group(pid)
    assert manager.service(name).pid() is None, f"{name} still has a pid file with a live process"


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


def assert_exactly_once(lake: Lake, produced: int) -> int:
    """Assert the bars table holds bars ``0 .. produced-1`` (by volume), each key exactly once.

    Read twice through the Delta log: by tickcast's reader with duplicates *not* folded
    (``unique=False``: the default would hide a bar written twice), and by delta-rs' Arrow
    reader counted in DuckDB. Returns the row count.
    """
    ours = tables.scan(lake, BARS, columns=["ticker", "interval", "start", "volume"], unique=False)
    theirs = deltalake.DeltaTable(lake.table_uri("bars"), storage_options=lake.storage_options).to_pyarrow_table(
        columns=["ticker", "interval", "start", "volume"]
    )
    for name, table in (("ours", ours), ("theirs", theirs)):
        con = duckdb.connect()
        con.register(name, table)
        rows, keys, volumes, low, high = con.execute(
            "select count(*), count(distinct (ticker, interval, start)), count(distinct volume), min(volume), "
            f"max(volume) from {name}"
        ).fetchone()  # type: ignore[misc]
        # complete (every volume 0..produced-1 is there) and no key twice
        assert (rows, keys, volumes, low, high) == (produced, produced, produced, 0, produced - 1), (
            f"{name}: {rows} rows, {keys} distinct keys, {volumes} distinct volumes in [{low}, {high}]; "
            f"expected {produced} bars each once"
        )
    return int(ours.num_rows)


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

    all_stored = caught_up(settings, topic)

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
    wait_until("the sink to catch up after the broker restart", all_stored, 180, [(proc, log)])
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
    wait_until("the sink to catch up after the store outage", all_stored, 180, [(proc, log)])
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
    wait_until("the final sink to catch up", all_stored, 240, [(proc, log)])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    stats = json.loads(log.read_text().strip().splitlines()[-1])
    assert stats["rejected"] >= 0

    lake = Lake(settings.lake)
    rows = assert_exactly_once(lake, produced)
    print(f"chaos: {produced} produced (+1000 re-sent), {rows} rows in the table, {sinks.runs} sink runs")
    # the re-sent bars were merged (not appended), and the optimize committed next to the sink
    operations = [
        entry["operation"]
        for entry in deltalake.DeltaTable(lake.table_uri("bars"), storage_options=lake.storage_options).history()
    ]
    assert "MERGE" in operations, operations


def test_a_sink_killed_between_a_data_file_write_and_its_commit_loses_and_repeats_nothing(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Deterministically, not by luck: the sink runs pinned to one CPU under SCHED_IDLE, and
    the test's watching thread on the same CPU wakes the moment a data file appears, stops
    the sink there, and kills it if no log version references the file yet (see
    :class:`chaos.WriteWatch`). Bars arrive in chunks of ``CHUNK`` (a commit of four data
    files each, one per interval); up to ``BETWEEN_ATTEMPTS`` commits are watched, and the
    watch is asserted to have landed. The orphaned files stay in the folder, uncommitted,
    and the next sink re-reads their bars from the table's positions: every bar lands once."""
    topic = f"bars-between-{uuid.uuid4().hex[:6]}"
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_bars": topic, "topic_dlq": f"dlq-{topic}"}),
            "consumer": settings.consumer.model_copy(
                update={
                    "group_id": f"between-{uuid.uuid4().hex[:6]}",
                    "flush_interval_s": 0.5,  # a chunk is sealed and committed half a second after it arrives
                    "session_timeout_s": 6.0,
                    "metrics_port": 0,
                }
            ),
        }
    )
    ensure_topics(settings.kafka, {topic: 4, settings.kafka.topic_dlq: 1})
    lake = Lake(settings.lake)
    assert lake.is_local
    group = settings.consumer.group_id
    sinks = Sinks(settings, tmp_path)
    request.addfinalizer(sinks.kill_all)
    cpu = watch_cpu()
    proc, log = sinks.start(idle_cpu=cpu)
    wait_until("the sink to get its partitions", assigned(log), 120, [(proc, log)])
    produced, caught, commits = 0, set[str](), 0
    with WriteWatch(lake, "bars", cpu) as watch:
        while not caught and commits < BETWEEN_ATTEMPTS:
            # Producing waits on the network, and while this thread waits the sink would run
            # unwatched: it stays frozen until its next chunk is in Kafka.
            freeze(proc.pid)
            produce(settings, topic, spread_bars(produced, CHUNK))
            produced, commits = produced + CHUNK, commits + 1
            wanted = {app_id(group, topic, p): end - 1 for p, end in end_offsets(settings, topic).items() if end}
            os.kill(proc.pid, signal.SIGCONT)

            def writing(wanted: dict[str, int] = wanted) -> bool:
                # local reads only: the watching thread must not block (see WriteWatch)
                done = transaction_versions(lake, "bars", watch.log_cache)
                return proc.poll() is None and any(done.get(app, -1) < last for app, last in wanted.items())

            caught = watch.kill_between_write_and_commit(proc.pid, writing)
            assert caught or proc.poll() is None, f"sink died (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    assert caught, (
        f"no kill landed between a data-file write and its commit in {commits} commits "
        f"({watch.beaten} commits beat the freeze)"
    )
    proc.wait(10)
    print(
        f"chaos: the kill landed in commit {commits} ({watch.beaten} commits beat the freeze before) "
        f"with {sorted(caught)} written, uncommitted"
    )

    # The supervisor's restart; more bars arrive meanwhile.
    produce(settings, topic, spread_bars(produced, CHUNK))
    produced += CHUNK
    proc, log = sinks.start()
    wait_until("the next sink to catch up", caught_up(settings, topic), 180, [(proc, log)])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]

    # The files written before the kill are in the folder, and no version of the log ever
    # referenced them: the kill landed between the write and its commit.
    assert caught <= uncommitted_data_files(lake, "bars"), (caught, uncommitted_data_files(lake, "bars"))
    assert caught <= data_files(lake, "bars") and not caught & committed_files(lake, "bars")
    assert_exactly_once(lake, produced)


def caught_up(settings: Settings, topic: str) -> Callable[[], bool]:
    """Whether the group has committed every partition's end offset of ``topic``."""

    def check() -> bool:
        ends, done = end_offsets(settings, topic), group_offsets(settings, settings.consumer.group_id)
        return all(done.get(p) == end for p, end in ends.items())

    return check
