"""The exactly-once Kafka-to-lake sink: bars from Kafka into the Delta ``bars`` table.

What it does
------------
The sink joins the consumer group ``consumer.group_id`` on ``kafka.topic_bars``. It
decodes each poll in bulk (:mod:`consumer.decode`), sends invalid records to
``kafka.topic_dlq`` with the reason in a header, and buffers valid bars per Kafka
partition (:mod:`consumer.buffer`). Each flush writes the sealed batches of every
partition in **one Delta commit** through :class:`tickcast.lake.BarWriter`, which keeps
each bar key once (a re-sent or corrected bar replaces the old row).

Why every bar lands exactly once
--------------------------------
The table itself says what it has consumed. Each commit carries, for every Kafka
partition ``p`` it covers, an application transaction ``(app id of p, last offset)``
where the app id is ``tickcast-sink:<group>:<topic>:<p>``; data and positions become
visible in the same atomic commit, or neither does.

* **Resuming.** When a partition is assigned (and after any failed write or commit), the
  sink reads the table's transaction version ``V(p)`` and positions the partition at
  ``V(p) + 1`` (or at the group's committed offset when that is further: a batch with no
  valid bar only moves the Kafka offset, and a lake migrated from the old layout starts
  there; with neither, the log start). So after a crash at any point the next owner
  resumes exactly after the last committed batch: nothing lost, nothing twice.
* **Fencing.** A write is refused (:class:`tickcast.lake.AlreadyCommitted`) when the table
  already holds positions at or past its first offset, and delta-rs rejects two
  concurrent commits carrying the same app id. A zombie (an owner that lost its partition
  without noticing) therefore cannot add a batch twice; the sink also stops writing when
  its last poll is older than half of ``max.poll.interval.ms``.
* **Kafka offsets** are committed after the table commit, for lag monitoring and the
  empty-batch case above; losing that commit loses nothing.
* **One row per bar.** The same bar sent again with another offset (a backfill re-run,
  WebSocket and REST gap-fill overlap, a correction) is merged on
  ``(ticker, interval, start)``: the latest revision wins (see :mod:`tickcast.lake.bars`).

Backpressure: when the store fails, the partitions are paused (the consumer keeps
polling, so it stays in the group), their batches are kept and retried with backoff; an
outage longer than ``consumer.store_outage_limit_s`` stops the sink with
:class:`StoreUnavailable`. As it goes, the sink bin-packs the small files of partitions
it has committed to many times (``consumer.compact_after_commits``); ``tickcast lake
optimize`` does the full job (sorted, deduplicated files).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from consumer.buffer import Batch, PartitionBuffer
from consumer.decode import OFFSET_COLUMN, PARTITION_COLUMN, Reject, decode_batch
from consumer.metrics import sink_metrics
from tickcast.errors import BrokerUnavailable, ConfigError, StoreUnavailable
from tickcast.group_watch import MembershipWatch
from tickcast.kafka import ensure_topics, make_admin, make_consumer, make_producer
from tickcast.lake import BARS, AlreadyCommitted, BarWriter, Lake, maintenance, tables
from tickcast.service import StopFlag
from tickcast.settings import Settings

log = logging.getLogger(__name__)

#: How long the group waits for a member between polls (also the longest a rebalance waits
#: for a member that does not rejoin); the sink stops writing at half of it.
MAX_POLL_INTERVAL_S = 60.0
_POLL_TIMEOUT_MS = 200
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
_DRAIN_GRACE_S = 20.0
_MAX_POLL_RECORDS = 20_000


class _Stale(Exception):
    """The last poll is too old to keep writing: the partition may be someone else's now."""


def app_id(group: str, topic: str, partition: int) -> str:
    """The Delta application-transaction id of one Kafka partition consumed by a group."""
    return f"tickcast-sink:{group}:{topic}:{partition}"


@dataclass(slots=True)
class SinkStats:
    """Counters of one :meth:`Sink.run`, for callers and tests."""

    consumed: int = 0
    dropped: int = 0  # consumed, then dropped uncommitted (rebalance, failed write): re-read later
    valid: int = 0
    rejected: int = 0
    committed: int = 0
    flushes: int = 0
    commits: int = 0
    merges: int = 0
    compactions: int = 0
    commit_failures: int = 0
    store_errors: int = 0
    rejoins: int = 0  # consumers replaced after falling out of the group unnoticed
    active_s: float = 0.0  # from the first record consumed to the last commit
    cpu_s: float = 0.0  # process CPU time over the same span (all threads)

    def to_dict(self) -> dict[str, float]:
        """A JSON-friendly dict."""
        return asdict(self)


@dataclass(slots=True)
class _Partition:
    """What the sink knows about one assigned partition."""

    tp: Any
    buffer: PartitionBuffer
    ready: bool = False  # positioned at the table's recorded offset
    pending: collections.deque[Batch] = field(default_factory=collections.deque)
    paused: bool = True
    next_offset: int | None = None
    retry_at: float = 0.0
    failures: int = 0


class _Listener:
    """Records rebalance events; the main loop acts on them right after ``poll()`` returns.

    kafka-python runs listener callbacks on its IO thread, where blocking consumer calls
    are not allowed, so the callbacks only queue what happened.
    """

    def __init__(self, events: collections.deque[tuple[str, set[Any]]]) -> None:
        self.events = events

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.events.append(("revoked", set(revoked)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.events.append(("assigned", set(assigned)))

    def on_partitions_lost(self, lost: Any) -> None:
        self.events.append(("revoked", set(lost)))


def _listener(events: collections.deque[tuple[str, set[Any]]]) -> Any:
    from kafka import ConsumerRebalanceListener

    class Listener(_Listener, ConsumerRebalanceListener):
        pass

    return Listener(events)


class Sink:
    """Consume bars from Kafka and write them into the lake's bars table, exactly once.

    Args:
        settings: the process's settings (``kafka``, ``lake`` and ``consumer`` groups).
        group_id: consumer group (default ``settings.consumer.group_id``).
        topic: topic to consume (default ``settings.kafka.topic_bars``).
        stop: a stop flag (signals set it); default a fresh one.
        lake: the lake (default built from ``settings.lake``).
        consumer_overrides: extra KafkaConsumer options (tests, benchmarks).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        topic: str | None = None,
        stop: StopFlag | None = None,
        lake: Lake | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id or settings.consumer.group_id
        self.topic = topic or settings.kafka.topic_bars
        self.dlq_topic = settings.kafka.topic_dlq
        self.stop = stop or StopFlag()
        self.lake = lake or Lake(settings.lake)
        self.writer = BarWriter(self.lake)
        self.stats = SinkStats()
        self.metrics = sink_metrics()
        self._overrides = consumer_overrides or {}
        self._consumer: Any = None
        self._producer: Any = None
        self._dlq_futures: list[Any] = []
        self._events: collections.deque[tuple[str, set[Any]]] = collections.deque()
        self._parts: dict[Any, _Partition] = {}
        self._last_poll = time.monotonic()
        self._last_lag_update = 0.0
        self._last_report = time.monotonic()
        self._running = False
        self._fatal: str | None = None
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._write_failures = 0
        self._commits_per_partition: collections.Counter[tuple[str, ...]] = collections.Counter()
        self._started: tuple[float, float] | None = None
        self._window_ms = max(1, int(settings.consumer.flush_interval_s * 1000))
        self._admin: Any = None
        session_s = settings.consumer.session_timeout_s
        # A fresh member normally holds its partitions within a session timeout or two; a
        # rebalance may wait up to max.poll.interval for a slow member.
        self._watch = MembershipWatch(
            self._describe_group,
            self._topic_partitions,
            self.topic,
            grace_s=3 * session_s,
            check_interval_s=session_s,
            rebalance_limit_s=2 * MAX_POLL_INTERVAL_S,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, max_records: int | None = None, timeout: float | None = None) -> SinkStats:
        """Consume until stopped, ``max_records`` records are consumed, or ``timeout`` seconds pass.

        Whatever was consumed is then written and committed, and the clients are closed.

        Raises:
            StoreUnavailable: the lake stayed down longer than ``store_outage_limit_s``
                (nothing unwritten was committed).
            BrokerUnavailable: no broker at start.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._open()
        clean = False
        try:
            self._running = True
            self._loop(max_records, deadline)
            self._drain()
            clean = True
        finally:
            self._running = False
            self._close(clean)
        return self.stats

    def _open(self) -> None:
        self._wait_for_store(time.monotonic())
        ensure_topics(self.settings.kafka, [self.topic, self.dlq_topic])
        self._open_consumer()
        log.info("sink: group %s on topic %s -> %s", self.group_id, self.topic, self.lake.table_uri(BARS.name))

    def _open_consumer(self) -> None:
        cfg = self.settings.consumer
        session_ms = int(cfg.session_timeout_s * 1000)
        options: dict[str, Any] = {
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": max(1000, session_ms // 3),
            "max_poll_interval_ms": int(MAX_POLL_INTERVAL_S * 1000),
            "max_poll_records": _MAX_POLL_RECORDS,
            "client_id": f"tickcast-sink-{self.group_id}",
        }
        options.update(self._overrides)
        self._consumer = make_consumer(self.settings.kafka, self.group_id, **options)
        # Warm the metadata first: a group leader that joins before it knows the topic's
        # partitions assigns nothing, and must rely on a later metadata change to rejoin.
        self._consumer.partitions_for_topic(self.topic)
        self._consumer.subscribe([self.topic], listener=_listener(self._events))

    def _describe_group(self) -> Any:
        if self._admin is None:
            self._admin = make_admin(self.settings.kafka)
        return self._admin.describe_groups([self.group_id])[self.group_id]

    def _topic_partitions(self) -> set[int]:
        return set(self._consumer.partitions_for_topic(self.topic) or ())

    def _rejoin(self, reason: str) -> None:
        """Replace a consumer that fell out of its group without noticing (see tickcast.group_watch).

        Called only while the sink holds no partition, so nothing consumed is dropped; the new
        member resumes from the positions the table recorded.
        """
        log.warning("sink: %s; replacing the Kafka consumer to rejoin group %s", reason, self.group_id)
        self.stats.rejoins += 1
        self.metrics.rejoins.labels(self.topic).inc()
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False)
        for key in list(self._parts):
            self._forget(key)
        self._events.clear()
        self._open_consumer()
        self._watch.reset()

    def _wait_for_store(self, since: float) -> None:
        """Block until the lake answers; StoreUnavailable after the outage limit."""
        limit = self.settings.consumer.store_outage_limit_s
        delay = _BACKOFF_MIN_S
        while True:
            try:
                self.lake.check()
                tables.ensure_table(self.lake, BARS)
                return
            except StoreUnavailable as exc:
                if time.monotonic() - since >= limit:
                    raise StoreUnavailable(
                        f"the lake has been unreachable for {limit:.0f} s: {exc.message}",
                        exc.fix or "check the object store",
                    ) from None
                log.warning("lake unreachable (%s); retrying in %.1f s", exc.message, delay)
                if self.stop.wait(delay):
                    raise StoreUnavailable(f"stopped while the lake was unreachable: {exc.message}", exc.fix) from None
                delay = min(delay * 2, _BACKOFF_MAX_S)

    def _close(self, clean: bool) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        if self._consumer is not None:
            try:
                # No auto-commit: only flushes commit. Leaving the group lets others take over now.
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the consumer: %s", exc)
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except Exception as exc:
                log.warning("closing the DLQ producer: %s", exc)
            self._producer = None
        for key in list(self._parts):
            self._forget(key)
        log.info("sink stopped (%s): %s", "clean" if clean else "on error", self.stats.to_dict())

    def health(self) -> tuple[bool, dict[str, Any]]:
        """For ``/healthz``: running, polling, and the store not failing for long."""
        now = time.monotonic()
        parts = list(self._parts.items())  # a snapshot: the loop changes the dict meanwhile
        outage = now - self._failing_since if self._failing_since is not None else 0.0
        ok = (
            self._running
            and self._fatal is None
            and now - self._last_poll < 60.0
            and outage < self.settings.consumer.store_outage_limit_s
        )
        return ok, {
            "group": self.group_id,
            "topic": self.topic,
            "assigned": sorted(tp.partition for tp, _ in parts),
            "paused": sorted(tp.partition for tp, p in parts if p.paused),
            "store_outage_s": round(outage, 1),
            "group_seen": None
            if (view := self._watch.last_view) is None
            else {
                "state": view.state,
                "members": view.members,
                "owned_partitions": sorted(view.owned),
            },
            "stats": self.stats.to_dict(),
        }

    # -- the loop -----------------------------------------------------------------------

    def _loop(self, max_records: int | None, deadline: float | None) -> None:
        from kafka.errors import KafkaError

        delay = _BACKOFF_MIN_S
        spins = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            kept = self.stats.consumed - self.stats.dropped
            if max_records is not None and kept >= max_records:
                break
            limit = _MAX_POLL_RECORDS if max_records is None else max(1, max_records - kept)
            started, cpu = time.monotonic(), time.process_time()
            try:
                records = self._consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=min(limit, _MAX_POLL_RECORDS))
                delay = _BACKOFF_MIN_S
                # With no broker reachable, kafka-python's poll() spins instead of waiting
                # (an idle topic waits on a long-poll fetch and costs no CPU): back off.
                wall = time.monotonic() - started
                spinning = not records and wall > 0.05 and time.process_time() - cpu > 0.5 * wall
                spins = spins + 1 if spinning else 0
                if spins > 2:
                    self.stop.wait(min(0.1 * 2 ** (spins - 3), _BACKOFF_MAX_S / 2))
            except KafkaError as exc:
                log.warning("poll failed (%s); retrying in %.1f s", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                records = {}
            self._last_poll = time.monotonic()
            self._apply_rebalance()
            reason = self._watch.check(assigned=bool(self._parts))
            if reason is not None:
                self._rejoin(reason)
                continue
            # Records before positioning: a poll that rebalanced can return records fetched
            # from the old position; they are ignored while the partition is not ready.
            for tp, recs in records.items():
                self._ingest(tp, recs)
            self._position_partitions()
            self._seal_idle()
            self._flush_ready()
            self._report()

    def _apply_rebalance(self) -> None:
        while self._events:
            kind, tps = self._events.popleft()
            for tp in tps:
                dropped = self._forget(tp)
                if kind == "revoked":
                    if dropped:
                        log.info("partition %d revoked: dropped %d uncommitted records", tp.partition, dropped)
                    continue
                self._parts[tp] = _Partition(tp, self._new_buffer(tp.partition))
                # a later rebalance may already have taken it back (its "revoked" event follows)
                with contextlib.suppress(Exception):
                    self._consumer.pause(tp)
                # another sink may have written this partition's tickers meanwhile
                self.writer.reload()
                log.info("partition %d assigned", tp.partition)
        self.metrics.paused.labels(self.topic).set(sum(1 for p in self._parts.values() if p.paused))

    def _new_buffer(self, partition: int) -> PartitionBuffer:
        cfg = self.settings.consumer
        return PartitionBuffer(partition, cfg.flush_records, cfg.flush_bytes, self._window_ms)

    def _forget(self, tp: Any) -> int:
        part = self._parts.pop(tp, None)
        if part is None:
            return 0
        with contextlib.suppress(Exception):
            self.metrics.consumer_lag.remove(self.topic, str(tp.partition))
        dropped = len(part.buffer) + sum(b.records for b in part.pending)
        self.stats.dropped += dropped
        return dropped

    def _reposition(self, part: _Partition) -> None:
        """Drop what is uncommitted and re-read the partition from the table's position."""
        self.stats.dropped += len(part.buffer) + sum(b.records for b in part.pending)
        part.ready = False
        part.pending.clear()
        part.buffer = self._new_buffer(part.tp.partition)
        self._pause(part)

    def _pause(self, part: _Partition) -> None:
        if not part.paused:
            with contextlib.suppress(Exception):
                self._consumer.pause(part.tp)
            part.paused = True

    def _resume(self, part: _Partition) -> None:
        if part.paused:
            with contextlib.suppress(Exception):
                self._consumer.resume(part.tp)
            part.paused = False

    def _position_partitions(self) -> None:
        """Position every partition that is not ready at the table's recorded offset + 1."""
        from kafka.errors import KafkaError

        now = time.monotonic()
        waiting = [p for p in self._parts.values() if not p.ready and p.retry_at <= now]
        if not waiting:
            return
        timeout_ms = int(self.settings.kafka.request_timeout_s * 1000)
        try:
            table = tables.open_table(self.lake, BARS)
        except StoreUnavailable as exc:
            for part in waiting:
                self._retry_later(part, f"reading the table's positions failed ({exc.message})")
            return
        for part in waiting:
            try:
                committed = self._consumer.committed(part.tp, timeout_ms=timeout_ms)
                recorded = None if table is None else table.transaction_version(self._app_id(part.tp))
                start = max(
                    recorded + 1 if recorded is not None else -1,
                    committed if committed is not None else -1,
                )
                if start < 0:
                    # Always an explicit offset: a lazy seek_to_beginning() lets kafka-python
                    # hand back records it fetched (and parked while paused) before the seek.
                    start = self._consumer.beginning_offsets([part.tp], timeout_ms=timeout_ms)[part.tp]
            except KafkaError as exc:
                self._retry_later(part, f"reading the committed offset failed: {exc}")
                break  # one timeout per round is enough: keep polling meanwhile
            try:
                self._consumer.seek(part.tp, start)
            except Exception as exc:  # taken back by a rebalance in between: its "revoked" event follows
                log.info("partition %d not positioned (%s)", part.tp.partition, exc)
                continue
            part.next_offset = start
            part.ready, part.failures = True, 0
            self._resume(part)
            log.info("partition %d resumes at offset %d (table recorded %s)", part.tp.partition, start, recorded)

    def _retry_later(self, part: _Partition, why: str) -> None:
        part.failures += 1
        delay = min(_BACKOFF_MIN_S * 2 ** (part.failures - 1), _BACKOFF_MAX_S)
        part.retry_at = time.monotonic() + delay
        log.warning("partition %d: %s; retrying in %.1f s", part.tp.partition, why, delay)

    def _app_id(self, tp: Any) -> str:
        return app_id(self.group_id, tp.topic, tp.partition)

    # -- records ------------------------------------------------------------------------

    def _ingest(self, tp: Any, recs: list[Any]) -> None:
        from kafka.errors import KafkaError

        part = self._parts.get(tp)
        if part is None or not part.ready or not recs:
            return  # re-read once the partition is positioned
        if part.next_offset is not None and recs[0].offset != part.next_offset:
            if recs[0].offset > part.next_offset:
                # Retention, a compacted topic or transaction markers leave gaps; anything else
                # would be a client bug, so say so.
                log.warning("partition %d: expected offset %d, got %d", tp.partition, part.next_offset, recs[0].offset)
            else:  # never a record twice, whatever the fetcher had buffered before a seek
                recs = [r for r in recs if r.offset >= part.next_offset]
                if not recs:
                    return
        values = [r.value for r in recs]
        offsets = [r.offset for r in recs]
        timestamps = [r.timestamp for r in recs]
        decoded = decode_batch(values, offsets, tp.partition, timestamps)
        try:
            for reject in decoded.rejects:
                self._send_dlq(tp, recs[reject.index], reject)
        except (KafkaError, BrokerUnavailable) as exc:
            log.warning(
                "partition %d: DLQ send failed (%s); re-reading it from the table's position", tp.partition, exc
            )
            self._reposition(part)
            return
        sizes = [len(v) if v is not None else 0 for v in values]
        part.pending.extend(part.buffer.add(offsets, sizes, timestamps, decoded))
        part.next_offset = offsets[-1] + 1
        n, bad = len(recs), len(decoded.rejects)
        if self._started is None:
            self._started = (time.monotonic(), time.process_time())
        self.stats.consumed += n
        self.stats.valid += n - bad
        self.stats.rejected += bad
        self.metrics.records.labels(self.topic, "valid").inc(n - bad)
        if bad:
            self.metrics.records.labels(self.topic, "invalid").inc(bad)

    def _send_dlq(self, tp: Any, record: Any, reject: Reject) -> None:
        if self._producer is None:
            self._producer = make_producer(self.settings.kafka)
        headers = [
            ("reason", reject.reason.encode("utf-8", "replace")[:1000]),
            ("error", reject.error.encode("utf-8", "replace")[:2000]),
            ("original.topic", tp.topic.encode()),
            ("original.partition", str(tp.partition).encode()),
            ("original.offset", str(record.offset).encode()),
            ("original.timestamp", str(record.timestamp).encode()),
        ]
        key = record.key if record.key is not None or record.value is not None else b""  # Kafka needs one
        future = self._producer.send(self.dlq_topic, key=key, value=record.value, headers=headers)
        self._dlq_futures.append(future)
        self.metrics.dlq.labels(self.topic).inc()

    def _seal_idle(self) -> None:
        idle_s = self.settings.consumer.flush_interval_s
        now = time.monotonic()
        for part in self._parts.values():
            if part.ready:
                batch = part.buffer.seal_if_idle(idle_s, now)
                if batch is not None:
                    part.pending.append(batch)

    # -- writing and committing ---------------------------------------------------------

    def _flush_ready(self, force: bool = False) -> None:
        """Write every pending batch of every ready partition in one table commit."""
        now = time.monotonic()
        ready = [p for p in self._parts.values() if p.ready and p.pending]
        if not ready or (self._retry_at > now and not force):
            return
        if now - self._last_poll > MAX_POLL_INTERVAL_S / 2:
            log.warning("last poll is %.0f s old: not writing until the next poll", now - self._last_poll)
            return
        try:
            self._flush_dlq()
        except Exception as exc:
            # Some invalid record may not be in the DLQ: re-read everything uncommitted, so
            # every rejected record is sent again before its position is recorded.
            self._dlq_futures.clear()
            self.stats.commit_failures += 1
            self.metrics.commit_failures.labels(self.topic).inc()
            log.warning("DLQ send failed (%s): re-reading all partitions from the table's positions", exc)
            for part in self._parts.values():
                self._reposition(part)
            return
        batches = [(part, list(part.pending)) for part in ready]
        data = [b.table for _, group in batches for b in group if b.rows]
        txns = [(self._app_id(part.tp), group[-1].last) for part, group in batches]
        firsts = {self._app_id(part.tp): group[0].first for part, group in batches}
        started = time.monotonic()
        try:
            result = None
            if data:
                rows = pa.concat_tables(data).drop_columns([PARTITION_COLUMN, OFFSET_COLUMN])
                result = self.writer.write(rows, txns=txns, firsts=firsts)
        except AlreadyCommitted as exc:
            log.warning("%s: re-reading from the table's positions", exc.message)
            self.stats.commit_failures += 1
            self.metrics.commit_failures.labels(self.topic).inc()
            for part, _ in batches:
                self._reposition(part)
            return
        except StoreUnavailable as exc:
            self._store_failed(exc, [part for part, _ in batches])
            return
        self.metrics.flush_seconds.labels(self.topic).observe(time.monotonic() - started)
        if self._failing_since is not None:
            log.info("lake writes work again")
        self._failing_since, self._write_failures, self._retry_at = None, 0, 0.0
        for part, group in batches:
            for _ in group:
                part.pending.popleft()
            self._resume(part)
        self._committed(batches, result)

    def _store_failed(self, exc: StoreUnavailable, parts: list[_Partition]) -> None:
        """Backpressure: pause, keep the batches, retry with backoff; give up after the outage limit."""
        now = time.monotonic()
        self.stats.store_errors += 1
        self.metrics.store_errors.labels(self.topic).inc()
        if self._failing_since is None:
            self._failing_since = now
        for part in parts:
            self._pause(part)
        limit = self.settings.consumer.store_outage_limit_s
        if now - self._failing_since >= limit:
            self._fatal = exc.message
            raise StoreUnavailable(
                f"the lake has failed for {now - self._failing_since:.0f} s (limit {limit:.0f} s); "
                f"nothing unwritten was recorded: {exc.message}",
                exc.fix or "bring the object store back, then restart the sink",
            ) from None
        self._write_failures += 1
        delay = min(_BACKOFF_MIN_S * 2 ** (self._write_failures - 1), _BACKOFF_MAX_S)
        self._retry_at = now + delay
        log.warning("lake write failed (%s); retrying in %.1f s", exc.message, delay)

    def _committed(self, batches: list[tuple[_Partition, list[Batch]]], result: Any) -> None:
        """Bookkeeping after a table commit: Kafka offsets, stats, metrics, running compaction."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        now = time.monotonic()
        offsets = {
            part.tp: OffsetAndMetadata(group[-1].last + 1, f"tickcast-sink {self.group_id}", -1)
            for part, group in batches
        }
        try:
            self._consumer.commit(offsets, timeout_ms=int(self.settings.kafka.request_timeout_s * 1000))
        except (KafkaError, BrokerUnavailable) as exc:
            # Harmless: the table holds the positions; the group's offsets only lag behind.
            log.warning("committing Kafka offsets failed (%s); the table has the positions", exc)
        if self._started is not None:
            self.stats.active_s = round(now - self._started[0], 3)
            self.stats.cpu_s = round(time.process_time() - self._started[1], 3)
        if result is not None:
            self.stats.commits += 1
            self.stats.merges += int(result.merged)
            if result.merged:
                self.metrics.merges.labels(self.topic).inc()
        for _part, group in batches:
            for batch in group:
                self.stats.flushes += 1
                self.stats.committed += batch.records
                self.metrics.committed.labels(self.topic).inc(batch.records)
                self.metrics.flushes.labels(self.topic, batch.reason).inc()
                self.metrics.commit_lag.labels(self.topic).observe(now - batch.opened_at)
        if result is not None:
            self._compact_hot_partitions(result.partitions)

    def _compact_hot_partitions(self, partitions: list[tuple[str, ...]]) -> None:
        every = self.settings.consumer.compact_after_commits
        if every <= 0:
            return
        for values in partitions:
            self._commits_per_partition[values] += 1
            if self._commits_per_partition[values] < every:
                continue
            self._commits_per_partition[values] = 0
            try:
                removed = maintenance.compact_small_files(self.lake, BARS, values)
            except StoreUnavailable as exc:
                log.warning("compaction of %s skipped: %s", "/".join(values), exc.message)
                continue
            if removed:
                self.stats.compactions += 1
                self.metrics.compactions.labels(self.topic).inc()

    def _flush_dlq(self) -> None:
        if not self._dlq_futures:
            return
        from kafka.errors import KafkaError

        self._producer.flush(timeout=self.settings.kafka.request_timeout_s * 3)
        failed = [f for f in self._dlq_futures if not f.succeeded()]
        if failed:
            exc = failed[0].exception
            raise exc if isinstance(exc, KafkaError) else KafkaError(f"DLQ send failed: {exc}")
        self._dlq_futures.clear()

    def _drain(self) -> None:
        """On stop: seal every open buffer, write and commit it (bounded wait for the store)."""
        for part in self._parts.values():
            if part.ready and len(part.buffer):
                part.pending.append(part.buffer.seal("stop"))
        deadline = time.monotonic() + min(_DRAIN_GRACE_S, self.settings.consumer.store_outage_limit_s)
        while any(p.ready and p.pending for p in self._parts.values()):
            if time.monotonic() >= deadline:
                left = sum(b.records for p in self._parts.values() for b in p.pending)
                log.warning("stopping with %d records unwritten; they stay unrecorded and will be re-read", left)
                return
            self._flush_ready(force=True)
            if any(p.ready and p.pending for p in self._parts.values()):
                time.sleep(0.5)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update >= 1.0:
            self._last_lag_update = now
            for tp, part in self._parts.items():
                if not part.ready or part.next_offset is None:
                    continue
                with contextlib.suppress(Exception):
                    high = self._consumer.highwater(tp)
                    if high is not None:
                        self.metrics.consumer_lag.labels(self.topic, str(tp.partition)).set(
                            max(0, high - part.next_offset)
                        )
            self.metrics.paused.labels(self.topic).set(sum(1 for p in self._parts.values() if p.paused))
        if now - self._last_report >= 30.0:
            self._last_report = now
            log.info("sink: %s", self.stats.to_dict())


def serve(
    settings: Settings,
    max_records: int | None = None,
    timeout: float | None = None,
    group_id: str | None = None,
    topic: str | None = None,
) -> SinkStats:
    """Run the sink as a service: signals stop it, metrics and health on ``consumer.metrics_port``."""
    from tickcast.service import ObservabilityServer

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kafka-python logs every connection and rebalance step at INFO; keep its warnings.
        logging.getLogger("kafka").setLevel(logging.WARNING)
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)  # GIL-delay notices
    stop = StopFlag().install()
    sink = Sink(settings, group_id=group_id, topic=topic, stop=stop)
    try:
        server = ObservabilityServer(settings.consumer.metrics_port, sink.health, host=settings.metrics_host).start()
    except OSError as exc:
        raise ConfigError(
            "TICKCAST_CONSUMER__METRICS_PORT",
            f"port {settings.consumer.metrics_port} is not available ({exc.strerror or exc})",
            "give each sink on a machine its own port, or 0 to disable metrics",
        ) from None
    try:
        return sink.run(max_records=max_records, timeout=timeout)
    finally:
        server.stop()


__all__ = ["MAX_POLL_INTERVAL_S", "Sink", "SinkStats", "app_id", "serve"]
