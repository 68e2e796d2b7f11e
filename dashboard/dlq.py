"""The most recent records of the dead-letter topic, read without a consumer group.

The dashboard only looks: it assigns the DLQ's partitions, seeks to the last few records
of each and reads them with a deadline, so it commits nothing and never disturbs the
platform's consumer groups. A broker that is down or a topic that does not exist yet is
an answer, not an error.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from tickcast.settings import KafkaSettings

COLUMNS = ["time", "partition", "offset", "ticker", "reason", "error", "value"]


@dataclass
class DlqSample:
    """Recent DLQ records (newest last) and how the read went."""

    records: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))
    topic_exists: bool = True
    total_in_topic: int | None = None
    error: str | None = None


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> str:
    for key, value in headers or []:
        if key == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ""


def _ticker(key: bytes | None, value: bytes | None) -> str:
    if key:
        return key.decode("utf-8", "replace")
    try:
        data = json.loads(value or b"")
        return str(data.get("ticker", "")) if isinstance(data, dict) else ""
    except ValueError:
        return ""


def read_recent(settings: KafkaSettings, topic: str, max_records: int, timeout_s: float) -> DlqSample:
    """Read up to ``max_records`` of the newest records of ``topic`` within about ``timeout_s``."""
    from kafka import KafkaConsumer, TopicPartition

    from tickcast.kafka import common_config

    deadline = time.monotonic() + timeout_s
    config = common_config(settings)
    try:
        consumer = KafkaConsumer(
            **config,
            group_id=None,
            enable_auto_commit=False,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            client_id="tickcast-dashboard-dlq",
        )
    except Exception as exc:  # NoBrokersAvailable and friends: Kafka is down or unreachable
        return DlqSample(error=f"Kafka not reachable at {settings.bootstrap_servers} ({type(exc).__name__})")
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return DlqSample(topic_exists=False)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        per_partition = max(1, math.ceil(max_records / len(tps)))
        wanted = 0
        for tp in tps:
            start = max(begins[tp], ends[tp] - per_partition)
            wanted += ends[tp] - start
            consumer.seek(tp, start)
        total = int(sum(ends[tp] - begins[tp] for tp in tps))
        rows: list[dict[str, object]] = []
        while len(rows) < wanted and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    rows.append(
                        {
                            "time": datetime.fromtimestamp(r.timestamp / 1000, tz=UTC) if r.timestamp else None,
                            "partition": tp.partition,
                            "offset": r.offset,
                            "ticker": _ticker(r.key, r.value),
                            "reason": _header(r.headers, "reason") or "(no reason header)",
                            "error": _header(r.headers, "error"),
                            "value": (r.value or b"")[:300].decode("utf-8", "replace"),
                        }
                    )
        frame = pd.DataFrame(rows, columns=COLUMNS)
        if not frame.empty:
            frame = frame.sort_values("time", kind="stable").tail(max_records).reset_index(drop=True)
        error = None if len(rows) >= wanted else f"read {len(rows)} of {wanted} records before the timeout"
        return DlqSample(frame, True, total, error)
    except Exception as exc:  # a broker that vanished mid-read: show what we have and why
        return DlqSample(error=f"reading {topic} failed: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        consumer.close()
