"""Probing services: Prometheus parsing, histogram quantiles, rates, and real /healthz servers."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

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
    assert stats.bar_to_forecast_p95_s is None and stats.model_scores == []
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
