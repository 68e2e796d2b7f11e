"""Benchmark: scale-out across Ray nodes, 2 nodes against 1, for Serve and for batch inference.

A local Ray cluster of separate nodes on this machine (``serving.runtime.start_local_nodes``:
a head and a worker, each its own raylet limited to ``--cpus-per-node`` CPUs and pinned to
that many cores of its own, as separate machines would be; every address on 127.0.0.1, the
local Ray token required), the layout KubeRay runs on EKS:

1. one node: the Serve app with one replica, loaded with ``--big``-series requests from
   ``--clients`` clients through its direct-ingress port (tickcast's default path) for
   ``--duration`` seconds; then ``serving.batch.batch_forecast`` of ``--tickers`` tickers from
   a local lake with one actor;
2. a worker node joins; the app runs one replica per node (replicas of one CPU on nodes of
   one CPU cannot share a node), the clients spread over both replicas' ports; the batch runs
   one actor per node.

Both models are Chronos-Bolt with RANDOM weights built from a config (the compute is real,
the forecasts are not). Prints one JSON document: series/s with 1 and 2 nodes and their
ratio, for Serve and for batch, and on which nodes the replicas and actors ran. Exits 1 when
a ratio is below ``TARGET_RATIO`` (1.6), 2 when a step crashed.

Ratios, not absolute numbers, are what to compare: the nodes share this machine's cores with
the load generator and whatever else runs here, which a ratio measured in one run cancels.

    nice -n 15 .venv/bin/python bench/scale.py              # ~3-5 minutes on 2 cores
    nice -n 15 .venv/bin/python bench/scale.py --model bolt-tiny --duration 6 --tickers 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from _common import Steps, closed_loop, finish, run_main, target

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

#: Throughput with 2 nodes over throughput with 1 (issue 17, point 4).
TARGET_RATIO = 1.6


def _series(rng: np.random.Generator, n: int, length: int) -> list[list[float]]:
    return [(100 + rng.standard_normal(length).cumsum()).round(4).tolist() for _ in range(n)]


async def _load(
    urls: list[str], bodies: list[bytes], clients: int, duration: float, per_request: int
) -> dict[str, Any]:
    """``clients`` clients, client k sending to ``urls[k % len(urls)]``, for ``duration`` seconds."""
    import aiohttp

    endpoints = [f"{url}/v1/forecast" for url in urls]
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        for k in range(clients):  # warm-up: connections open, each replica touched
            async with session.post(endpoints[k % len(endpoints)], data=bodies[0]) as resp:
                await resp.read()
        run = await closed_loop(session, endpoints, bodies, clients, duration)
    return {
        "urls": len(urls),
        "requests": len(run.latencies),
        "errors": run.errors,
        "series_per_s": round(len(run.latencies) * per_request / run.elapsed, 1),
        "p50_ms": round(float(np.percentile(run.latencies, 50)) * 1000, 1) if run.latencies else None,
    }


def _write_lake(settings: Any, tickers: int, bars: int) -> list[str]:
    """``tickers`` tickers of ``bars`` minute bars each in the settings' lake, one commit."""
    from tickcast.contracts import Bar
    from tickcast.lake import Lake

    rng = np.random.default_rng(5)
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    names = [f"T{i:04d}" for i in range(tickers)]
    rows = []
    for name in names:
        closes = 100 + rng.standard_normal(bars).cumsum()
        for i, c in enumerate(closes):
            start = t0 + timedelta(minutes=i)
            rows.append(
                Bar(name, "minute", start, start + timedelta(minutes=1), c, c + 1, c - 1, c, 1000.0, source="b")
            )
    Lake(settings.lake).write_bars(rows)
    return names


def _measure(args: argparse.Namespace, settings: Any, nodes: int, tickers: list[str]) -> dict[str, Any]:
    """Deploy one replica per node, load them, remove the app, then run the batch job with one actor per node."""
    from ray import serve

    from serving.app import APP_NAME, make_app
    from serving.batch import batch_forecast
    from serving.runtime import direct_urls, replica_nodes

    serve.run(make_app(settings, {"num_replicas": nodes}), name=APP_NAME, route_prefix="/")
    urls = direct_urls(settings.serving, timeout_s=120, at_least=nodes)
    if len(urls) < nodes:
        raise RuntimeError(f"{len(urls)} replicas answer on a direct-ingress port, {nodes} expected")
    nodes_of_replicas = replica_nodes()
    rng = np.random.default_rng(2)
    bodies = [
        json.dumps({"series": _series(rng, args.big, args.context), "horizon": args.horizon}).encode() for _ in range(8)
    ]
    serve_run = asyncio.run(_load(urls, bodies, args.clients * nodes, args.duration, args.big))
    # the replicas hold every node's CPU, which the batch actors need
    serve.delete(APP_NAME)
    report = batch_forecast(settings, tickers, horizon=args.horizon, actors=nodes, chunk_size=args.big, progress=False)
    return {
        "nodes": nodes,
        "serve": {
            **serve_run,
            "replicas": len(nodes_of_replicas),
            "replica_nodes": len(set(nodes_of_replicas)),
            "clients": args.clients * nodes,
        },
        "batch": {
            "tickers": report.tickers,
            "forecast": report.forecast,
            "actors": report.actors,
            "actor_nodes": report.nodes,
            "seconds": report.seconds,
            "series_per_s": round(report.forecast / report.seconds, 1) if report.seconds else None,
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements on one cluster: 1 node, then 2 (the worker joins in between)."""
    import ray
    from ray import serve

    from serving.runtime import prepare_local_cluster, start_local_nodes
    from serving.tiny_models import build_tiny_model
    from tickcast.settings import load_settings

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tickcast-scale-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(args.model, root / "model", context_length=args.context)
        settings = load_settings(
            lake={"url": f"file://{root / 'lake'}"},
            infra={"state_dir": str(root / "state"), "cache_dir": str(root / "cache")},
            serving={
                "model": str(model),
                "port": args.port,
                "num_cpus": args.cpus_per_node,
                "torch_threads": args.cpus_per_node,
                "max_batch_size": 64,
                "batch_wait_timeout_s": 0.0,
            },
            forecaster={"context_length": args.context},
        )
        tickers = _write_lake(settings, args.tickers, args.context)
        if not args.gcs_port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                args.gcs_port = int(sock.getsockname()[1])
        cluster = start_local_nodes(
            settings, args.gcs_port, nodes=1, cpus_per_node=args.cpus_per_node, pin_cores=not args.no_pin
        )
        try:
            prepare_local_cluster(settings)
            ray.init(address=cluster.address, log_to_driver=False)
            # one proxy: every node here is the same machine, where two would want one port
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": args.port})
            out["one_node"] = _measure(args, settings, 1, tickers)
            cluster.add_node()
            out["two_nodes"] = _measure(args, settings, 2, tickers)
            out["ray_nodes"] = len([n for n in ray.nodes() if n.get("Alive")])
        finally:
            try:
                serve.shutdown()
                ray.shutdown()
            finally:
                cluster.stop()
    for part in ("serve", "batch"):
        one, two = out["one_node"][part]["series_per_s"], out["two_nodes"][part]["series_per_s"]
        out[f"{part}_ratio"] = round(two / one, 3) if one and two else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bolt-small", help="tiny model kind (serving.tiny_models)")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each Ray node (and torch threads)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let every node use every core (Ray's --num-cpus only counts; by default each node is pinned to its own)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of Serve load per cluster size")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients per replica")
    parser.add_argument("--big", type=int, default=32, help="series per request, and tickers per batch chunk")
    parser.add_argument("--tickers", type=int, default=256, help="tickers the batch job forecasts")
    parser.add_argument("--context", type=int, default=512, help="values per series (bars per ticker)")
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--port", type=int, default=18300, help="Serve's port; replicas answer above it")
    parser.add_argument(
        "--gcs-port",
        type=int,
        default=0,
        help="the head node's GCS port (default: a free one from the OS's ephemeral range; Ray refuses ports "
        "inside its worker range, 10002-19999)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_start": os.getloadavg()},
        "settings": vars(args),
        "note": "random-weight model built from a config: the compute is real, the forecasts are not. "
        "Nodes are separate Ray nodes (raylets) on this one machine, each limited to --cpus-per-node CPUs "
        "and (unless --no-pin) pinned to that many cores of its own.",
    }
    steps = Steps()
    # Ray and its workers write to stdout; keep stdout for the JSON result alone.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        data = steps.step("scale", lambda: run(args))
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    targets: dict[str, dict[str, Any]] = {}
    if data is not None:
        result.update(data)
        for part in ("serve", "batch"):
            targets[f"{part}_two_nodes_over_one"] = target(data[f"{part}_ratio"], ">=", TARGET_RATIO)
        two = data["two_nodes"]
        if two["serve"]["replica_nodes"] != 2 or two["batch"]["actor_nodes"] != 2:
            steps.fail(
                "placement",
                f"replicas on {two['serve']['replica_nodes']} node(s), actors on "
                f"{two['batch']['actor_nodes']}: expected 2 each",
            )
        for size in ("one_node", "two_nodes"):
            if data[size]["serve"]["errors"]:
                steps.fail(f"{size}/serve", f"requests answered with an error: {data[size]['serve']['errors']}")
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return finish(result, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
