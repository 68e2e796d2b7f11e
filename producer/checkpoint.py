"""Resumable backfill progress, kept in the lake, reconciled with the topic on restart.

A backfill is identified by its plan (tickers, interval, range, topic, open/close) and keeps
one JSON document, a blob at ``_state/producer/backfill-<hash>.json`` in the lake (next to
the tables, in none of them). The lake, not a local file, because it is what survives a pod
being rescheduled on another node.

Exactly once without transactions: after each page the producer flushes (every record
acknowledged), then writes the checkpoint with each ticker's last bar time and the bars
topic's end offsets at that moment. A crash can still land records after the last
checkpoint. So a restart first reads the topic from those offsets to its end and takes,
per ticker, the newest bar of this backfill it finds there; the idempotent producer keeps
each partition free of gaps and reordering, so everything before that bar is in the
topic too. The backfill resumes just after it: no gaps, no duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from tickcast.contracts import from_iso, now_utc, to_iso
from tickcast.errors import BrokerUnavailable
from tickcast.lake import Lake
from tickcast.settings import KafkaSettings

log = logging.getLogger(__name__)

STATE_PREFIX = "_state/producer"
VERSION = 1


def plan_key(**plan: Any) -> str:
    """A short stable hash of a backfill plan (any JSON-able keyword arguments)."""
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TickerProgress:
    """Where one ticker's backfill stands."""

    last_t: int | None = None  # epoch ms of the newest bar acknowledged by Kafka
    done: bool = False
    bars: int = 0
    open_close_done: bool = False
    open_close_last: str | None = None  # ISO date of the last open/close day handled


@dataclass
class BackfillCheckpoint:
    """The persisted state of one backfill plan."""

    key: str
    plan: dict[str, Any]
    baseline: dict[int, int] = field(default_factory=dict)  # bars topic partition -> end offset
    tickers: dict[str, TickerProgress] = field(default_factory=dict)
    complete: bool = False
    updated_at: str = ""

    @staticmethod
    def path_for(key: str) -> str:
        """The lake-relative path of the checkpoint of plan ``key``."""
        return f"{STATE_PREFIX}/backfill-{key}.json"

    @property
    def path(self) -> str:
        """This checkpoint's lake-relative path."""
        return self.path_for(self.key)

    def ticker(self, ticker: str) -> TickerProgress:
        """The progress of ``ticker`` (created on first use)."""
        return self.tickers.setdefault(ticker, TickerProgress())

    def to_json(self) -> bytes:
        """The stored form."""
        data = {
            "version": VERSION,
            "key": self.key,
            "plan": self.plan,
            "baseline": {str(p): o for p, o in sorted(self.baseline.items())},
            "tickers": {t: asdict(p) for t, p in sorted(self.tickers.items())},
            "complete": self.complete,
            "updated_at": self.updated_at,
        }
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> BackfillCheckpoint:
        """Parse the stored form."""
        data = json.loads(payload)
        if data.get("version") != VERSION:
            raise ValueError(f"checkpoint version {data.get('version')!r} is not {VERSION}")
        return cls(
            key=data["key"],
            plan=data["plan"],
            baseline={int(p): int(o) for p, o in data.get("baseline", {}).items()},
            tickers={t: TickerProgress(**p) for t, p in data.get("tickers", {}).items()},
            complete=bool(data.get("complete")),
            updated_at=data.get("updated_at", ""),
        )

    @classmethod
    def load(cls, lake: Lake, key: str) -> BackfillCheckpoint | None:
        """The stored checkpoint of plan ``key``, or None when there is none."""
        try:
            payload = lake.read_bytes(cls.path_for(key))
        except FileNotFoundError:
            return None
        return cls.from_json(payload)

    def save(self, lake: Lake) -> None:
        """Write atomically (the lake writes a temporary object, then renames or completes it)."""
        self.updated_at = to_iso(now_utc())
        lake.write_bytes(self.path, self.to_json())


class TopicTail:
    """Reads the end offsets of a topic and the records after given offsets (no consumer group)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        from tickcast.kafka import make_consumer

        self.topic = topic
        self.consumer = make_consumer(kafka, None, enable_auto_commit=False, max_poll_records=10_000)
        partitions = self.consumer.partitions_for_topic(topic) or set()
        from kafka import TopicPartition

        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]

    def end_offsets(self) -> dict[int, int]:
        """Partition -> next offset to be written."""
        ends = self.consumer.end_offsets(self.partitions)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    def newest_bars(
        self,
        since: dict[int, int],
        keys: set[str],
        interval: str,
        source: str,
        start_ms: int,
        end_ms: int,
        timeout_s: float = 60.0,
    ) -> dict[str, int]:
        """Per ticker in ``keys``, the newest bar start (epoch ms) of ``source``/``interval`` within
        ``[start_ms, end_ms]`` found after offsets ``since``; partitions missing from ``since``
        are read from the beginning."""
        import time

        ends = self.end_offsets()
        todo = {tp: ends[tp.partition] for tp in self.partitions if since.get(tp.partition, 0) < ends[tp.partition]}
        newest: dict[str, int] = {}
        if not todo:
            return newest
        self.consumer.assign(list(todo))
        for tp in todo:
            self.consumer.seek(tp, since.get(tp.partition, 0))
        wanted = {k.encode() for k in keys}
        deadline = time.monotonic() + timeout_s
        scanned = 0
        while todo and time.monotonic() < deadline:
            batches = self.consumer.poll(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= todo.get(tp, -1):
                        continue
                    scanned += 1
                    if record.key not in wanted:
                        continue
                    try:
                        value = json.loads(record.value)
                    except ValueError:
                        continue
                    if value.get("interval") != interval or value.get("source") != source:
                        continue
                    t = int(from_iso(value["start"]).timestamp() * 1000)
                    if start_ms <= t <= end_ms:
                        ticker = record.key.decode()
                        newest[ticker] = max(newest.get(ticker, t), t)
            for tp in list(todo):
                if self.consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        if todo:
            raise BrokerUnavailable(
                f"reading the tail of {self.topic} to resume the backfill took longer than {timeout_s} s",
                "check the broker's health, then start the backfill again",
            )
        log.info("reconciled with %s: scanned %d records after the checkpoint", self.topic, scanned)
        return newest

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()
