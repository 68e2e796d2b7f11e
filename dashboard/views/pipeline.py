"""Pipeline: health of every service, throughput, consumer lag, forecast latency and the
models Serve has loaded, from the services' ``/healthz`` and Prometheus ``/metrics``."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import charts, data, health
from dashboard.health import format_number, format_seconds

SNAPSHOT_KEY = "pipeline_snapshot"
HISTORY_KEY = "pipeline_history"
HISTORY_POINTS = 120


@st.cache_data(ttl=10.0, show_spinner=False)
def kafka_status(bootstrap: str, timeout_s: float) -> tuple[bool, str]:
    """Whether the broker answers a metadata request (cached: a down broker costs a timeout)."""
    from kafka import KafkaAdminClient

    from tickcast.kafka import common_config

    settings = data.get_settings()
    try:
        admin = KafkaAdminClient(
            **common_config(settings.kafka),
            client_id="tickcast-dashboard-probe",
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except Exception as exc:  # NoBrokersAvailable, DNS errors: the broker is not reachable
        return False, f"not reachable ({type(exc).__name__})"
    try:
        topics = admin.list_topics()
        return True, f"{len(topics)} topics"
    except Exception as exc:  # the broker went away between connect and metadata
        return False, f"metadata request failed ({type(exc).__name__})"
    finally:
        admin.close()


@st.cache_data(ttl=10.0, show_spinner=False)
def lake_status(url: str) -> tuple[bool, str]:
    """Whether the lake's root (bucket) is reachable."""
    from tickcast.errors import TickcastError

    try:
        data.get_lake().check()
        return True, "reachable"
    except TickcastError as exc:
        return False, exc.message


def _status_card(container: DeltaGenerator, name: str, ok: bool, status: str, where: str, note: str) -> None:
    with container.container(border=True):
        st.markdown(f"**{name}**  \n" + (f":green[● {status}]" if ok else f":red[● {status}]"))
        st.caption(f"`{where}`")
        if note:
            st.caption(note)


def health_row(probes: dict[str, health.Probe]) -> None:
    """One card per service, plus Kafka and the lake."""
    settings = data.get_settings()
    cards = st.columns(6)
    for i, name in enumerate(("producer", "consumer", "forecaster", "serve")):
        probe = probes[name]
        note = probe.error or (f"{probe.latency_ms:.0f} ms" if probe.latency_ms is not None else "")
        _status_card(cards[i], name, probe.ok, probe.status, probe.url, note)
    k_ok, k_note = kafka_status(settings.kafka.bootstrap_servers, settings.dashboard.probe_timeout_s)
    _status_card(cards[4], "kafka", k_ok, "up" if k_ok else "down", settings.kafka.bootstrap_servers, k_note)
    l_ok, l_note = lake_status(settings.lake.url)
    _status_card(cards[5], "lake", l_ok, "up" if l_ok else "down", settings.lake.url, "" if l_ok else l_note)


def throughput(probes: dict[str, health.Probe]) -> None:
    """Rates from counter differences between refreshes, and their history while the page is open."""
    now = time.monotonic()
    current = (now, health.counters(probes))
    rates = health.rates(st.session_state.get(SNAPSHOT_KEY), current)
    st.session_state[SNAPSHOT_KEY] = current
    history: list[dict[str, object]] = st.session_state.setdefault(HISTORY_KEY, [])
    if any(v is not None for v in rates.values()):
        history.append({"time": pd.Timestamp.now(tz="UTC"), **rates})
        del history[:-HISTORY_POINTS]
    st.subheader("Throughput")
    cols = st.columns(len(rates))
    for col, (label, value) in zip(cols, rates.items(), strict=True):
        col.metric(label, format_number(value, 1), help="From counter increases since the previous refresh.")
    if len(history) >= 2:
        st.plotly_chart(charts.throughput_figure(pd.DataFrame(history)), key="pipeline_throughput")
    elif all(v is None for v in current[1].values()):
        st.caption("No service exposes its counters yet (are they running?).")
    else:
        st.caption("Rates appear from the second refresh on.")


#: Labels of the headline latency figures (stable: tests read the page by them).
INGEST_P50 = "Kafka ingest → forecast p50"
INGEST_P95 = "Kafka ingest → forecast p95"
BAR_END_P50 = "Bar end → forecast p50"
BAR_END_P95 = "Bar end → forecast p95"
INGEST_HELP = (
    "From the moment a bar entered the platform to the moment its forecast did, by the two records' Kafka "
    "timestamps (set by the producer when it sent the bar, and by the forecaster when it sent the forecast), "
    "counted once Kafka acknowledged the forecast. Quantiles are interpolated from the forecaster's histogram "
    "buckets."
)
BAR_END_HELP = "From the bar's end (market time) to its forecast acknowledged by Kafka: what a trader waits."


def forecast_latency(stats: health.PipelineStats) -> None:
    """The headline latency: Kafka ingest to forecast; bar end to forecast for live sources."""
    st.subheader("Forecast latency")
    ceiling = stats.latency_ceiling_s
    live = bool(stats.live_source)
    cols = st.columns(4)
    cols[0].metric(INGEST_P50, health.format_latency(stats.ingest_to_forecast_p50_s, ceiling), help=INGEST_HELP)
    cols[1].metric(INGEST_P95, health.format_latency(stats.ingest_to_forecast_p95_s, ceiling), help=INGEST_HELP)
    st.caption(
        "From Kafka ingest to forecast: from when each bar entered Kafka to its forecast on the forecasts topic, "
        "over every forecast since the forecaster started."
    )
    if live:
        top = stats.bar_end_ceiling_s
        cols[2].metric(BAR_END_P50, health.format_latency(stats.bar_end_to_forecast_p50_s, top), help=BAR_END_HELP)
        cols[3].metric(BAR_END_P95, health.format_latency(stats.bar_end_to_forecast_p95_s, top), help=BAR_END_HELP)
        cols = st.columns(4)
        cols[0].metric(
            "Producer lag", format_seconds(stats.producer_lag_s), help="Wall clock minus the last bar's end."
        )
    if stats.live_source is False:
        st.caption(
            f"Latency from the bar's end is shown for live sources only: the producer's source is "
            f"`{stats.producer_source}`, whose bars are history, so it would measure their age, not the platform."
        )
    elif stats.live_source is None:
        st.caption("Latency from the bar's end appears once the producer answers and says its source is live.")


def lag_and_latency(stats: health.PipelineStats) -> None:
    """Consumer lag, request latency, errors."""
    st.subheader("Lag and errors")
    cols = st.columns(6)
    cols[0].metric("Consumer lag", format_number(stats.consumer_lag), help="Records behind the end of the bars topic.")
    cols[1].metric("Commit lag p95", format_seconds(stats.commit_lag_p95_s), help="Consume to offsets committed.")
    cols[2].metric("Serve request p95", format_seconds(stats.serve_request_p95_s), help="As the forecaster sees it.")
    cols[3].metric("Model inference p95", format_seconds(stats.inference_p95_s), help="Inside the Serve replica.")
    cols[4].metric("Sent to DLQ by the sink", format_number(stats.dlq_records))
    cols[5].metric("Rejected by the producer", format_number(stats.rejected_by_producer))
    cols = st.columns(6)
    cols[0].metric("Forecasts published", format_number(stats.forecasts_published))
    cols[1].metric("Serve errors", format_number(stats.serve_errors))
    cols[2].metric(
        "Circuit to Serve", "–" if stats.circuit_open is None else ("open" if stats.circuit_open else "closed")
    )


def restarts() -> None:
    """Restart counts ``tickcast up`` recorded; a one-line note when it recorded none."""
    settings = data.get_settings()
    rows = health.restart_rows(settings.infra.state_dir)
    st.subheader("Restarts")
    if not rows:
        st.caption(
            "No restarts recorded: `tickcast up` records them while it supervises the services "
            "(on Kubernetes, the orchestrator restarts pods: see `kubectl get pods`)."
        )
        return
    frame = pd.DataFrame(
        [(r.service, r.restarts, r.last_exit, r.state, r.last_restart_at) for r in rows],
        columns=["service", "restarts", "last exit", "state", "last restart (UTC)"],
    )
    st.dataframe(frame, hide_index=True, width="stretch", key="pipeline_restarts")


def models_loaded() -> None:
    """What Serve reports at ``GET /v1/models``, labelled as the API labels it."""
    settings = data.get_settings()
    st.subheader("Models loaded")
    models, problem = health.serve_models(settings, settings.dashboard.probe_timeout_s)
    if problem:
        st.info(f"Serve at `{settings.serving.url}` did not list its models: {problem}.", icon="ℹ️")
        return
    for model in models:
        st.markdown(f"- {health.describe_model(model)}")
    columns = [
        "id",
        "version",
        "kind",
        "source",
        "bundled",
        "label",
        "parameters",
        "context_length",
        "max_horizon",
        "device",
        "dtype",
    ]
    frame = pd.DataFrame(models)
    st.dataframe(frame[[c for c in columns if c in frame]], hide_index=True, width="stretch")


def pipeline_panel() -> None:
    """The refreshing part of the page."""
    settings = data.get_settings()
    probes = health.probe_all(settings)
    health_row(probes)
    down = [p.name for p in health.iter_down(probes)]
    if len(down) == len(probes):
        st.info(
            "No service answers. Start the platform with `tickcast up` (or each service: `tickcast produce`, "
            "`tickcast consume`, `tickcast forecaster`, `tickcast serve`); the figures below fill in as they come up.",
            icon="ℹ️",
        )
    stats = health.pipeline_stats(probes)
    forecast_latency(stats)
    throughput(probes)
    lag_and_latency(stats)
    restarts()
    if stats.model_scores:
        st.subheader("Rolling accuracy per model (forecaster)")
        st.dataframe(pd.DataFrame(stats.model_scores), hide_index=True, width="stretch")
    models_loaded()


def render() -> None:
    """The Pipeline page."""
    settings = data.get_settings()
    st.title("Pipeline")
    auto = st.toggle("Auto-refresh", value=True, help=f"Probe the services every {settings.dashboard.refresh_s:g} s.")
    st.fragment(run_every=settings.dashboard.refresh_s if auto else None)(pipeline_panel)()


if __name__ == "__main__":
    render()
