"""Probing services: Prometheus parsing, histogram quantiles, rates, and real /healthz servers."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dashboard import health
from tickcast.service import ObservabilityServer
from tickcast.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_parse_and_aggregate() -> None:
    registry = CollectorRegistry()
    records = Counter("tickcast_sink_records", "r", ["topic", "result"], registry=registry)
    records.labels("bars", "valid").inc(90)
    records.labels("bars", "invalid").inc(10)
    lag = Gauge("tickcast_sink_consumer_lag", "l", ["topic", "partition"], registry=registry)
    lag.labels("bars", "0").set(5)
    lag.labels("bars", "1").set(7)
    latency = Histogram("lat_seconds", "h", buckets=(0.1, 0.5, 1.0, 2.0), registry=registry)
    for value in [0.05] * 50 + [0.7] * 40 + [1.5] * 10:
        latency.observe(value)
    metrics = health.parse_metrics(generate_latest(registry).decode())
    assert health.metric_total(metrics, "tickcast_sink_records_total") == 100
    assert health.metric_total(metrics, "tickcast_sink_records_total", result="valid") == 90
    assert health.metric_total(metrics, "tickcast_sink_consumer_lag") == 12
    assert health.metric_total(metrics, "missing_total") is None
    # 50 of 100 are <= 0.1: the median is the top of the first bucket
    assert health.histogram_quantile(metrics, "lat_seconds", 0.5) == pytest.approx(0.1)
    # the 95th is in the (1, 2] bucket, half-way through its 10 observations
    assert health.histogram_quantile(metrics, "lat_seconds", 0.95) == pytest.approx(1.5)
    assert health.histogram_mean(metrics, "lat_seconds") == pytest.approx((2.5 + 28 + 15) / 100)
    assert health.histogram_quantile(metrics, "nope_seconds", 0.5) is None


def test_rates() -> None:
    first = (10.0, {"a": 100.0, "b": None, "c": 50.0})
    second = (12.0, {"a": 140.0, "b": 3.0, "c": 10.0})
    assert health.rates(None, second) == {"a": None, "b": None, "c": None}
    assert health.rates(first, second) == {"a": 20.0, "b": None, "c": None}  # c restarted


def test_describe_model_is_honest() -> None:
    bundled = {"id": "tickcast-chronos2-synthetic", "version": "1", "kind": "chronos-2", "bundled": True, "label": ""}
    text = health.describe_model(bundled)
    assert text.startswith("bundled model tickcast-chronos2-synthetic/1")
    assert "not an Amazon checkpoint" in text
    labelled = {**bundled, "label": "tickcast's own small model (synthetic data)"}
    assert health.describe_model(labelled).endswith("tickcast's own small model (synthetic data)")
    hub = {"id": "amazon/chronos-2", "version": "main", "kind": "chronos-2", "bundled": False, "label": "Chronos-2"}
    assert health.describe_model(hub) == "chronos-2 amazon/chronos-2/main: Chronos-2"


@pytest.fixture
def services(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, ObservabilityServer]]:
    """A real producer-style /metrics + /healthz server, and ports with nothing behind them."""
    from producer.metrics import get_metrics

    get_metrics().bars_out.labels("test").inc(42)
    server = ObservabilityServer(free_port(), lambda: (True, {"source": "test"}), host="127.0.0.1").start()
    unhealthy = ObservabilityServer(free_port(), lambda: (False, {"detail": "broker gone"}), host="127.0.0.1").start()
    settings = make_settings(
        producer={"metrics_port": server.port},
        consumer={"metrics_port": unhealthy.port},
        forecaster={"metrics_port": free_port()},
        serving={"url": f"http://127.0.0.1:{free_port()}"},
        dashboard={"probe_timeout_s": 1.0},
    )
    yield settings, server
    server.stop()
    unhealthy.stop()


def test_probe_all(services: tuple[Settings, ObservabilityServer]) -> None:
    settings, server = services
    probes = health.probe_all(settings)
    assert probes["producer"].ok and probes["producer"].health["source"] == "test"
    assert probes["producer"].url == f"http://127.0.0.1:{server.port}"
    assert health.metric_total(probes["producer"].metrics, "tickcast_producer_bars_out_total") >= 42
    assert not probes["consumer"].ok and probes["consumer"].status == "unhealthy (HTTP 503)"
    assert probes["consumer"].error == "broker gone"
    assert not probes["forecaster"].ok and "refused" in (probes["forecaster"].error or "")
    assert not probes["serve"].ok
    counters = health.counters(probes)
    assert counters["producer bars/s"] is not None and counters["forecasts/s"] is None
    stats = health.pipeline_stats(probes)
    assert stats.ingest_to_forecast_p95_s is None and stats.model_scores == []
    # the producer answered with source "test": not a live source, so no bar-end latency
    assert stats.producer_source == "test" and stats.live_source is False
    models, problem = health.serve_models(settings, 1.0)
    assert models == [] and problem and "refused" in problem


def test_configured_urls_win(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(dashboard={"producer_url": "http://producer.tickcast.svc:9300/"})
    urls = health.service_urls(settings)
    assert urls["producer"] == "http://producer.tickcast.svc:9300"
    assert urls["consumer"] == f"http://127.0.0.1:{settings.consumer.metrics_port}"


def test_formatting() -> None:
    assert health.format_seconds(None) == "–"
    assert health.format_seconds(0.0421) == "42 ms"
    assert health.format_seconds(2.5) == "2.50 s"
    assert health.format_number(12345.678, 1) == "12,345.7"
    assert health.format_latency(0.0421, 120.0) == "0.042 s"
    assert health.format_latency(119.9, 120.0) == "119.900 s"
    assert health.format_latency(120.0, 120.0) == "> 120 s"  # the top bucket only bounds it from below
    assert health.format_latency(None, 120.0) == "–"


def probe_of(registry: CollectorRegistry, name: str = "forecaster") -> health.Probe:
    """A healthy probe whose metrics are ``registry``'s, as ``/metrics`` would expose them."""
    metrics = health.parse_metrics(generate_latest(registry).decode())
    return health.Probe(name, f"http://{name}", True, "healthy", metrics=metrics)


def latency_histograms(registry: CollectorRegistry) -> tuple[Histogram, Histogram]:
    """The forecaster's two latency histograms, with its names and buckets, in ``registry``."""
    from serving.streaming.metrics import (
        BAR_END_BUCKETS,
        BAR_END_TO_FORECAST,
        INGEST_TO_FORECAST,
        LATENCY_BUCKETS,
    )

    ingest = Histogram(INGEST_TO_FORECAST, "i", buckets=LATENCY_BUCKETS, registry=registry)
    bar_end = Histogram(BAR_END_TO_FORECAST, "b", buckets=BAR_END_BUCKETS, registry=registry)
    return ingest, bar_end


def test_latency_quantiles_from_the_forecaster_buckets_track_the_true_ones() -> None:
    import numpy as np

    from serving.streaming.metrics import LATENCY_BUCKETS

    registry = CollectorRegistry()
    ingest, bar_end = latency_histograms(registry)
    # ingest-to-forecast as the sample replay shows it: a median of about 0.3 s, a tail past 1 s
    latencies = np.random.default_rng(7).lognormal(mean=np.log(0.3), sigma=0.8, size=5000)
    for value in latencies:
        ingest.observe(float(value))
    # the replay's bars ended years ago: their market-time latency is their age
    for _ in range(10):
        bar_end.observe(3 * 365 * 86400.0)
    producer = health.Probe("producer", "http://producer", True, "healthy", health={"source": "replay"})
    stats = health.pipeline_stats({"producer": producer, "forecaster": probe_of(registry)})

    assert stats.latency_ceiling_s == LATENCY_BUCKETS[-1]
    bounds = (0.0, *LATENCY_BUCKETS)
    for q, estimate in ((0.5, stats.ingest_to_forecast_p50_s), (0.95, stats.ingest_to_forecast_p95_s)):
        true = float(np.quantile(latencies, q))
        # linear interpolation inside a bucket is off by at most that bucket's width
        upper = next(i for i, b in enumerate(bounds) if b >= true)
        width = bounds[upper] - bounds[upper - 1]
        assert estimate is not None and abs(estimate - true) <= width, (q, estimate, true, width)
        assert estimate < LATENCY_BUCKETS[-1]  # not pinned to the top bucket
    assert stats.ingest_to_forecast_mean_s == pytest.approx(float(latencies.mean()))
    # a replay: no bar-end figure, and no producer lag (both would be the bars' age)
    assert stats.live_source is False and stats.producer_source == "replay"
    assert stats.bar_end_to_forecast_p50_s is None and stats.producer_lag_s is None


def test_bar_end_latency_is_shown_for_a_live_source() -> None:
    registry = CollectorRegistry()
    _, bar_end = latency_histograms(registry)
    for value in [2.0] * 50 + [20.0] * 50:  # live minute bars: a few seconds after their end
        bar_end.observe(value)
    for source in ("polygon-ws", "replay", None):
        producer_registry = CollectorRegistry()
        if source is not None:  # the source from the producer's bar counter (no /healthz source)
            Counter("tickcast_producer_bars_out", "o", ["source"], registry=producer_registry).labels(source).inc()
        producer = probe_of(producer_registry, "producer")
        stats = health.pipeline_stats({"producer": producer, "forecaster": probe_of(registry)})
        assert stats.producer_source == source
        if source == "polygon-ws":
            assert stats.live_source is True
            assert stats.bar_end_to_forecast_p50_s == pytest.approx(2.0)  # the top of the (1.5, 2] bucket
            assert stats.bar_end_to_forecast_p95_s == pytest.approx(15 + 5 * 0.9)  # 90% into (15, 20]
        else:
            assert stats.bar_end_to_forecast_p50_s is None


def test_restart_rows_read_what_up_records(tmp_path: Path) -> None:
    from tickcast.restarts import RestartRecord, write_restarts

    assert health.restart_rows(tmp_path) == []  # nothing supervises this state folder
    write_restarts(
        tmp_path,
        {
            "kafka": RestartRecord("kafka"),
            "consumer": RestartRecord(
                "consumer", 2, "killed by SIGKILL", "2026-01-05T10:00:00+00:00", "backing off", [1.0, 2.0]
            ),
        },
    )
    rows = {row.service: row for row in health.restart_rows(tmp_path)}
    assert rows["kafka"] == health.RestartRow("kafka", 0, "–", "running", "–")
    assert rows["consumer"] == health.RestartRow(
        "consumer", 2, "killed by SIGKILL", "backing off", "2026-01-05T10:00:00+00:00"
    )


def test_model_scores_include_the_calibrated_band() -> None:
    registry = CollectorRegistry()
    coverage = Gauge("tickcast_forecaster_coverage_80", "c", ["model", "version"], registry=registry)
    live = Gauge("tickcast_forecaster_live_coverage", "c", ["model", "version", "band"], registry=registry)
    cal_wql = Gauge("tickcast_forecaster_calibrated_wql", "w", ["model", "version"], registry=registry)
    coverage.labels("m", "1").set(0.93)
    live.labels("m", "1", "raw").set(0.93)
    live.labels("m", "1", "calibrated").set(0.81)
    cal_wql.labels("m", "1").set(0.02)
    rows = health.model_scores(health.parse_metrics(generate_latest(registry).decode()))
    assert rows == [
        {"model": "m", "version": "1", "coverage_80": 0.93, "coverage_calibrated": 0.81, "WQL_calibrated": 0.02}
    ]
