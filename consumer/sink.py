"""The exactly-once Kafka-to-lake sink: bars from Kafka into Parquet files in the lake.

What it does
------------
The sink joins the consumer group ``consumer.group_id`` on ``kafka.topic_bars``. It
decodes each poll in bulk (:mod:`consumer.decode`), sends invalid records to
``kafka.topic_dlq`` with the reason in a header, and buffers valid bars per Kafka
partition (:mod:`consumer.buffer`). A sealed batch (one *flush*) is written as one
Parquet file per (interval, ticker, date) folder (:mod:`consumer.writer`), all named
``bars-{topic}-p{partition}-o{first offset}.parquet``; then the offsets are committed.

Why every bar lands exactly once
--------------------------------
Write ``C(p)`` for the group's committed offset of partition ``p``. The invariant is:

    (I) the committed files of ``p`` hold exactly the valid records of ``p`` with
        offsets below ``C(p)``, each once; every other file of ``p`` is listed in a
        pending marker whose ``first`` offset is ``>= C(p)``.

* **Writing keeps (I).** A flush covering ``[first, last]`` has ``first >= C(p)``
  (the partition is consumed from ``C(p)`` and flushes follow each other without gaps).
  It writes its pending marker *before* any file, so every new file is covered by a
  marker with ``first >= C(p)``. Each file appears atomically (temp file + rename; an S3
  PUT is visible only once complete), so a reader never sees half a file.
* **Committing keeps (I).** Offsets are committed (synchronously, explicit
  ``OffsetAndMetadata(last + 1)``) only after *every* file of the flush is written and
  the DLQ producer has flushed. The commit moves ``C(p)`` to ``last + 1``, which turns
  exactly that flush's files into committed files holding offsets ``[first, last]``.
  No commit happens after a failure: a failed write leaves ``C(p)`` where it was.
* **Crashes keep (I).** A crash (``kill -9``) at any point leaves at worst files
  covered by a marker with ``first >= C(p)``; whether a commit reached the broker or not
  is decided by the broker alone, and the marker tells which case holds.
* **Before consuming a partition** (every assignment, every failed commit), the owner
  reads ``C(p)`` from the broker and *recovers*: it deletes every file listed in a
  marker with ``first >= C(p)`` (uncommitted leftovers, whatever their batch
  boundaries were) and drops markers with ``last < C(p)`` (committed; only the marker's
  deletion was lost). Now the lake holds exactly the records below ``C(p)``, and
  consumption restarts at ``C(p)``, so nothing is lost and nothing is written twice.
  "Restarts at ``C(p)``" is enforced, not assumed: the partition stays paused until it is
  recovered, records a poll returns for it meanwhile are discarded, and it is positioned
  with an explicit ``seek(C(p))`` (the log start when nothing is committed), so the client
  library can only hand over records from ``C(p)`` on.
* **Rebalances.** On revocation the sink *drops* its uncommitted buffers instead of
  flushing them: the new owner re-reads from ``C(p)``. Revocation happens inside
  ``poll()``, and the sink never polls between writing a flush and committing it, so a
  well-behaved previous owner has finished writing before the new owner recovers.
* **A zombie** (an owner paused past ``max.poll.interval.ms``, who lost the partition
  without noticing) is fenced three ways: its commit is rejected by the broker
  (stale generation); the sink stops writing objects once its last poll is older than
  half of ``max.poll.interval.ms``; and because batch cuts are a deterministic function
  of the records (count, bytes, Kafka record time; see :mod:`consumer.buffer`), the
  new owner re-writes the very same object names with the very same content. (Only a
  wall-clock idle cut is not reproducible; a process frozen longer than the session
  timeout right after such a cut, which then resumes mid-write, is the one case this
  design narrows rather than excludes, as does any sink without fencing in the store.)
* **Broker restarts** surface as failed polls or commits: a failed commit is treated
  like a crash of that flush (recover, then re-read), so it is safe whether or not the
  commit reached the broker.

Late and out-of-order bars are written with their batch into the folder of their own
day; a file's rows are in offset order. The DLQ is at-least-once: a replayed flush may
send an invalid record to the DLQ again.

Backpressure: when the store fails, the partition is paused (the consumer keeps
polling, so it stays in the group), its batches are kept and retried with backoff; an
outage longer than ``consumer.store_outage_limit_s`` stops the sink with
:class:`StoreUnavailable`, without committing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from consumer.buffer import Batch, PartitionBuffer
from consumer.decode import Reject, decode_batch
from consumer.metrics import sink_metrics
from consumer.writer import LakeWriter, WriteResult
from tickcast.errors import BrokerUnavailable, ConfigError, StoreUnavailable
from tickcast.kafka import ensure_topics, make_consumer, make_producer
from tickcast.lake import Lake
from tickcast.service import StopFlag
from tickcast.settings import Settings

log = logging.getLogger(__name__)

#: How long the group waits for a member between polls (also the longest a rebalance waits
#: for a member that does not rejoin); the sink stops writing at half of it. The loop polls
#: every fraction of a second and bounds its writes, so a minute is plenty.
MAX_POLL_INTERVAL_S = 60.0
_POLL_TIMEOUT_MS = 200
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
_DRAIN_GRACE_S = 20.0
_MAX_POLL_RECORDS = 20_000


class _Stale(Exception):
    """The last poll is too old to keep writing: the partition may be someone else's now."""


@dataclass(slots=True)
class SinkStats:
    """Counters of one :meth:`Sink.run`, for callers and tests."""

    consumed: int = 0
    dropped: int = 0  # consumed, then dropped uncommitted (rebalance, failed commit): re-read later
    valid: int = 0
    rejected: int = 0
    committed: int = 0
    flushes: int = 0
    files: int = 0
    bytes_written: int = 0
    recovered_files: int = 0
    commit_failures: int = 0
    store_errors: int = 0
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
    ready: bool = False  # recovered and positioned at the committed offset
    pending: collections.deque[Batch] = field(default_factory=collections.deque)
    retry_at: float = 0.0
    failures: int = 0
    failing_since: float | None = None
    paused: bool = True
    next_offset: int | None = None


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
    """Consume bars from Kafka and write them into the lake, exactly once.

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
        self.writer = LakeWriter(self.lake, self.topic)
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
        self._started: tuple[float, float] | None = None
        cfg = settings.consumer
        self._window_ms = max(1, int(cfg.flush_interval_s * 1000))

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, max_records: int | None = None, timeout: float | None = None) -> SinkStats:
        """Consume until stopped, ``max_records`` records are consumed, or ``timeout`` seconds pass.

        Whatever was consumed is then flushed and committed, and the clients are closed.

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
        cfg = self.settings.consumer
        session_ms = int(cfg.session_timeout_s * 1000)
        options: dict[str, Any] = {
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": max(1000, session_ms // 3),
            "max_poll_interval_ms": int(MAX_POLL_INTERVAL_S * 1000),
            "max_poll_records": _MAX_POLL_RECORDS,
            "client_id": f"tickcast-sink-{self.writer.owner}",
        }
        options.update(self._overrides)
        self._consumer = make_consumer(self.settings.kafka, self.group_id, **options)
        # Warm the metadata first: a group leader that joins before it knows the topic's
        # partitions assigns nothing, and must rely on a later metadata change to rejoin.
        self._consumer.partitions_for_topic(self.topic)
        self._consumer.subscribe([self.topic], listener=_listener(self._events))
        log.info("sink: group %s on topic %s -> %s", self.group_id, self.topic, self.lake.url)

    def _wait_for_store(self, since: float) -> None:
        """Block until the lake answers; StoreUnavailable after the outage limit."""
        limit = self.settings.consumer.store_outage_limit_s
        delay = _BACKOFF_MIN_S
        while True:
            try:
                self.lake.check()
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
        self.writer.close()
        log.info("sink stopped (%s): %s", "clean" if clean else "on error", self.stats.to_dict())

    def health(self) -> tuple[bool, dict[str, Any]]:
        """For ``/healthz``: running, polling, and the store not failing for long."""
        now = time.monotonic()
        parts = list(self._parts.items())  # a snapshot: the loop changes the dict meanwhile
        failing = [p.failing_since for _, p in parts if p.failing_since is not None]
        outage = now - min(failing) if failing else 0.0
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
            # Records before resets: a poll that rebalanced can return records fetched from
            # the old position; they are ignored while the partition is not ready, and the
            # reset then positions it at the committed offset for the next poll.
            for tp, recs in records.items():
                self._ingest(tp, recs)
            self._reset_partitions()
            self._seal_idle()
            self._flush_ready()
            self._report()

    def _apply_rebalance(self) -> None:
        while self._events:
            kind, tps = self._events.popleft()
            for tp in tps:
                if kind == "revoked":
                    dropped = self._forget(tp)
                    if dropped:
                        log.info("partition %d revoked: dropped %d uncommitted records", tp.partition, dropped)
                else:
                    self._forget(tp)
                    cfg = self.settings.consumer
                    self._parts[tp] = _Partition(
                        tp, PartitionBuffer(tp.partition, cfg.flush_records, cfg.flush_bytes, self._window_ms)
                    )
                    self._consumer.pause(tp)
                    log.info("partition %d assigned", tp.partition)
        self.metrics.paused.labels(self.topic).set(sum(1 for p in self._parts.values() if p.paused))

    def _forget(self, tp: Any) -> int:
        part = self._parts.pop(tp, None)
        if part is None:
            return 0
        with contextlib.suppress(Exception):
            self.metrics.consumer_lag.remove(self.topic, str(tp.partition))
        dropped = len(part.buffer) + sum(b.records for b in part.pending)
        self.stats.dropped += dropped
        return dropped

    def _need_reset(self, part: _Partition) -> None:
        """Drop what is uncommitted and re-read the partition from its committed offset."""
        cfg = self.settings.consumer
        self.stats.dropped += len(part.buffer) + sum(b.records for b in part.pending)
        part.ready = False
        part.pending.clear()
        part.buffer = PartitionBuffer(part.tp.partition, cfg.flush_records, cfg.flush_bytes, self._window_ms)
        part.retry_at = 0.0
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

    def _reset_partitions(self) -> None:
        """Recover and position every partition that is not ready (new, or after a failed commit)."""
        from kafka.errors import KafkaError

        now = time.monotonic()
        broker_down = False
        for part in list(self._parts.values()):
            if part.ready or part.retry_at > now:
                continue
            if broker_down:  # one timeout per round is enough: keep polling meanwhile
                self._retry_later(part, "waiting for the broker")
                continue
            timeout_ms = int(self.settings.kafka.request_timeout_s * 1000)
            try:
                committed = self._consumer.committed(part.tp, timeout_ms=timeout_ms)
                # Always an explicit offset: a lazy seek_to_beginning() lets kafka-python hand
                # back records it fetched (and parked while paused) before the seek.
                start = committed
                if start is None:
                    start = self._consumer.beginning_offsets([part.tp], timeout_ms=timeout_ms)[part.tp]
                result = self.writer.recover(part.tp.partition, committed)
            except StoreUnavailable as exc:
                self._store_failed(part, exc, "recovery")
                continue
            except KafkaError as exc:
                broker_down = True
                self._retry_later(part, f"reading the committed offset failed: {exc}")
                continue
            self.stats.recovered_files += result.deleted_files + result.trimmed_files
            self.metrics.recovered_files.labels(self.topic).inc(result.deleted_files + result.trimmed_files)
            self._consumer.seek(part.tp, start)
            part.next_offset = start
            part.ready, part.failures, part.failing_since = True, 0, None
            self._resume(part)

    def _retry_later(self, part: _Partition, why: str) -> None:
        part.failures += 1
        delay = min(_BACKOFF_MIN_S * 2 ** (part.failures - 1), _BACKOFF_MAX_S)
        part.retry_at = time.monotonic() + delay
        log.warning("partition %d: %s; retrying in %.1f s", part.tp.partition, why, delay)

    def _store_failed(self, part: _Partition, exc: StoreUnavailable, what: str) -> None:
        """Backpressure: pause the partition, keep its batches, retry; give up after the outage limit."""
        now = time.monotonic()
        self.stats.store_errors += 1
        self.metrics.store_errors.labels(self.topic).inc()
        if part.failing_since is None:
            part.failing_since = now
        self._pause(part)
        limit = self.settings.consumer.store_outage_limit_s
        if now - part.failing_since >= limit:
            self._fatal = exc.message
            raise StoreUnavailable(
                f"the lake has failed for {now - part.failing_since:.0f} s (limit {limit:.0f} s); "
                f"nothing unwritten was committed: {exc.message}",
                exc.fix or "bring the object store back, then restart the sink",
            ) from None
        self._retry_later(part, f"lake {what} failed ({exc.message})")

    # -- records ------------------------------------------------------------------------

    def _ingest(self, tp: Any, recs: list[Any]) -> None:
        from kafka.errors import KafkaError

        part = self._parts.get(tp)
        if part is None or not part.ready or not recs:
            return  # re-read after the partition is recovered and positioned
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
        decoded = decode_batch(values, offsets, tp.partition)
        try:
            for reject in decoded.rejects:
                self._send_dlq(tp, recs[reject.index], reject)
        except (KafkaError, BrokerUnavailable) as exc:
            log.warning(
                "partition %d: DLQ send failed (%s); re-reading it from the committed offset", tp.partition, exc
            )
            self._need_reset(part)
            return
        sizes = [len(v) if v is not None else 0 for v in values]
        timestamps = [r.timestamp for r in recs]
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

    # -- flushing and committing --------------------------------------------------------

    def _check_fresh(self) -> None:
        if time.monotonic() - self._last_poll > MAX_POLL_INTERVAL_S / 2:
            raise _Stale()

    def _flush_ready(self, force: bool = False) -> None:
        """Write every pending batch whose retry time has come, then commit what was written."""
        now = time.monotonic()
        done: list[tuple[_Partition, Batch, WriteResult]] = []
        try:
            for part in list(self._parts.values()):
                if not part.ready or not part.pending or (part.retry_at > now and not force):
                    continue
                try:
                    while part.pending:
                        batch = part.pending[0]
                        started = time.monotonic()
                        result = self.writer.write(batch, before_each=self._check_fresh)
                        self.metrics.flush_seconds.labels(self.topic).observe(time.monotonic() - started)
                        part.pending.popleft()
                        done.append((part, batch, result))
                except StoreUnavailable as exc:
                    self._store_failed(part, exc, "write")
                    continue
                if part.failing_since is not None:
                    log.info("partition %d: lake writes work again", part.tp.partition)
                part.failures, part.failing_since, part.retry_at = 0, None, 0.0
                self._resume(part)
        except _Stale:
            log.warning("last poll is %.0f s old: stopping writes until the next poll", now - self._last_poll)
        finally:
            if done:
                self._commit(done)

    def _commit(self, done: list[tuple[_Partition, Batch, WriteResult]]) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets: dict[Any, Any] = {}
        for part, batch, _ in done:
            offsets[part.tp] = OffsetAndMetadata(batch.last + 1, f"tickcast-sink {self.writer.owner}", -1)
        try:
            self._flush_dlq()
        except (KafkaError, BrokerUnavailable) as exc:
            # Some invalid record may not be in the DLQ: re-read everything uncommitted, so
            # every rejected record is sent again before its offset is committed.
            self._dlq_futures.clear()
            self.stats.commit_failures += 1
            self.metrics.commit_failures.labels(self.topic).inc()
            log.warning("DLQ send failed (%s): re-reading all partitions from the committed offsets", exc)
            self.stats.dropped += sum(batch.records for _, batch, _ in done)
            for part in self._parts.values():
                self._need_reset(part)
            return
        try:
            self._consumer.commit(offsets, timeout_ms=int(self.settings.kafka.request_timeout_s * 1000))
        except (KafkaError, BrokerUnavailable) as exc:
            # We cannot tell whether the commit reached the broker: recover from what the
            # broker says, exactly as after a crash.
            self.stats.commit_failures += 1
            self.metrics.commit_failures.labels(self.topic).inc()
            log.warning("commit failed (%s): re-reading %d partition(s) from the committed offsets", exc, len(offsets))
            self.stats.dropped += sum(batch.records for _, batch, _ in done)
            for tp in offsets:
                owned = self._parts.get(tp)
                if owned is not None:
                    self._need_reset(owned)
            return
        now = time.monotonic()
        if self._started is not None:
            self.stats.active_s = round(now - self._started[0], 3)
            self.stats.cpu_s = round(time.process_time() - self._started[1], 3)
        self.writer.confirm([batch for _, batch, result in done if result.files])
        for _part, batch, result in done:
            self.stats.flushes += 1
            self.stats.committed += batch.records
            self.stats.files += len(result.files)
            self.stats.bytes_written += result.bytes_written
            self.metrics.committed.labels(self.topic).inc(batch.records)
            self.metrics.files_written.labels(self.topic).inc(len(result.files))
            self.metrics.bytes_written.labels(self.topic).inc(result.bytes_written)
            self.metrics.flushes.labels(self.topic, batch.reason).inc()
            self.metrics.commit_lag.labels(self.topic).observe(now - batch.opened_at)
            log.debug(
                "partition %d offsets %d-%d committed: %d bars in %d files (%s)",
                batch.partition,
                batch.first,
                batch.last,
                batch.rows,
                len(result.files),
                batch.reason,
            )

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
                log.warning("stopping with %d records unwritten; they stay uncommitted and will be re-read", left)
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
        server = ObservabilityServer(settings.consumer.metrics_port, sink.health).start()
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


__all__ = ["MAX_POLL_INTERVAL_S", "Sink", "SinkStats", "serve"]
