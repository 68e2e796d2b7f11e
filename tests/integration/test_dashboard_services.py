"""The dashboard against the real services: Ray Serve (the serving app with a tiny random-weight
Bolt model) for Forecast on demand and the Pipeline page's models, and the real Kafka broker
for the dead-letter records on the Explore page."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import build_micro_bolt
from dashboard_lake import write_sample
from streamlit.testing.v1 import AppTest

from dashboard.charts import BAND_NAME
from tickcast.lake import Lake
from tickcast.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def serve_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(Serve URL, lake URL): the serving app on a private Ray, reading a lake with sample bars."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.app import APP_NAME, make_app

    root = tmp_path_factory.mktemp("dash-serve")
    lake_url = f"file://{root / 'lake'}"
    write_sample(Lake(load_settings(lake={"url": lake_url}).lake), tickers=("AAA",), forecasts=False)
    model = build_micro_bolt(root / "bolt-micro")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = load_settings(
        lake={"url": lake_url},
        serving={"model": str(model), "device": "cpu", "torch_threads": 1, "num_cpus": 0.5, "port": port, "url": url},
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(make_app(settings), name=APP_NAME, route_prefix="/")
        yield url, lake_url
    finally:
        serve.shutdown()
        ray.shutdown()


def dashboard_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    dead = free_port()
    defaults = {
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}",
        "TICKCAST_SERVING__URL": f"http://127.0.0.1:{dead}",
        "TICKCAST_PRODUCER__METRICS_PORT": str(dead),
        "TICKCAST_CONSUMER__METRICS_PORT": str(dead),
        "TICKCAST_FORECASTER__METRICS_PORT": str(dead),
        "TICKCAST_DASHBOARD__PROBE_TIMEOUT_S": "2",
        "TICKCAST_DASHBOARD__REFRESH_S": "3600",
    }
    for key, value in {**defaults, **values}.items():
        monkeypatch.setenv(key, value)


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_forecast_on_demand(serve_lake: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    serve_url, lake_url = serve_lake
    dashboard_env(monkeypatch, TICKCAST_SERVING__URL=serve_url, TICKCAST_LAKE__URL=lake_url)
    at = open_page("forecast")
    assert not at.warning, [w.value for w in at.warning]
    model = next(s for s in at.selectbox if s.label == "Model")
    assert len(model.options) == 1 and "/" in model.value  # id/version from GET /v1/models
    at.number_input[0].set_value(4)  # horizon
    at.number_input[1].set_value(48)  # context
    next(b for b in at.button if b.label == "Forecast").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    names = [t.get("name") for spec in specs for t in spec["data"]]
    assert BAND_NAME in names
    table = at.dataframe[0].value
    assert list(table["step"]) == [1, 2, 3, 4]
    assert {"q0.1", "q0.5", "q0.9"} <= set(table.columns)
    assert at.download_button[0].label == "Download CSV"
    assert {m.label: m.value for m in at.metric}["Context used"] == "48 bars"


def test_pipeline_lists_the_served_model(serve_lake: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    serve_url, lake_url = serve_lake
    dashboard_env(monkeypatch, TICKCAST_SERVING__URL=serve_url, TICKCAST_LAKE__URL=lake_url)
    at = open_page("pipeline")
    markdown = " ".join(str(m.value) for m in at.markdown)
    assert "**serve**  \n:green[● healthy]" in markdown
    models = at.dataframe[-1].value
    assert len(models) == 1 and not bool(models["bundled"].iloc[0])


def test_explore_shows_dead_letter_records(
    settings: Settings, unique_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tickcast.kafka import make_producer

    topic = unique_topic("dlq", partitions=2)
    producer = make_producer(settings.kafka)
    sent: dict[str, Any] = {"AAA": 0, "other": 0}
    for i in range(30):
        key = b"AAA" if i % 3 == 0 else b"ZZZ"
        reason = b"prices out of order" if i % 2 else b"volume is negative"
        producer.send(topic, key=key, value=b'{"schema_version": 1}', headers=[("reason", reason), ("error", b"x")])
        sent["AAA" if key == b"AAA" else "other"] += 1
    producer.flush()
    producer.close()
    lake_url = f"file://{tmp_path / 'lake'}"
    write_sample(Lake(load_settings(lake={"url": lake_url}).lake), tickers=("AAA",), forecasts=False)
    dashboard_env(
        monkeypatch,
        TICKCAST_LAKE__URL=lake_url,
        TICKCAST_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        TICKCAST_KAFKA__TOPIC_DLQ=topic,
        TICKCAST_DASHBOARD__PROBE_TIMEOUT_S="10",
    )
    at = open_page("explore")
    shown = {m.label: m.value for m in at.metric}
    assert shown["AAA in the sample"] == str(sent["AAA"])
    assert shown["All tickers in the sample"] == "30"
    assert shown["Records in the topic"] == "30"
    reasons = at.dataframe[-2].value
    assert set(reasons.index) == {"prices out of order", "volume is negative"}
