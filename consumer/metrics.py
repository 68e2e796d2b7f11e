"""Prometheus metrics of the sink (the default registry, served by ObservabilityServer).

Created once per process on first use, so several sinks in one process (tests) share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class SinkMetrics:
    """The sink's metric families."""

    records: Any
    committed: Any
    dlq: Any
    merges: Any
    flushes: Any
    commit_lag: Any
    flush_seconds: Any
    consumer_lag: Any
    paused: Any
    store_errors: Any
    commit_failures: Any
    compactions: Any
    rejoins: Any


@lru_cache(maxsize=1)
def sink_metrics() -> SinkMetrics:
    """The process-wide metric families (created on first call)."""
    from prometheus_client import Counter, Gauge, Histogram

    return SinkMetrics(
        records=Counter(
            "tickcast_sink_records", "Records consumed from Kafka; rate() gives records/s.", ["topic", "result"]
        ),
        committed=Counter(
            "tickcast_sink_committed_records", "Records whose positions were committed to the table.", ["topic"]
        ),
        dlq=Counter("tickcast_sink_dlq_records", "Invalid records sent to the dead-letter topic.", ["topic"]),
        merges=Counter(
            "tickcast_sink_merges", "Commits that merged bars already in the table (re-sent or corrected).", ["topic"]
        ),
        flushes=Counter("tickcast_sink_flushes", "Flushes, by what closed them.", ["topic", "reason"]),
        commit_lag=Histogram(
            "tickcast_sink_commit_lag_seconds",
            "Seconds from consuming a flush's first record to its table commit.",
            ["topic"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        ),
        flush_seconds=Histogram(
            "tickcast_sink_flush_seconds",
            "Seconds to write one commit to the bars table.",
            ["topic"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
        consumer_lag=Gauge(
            "tickcast_sink_consumer_lag",
            "Records behind the end of the partition (end offset - position).",
            ["topic", "partition"],
        ),
        paused=Gauge("tickcast_sink_paused_partitions", "Partitions paused for backpressure.", ["topic"]),
        store_errors=Counter("tickcast_sink_store_errors", "Failed lake operations (retried).", ["topic"]),
        commit_failures=Counter(
            "tickcast_sink_commit_failures", "Writes refused or abandoned (re-read from the table).", ["topic"]
        ),
        compactions=Counter("tickcast_sink_compactions", "Small-file compactions of hot partitions.", ["topic"]),
        rejoins=Counter(
            "tickcast_sink_rejoins",
            "Kafka consumers replaced after falling out of the group unnoticed (tickcast.group_watch).",
            ["topic"],
        ),
    )
