"""Prometheus metrics of the forecaster, registered once per process on first use.

They live in prometheus_client's default registry, which
:class:`tickcast.service.ObservabilityServer` serves on ``/metrics``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

#: Latency buckets in seconds, from a few milliseconds to two minutes. Finest between 0.05 s and
#: 2 s, where the platform runs (streaming target: p99 under 2 s): there each bound is at most
#: 1.5x the one before, so a quantile interpolated from the buckets is off by less than one
#: bucket's width. Coarser up to the couple of minutes a backlog catch-up takes; anything slower
#: lands in +Inf, and its quantile reads as the top bound (the dashboard shows "> 2 min").
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.25,
    1.5,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
)
#: Buckets of the bar-end latency: live feeds can lag their bars' ends by minutes (a 15-minute
#: delayed market-data plan, a reconnect gap-fill), so these go on to an hour.
BAR_END_BUCKETS = (*LATENCY_BUCKETS, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
#: Metric names the dashboard reads (one place, so a rename cannot leave the page behind).
INGEST_TO_FORECAST = "tickcast_forecaster_ingest_to_forecast_seconds"
BAR_END_TO_FORECAST = "tickcast_forecaster_bar_end_to_forecast_seconds"


@dataclass(frozen=True)
class ForecasterMetrics:
    """The forecaster's metric objects."""

    ingest_to_forecast: Any
    bar_end_to_forecast: Any
    serve_request: Any
    forecasts_published: Any
    serve_errors: Any
    coalesced: Any
    scores_written: Any
    bars: Any
    duplicates_skipped: Any
    steps_missed: Any
    rejoins: Any
    lake_flush: Any
    tickers: Any
    pending: Any
    in_flight: Any
    pending_scores: Any
    circuit_open: Any
    mase: Any
    wql: Any
    coverage: Any
    ticker_mase: Any
    ticker_wql: Any
    ticker_coverage: Any
    live_coverage: Any
    calibrated_wql: Any
    calibration_alpha: Any
    ticker_calibrated_coverage: Any


@functools.cache
def metrics() -> ForecasterMetrics:
    """The process-wide metric objects (created on the first call)."""
    from prometheus_client import Counter, Gauge, Histogram

    p = "tickcast_forecaster_"
    model = ["model", "version"]
    return ForecasterMetrics(
        ingest_to_forecast=Histogram(
            INGEST_TO_FORECAST,
            "From the bar entering Kafka (its record timestamp, set by the producer at send) to its "
            "forecast acknowledged by Kafka on the forecasts topic.",
            buckets=LATENCY_BUCKETS,
        ),
        bar_end_to_forecast=Histogram(
            BAR_END_TO_FORECAST,
            "From the bar's end (market time: start + interval) to its forecast acknowledged by Kafka; "
            "meaningful for live sources only (a replay of old bars reads as their age).",
            buckets=BAR_END_BUCKETS,
        ),
        serve_request=Histogram(
            p + "serve_request_seconds", "Duration of one forecast request to Serve.", buckets=LATENCY_BUCKETS
        ),
        forecasts_published=Counter(p + "forecasts_published_total", "Forecasts published to Kafka."),
        serve_errors=Counter(p + "serve_errors_total", "Failed forecast requests to Serve.", ["kind"]),
        coalesced=Counter(
            p + "coalesced_total", "Bars whose forecast was superseded by a newer bar of the same ticker."
        ),
        scores_written=Counter(p + "scores_written_total", "Scored forecast steps written to the lake."),
        bars=Counter(p + "bars_total", "Bars consumed, by outcome.", ["outcome"]),
        duplicates_skipped=Counter(
            p + "duplicates_skipped_total", "Bars not forecast because a forecast for them already exists."
        ),
        steps_missed=Counter(p + "steps_missed_total", "Forecast steps never scored because no bar came for them."),
        rejoins=Counter(
            p + "rejoins_total",
            "Kafka consumers replaced after falling out of the group unnoticed (tickcast.group_watch).",
        ),
        lake_flush=Histogram(p + "lake_flush_seconds", "Duration of one lake flush.", buckets=LATENCY_BUCKETS),
        tickers=Gauge(p + "tickers", "Tickers whose context is held."),
        pending=Gauge(p + "pending", "Tickers waiting for a forecast (coalesced: at most one entry per ticker)."),
        in_flight=Gauge(p + "in_flight", "Tickers in forecast requests to Serve."),
        pending_scores=Gauge(p + "pending_scores", "Forecasts waiting for their actual bars."),
        circuit_open=Gauge(p + "serve_circuit_open", "1 while the circuit breaker to Serve is open."),
        mase=Gauge(p + "mase", "Rolling MASE per model (mean abs error / mean naive abs error).", model),
        wql=Gauge(p + "wql", "Rolling weighted quantile loss per model.", model),
        coverage=Gauge(p + "coverage_80", "Rolling coverage of the 80% interval per model.", model),
        ticker_mase=Gauge(p + "ticker_mase", "Rolling MASE per ticker and model.", ["ticker", *model]),
        ticker_wql=Gauge(p + "ticker_wql", "Rolling weighted quantile loss per ticker and model.", ["ticker", *model]),
        ticker_coverage=Gauge(
            p + "ticker_coverage_80", "Rolling coverage of the 80% interval per ticker and model.", ["ticker", *model]
        ),
        live_coverage=Gauge(
            p + "live_coverage",
            "Rolling coverage per model of the raw 80% band (band=raw) and of the live-calibrated band "
            "(band=calibrated, nominal coverage TICKCAST_FORECASTER__CALIBRATION_COVERAGE).",
            [*model, "band"],
        ),
        calibrated_wql=Gauge(
            p + "calibrated_wql",
            "Rolling weighted quantile loss per model with the band's raw quantiles replaced by the calibrated bounds.",
            model,
        ),
        calibration_alpha=Gauge(
            p + "calibration_alpha",
            "Mean miscoverage level alpha_t the calibrated bands are drawn at, per model (the target is "
            "1 - calibration coverage; lower means wider bands).",
            model,
        ),
        ticker_calibrated_coverage=Gauge(
            p + "ticker_calibrated_coverage",
            "Rolling coverage of the live-calibrated band per ticker and model.",
            ["ticker", *model],
        ),
    )
