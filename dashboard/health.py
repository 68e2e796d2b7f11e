"""Probing the platform's services: ``/healthz``, Prometheus ``/metrics`` and Serve's models.

Every service is probed in parallel with a short timeout, so a page with every service
down still answers in about one timeout. Nothing here raises for a service that is down:
the result says so, and the page shows it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.streaming.metrics import BAR_END_TO_FORECAST, INGEST_TO_FORECAST
from tickcast.settings import Settings

#: (labels, value) pairs per sample name (``..._total``, ``..._bucket``, ``..._count`` ...).
Metrics = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class Probe:
    """What one service answered."""

    name: str
    url: str
    ok: bool
    status: str
    latency_ms: float | None = None
    health: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics | None = None
    error: str | None = None


def service_urls(settings: Settings) -> dict[str, str]:
    """Base URLs of the producer, consumer, forecaster and Serve."""
    d = settings.dashboard

    def local(port: int) -> str:
        return f"http://127.0.0.1:{port}"

    return {
        "producer": (d.producer_url or local(settings.producer.metrics_port)).rstrip("/"),
        "consumer": (d.consumer_url or local(settings.consumer.metrics_port)).rstrip("/"),
        "forecaster": (d.forecaster_url or local(settings.forecaster.metrics_port)).rstrip("/"),
        "serve": settings.serving.url.rstrip("/"),
    }


def auth_headers(settings: Settings) -> dict[str, str]:
    """The bearer token header for Serve, when one is configured."""
    token = settings.serving.auth_token
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def _short(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "connection refused (not running?)"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer within the timeout"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def parse_metrics(text: str) -> Metrics:
    """Prometheus text exposition as sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def metric_total(metrics: Metrics | None, name: str, **labels: str) -> float | None:
    """Sum of the samples named ``name`` whose labels include ``labels`` (None when absent)."""
    if not metrics or name not in metrics:
        return None
    values = [v for lab, v in metrics[name] if all(lab.get(k) == want for k, want in labels.items())]
    return float(sum(values)) if values else None


def histogram_quantile(metrics: Metrics | None, name: str, q: float) -> float | None:
    """The ``q`` quantile of histogram ``name`` (its ``_bucket`` samples, summed over labels),
    interpolated linearly within the bucket, as Prometheus' ``histogram_quantile`` does."""
    if not metrics or f"{name}_bucket" not in metrics:
        return None
    buckets: dict[float, float] = {}
    for labels, value in metrics[f"{name}_bucket"]:
        le = float(labels.get("le", "inf"))
        buckets[le] = buckets.get(le, 0.0) + value
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_mean(metrics: Metrics | None, name: str) -> float | None:
    """Mean of histogram ``name`` (``_sum`` / ``_count``)."""
    total, count = metric_total(metrics, f"{name}_sum"), metric_total(metrics, f"{name}_count")
    if total is None or not count:
        return None
    return total / count


def _get(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> tuple[int, str, float]:
    import httpx

    started = time.perf_counter()
    response = httpx.get(url, timeout=timeout_s, headers=headers, follow_redirects=False)
    return response.status_code, response.text, (time.perf_counter() - started) * 1000


def probe_service(name: str, base_url: str, timeout_s: float, headers: dict[str, str] | None = None) -> Probe:
    """``GET /healthz`` and ``GET /metrics`` of one service."""
    try:
        code, body, latency = _get(f"{base_url}/healthz", timeout_s, headers)
    except Exception as exc:  # any transport failure means "down", with the reason shown
        return Probe(name, base_url, False, "down", error=_short(exc))
    try:
        health = json.loads(body)
        health = health if isinstance(health, dict) else {"answer": health}
    except ValueError:
        health = {"answer": body[:200]}
    ok = code == 200
    probe = Probe(name, base_url, ok, "healthy" if ok else f"unhealthy (HTTP {code})", latency, health)
    if not ok:
        probe.error = str(health.get("detail") or health.get("error") or "")[:300] or None
    try:
        mcode, mbody, _ = _get(f"{base_url}/metrics", timeout_s, headers)
        if mcode == 200:
            probe.metrics = parse_metrics(mbody)
    except Exception:  # metrics are a bonus: health already says whether the service runs
        probe.metrics = None
    return probe


def serve_models(settings: Settings, timeout_s: float) -> tuple[list[dict[str, Any]], str | None]:
    """The models Serve reports at ``GET /v1/models``, or ([], why not)."""
    try:
        code, body, _ = _get(f"{settings.serving.url.rstrip('/')}/v1/models", timeout_s, auth_headers(settings))
    except Exception as exc:  # Serve down: the page says so
        return [], _short(exc)
    try:
        payload = json.loads(body)
    except ValueError:
        return [], f"HTTP {code}: not JSON"
    if code != 200:
        return [], f"HTTP {code}: {payload.get('detail', '') if isinstance(payload, dict) else ''}"
    models = payload.get("models", []) if isinstance(payload, dict) else []
    return [m for m in models if isinstance(m, dict)], None


def probe_all(settings: Settings, timeout_s: float | None = None) -> dict[str, Probe]:
    """Probe every service at once; returns name -> :class:`Probe`."""
    timeout = timeout_s or settings.dashboard.probe_timeout_s
    urls = service_urls(settings)
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = {
            name: pool.submit(probe_service, name, url, timeout, auth_headers(settings) if name == "serve" else None)
            for name, url in urls.items()
        }
        return {name: future.result() for name, future in futures.items()}


# -- pipeline figures from the metrics --------------------------------------------------------------
#: Counters whose rates the pipeline page shows: label -> (service, sample name, label filter).
THROUGHPUT: dict[str, tuple[str, str, dict[str, str]]] = {
    "producer bars/s": ("producer", "tickcast_producer_bars_out_total", {}),
    "consumer records/s": ("consumer", "tickcast_sink_records_total", {"result": "valid"}),
    "forecasts/s": ("forecaster", "tickcast_forecaster_forecasts_published_total", {}),
    "serve requests/s": ("serve", "tickcast_serving_requests_total", {}),
}


def counters(probes: dict[str, Probe]) -> dict[str, float | None]:
    """The current value of each :data:`THROUGHPUT` counter."""
    out: dict[str, float | None] = {}
    for label, (service, name, labels) in THROUGHPUT.items():
        probe = probes.get(service)
        out[label] = metric_total(probe.metrics if probe else None, name, **labels)
    return out


def rates(
    previous: tuple[float, dict[str, float | None]] | None, current: tuple[float, dict[str, float | None]]
) -> dict[str, float | None]:
    """Per-second rates between two counter snapshots ``(monotonic time, counters)``.

    None where either snapshot lacks the counter, or the counter went down (a restart).
    """
    if previous is None:
        return dict.fromkeys(current[1])
    dt = current[0] - previous[0]
    out: dict[str, float | None] = {}
    for key, value in current[1].items():
        before = previous[1].get(key)
        if value is None or before is None or dt <= 0 or value < before:
            out[key] = None
        else:
            out[key] = (value - before) / dt
    return out


#: Producer sources whose bars arrive as the market makes them. The others replay history
#: (``replay``, ``polygon-rest`` backfills) or invent its timestamps (``synthetic``), so
#: latency from a bar's end would measure the bars' age, not the platform.
LIVE_SOURCES = frozenset({"polygon-ws"})


@dataclass
class PipelineStats:
    """The figures of the pipeline page.

    ``ingest_to_forecast_*``: from a bar's Kafka record timestamp to its forecast record's, the
    platform's own latency. ``bar_end_to_forecast_*``: from the bar's end (market
    time); only filled when the producer's source is live (``live_source``), since a replay
    makes it the age of the replayed bars. ``latency_ceiling_s``: the ingest histogram's top
    finite bucket bound (``bar_end_ceiling_s`` the other's); a quantile equal to it means "at
    least that".
    """

    consumer_lag: float | None = None
    commit_lag_p95_s: float | None = None
    producer_lag_s: float | None = None
    dlq_records: float | None = None
    rejected_by_producer: float | None = None
    producer_source: str | None = None
    live_source: bool | None = None
    ingest_to_forecast_p50_s: float | None = None
    ingest_to_forecast_p95_s: float | None = None
    ingest_to_forecast_mean_s: float | None = None
    latency_ceiling_s: float | None = None
    bar_end_to_forecast_p50_s: float | None = None
    bar_end_to_forecast_p95_s: float | None = None
    bar_end_ceiling_s: float | None = None
    serve_request_p95_s: float | None = None
    inference_p95_s: float | None = None
    circuit_open: bool | None = None
    forecasts_published: float | None = None
    serve_errors: float | None = None
    model_scores: list[dict[str, Any]] = field(default_factory=list)


def _metrics_of(probes: dict[str, Probe], name: str) -> Metrics | None:
    probe = probes.get(name)
    return probe.metrics if probe else None


def pipeline_stats(probes: dict[str, Probe]) -> PipelineStats:
    """Lag, latency and error figures from the services' metrics."""
    producer, consumer = _metrics_of(probes, "producer"), _metrics_of(probes, "consumer")
    forecaster, serve = _metrics_of(probes, "forecaster"), _metrics_of(probes, "serve")
    circuit = metric_total(forecaster, "tickcast_forecaster_serve_circuit_open")
    source = producer_source(probes.get("producer"))
    live = None if source is None else source in LIVE_SOURCES
    stats = PipelineStats(
        consumer_lag=metric_total(consumer, "tickcast_sink_consumer_lag"),
        commit_lag_p95_s=histogram_quantile(consumer, "tickcast_sink_commit_lag_seconds", 0.95),
        producer_lag_s=_max(producer, "tickcast_producer_lag_seconds") if live else None,
        dlq_records=metric_total(consumer, "tickcast_sink_dlq_records_total"),
        rejected_by_producer=metric_total(producer, "tickcast_producer_bars_rejected_total"),
        producer_source=source,
        live_source=live,
        ingest_to_forecast_p50_s=histogram_quantile(forecaster, INGEST_TO_FORECAST, 0.5),
        ingest_to_forecast_p95_s=histogram_quantile(forecaster, INGEST_TO_FORECAST, 0.95),
        ingest_to_forecast_mean_s=histogram_mean(forecaster, INGEST_TO_FORECAST),
        latency_ceiling_s=histogram_ceiling(forecaster, INGEST_TO_FORECAST),
        bar_end_to_forecast_p50_s=histogram_quantile(forecaster, BAR_END_TO_FORECAST, 0.5) if live else None,
        bar_end_to_forecast_p95_s=histogram_quantile(forecaster, BAR_END_TO_FORECAST, 0.95) if live else None,
        bar_end_ceiling_s=histogram_ceiling(forecaster, BAR_END_TO_FORECAST),
        serve_request_p95_s=histogram_quantile(forecaster, "tickcast_forecaster_serve_request_seconds", 0.95),
        inference_p95_s=histogram_quantile(serve, "tickcast_serving_inference_seconds", 0.95),
        circuit_open=None if circuit is None else circuit > 0,
        forecasts_published=metric_total(forecaster, "tickcast_forecaster_forecasts_published_total"),
        serve_errors=metric_total(forecaster, "tickcast_forecaster_serve_errors_total"),
    )
    stats.model_scores = model_scores(forecaster)
    return stats


def producer_source(probe: Probe | None) -> str | None:
    """The producer's bar source: what its ``/healthz`` says, else the ``source`` label of its
    bar counter (a producer whose health endpoint is elsewhere); None when it is unknown."""
    if probe is None:
        return None
    named = probe.health.get("source")
    if isinstance(named, str) and named:
        return named
    sources = {lab.get("source") for lab, _ in (probe.metrics or {}).get("tickcast_producer_bars_out_total", [])}
    sources.discard(None)
    return next(iter(sources)) if len(sources) == 1 else None


def histogram_ceiling(metrics: Metrics | None, name: str) -> float | None:
    """The largest finite bucket bound of histogram ``name``: quantiles beyond it read as it."""
    if not metrics or f"{name}_bucket" not in metrics:
        return None
    bounds = [float(labels.get("le", "inf")) for labels, _ in metrics[f"{name}_bucket"]]
    finite = [b for b in bounds if math.isfinite(b)]
    return max(finite) if finite else None


@dataclass(frozen=True)
class RestartRow:
    """One row of the Pipeline page's restart table."""

    service: str
    restarts: int
    last_exit: str
    state: str
    last_restart_at: str


def restart_rows(state_dir: Path | str) -> list[RestartRow]:
    """The restarts ``tickcast up`` recorded in ``state_dir``, one row per supervised service.

    Empty when nothing supervises this state folder (the services were started one by one,
    or run on Kubernetes, whose own restart counts are in ``kubectl get pods``).
    """
    from tickcast.restarts import read_restarts

    return [
        RestartRow(
            service=record.service,
            restarts=record.restarts,
            last_exit=record.last_exit or "–",
            state=record.state,
            last_restart_at=record.last_restart_at or "–",
        )
        for record in read_restarts(state_dir).values()
    ]


def format_latency(value: float | None, ceiling: float | None) -> str:
    """A latency quantile in seconds with millisecond digits (``0.042 s``, ``1.250 s``), one unit
    whatever the size so it reads (and parses) alike; ``> 120 s`` when the quantile reached the
    histogram's top finite bucket, where the estimate is only a lower bound; ``–`` when unknown."""
    if value is None or not math.isfinite(value):
        return "–"
    if ceiling is not None and value >= ceiling:
        return f"> {ceiling:g} s"
    return f"{value:.3f} s"


def _max(metrics: Metrics | None, name: str) -> float | None:
    if not metrics or name not in metrics:
        return None
    return max(v for _, v in metrics[name])


def model_scores(metrics: Metrics | None) -> list[dict[str, Any]]:
    """The forecaster's rolling MASE, WQL and coverage per model, and the coverage and WQL of
    its live-calibrated band when it calibrates."""
    if not metrics:
        return []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for column, name, band in (
        ("MASE", "tickcast_forecaster_mase", None),
        ("WQL", "tickcast_forecaster_wql", None),
        ("coverage_80", "tickcast_forecaster_coverage_80", None),
        ("coverage_calibrated", "tickcast_forecaster_live_coverage", "calibrated"),
        ("WQL_calibrated", "tickcast_forecaster_calibrated_wql", None),
    ):
        for labels, value in metrics.get(name, []):
            if band is not None and labels.get("band") != band:
                continue
            key = (labels.get("model", "?"), labels.get("version", "?"))
            rows.setdefault(key, {"model": key[0], "version": key[1]})[column] = value
    return list(rows.values())


def describe_model(model: dict[str, Any]) -> str:
    """One honest line about a served model, using the API's own label."""
    label = str(model.get("label") or "").strip()
    ident = f"{model.get('id', '?')}/{model.get('version', '?')}"
    if model.get("bundled"):
        prefix = "bundled model"
        label = label or "trained by tickcast on synthetic series; not an Amazon checkpoint"
    else:
        prefix = str(model.get("kind") or "model")
    return f"{prefix} {ident}" + (f": {label}" if label else "")


def format_seconds(value: float | None) -> str:
    """``1.23 s`` / ``45 ms`` / ``–``."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def format_number(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or ``–``."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def iter_down(probes: dict[str, Probe]) -> Iterable[Probe]:
    """The services that did not answer healthy."""
    return (p for p in probes.values() if not p.ok)
