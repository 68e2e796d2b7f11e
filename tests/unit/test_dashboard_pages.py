"""Every page of the dashboard, run with Streamlit's AppTest against a small lake in a tmp dir.

Kafka and Serve point at ports nothing listens on, so the pages' degraded paths run too;
the services' healthy paths are covered with real servers in test_dashboard_health.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dashboard_lake import MODEL_ID, MODEL_VERSION, write_backtest_report, write_sample
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from streamlit.testing.v1 import AppTest

from dashboard.charts import BAND_NAME, CALIBRATED_BAND_NAME, CALIBRATED_SUFFIX
from dashboard.views.pipeline import BAR_END_P50, BAR_END_P95, INGEST_P50, INGEST_P95
from tickcast.contracts import Forecast
from tickcast.lake import Lake
from tickcast.settings import load_settings

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TIMEOUT = 60


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lake]:
    """The dashboard's environment: a tmp lake; Kafka, Serve and the services unreachable."""
    dead = unused_port()
    values = {
        "TICKCAST_LAKE__URL": f"file://{tmp_path / 'lake'}",
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}",
        "TICKCAST_SERVING__URL": f"http://127.0.0.1:{dead}",
        "TICKCAST_PRODUCER__METRICS_PORT": str(dead),
        "TICKCAST_CONSUMER__METRICS_PORT": str(dead),
        "TICKCAST_FORECASTER__METRICS_PORT": str(dead),
        "TICKCAST_DASHBOARD__PROBE_TIMEOUT_S": "0.5",
        "TICKCAST_DASHBOARD__REFRESH_S": "3600",
        "AWS_EC2_METADATA_DISABLED": "true",
        # restart counts are read from here: never the checkout's own .tickcast
        "TICKCAST_INFRA__STATE_DIR": str(tmp_path / "state"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield Lake(load_settings().lake)


def run_page(page: str | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_names(spec: dict[str, Any]) -> list[str]:
    return [t.get("name") for t in spec["data"]]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


# -- Live ---------------------------------------------------------------------------------------
def test_live_draws_candles_and_the_forecast_band_after_the_last_bar(env: Lake) -> None:
    sample = write_sample(env)
    at = run_page()
    assert at.selectbox(key="ticker").value == "AAA"
    (spec,) = chart_specs(at)
    names = trace_names(spec)
    assert names[:2] == ["bars (1min)", "volume"]
    assert BAND_NAME in names and f"forecast median · {MODEL_ID}/{MODEL_VERSION}" in names
    last_bar = sample.bars["AAA"][-1]
    newest = sample.forecasts["AAA"][-1]
    assert newest.last_bar_start == last_bar.start
    band = next(t for t in spec["data"] if t.get("name") == BAND_NAME)
    # the band starts at the last bar's close and covers the forecast's steps after it
    assert band["x"][0] == f"{last_bar.start:%Y-%m-%d %H:%M}"
    assert band["y"][0] == pytest.approx(last_bar.close)
    assert band["x"][1:] == [f"{s:%Y-%m-%d %H:%M}" for s in newest.step_starts()]
    assert band["y"][1:] == pytest.approx(newest.quantiles["0.1"])
    assert band["fill"] == "tonexty"
    shown = metrics(at)
    assert shown["Bars in range"] == "60"
    assert shown["Median in 8 steps"] == f"{newest.quantiles['0.5'][-1]:,.4g}"
    assert spec["layout"]["xaxis"]["type"] == "category"


def test_live_draws_the_calibrated_band(env: Lake) -> None:
    sample = write_sample(env, calibrated=True)
    at = run_page()
    (spec,) = chart_specs(at)
    assert BAND_NAME in trace_names(spec) and CALIBRATED_BAND_NAME in trace_names(spec)
    newest = sample.forecasts["AAA"][-1]
    assert newest.calibrated_lower is not None and newest.calibrated_upper is not None
    # ACI moved the band away from the raw one (this sample's raw band is too narrow)
    assert newest.calibrated_lower != pytest.approx(newest.quantiles["0.1"])
    lower = next(t for t in spec["data"] if t.get("name") == CALIBRATED_BAND_NAME)
    upper = next(t for t in spec["data"] if t.get("name") == "calibrated upper")
    assert lower["y"][0] == pytest.approx(sample.bars["AAA"][-1].close)  # anchored at the last close
    assert lower["y"][1:] == pytest.approx(newest.calibrated_lower)
    assert upper["y"][1:] == pytest.approx(newest.calibrated_upper)
    assert "calibrated: " in metrics_deltas(at)["Median in 8 steps"]


def test_live_without_calibration_draws_no_calibrated_band(env: Lake) -> None:
    write_sample(env)
    (spec,) = chart_specs(run_page())
    assert CALIBRATED_BAND_NAME not in trace_names(spec)


def metrics_deltas(at: AppTest) -> dict[str, str]:
    return {m.label: str(m.proto.delta) for m in at.metric}


def test_live_ticker_and_range(env: Lake) -> None:
    write_sample(env)
    at = run_page(ticker="BBB")
    assert at.selectbox(key="ticker").value == "BBB"
    assert "BBB" in chart_specs(at)[0]["layout"]["title"]["text"]
    at.segmented_control(key="live_range_minute").set_value("all").run()
    assert metrics(at)["Bars in range"] == "180"
    at.toggle[1].set_value(True).run()  # the past one-step band
    assert "past 1-step 80% band" in trace_names(chart_specs(at)[0])


def test_live_model_picker(env: Lake) -> None:
    from dashboard_lake import make_forecasts

    from tickcast.lake import write_forecasts

    sample = write_sample(env, tickers=("AAA",), scores=False)
    older = make_forecasts(sample.bars["AAA"][:-1], 7, 8, model_version="0")  # a second model, a bit behind
    write_forecasts(env, older)
    at = run_page()
    picker = at.selectbox(key="live_model")
    assert picker.options == [f"{MODEL_ID}/0", f"{MODEL_ID}/1"] and picker.value == f"{MODEL_ID}/1"
    picker.set_value(f"{MODEL_ID}/0").run()
    names = trace_names(chart_specs(at)[0])
    assert f"forecast median · {MODEL_ID}/0" in names
    assert "bar(s) before the newest one" in texts(at, "caption")


def test_live_resamples_long_ranges(env: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_DASHBOARD__MAX_CHART_BARS", "50")
    write_sample(env, tickers=("AAA",))
    at = run_page()
    at.segmented_control(key="live_range_minute").set_value("all").run()
    spec = chart_specs(at)[0]
    assert trace_names(spec)[0] == "bars (5min)"
    assert len(spec["data"][0]["x"]) == 36  # 3 sessions of 60 minutes in 5-minute candles
    assert "resampled to 5min candles" in texts(at, "caption")


def test_day_bars_and_interval_picker(env: Lake) -> None:
    write_sample(env, tickers=("SPX",), interval="day", days=30, bars_per_day=1)
    write_sample(env, tickers=("AAA",), interval="minute", days=1, forecasts=False)
    at = run_page(interval="day")
    assert at.selectbox(key="interval").options == ["minute", "day"]
    assert at.selectbox(key="ticker").value == "SPX"
    spec = chart_specs(at)[0]
    assert spec["data"][0]["x"][-1] == "2024-04-12"
    assert BAND_NAME in trace_names(spec)
    at.selectbox(key="interval").set_value("minute").run()
    assert at.selectbox(key="ticker").value == "AAA"
    assert "No forecast for this ticker" in texts(at, "caption")


def test_empty_lake_says_what_to_run(env: Lake) -> None:
    for page in (None, "forecast", "quality", "explore"):
        at = run_page(page)
        assert not at.error
        if page != "forecast":  # the forecast page first says that Serve is down
            assert "has no **minute** bars yet" in texts(at, "info")


def test_unreadable_lake_is_a_warning(env: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_LAKE__URL", "s3://no-such-bucket/lake")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    at = run_page()
    assert "cannot be read" in texts(at, "warning")
    assert "TICKCAST_LAKE__S3_ACCESS_KEY_ID" in texts(at, "warning")


# -- Forecast on demand -----------------------------------------------------------------------
def test_forecast_page_without_serve(env: Lake) -> None:
    write_sample(env)
    at = run_page("forecast")
    assert "Serve is not reachable" in texts(at, "warning")
    assert "tickcast serve" in texts(at, "warning")


def _show_result(payload: dict) -> None:  # an AppTest script: runs in Streamlit
    from dashboard.common import sidebar_selection
    from dashboard.views.forecast import show_result

    show_result(sidebar_selection(), {"payload": payload}, {})


def test_forecast_result_chart_and_csv(env: Lake) -> None:
    sample = write_sample(env, tickers=("AAA",), forecasts=False)
    last = sample.bars["AAA"][-1]
    forecast = Forecast(
        ticker="AAA",
        interval="minute",
        model_id="tickcast-chronos2-synthetic",
        model_version="1",
        issued_at=datetime.now(UTC),
        last_bar_start=last.start,
        horizon=3,
        target="close",
        mean=[1.0, 2.0, 3.0],
        quantiles={"0.1": [0.5, 1.5, 2.5], "0.5": [1.0, 2.0, 3.0], "0.9": [1.5, 2.5, 3.5]},
    )
    # the same shape as Serve's POST /v1/forecast/ticker answer
    payload = {**forecast.to_dict(), "context_used": 60, "covariates_used": False, "bundled": True}
    at = AppTest.from_function(_show_result, args=(payload,), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    (spec,) = chart_specs(at)
    band = next(t for t in spec["data"] if t.get("name") == BAND_NAME)
    assert band["y"] == pytest.approx([last.close, 0.5, 1.5, 2.5])
    assert "bundled model" in texts(at, "caption")
    assert at.download_button[0].label == "Download CSV"
    table = at.dataframe[0].value
    assert list(table["step"]) == [1, 2, 3] and list(table["q0.9"]) == [1.5, 2.5, 3.5]


def test_forecast_table_csv_columns() -> None:
    from dashboard.serve_api import forecast_table

    start = datetime(2024, 3, 4, 15, tzinfo=UTC)
    forecast = Forecast(
        "AAA", "day", "m", "2", start, start, 2, "close", [1.0, 2.0], {"0.25": [0.1, 0.2], "0.5": [1, 2]}
    )
    table = forecast_table(forecast.to_dict())
    assert list(table.columns) == [
        "ticker", "step", "step_start", "mean", "q0.25", "q0.5", "p10", "p50", "p90", "last_bar_start", "model"
    ]  # fmt: skip
    assert table["step_start"].iloc[1] == start + timedelta(days=2)
    assert table["p10"].isna().all() and list(table["p50"]) == [1, 2]


# -- Quality --------------------------------------------------------------------------------------
def test_quality_scores_and_backtest(env: Lake) -> None:
    write_sample(env)
    write_backtest_report(env, "bt-latest")
    at = run_page("quality")
    assert not at.error and not at.warning
    specs = chart_specs(at)
    assert len(specs) == 4  # rolling scores, scores by step, backtest summary, backtest by step
    assert f"{MODEL_ID}/{MODEL_VERSION}" in trace_names(specs[0])
    summary = at.dataframe[0].value
    assert summary["model"].tolist() == [f"{MODEL_ID}/{MODEL_VERSION}"]
    assert {"MASE", "WQL", "coverage_80", "steps"} <= set(summary.columns)
    backtest = at.dataframe[1].value
    assert set(backtest["model"]) == {"naive", "seasonal_naive", MODEL_ID}
    assert metrics(at)["Horizon / context"] == "4 / 64"


def test_quality_shows_coverage_before_and_after_calibration(env: Lake) -> None:
    sample = write_sample(env, calibrated=True)
    at = run_page("quality")
    at.segmented_control(key="quality_range_minute").set_value("all").run()
    assert not at.error
    rolling = chart_specs(at)[0]
    model = f"{MODEL_ID}/{MODEL_VERSION}"
    names = trace_names(rolling)
    assert names.count(model + CALIBRATED_SUFFIX) == 2  # coverage and WQL rows
    raw, cal = (next(t for t in rolling["data"] if t.get("name") == n) for n in (model, model + CALIBRATED_SUFFIX))
    assert raw["yaxis"] == cal["yaxis"] == "y"  # both on the coverage row
    summary = at.dataframe[0].value
    scores = sample.scores["AAA"]  # the page shows the selected ticker
    expect = sum(bool(s.calibrated_covered) for s in scores) / len(scores)
    raw_expect = sum(bool(s.covered_80) for s in scores) / len(scores)
    assert summary["coverage_calibrated"].tolist() == [f"{expect:.1%}"]
    assert summary["coverage_80"].tolist() == [f"{raw_expect:.1%}"]
    assert expect != raw_expect


def test_quality_of_uncalibrated_scores_draws_no_calibrated_line(env: Lake) -> None:
    write_sample(env)
    at = run_page("quality")
    assert not any(n.endswith(CALIBRATED_SUFFIX) for n in trace_names(chart_specs(at)[0]))
    assert at.dataframe[0].value["coverage_calibrated"].tolist() == ["–"]


def test_quality_shows_the_newest_rolling_aggregates(env: Lake) -> None:
    from serving.streaming.scoring import Aggregate
    from tickcast.lake import write_aggregates

    write_sample(env)
    at = datetime(2024, 3, 6, 16, tzinfo=UTC)
    write_aggregates(env, [Aggregate(None, MODEL_ID, "0", 5, 1.0, 1.5, 0.05, 0.5, 5)], at, "minute", 256)
    newest = [
        Aggregate(None, MODEL_ID, MODEL_VERSION, 40, 1.0, 0.9, 0.01, 0.8, 40),
        Aggregate("AAA", MODEL_ID, MODEL_VERSION, 40, 1.0, 0.9, 0.01, 0.8, 40),
    ]
    write_aggregates(env, newest, at + timedelta(minutes=1), "minute", 256)
    page = run_page("quality")
    assert "Across tickers" in texts(page, "subheader")
    frames = [d.value for d in page.dataframe]
    models = next(f for f in frames if "steps" in f and "ticker" not in f and "model_version" in f)
    assert models["model_version"].tolist() == [MODEL_VERSION] and "period" not in models
    assert "Computed at 2024-03-06 16:01:00 UTC." in texts(page, "caption")


def test_quality_without_scores_or_reports(env: Lake) -> None:
    write_sample(env, forecasts=False)
    at = run_page("quality")
    info = texts(at, "info")
    assert "No scores for AAA" in info and "No backtest reports" in info


# -- Pipeline -------------------------------------------------------------------------------------
def test_pipeline_with_everything_down(env: Lake) -> None:
    at = run_page("pipeline")
    assert "No service answers" in texts(at, "info")
    assert "did not list its models" in texts(at, "info")
    assert metrics(at)["Consumer lag"] == "–"
    assert metrics(at)[INGEST_P50] == metrics(at)[INGEST_P95] == "–"
    assert BAR_END_P50 not in metrics(at)
    assert texts(at, "markdown").count(":red[● down]") >= 5  # four services and Kafka
    # nothing supervises this state folder: one line, no table
    assert "No restarts recorded" in texts(at, "caption")
    assert not at.dataframe


@contextmanager
def metrics_endpoint(registry: CollectorRegistry, health: dict[str, Any]) -> Iterator[str]:
    """A service's ``/healthz`` (``health``) and ``/metrics`` (``registry``) over real HTTP; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
            else:
                body, ctype = json.dumps({"ok": True, **health}).encode(), "application/json"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def forecaster_registry() -> CollectorRegistry:
    """The forecaster's latency histograms (its names and buckets) with known observations."""
    from serving.streaming.metrics import BAR_END_BUCKETS, BAR_END_TO_FORECAST, INGEST_TO_FORECAST, LATENCY_BUCKETS

    registry = CollectorRegistry()
    ingest = Histogram(INGEST_TO_FORECAST, "i", buckets=LATENCY_BUCKETS, registry=registry)
    bar_end = Histogram(BAR_END_TO_FORECAST, "b", buckets=BAR_END_BUCKETS, registry=registry)
    for value in [0.08] * 50 + [0.35] * 50:
        ingest.observe(value)
    for value in [1.2] * 50 + [2.2] * 50:
        bar_end.observe(value)
    return registry


@pytest.mark.parametrize("source", ["replay", "polygon-ws"])
def test_pipeline_shows_ingest_latency_and_bar_end_latency_only_when_live(
    env: Lake, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    with (
        metrics_endpoint(forecaster_registry(), {}) as forecaster,
        metrics_endpoint(CollectorRegistry(), {"source": source}) as producer,
    ):
        monkeypatch.setenv("TICKCAST_DASHBOARD__FORECASTER_URL", forecaster)
        monkeypatch.setenv("TICKCAST_DASHBOARD__PRODUCER_URL", producer)
        at = run_page("pipeline")
    shown = metrics(at)
    # 50 of 100 in (0.075, 0.1]: the median is that bucket's top; the 95th is 90% into (0.3, 0.4]
    assert shown[INGEST_P50] == "0.100 s" and shown[INGEST_P95] == "0.390 s"
    assert "From Kafka ingest to forecast" in texts(at, "caption")
    if source == "replay":
        assert BAR_END_P50 not in shown and "Producer lag" not in shown
        assert "shown for live sources only" in texts(at, "caption") and "`replay`" in texts(at, "caption")
    else:
        # the top of (1, 1.25]; 90% into (2, 2.5]
        assert shown[BAR_END_P50] == "1.250 s" and shown[BAR_END_P95] == "2.450 s"
        assert "shown for live sources only" not in texts(at, "caption")


def test_pipeline_shows_the_restarts_up_recorded(env: Lake) -> None:
    from tickcast.restarts import RestartRecord, write_restarts
    from tickcast.settings import load_settings as settings_now

    write_restarts(
        settings_now().infra.state_dir,
        {
            "kafka": RestartRecord("kafka"),
            "consumer": RestartRecord("consumer", 3, "killed by SIGKILL", "2026-01-05T10:00:00+00:00", "running"),
        },
    )
    at = run_page("pipeline")
    (table,) = at.dataframe
    frame = table.value
    assert list(frame.columns) == ["service", "restarts", "last exit", "state", "last restart (UTC)"]
    rows = {row["service"]: row for row in frame.to_dict("records")}
    assert rows["consumer"]["restarts"] == 3 and rows["consumer"]["last exit"] == "killed by SIGKILL"
    assert rows["kafka"]["restarts"] == 0 and rows["kafka"]["state"] == "running"
    assert "No restarts recorded" not in texts(at, "caption")


def test_pipeline_with_a_live_service(env: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    from producer.metrics import get_metrics
    from tickcast.service import ObservabilityServer

    get_metrics().bars_out.labels("test").inc(5)
    server = ObservabilityServer(unused_port(), host="127.0.0.1").start()
    monkeypatch.setenv("TICKCAST_DASHBOARD__PRODUCER_URL", f"http://127.0.0.1:{server.port}")
    try:
        at = run_page("pipeline")
        assert ":green[● healthy]" in texts(at, "markdown")
        assert "No service answers" not in texts(at, "info")
        get_metrics().bars_out.labels("test").inc(100)
        at.run()  # the second refresh has a rate
        assert metrics(at)["producer bars/s"] not in ("–", "0.0")
    finally:
        server.stop()


# -- Explore --------------------------------------------------------------------------------------
def test_explore(env: Lake) -> None:
    write_sample(env)
    at = run_page("explore")
    at.segmented_control(key="explore_range_minute").set_value("all").run()
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Distributions", "Correlations", "Volume spikes", "Data quality"]
    shown = metrics(at)
    assert shown["Bars"] == "180" and shown["Missing"] == "0" and shown["Complete"] == "100.0%"
    assert int(shown["Spikes"]) >= 1
    names = [n for spec in chart_specs(at) for n in trace_names(spec)]
    assert "normal fit" in names and "rolling median" in names
    assert "Could not read `bars.dlq`" in texts(at, "warning")


def test_cli_registers_the_dashboard() -> None:
    from dashboard.cli import run_dashboard, streamlit_argv
    from tickcast.cli import build_parser

    args = build_parser().parse_args(["dashboard"])
    assert args.handler is run_dashboard
    argv = streamlit_argv(load_settings(dashboard={"port": 8600, "host": "0.0.0.0"}))
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("dashboard/app.py")
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert flags["--server.port"] == "8600" and flags["--server.address"] == "0.0.0.0"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
