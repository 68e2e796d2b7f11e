"""The Kafka side of the producer: validated bars to ``bars``, everything else to the DLQ.

:class:`BarPublisher` wraps one kafka-python producer configured for durability
(acks=all, idempotence) and throughput (lz4, large batches, linger). Delivery failures
are never swallowed: futures are checked in bulk (cheaper than a callback per record) and
the first failure raises :class:`~tickcast.errors.BrokerUnavailable` from the next
``publish``/``flush``. Bars that fail validation go to the dead-letter topic with headers
``reason``, ``source`` and ``kind`` and are counted; they never reach ``bars``.

The dead-letter topic has its own sender (:class:`DeadLetters`): its own Kafka client and
thread, so a DLQ that cannot be written never blocks or fails the bars. A payload larger
than ``producer.dlq_max_bytes`` is truncated to fit (headers ``truncated`` and
``original.size`` say so); failed writes are retried with bounded exponential back-off,
and the producer's ``/healthz`` turns unhealthy once they have failed for
``producer.dlq_unhealthy_after_s``.

Partitions are chosen here with Kafka's own murmur2 key hash (the same mapping the Java
client and kafka-python's default partitioner use) and cached per ticker, which takes
the hash off the per-record path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from producer.metrics import ProducerMetrics, get_metrics
from tickcast.contracts import Bar
from tickcast.errors import BrokerUnavailable, InvalidBar
from tickcast.settings import KafkaSettings, ProducerSettings

log = logging.getLogger(__name__)

#: Check outstanding delivery futures after this many sends.
CHECK_EVERY = 8192
#: ... and at least this often, in seconds, so metrics and failures of slow sources stay current.
CHECK_INTERVAL_S = 1.0
#: Room a DLQ record's key, headers and Kafka's record and batch framing take beyond the value.
DLQ_FRAMING_BYTES = 2048
#: The smallest value budget a too-large answer from the broker shrinks a DLQ record to.
DLQ_MIN_BYTES = 1024
#: Upper bound of one back-off between DLQ retries, in seconds.
DLQ_BACKOFF_MAX_S = 30.0
#: Rejected records held while the DLQ cannot be written (count, bytes); beyond, the oldest
#: are dropped, counted (tickcast_producer_dlq_dropped) and logged, so memory stays bounded.
DLQ_MAX_QUEUED = 10_000
DLQ_MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: Records sent to the DLQ per round of the sender thread.
_DLQ_BATCH = 500


def producer_config(producer: ProducerSettings) -> dict[str, Any]:
    """kafka-python options from the producer settings (on top of tickcast.kafka's durable defaults)."""
    return {
        "linger_ms": producer.linger_ms,
        "batch_size": producer.batch_size,
        "compression_type": None if producer.compression == "none" else producer.compression,
        "max_request_size": 8 * 1024 * 1024,
    }


class BarPublisher:
    """Publish bars keyed by ticker; route invalid input to the DLQ; surface delivery failures.

    Args:
        kafka: broker connection and topic names.
        producer: batching and compression settings.
        source: the bar source, recorded in metrics and in DLQ headers.
        topic: override of ``kafka.topic_bars``.
        dlq_topic: override of ``kafka.topic_dlq``.
        client: an existing KafkaProducer to use (it is closed by :meth:`close`).
        metrics: the metrics to update (default: the process-wide ones).
        dlq_client: a KafkaProducer for the DLQ (default: one made on the first reject).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        producer: ProducerSettings,
        source: str,
        *,
        topic: str | None = None,
        dlq_topic: str | None = None,
        client: Any = None,
        metrics: ProducerMetrics | None = None,
        dlq_client: Any = None,
    ) -> None:
        from tickcast.kafka import make_producer

        self.kafka = kafka
        self.source = source
        self.topic = topic or kafka.topic_bars
        self.dlq_topic = dlq_topic or kafka.topic_dlq
        self.client = client if client is not None else make_producer(kafka, **producer_config(producer))
        self.metrics = metrics or get_metrics()
        self._m = self.metrics.source(source)
        self._source_header = source.encode()
        self._pending: deque[Any] = deque()
        self._since_check = 0
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        self._partitions: dict[str, int] = {}
        self._partition_cache: dict[tuple[str, str], int] = {}
        self._failure: BrokerUnavailable | None = None
        self._unreported_out = 0
        self._last_end = 0.0
        self.sent = 0
        self.rejected = 0
        self.closed = False
        self.dlq = DeadLetters(kafka, producer, self.dlq_topic, self.metrics, client=dlq_client)

    # -- partitions -----------------------------------------------------------------
    def _num_partitions(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            try:
                parts = self.client.partitions_for(topic)
            except Exception as exc:
                raise BrokerUnavailable(
                    f"no metadata for topic {topic!r} from {self.kafka.bootstrap_servers} ({type(exc).__name__})",
                    "create the topic (`tickcast produce` does it on start) or check the broker",
                ) from None
            count = len(parts)
            self._partitions[topic] = count
        return count

    def partition_for(self, ticker: str, topic: str | None = None) -> int:
        """The partition of ``ticker``'s records: Kafka's murmur2 key hash, cached per ticker."""
        topic = topic or self.topic
        cached = self._partition_cache.get((topic, ticker))
        if cached is None:
            from kafka.partitioner.default import murmur2

            cached = (murmur2(ticker.encode()) & 0x7FFFFFFF) % self._num_partitions(topic)
            self._partition_cache[(topic, ticker)] = cached
        return cached

    # -- publishing -----------------------------------------------------------------
    def publish(self, bar: Bar) -> bool:
        """Validate ``bar`` and send it to the bars topic; an invalid bar goes to the DLQ.

        Returns:
            True when the bar went to the bars topic, False when it went to the DLQ.
        """
        try:
            bar.validate()
        except InvalidBar as exc:
            self.reject(_bar_payload(bar), exc.reason, key=bar.ticker if isinstance(bar.ticker, str) else None)
            return False
        self.send_encoded(bar.ticker, bar.to_json(), bar.end.timestamp())
        return True

    def send_encoded(self, ticker: str, value: bytes, end_ts: float) -> None:
        """Send one already validated and serialized bar (the fast path of bulk sources).

        Args:
            ticker: the record key.
            value: the bar's JSON (:meth:`Bar.to_json` form).
            end_ts: the bar's end as Unix seconds, for the lag metric.
        """
        if self._failure is not None:
            raise self._failure
        partition = self._partition_cache.get((self.topic, ticker))
        if partition is None:
            partition = self.partition_for(ticker)
        self._pending.append(self.client.send(self.topic, value=value, key=ticker.encode(), partition=partition))
        self.sent += 1
        self._unreported_out += 1
        if end_ts > self._last_end:
            self._last_end = end_ts
        self._since_check += 1
        # bulk sources check every CHECK_EVERY sends; slow ones (a live feed) at least every second
        if self._since_check >= CHECK_EVERY or time.monotonic() >= self._next_check:
            self._check(block=False)

    def send_record(self, topic: str, key: str, value: bytes) -> None:
        """Send one record to another topic (e.g. open/close summaries), delivery checked like bars."""
        if self._failure is not None:
            raise self._failure
        self._pending.append(
            self.client.send(topic, value=value, key=key.encode(), partition=self.partition_for(key, topic))
        )

    def reject(
        self, payload: bytes | str | dict[str, Any] | Any, reason: str, key: str | None = None, kind: str = "invalid"
    ) -> None:
        """Send a record that failed validation to the DLQ, with its reason in a header.

        Never blocks on the DLQ and never raises because of it (see :class:`DeadLetters`).

        Args:
            payload: the record as received (bytes are sent as they are, anything else as JSON).
            reason: why it was rejected, short and specific (header ``reason``).
            key: the ticker when known.
            kind: ``invalid`` (parsed but breaks the contract) or ``malformed`` (not parseable).
        """
        if self._failure is not None:
            raise self._failure
        headers = [
            ("reason", reason.encode("utf-8", "replace")[:1000]),
            ("source", self._source_header),
            ("kind", kind.encode()),
        ]
        # the key is a ticker, but a junk feed can put anything in ``sym``: keep it short
        self.dlq.put(encode_payload(payload), key.encode("utf-8", "replace")[:256] if key else None, headers)
        self.rejected += 1
        self.metrics.bars_rejected.labels(self.source, kind).inc()
        # a broken feed can reject thousands: log the first few, then every thousandth
        if self.rejected <= 10 or self.rejected % 1000 == 0:
            log.warning("%s record #%d to %s: %s", kind, self.rejected, self.dlq_topic, reason)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the publisher is healthy (the DLQ has not been failing too long), and details."""
        return self.dlq.health()

    # -- delivery -------------------------------------------------------------------
    def _check(self, block: bool) -> None:
        """Drop acknowledged futures; on a failure remember it and raise.

        ``block=False`` only looks at the finished prefix of the queue (cheap, during sends);
        ``block=True`` (after a flush) checks every outstanding future.
        """
        pending = self._pending
        failed: list[Any] = []
        not_done = 0
        if block:
            for future in pending:
                if not future.is_done:
                    not_done += 1
                elif future.exception is not None:
                    failed.append(future)
            pending.clear()
        else:
            while pending and pending[0].is_done:
                future = pending.popleft()
                if future.exception is not None:
                    failed.append(future)
        self._since_check = 0
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        self._report()
        if failed:
            self._fail(len(failed), f"{type(failed[0].exception).__name__}: {failed[0].exception}")
        if not_done:
            self._fail(not_done, "records still unacknowledged after the flush")

    def _fail(self, count: int, detail: str) -> None:
        self.metrics.delivery_failures.labels(self.topic).inc(count)
        self._failure = BrokerUnavailable(
            f"Kafka did not acknowledge {count} record(s) to {self.topic} at {self.kafka.bootstrap_servers}: {detail}",
            "check the broker's health and the topic; the producer stops rather than lose bars",
        )
        raise self._failure

    def _report(self) -> None:
        if self._unreported_out:
            self._m.bars_out.inc(self._unreported_out)
            self._unreported_out = 0
        if self._last_end:
            self._m.last_bar_end.set(self._last_end)
            self._m.lag_seconds.set(max(0.0, time.time() - self._last_end))

    def flush(self, timeout: float | None = None) -> None:
        """Send everything buffered and wait for the broker's acknowledgement.

        Raises:
            BrokerUnavailable: when any record since the last check failed, or the flush timed out.
        """
        if self._failure is not None:
            raise self._failure
        from kafka.errors import KafkaTimeoutError

        try:
            self.client.flush(timeout=timeout)
        except KafkaTimeoutError:
            self._fail(sum(1 for f in self._pending if not f.is_done), f"flush timed out after {timeout} s")
        self._check(block=True)
        # rejected records are on their way too, unless the DLQ is failing (then they wait in
        # its queue and /healthz says so): a broken DLQ must not hold up the bars
        self.dlq.wait_idle(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then close the Kafka client (idempotent). Raises like :meth:`flush`."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._failure is None:
                self.flush(timeout)
        finally:
            try:
                self.dlq.close(timeout)
            finally:
                self.client.close(timeout=timeout)

    def __enter__(self) -> BarPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            # already failing: do not mask the original error with a flush error
            try:
                self.close()
            except Exception as close_exc:
                log.error("while closing after an error: %s", close_exc)


def encode_payload(payload: Any) -> bytes:
    """A rejected record as bytes: bytes as they are, text as UTF-8, anything else as JSON.

    Never raises: a value JSON cannot encode (a 5000-digit integer, nesting deeper than the
    encoder allows) becomes a short note saying so, so the reason still reaches the DLQ.
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8", "replace")
    try:
        return json.dumps(payload, default=str, separators=(",", ":")).encode("utf-8", "replace")
    except (ValueError, TypeError, RecursionError) as exc:
        return f'{{"unencodable":"{type(payload).__name__}","error":"{type(exc).__name__}"}}'.encode()


@dataclass
class _Letter:
    """One record for the DLQ."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    size: int  # the payload's size before any truncation


class DeadLetters:
    """Writes rejected records to the dead-letter topic from a thread of its own.

    - :meth:`put` never blocks and never raises: it truncates the payload to fit
      ``producer.dlq_max_bytes`` (headers ``truncated: true`` and ``original.size``) and
      queues it. The queue is bounded (:data:`DLQ_MAX_QUEUED`, :data:`DLQ_MAX_QUEUED_BYTES`).
    - The thread sends with its own KafkaProducer (uncompressed, so the size bound is exact;
      not idempotent, so a "too large" answer does not poison it), so records stuck for a DLQ
      that cannot be written never hold up the bars' flush.
    - A failed write is retried with bounded exponential back-off (full jitter, at most
      ``backoff_max_s``); delivery is at least once. A broker that says a record is too
      large (the topic's ``max.message.bytes`` is below ``dlq_max_bytes``) halves the budget.
    - :meth:`health` is False once writes have kept failing longer than
      ``producer.dlq_unhealthy_after_s``; the first successful write makes it healthy again.

    Args:
        kafka: broker connection.
        producer: ``dlq_max_bytes`` and ``dlq_unhealthy_after_s``.
        topic: the dead-letter topic.
        metrics: the metrics to update.
        client: a KafkaProducer to use (default: one made when the first record comes).
        backoff_max_s: the longest wait between retries.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        producer: ProducerSettings,
        topic: str,
        metrics: ProducerMetrics,
        *,
        client: Any = None,
        backoff_max_s: float = DLQ_BACKOFF_MAX_S,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.metrics = metrics
        self.max_bytes = producer.dlq_max_bytes
        self.unhealthy_after_s = producer.dlq_unhealthy_after_s
        self.backoff_max_s = backoff_max_s
        self._budget = self.max_bytes - DLQ_FRAMING_BYTES  # bytes a value may take
        self._client = client
        self._cond = threading.Condition()
        self._queue: deque[_Letter] = deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._failures = 0  # consecutive failed rounds
        self._failing_since: float | None = None
        self._last_error = ""
        self._closing = False
        self._abandon = False
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0

    # -- the caller's side ------------------------------------------------------------
    def put(self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Queue one record for the DLQ (truncated to fit); returns at once."""
        letter = _Letter(value, key, list(headers), len(value))
        self._fit(letter)
        with self._cond:
            while self._queue and (
                len(self._queue) >= DLQ_MAX_QUEUED or self._queued_bytes + len(letter.value) > DLQ_MAX_QUEUED_BYTES
            ):
                old = self._queue.popleft()
                self._queued_bytes -= len(old.value)
                self.dropped += 1
                self.metrics.dlq_dropped.inc()
                if self.dropped <= 10 or self.dropped % 1000 == 0:
                    log.error(
                        "the DLQ %s has been failing (%s): dropped the oldest waiting record (%d dropped so far)",
                        self.topic,
                        self._last_error,
                        self.dropped,
                    )
            self._queue.append(letter)
            self._queued_bytes += len(letter.value)
            self.metrics.dlq_queued.set(len(self._queue))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dlq-sender", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _fit(self, letter: _Letter) -> None:
        """Truncate ``letter``'s value to the current budget, saying so in headers."""
        budget = max(DLQ_MIN_BYTES, self._budget)
        if len(letter.value) <= budget:
            return
        if not any(name == "truncated" for name, _ in letter.headers):
            letter.headers += [("truncated", b"true"), ("original.size", str(letter.size).encode())]
            self.metrics.dlq_truncated.inc()
        letter.value = letter.value[:budget]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)``: unhealthy once writes have failed for ``dlq_unhealthy_after_s``."""
        with self._cond:
            since, queued, error = self._failing_since, len(self._queue) + self._in_flight, self._last_error
        failing_s = 0.0 if since is None else time.monotonic() - since
        details: dict[str, Any] = {"dlq_waiting": queued, "dlq_failing_s": round(failing_s, 1)}
        if since is not None:
            details["dlq_error"] = error
        return failing_s <= self.unhealthy_after_s, details

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued record is written, or the DLQ is failing, or ``timeout``.

        Returns whether everything was written.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: (not self._queue and not self._in_flight) or self._failing_since is not None, timeout
            )
            return not self._queue and not self._in_flight

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued (retrying for up to ``timeout`` seconds), then stop.

        Raises:
            BrokerUnavailable: when records could not be written in time (they are lost:
                said loudly rather than silently).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            with self._cond:
                self._abandon = True
                self._cond.notify_all()
            thread.join(5.0)
        with self._cond:
            left = len(self._queue) + self._in_flight
            self._queue.clear()
            error = self._last_error
        if self._client is not None:
            self._client.close(timeout=5.0)
        if left:
            self.metrics.dlq_dropped.inc(left)
            raise BrokerUnavailable(
                f"{left} rejected record(s) could not be written to the DLQ {self.topic} at "
                f"{self.kafka.bootstrap_servers}: {error}",
                "check that the topic exists and this producer may write it",
            )

    # -- the sender thread ------------------------------------------------------------
    def _run(self) -> None:
        from producer.polygon_rest import backoff_delay

        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue or self._abandon:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _DLQ_BATCH))]
                self._queued_bytes -= sum(len(letter.value) for letter in batch)
                self._in_flight = len(batch)
            failed, error = self._deliver(batch)
            with self._cond:
                self._in_flight = 0
                for letter in reversed(failed):
                    self._queue.appendleft(letter)
                    self._queued_bytes += len(letter.value)
                self.metrics.dlq_queued.set(len(self._queue))
                self.delivered += len(batch) - len(failed)
                if not failed:
                    if self._failing_since is not None:
                        log.info("the DLQ %s is writable again", self.topic)
                    self._failures, self._failing_since, self._last_error = 0, None, ""
                    self._cond.notify_all()
                    continue
                self._failures += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                self._last_error = error
                self._cond.notify_all()
                delay = backoff_delay(self._failures, self.backoff_max_s)
            self.metrics.dlq_send_failures.inc()
            log.warning(
                "writing %d record(s) to the DLQ %s failed (%s); retry %d in %.2f s",
                len(failed),
                self.topic,
                error,
                self._failures,
                delay,
            )
            with self._cond:
                if self._cond.wait_for(lambda: self._abandon, delay):
                    return

    def _deliver(self, batch: list[_Letter]) -> tuple[list[_Letter], str]:
        """Send ``batch`` and wait for the broker; returns the records that failed and why."""
        from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

        try:
            if self._client is None:
                self._client = self._make_client()
        except Exception as exc:
            return batch, f"{type(exc).__name__}: {exc}"
        sent: list[tuple[_Letter, Any]] = []
        unsent: list[_Letter] = []
        error = ""
        for i, letter in enumerate(batch):
            try:
                sent.append(
                    (letter, self._client.send(self.topic, value=letter.value, key=letter.key, headers=letter.headers))
                )
            except Exception as exc:  # e.g. KafkaTimeoutError: no metadata for a missing topic
                unsent, error = batch[i:], f"{type(exc).__name__}: {exc}"
                break
        failed: list[_Letter] = []
        wait_s = self.kafka.request_timeout_s * 3 + 5  # past the client's own delivery timeout
        for letter, future in sent:
            try:
                future.get(timeout=wait_s)
            except (MessageSizeTooLargeError, RecordListTooLargeError) as exc:
                self._shrink(letter)
                failed.append(letter)
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                failed.append(letter)
                error = f"{type(exc).__name__}: {exc}"
        return failed + unsent, error

    def _shrink(self, letter: _Letter) -> None:
        new = max(DLQ_MIN_BYTES, min(self._budget, len(letter.value)) // 2)
        if new < self._budget:
            log.warning(
                "the DLQ %s refused a %d-byte record as too large; truncating to %d bytes from now on "
                "(set TICKCAST_PRODUCER__DLQ_MAX_BYTES below the topic's max.message.bytes)",
                self.topic,
                len(letter.value),
                new,
            )
            self._budget = new
        self._fit(letter)

    def _make_client(self) -> Any:
        from tickcast.kafka import make_producer

        request_ms = int(self.kafka.request_timeout_s * 1000) + 5000  # tickcast.kafka's request timeout
        return make_producer(
            self.kafka,
            compression_type=None,  # the size budget is then exact; DLQ traffic is small
            # kafka-python's idempotent producer treats a broker's "too large" as fatal and fails
            # every later send; the DLQ is at least once anyway, so it does without idempotence
            enable_idempotence=False,
            max_request_size=self.max_bytes + DLQ_FRAMING_BYTES,
            linger_ms=5,
            delivery_timeout_ms=2 * request_ms + 5,
        )


def _bar_payload(bar: Bar) -> dict[str, Any]:
    """A bar that may hold wrong types, as a JSON-able dict (no validation, no raising)."""
    out: dict[str, Any] = {}
    for name in Bar.__slots__:
        value: Any = getattr(bar, name, None)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out
