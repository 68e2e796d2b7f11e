"""The Kafka side of the producer: validated bars to ``bars``, everything else to the DLQ.

:class:`BarPublisher` wraps one kafka-python producer configured for durability
(acks=all, idempotence) and throughput (lz4, large batches, linger). Delivery failures
are never swallowed: futures are checked in bulk (cheaper than a callback per record) and
the first failure raises :class:`~tickcast.errors.BrokerUnavailable` from the next
``publish``/``flush``. Bars that fail validation go to the dead-letter topic with headers
``reason``, ``source`` and ``kind`` and are counted; they never reach ``bars``.

Partitions are chosen here with Kafka's own murmur2 key hash (the same mapping the Java
client and kafka-python's default partitioner use) and cached per ticker, which takes
the hash off the per-record path.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
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

        Args:
            payload: the record as received (bytes are sent as they are, anything else as JSON).
            reason: why it was rejected, short and specific (header ``reason``).
            key: the ticker when known.
            kind: ``invalid`` (parsed but breaks the contract) or ``malformed`` (not parseable).
        """
        if self._failure is not None:
            raise self._failure
        if isinstance(payload, bytes):
            value = payload
        elif isinstance(payload, str):
            value = payload.encode()
        else:
            value = json.dumps(payload, default=str, separators=(",", ":")).encode()
        headers = [
            ("reason", reason.encode()[:1000]),
            ("source", self._source_header),
            ("kind", kind.encode()),
        ]
        self._pending.append(
            self.client.send(self.dlq_topic, value=value, key=key.encode() if key else None, headers=headers)
        )
        self.rejected += 1
        self.metrics.bars_rejected.labels(self.source, kind).inc()
        # a broken feed can reject thousands: log the first few, then every thousandth
        if self.rejected <= 10 or self.rejected % 1000 == 0:
            log.warning("%s record #%d to %s: %s", kind, self.rejected, self.dlq_topic, reason)

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

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then close the Kafka client (idempotent). Raises like :meth:`flush`."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._failure is None:
                self.flush(timeout)
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


def _bar_payload(bar: Bar) -> dict[str, Any]:
    """A bar that may hold wrong types, as a JSON-able dict (no validation, no raising)."""
    out: dict[str, Any] = {}
    for name in Bar.__slots__:
        value: Any = getattr(bar, name, None)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out
