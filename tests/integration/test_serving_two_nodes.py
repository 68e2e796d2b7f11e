"""Scale-out on Ray: a head and a worker node on this machine, the layout KubeRay runs.

Two Ray nodes started as separate processes (``serving.runtime.start_local_nodes``: each its
own raylet with 1 CPU, every address on 127.0.0.1, the local Ray token required) run:

- the Serve app with one replica per node (replicas of 1 CPU on nodes of 1 CPU), each
  answering on its own direct-ingress port with forecasts equal to the in-process pipeline;
- ``batch_forecast`` with its default pool, one actor per node, writing forecasts equal to
  the in-process pipeline's for each ticker's last bars.

Nothing of either node listens beyond loopback. ``bench/scale.py`` measures the same layout.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from conftest import free_port_block
from forecast_reference import assert_forecasts_close, reference_quantiles
from listening import exposed, tree_listeners

from serving.runtime import DIRECT_PORTS, LocalNodes, direct_urls, replica_nodes
from serving.tiny_models import build_tiny_model
from tickcast.contracts import Bar
from tickcast.lake import Lake, read_forecasts
from tickcast.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SMALL_BOLT = {"d_model": 64, "d_ff": 256, "num_layers": 2, "num_heads": 2, "d_kv": 32}
LEVELS = [0.1, 0.5, 0.9]
TICKERS = ("AAA", "BBB", "CCC", "DDD")
CONTEXT = 120


@dataclass
class Cluster:
    nodes: LocalNodes
    settings: Settings
    model: Path
    closes: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import ray
    from ray import serve

    from serving.app import APP_NAME, make_app
    from serving.runtime import prepare_local_cluster, start_local_nodes

    root = tmp_path_factory.mktemp("two-nodes")
    model = build_tiny_model("bolt-tiny", root / "bolt", context_length=256, **SMALL_BOLT)
    settings = load_settings(
        lake={"url": f"file://{root / 'lake'}"},
        infra={"state_dir": str(root / "state"), "cache_dir": str(root / "cache")},
        serving={"model": str(model), "port": free_port_block(DIRECT_PORTS), "num_cpus": 1, "torch_threads": 1},
        forecaster={"context_length": CONTEXT, "horizon": 4},
    )
    rng = np.random.default_rng(3)
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    closes = {t: 100 + rng.standard_normal(150).cumsum() for t in TICKERS}
    Lake(settings.lake).write_bars(
        [
            Bar(t, "minute", t0 + timedelta(minutes=i), t0 + timedelta(minutes=i + 1), c, c + 1, c - 1, c, 10.0)
            for t, values in closes.items()
            for i, c in enumerate(values)
        ]
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        gcs_port = int(sock.getsockname()[1])
    nodes = start_local_nodes(settings, gcs_port, nodes=2, cpus_per_node=1)
    try:
        prepare_local_cluster(settings)
        ray.init(address=nodes.address, log_to_driver=False)
        # one proxy: both nodes are this machine, where a second proxy would want the same port
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": settings.serving.port})
        serve.run(make_app(settings, {"num_replicas": 2}), name=APP_NAME, route_prefix="/")
        yield Cluster(nodes, settings, model, closes)
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            nodes.stop()


def test_two_nodes_each_run_a_replica_that_serves_correct_forecasts(cluster: Cluster) -> None:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    assert len(alive) == 2 and all(n["NodeManagerAddress"] == "127.0.0.1" for n in alive)
    assert all(n["Resources"].get("CPU") == 1.0 for n in alive)
    assert sorted(replica_nodes()) == sorted(n["NodeID"] for n in alive)  # one replica on each node

    urls = direct_urls(cluster.settings.serving, timeout_s=120, at_least=2)
    assert len(urls) == 2, urls
    rng = np.random.default_rng(8)
    series = [(50 + rng.standard_normal(n).cumsum()).round(3).tolist() for n in (30, 200)]
    q_ref, m_ref, limit = reference_quantiles(cluster.model, series, 6, LEVELS, threads=1)
    for url in urls:
        response = httpx.post(
            f"{url}/v1/forecast", json={"series": series, "horizon": 6, "quantile_levels": LEVELS}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()["forecasts"]
        q = np.array([[f["quantiles"][repr(lv)] for lv in LEVELS] for f in body]).transpose(0, 2, 1)
        assert_forecasts_close(q, q_ref, series, limit)
        assert_forecasts_close(np.array([f["mean"] for f in body]), m_ref, series, limit)


def test_batch_inference_spreads_over_both_nodes(cluster: Cluster) -> None:
    from ray import serve

    from serving.app import APP_NAME
    from serving.batch import batch_forecast

    serve.delete(APP_NAME)  # the replicas hold each node's only CPU, which the actors need
    report = batch_forecast(cluster.settings, list(TICKERS), chunk_size=2, progress=False)
    assert (report.forecast, report.failed, report.actors, report.nodes) == (4, {}, 2, 2)
    lake = Lake(cluster.settings.lake)
    contexts = [cluster.closes[t][-CONTEXT:] for t in TICKERS]
    _, m_ref, limit = reference_quantiles(cluster.model, contexts, 4, LEVELS, threads=1)
    mean = np.array([read_forecasts(lake, t, "minute")["mean"].to_pylist() for t in TICKERS])
    assert_forecasts_close(mean, m_ref, contexts, limit)


def test_no_process_of_either_node_listens_beyond_loopback(cluster: Cluster) -> None:
    temp = str(cluster.nodes.temp_dir)
    roots = [p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])]
    raylets = [p for p in roots if "raylet" in " ".join(p.info["cmdline"] or [])]
    assert len(raylets) >= 2, "expected a raylet per node"
    listeners = [item for p in roots for item in tree_listeners(p.pid)]
    assert listeners and not exposed(listeners), "\n".join(exposed(listeners))
