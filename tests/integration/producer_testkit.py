"""Helpers for the producer's integration tests: settings wired to the test broker, the
local Polygon server and fresh topics, and reading a topic back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producer.local_polygon import DEFAULT_API_KEY, LocalPolygonServer
from tickcast.settings import Settings


@dataclass
class Topics:
    """The fresh topics of one test."""

    bars: str
    dlq: str
    open_close: str


def make_topics(unique_topic: Callable[..., str]) -> Topics:
    """Fresh bars, DLQ and open/close topics (3 partitions each)."""
    return Topics(unique_topic("bars"), unique_topic("dlq"), unique_topic("oc"))


def producer_settings(
    make_settings: Callable[..., Settings],
    topics: Topics,
    server: LocalPolygonServer | None = None,
    lake_url: str | None = None,
    **polygon: Any,
) -> Settings:
    """Settings for the test broker, fresh topics, a lake (tmp ``file://`` unless ``lake_url``)
    and, optionally, the local Polygon."""
    overrides: dict[str, Any] = {
        "kafka": {"topic_bars": topics.bars, "topic_dlq": topics.dlq, "topic_open_close": topics.open_close},
        "producer": {"metrics_port": 0},
    }
    if lake_url is not None:
        overrides["lake"] = {"url": lake_url}
    if server is not None:
        overrides["polygon"] = {
            "api_key": DEFAULT_API_KEY,
            "rest_base_url": server.url,
            "ws_url": server.ws_url,
            "requests_per_minute": 60_000,
            "backoff_max_s": 1.0,
            **polygon,
        }
    return make_settings(**overrides)


def read_topic(
    settings: Settings, topic: str, expect: int | None = None, timeout_s: float = 30.0, idle_s: float = 2.0
) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the start): until ``expect`` records were
    read, or nothing new arrived for ``idle_s`` seconds once the end was reached."""
    from kafka import TopicPartition

    from tickcast.kafka import make_consumer

    consumer = make_consumer(settings.kafka, None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
            if batch:
                last_new = time.monotonic()
            if expect is not None and len(records) >= expect:
                # a little longer, so duplicates beyond the expected count would show
                extra = consumer.poll(timeout_ms=1000)
                for part in extra.values():
                    records.extend(part)
                break
            if expect is None and time.monotonic() - last_new > idle_s:
                break
        return records
    finally:
        consumer.close()


def by_ticker(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Decoded bar values per key, in (partition, offset) order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(record.key.decode(), []).append(json.loads(record.value))
    return out


def end_offsets_total(settings: Settings, topic: str) -> int:
    """How many records ``topic`` holds (sum of end offsets)."""
    from kafka import TopicPartition

    from tickcast.kafka import make_consumer

    consumer = make_consumer(settings.kafka, None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def headers(record: Any) -> dict[str, str]:
    """A record's headers as a str dict."""
    return {k: v.decode() for k, v in (record.headers or [])}
