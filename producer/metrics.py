"""Prometheus metrics of the producer.

The metrics live in prometheus_client's default registry, which
:class:`tickcast.service.ObservabilityServer` serves on ``/metrics``. They are created on
first use rather than at import, so importing the package has no side effects; every
caller shares one :class:`ProducerMetrics`.

Hot paths count in bulk (``bars_out.inc(n)`` once per batch), because a labelled counter
increment costs about a microsecond and the producer handles tens of thousands of bars a
second.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

_LOCK = threading.Lock()
_METRICS: ProducerMetrics | None = None


@dataclass(frozen=True)
class ProducerMetrics:
    """The producer's metric families. Label ``source`` is the bar source everywhere."""

    bars_in: Any
    bars_out: Any
    bars_rejected: Any
    delivery_failures: Any
    api_calls: Any
    api_retries: Any
    lag_seconds: Any
    last_bar_end: Any
    ws_reconnects: Any
    gapfill_bars: Any
    backfill_progress: Any
    open_close_out: Any
    dlq_send_failures: Any
    dlq_dropped: Any
    dlq_truncated: Any
    dlq_queued: Any

    def source(self, source: str) -> SourceMetrics:
        """The children for one source, resolved once so hot loops skip the label lookup."""
        return SourceMetrics(
            bars_in=self.bars_in.labels(source),
            bars_out=self.bars_out.labels(source),
            lag_seconds=self.lag_seconds.labels(source),
            last_bar_end=self.last_bar_end.labels(source),
        )


@dataclass(frozen=True)
class SourceMetrics:
    """Per-source children of the hot counters."""

    bars_in: Any
    bars_out: Any
    lag_seconds: Any
    last_bar_end: Any


def get_metrics() -> ProducerMetrics:
    """The process-wide metrics, created (and registered) on the first call."""
    global _METRICS
    with _LOCK:
        if _METRICS is None:
            from prometheus_client import Counter, Gauge

            _METRICS = ProducerMetrics(
                bars_in=Counter("tickcast_producer_bars_in", "Bars received from the source.", ["source"]),
                bars_out=Counter(
                    "tickcast_producer_bars_out", "Valid bars handed to Kafka for the bars topic.", ["source"]
                ),
                bars_rejected=Counter(
                    "tickcast_producer_bars_rejected",
                    "Malformed or invalid bars sent to the dead-letter topic.",
                    ["source", "kind"],
                ),
                delivery_failures=Counter(
                    "tickcast_producer_delivery_failures", "Records Kafka failed to acknowledge.", ["topic"]
                ),
                api_calls=Counter(
                    "tickcast_producer_api_calls",
                    "Polygon REST calls by endpoint and HTTP status.",
                    ["endpoint", "status"],
                ),
                api_retries=Counter(
                    "tickcast_producer_api_retries", "Polygon REST retries by cause (429, 5xx, network).", ["cause"]
                ),
                lag_seconds=Gauge(
                    "tickcast_producer_lag_seconds", "Wall clock minus the end of the last bar sent.", ["source"]
                ),
                last_bar_end=Gauge(
                    "tickcast_producer_last_bar_end_seconds", "Unix time of the end of the last bar sent.", ["source"]
                ),
                ws_reconnects=Counter("tickcast_producer_ws_reconnects", "WebSocket reconnects."),
                gapfill_bars=Counter("tickcast_producer_gapfill_bars", "Bars fetched over REST after a reconnect."),
                backfill_progress=Gauge(
                    "tickcast_producer_backfill_progress_ratio", "Share of the backfill done, 0 to 1."
                ),
                open_close_out=Counter("tickcast_producer_open_close_out", "Daily open/close summaries published."),
                dlq_send_failures=Counter(
                    "tickcast_producer_dlq_send_failures", "Failed rounds of writes to the dead-letter topic."
                ),
                dlq_dropped=Counter(
                    "tickcast_producer_dlq_dropped",
                    "Rejected records lost because the dead-letter topic stayed unwritable (queue full or shutdown).",
                ),
                dlq_truncated=Counter(
                    "tickcast_producer_dlq_truncated", "Rejected records truncated to fit producer.dlq_max_bytes."
                ),
                dlq_queued=Gauge("tickcast_producer_dlq_queued", "Rejected records waiting to be written to the DLQ."),
            )
        return _METRICS
