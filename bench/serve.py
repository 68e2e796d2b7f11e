"""Benchmark: the Serve endpoint under concurrent load vs the raw in-process pipeline.

For each model (a Bolt-tiny-sized and a Bolt-small-sized Chronos-Bolt with RANDOM weights,
built from a config: the compute is real, the forecasts are not) it measures, in one run:

- ``low_load``: one client sending single-series requests one after another, each paired
  with a raw ``pipeline.predict_quantiles`` call on the same series: Serve's overhead;
- ``big_requests``: requests carrying ``--big`` series each, from 2 concurrent clients,
  compared with raw calls of the same batch size;
- ``single_concurrent``: single-series requests from ``--concurrency`` clients, which only
  dynamic batching can turn into big model calls, compared with raw calls of
  ``--max-batch`` series.

Raw runs happen in this process, alternating with Serve runs (``--rounds``), so load from
other processes drifting over time hits both alike; medians are reported.

Each ``--modes`` entry runs on a fresh Ray cluster in a subprocess (Serve reads its tuning
variables when the cluster starts): ``optimized`` is tickcast's default,
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (``TICKCAST_SERVING__THROUGHPUT_OPTIMIZED=true``), where
the low-load scenario is measured through the proxy and through the replica's direct-ingress
port, and the throughput scenarios through the direct port; ``proxy`` is the fallback
(``TICKCAST_SERVING__THROUGHPUT_OPTIMIZED=false``, Ray's defaults), every request through the
Serve HTTP proxy.

The replica and the raw pipeline use the same torch thread count. Everything shares this
machine's cores (Ray, the proxy, the replica and the load generator), so ratios are what
to compare across machines, not absolute numbers. Prints one JSON document; exits 1 when a
target of the default mode is missed (big requests >= 0.95 of raw, single-series requests
>= 0.9 of raw batched, p50 overhead at low load <= 3 ms through direct ingress; the proxy
fallback's figures are recorded, not judged), 2 when a mode crashed or answered requests with
errors (``errors`` says which and why).

    .venv/bin/python bench/serve.py                      # both models, both modes: ~8-10 minutes on 2 cores
    .venv/bin/python bench/serve.py --models bolt-tiny --modes optimized --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import Steps, closed_loop, finish, run_main, target

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

#: Serve's throughput over the raw pipeline's with 32-series requests, and with single-series
#: requests from many clients (dynamic batching); the p50 overhead at low load (direct ingress).
#: Judged for the default mode (DEFAULT_MODE) only.
TARGET_BIG_RATIO = 0.95
TARGET_SINGLE_RATIO = 0.9
TARGET_OVERHEAD_MS = 3.0
#: The mode tickcast's default settings run (TICKCAST_SERVING__THROUGHPUT_OPTIMIZED=true).
DEFAULT_MODE = "optimized"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def _series(rng: np.random.Generator, n: int, length: int) -> list[list[float]]:
    return [(100 + rng.standard_normal(length).cumsum()).round(4).tolist() for _ in range(n)]


def bench_raw(pipeline: Any, batch: int, context: int, horizon: int, duration: float) -> dict[str, Any]:
    """Sequential ``predict_quantiles`` calls on ``batch`` series for ``duration`` seconds."""
    import torch

    rng = np.random.default_rng(1)
    inputs = [torch.tensor(s, dtype=torch.float32) for s in _series(rng, batch, context)]
    for _ in range(2):
        pipeline.predict_quantiles(inputs, prediction_length=horizon, quantile_levels=[0.1, 0.5, 0.9])
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration or len(times) < 3:
        t = time.perf_counter()
        pipeline.predict_quantiles(inputs, prediction_length=horizon, quantile_levels=[0.1, 0.5, 0.9])
        times.append(time.perf_counter() - t)
    elapsed = sum(times)
    return {
        "batch": batch,
        "calls": len(times),
        "series_per_s": round(batch * len(times) / elapsed, 1),
        "p50_ms": round(_pct(times, 50), 2),
        "p99_ms": round(_pct(times, 99), 2),
    }


async def _load(url: str, bodies: list[bytes], concurrency: int, duration: float, per_request: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:
        # warm-up: open the connections and touch the model
        warm = await asyncio.gather(*(session.post(url, data=bodies[i % len(bodies)]) for i in range(concurrency)))
        for response in warm:
            response.release()
        run = await closed_loop(session, [url], bodies, concurrency, duration)
    return {
        "concurrency": concurrency,
        "series_per_request": per_request,
        "requests": len(run.latencies),
        "errors": run.errors,
        "series_per_s": round(len(run.latencies) * per_request / run.elapsed, 1),
        "p50_ms": round(_pct(run.latencies, 50), 2),
        "p99_ms": round(_pct(run.latencies, 99), 2),
    }


def bench_low_load(pipeline: Any, port: int, context: int, horizon: int, pairs: int) -> dict[str, Any]:
    """Single-series requests one at a time, each paired with a raw call on the same series.

    Pairing (raw, then HTTP, then raw, ...) makes the overhead estimate robust to load from
    other processes that drifts over seconds; the median of the per-pair differences is the
    reported overhead.
    """
    import http.client

    import torch

    rng = np.random.default_rng(3)
    series = _series(rng, 1, context)
    tensor = [torch.tensor(series[0], dtype=torch.float32)]
    body = json.dumps({"series": series, "horizon": horizon, "quantile_levels": [0.1, 0.5, 0.9]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def post() -> None:
        conn.request("POST", "/v1/forecast", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")

    def raw() -> None:
        pipeline.predict_quantiles(tensor, prediction_length=horizon, quantile_levels=[0.1, 0.5, 0.9])

    for _ in range(5):
        post()
        raw()
    raw_t, serve_t, diffs = [], [], []
    for _ in range(pairs):
        t0 = time.perf_counter()
        raw()
        t1 = time.perf_counter()
        post()
        t2 = time.perf_counter()
        raw_t.append(t1 - t0)
        serve_t.append(t2 - t1)
        diffs.append((t2 - t1) - (t1 - t0))
    conn.close()
    return {
        "port": port,
        "pairs": pairs,
        "serve_p50_ms": round(_pct(serve_t, 50), 2),
        "serve_p99_ms": round(_pct(serve_t, 99), 2),
        "raw_p50_ms": round(_pct(raw_t, 50), 2),
        "raw_p99_ms": round(_pct(raw_t, 99), 2),
        "p50_overhead_ms": round(_pct(diffs, 50), 2),
        "target": f"p50 overhead <= {TARGET_OVERHEAD_MS:g} ms",
    }


def _scrape(base: str) -> dict[str, float]:
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(("tickcast_serving_batch_requests_sum", "tickcast_serving_batch_requests_count")) or (
            line.startswith("tickcast_serving_batch_series_sum")
        ):
            name, value = line.split(" ")
            out[name] = float(value)
    return out


def bench_serve(
    base: str, n_series: int, concurrency: int, context: int, horizon: int, duration: float
) -> dict[str, Any]:
    """Load the endpoint and report throughput, latency and the batches the replica ran."""
    rng = np.random.default_rng(2)
    bodies = [
        json.dumps(
            {"series": _series(rng, n_series, context), "horizon": horizon, "quantile_levels": [0.1, 0.5, 0.9]}
        ).encode()
        for _ in range(8)
    ]
    before = _scrape(base)
    result = asyncio.run(_load(f"{base}/v1/forecast", bodies, concurrency, duration, n_series))
    after = _scrape(base)
    calls = after.get("tickcast_serving_batch_requests_count", 0) - before.get(
        "tickcast_serving_batch_requests_count", 0
    )
    if calls:
        reqs = after["tickcast_serving_batch_requests_sum"] - before.get("tickcast_serving_batch_requests_sum", 0)
        series = after["tickcast_serving_batch_series_sum"] - before.get("tickcast_serving_batch_series_sum", 0)
        result["model_calls"] = int(calls)
        result["mean_requests_per_call"] = round(reqs / calls, 2)
        result["mean_series_per_call"] = round(series / calls, 2)
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def run_model(kind: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All scenarios for one model; raw and Serve runs alternate so drifting load hits both alike."""
    import torch
    from chronos import BaseChronosPipeline
    from ray import serve

    from serving.app import APP_NAME, make_app
    from tickcast.settings import load_settings

    torch.set_num_threads(args.torch_threads)
    pipeline = BaseChronosPipeline.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)
    params = sum(p.numel() for p in pipeline.inner_model.parameters())
    out: dict[str, Any] = {"model": kind, "parameters": params, "weights": "random (built from a config)"}
    app = make_app(
        load_settings(),
        {
            "model": str(path),
            "torch_threads": args.torch_threads,
            "max_batch_size": args.max_batch,
            "batch_wait_timeout_s": args.batch_wait,
            "num_cpus": 1,
        },
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    # through Serve's proxy; in optimized mode the replica also answers directly on port+1
    ports = {"proxy": args.port}
    if args.mode == "optimized":
        from serving.runtime import direct_url
        from tickcast.settings import ServingSettings

        url = direct_url(ServingSettings.model_validate({"port": args.port, "throughput_optimized": True}), 60)
        if url is None:
            raise RuntimeError("no replica answers on a direct-ingress port")
        ports["direct"] = int(url.rsplit(":", 1)[1])
    main_port = ports.get("direct", args.port)
    base = f"http://127.0.0.1:{main_port}"
    out["paths"] = {"low_load": list(ports), "throughput": "direct" if "direct" in ports else "proxy"}
    out["low_load"] = {
        name: bench_low_load(pipeline, port, args.context, args.horizon, args.pairs) for name, port in ports.items()
    }
    d = args.duration
    scenarios = {
        "big_requests": (args.big, 2, args.big),  # (series per request, clients, raw batch size)
        "single_concurrent": (1, args.concurrency, args.max_batch),
    }
    for name, (per_request, clients, raw_batch) in scenarios.items():
        raw_runs, serve_runs = [], []
        for _ in range(args.rounds):
            raw_runs.append(bench_raw(pipeline, raw_batch, args.context, args.horizon, d))
            # long enough for several model calls even when one takes seconds (Bolt-small, 64 series)
            window = max(d, 12 * raw_runs[-1]["p50_ms"] / 1000)
            serve_runs.append(bench_serve(base, per_request, clients, args.context, args.horizon, window))
        ratios = [sv["series_per_s"] / rw["series_per_s"] for sv, rw in zip(serve_runs, raw_runs, strict=True)]
        out[name] = {
            "series_per_request": per_request,
            "clients": clients,
            "raw_batch": raw_batch,
            "serve_series_per_s": _median(serve_runs, "series_per_s"),
            "raw_series_per_s": _median(raw_runs, "series_per_s"),
            "ratio_to_raw": round(statistics.median(ratios), 3),
            "target": f">= {TARGET_BIG_RATIO:g} of raw"
            if name == "big_requests"
            else f">= {TARGET_SINGLE_RATIO:g} of raw batched",
            "serve_p50_ms": _median(serve_runs, "p50_ms"),
            "serve_p99_ms": _median(serve_runs, "p99_ms"),
            "raw_call_p50_ms": _median(raw_runs, "p50_ms"),
            "mean_requests_per_model_call": _median(serve_runs, "mean_requests_per_call"),
            "mean_series_per_model_call": _median(serve_runs, "mean_series_per_call"),
            "errors": sum(sum(r["errors"].values()) for r in serve_runs),
            "rounds": {"raw": raw_runs, "serve": serve_runs},
        }
    serve.delete(APP_NAME)
    return out


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """One Ray cluster in one Serve mode, every model."""
    import ray
    from ray import serve

    from serving.runtime import ray_env
    from serving.tiny_models import build_tiny_model
    from tickcast.settings import ServingSettings

    serving = ServingSettings.model_validate({"port": args.port, "throughput_optimized": args.mode == "optimized"})
    os.environ.update(ray_env(serving))
    result: dict[str, Any] = {"mode": args.mode, "models": []}
    with tempfile.TemporaryDirectory(prefix="tickcast-bench-") as tmp:
        paths = {k: build_tiny_model(k, Path(tmp) / k) for k in args.models.split(",")}  # type: ignore[arg-type]
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        try:
            for kind, path in paths.items():
                result["models"].append(run_model(kind, path, args))
        finally:
            serve.shutdown()
            ray.shutdown()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bolt-tiny,bolt-small", help="comma-separated tiny model kinds")
    parser.add_argument(
        "--modes",
        default="optimized,proxy",
        help="Serve modes, each on a fresh Ray: optimized (tickcast's default, RAY_SERVE_THROUGHPUT_OPTIMIZED) "
        "and proxy (the fallback, Ray's defaults)",
    )
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/Serve rounds per scenario")
    parser.add_argument("--pairs", type=int, default=150, help="raw/HTTP pairs in the low-load scenario")
    parser.add_argument("--context", type=int, default=512, help="values per series")
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--big", type=int, default=32, help="series per request in the big-request scenario")
    parser.add_argument("--max-batch", type=int, default=64, help="serving max_batch_size (series)")
    parser.add_argument("--concurrency", type=int, default=128, help="clients in the single-series scenario")
    parser.add_argument("--batch-wait", type=float, default=0.0, help="serving batch_wait_timeout_s")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads, raw and per replica")
    parser.add_argument("--port", type=int, default=18100)
    args = parser.parse_args(argv)

    if args.mode:
        # Ray and its workers write to stdout; keep stdout for the JSON result alone.
        sys.stdout.flush()
        real_stdout = os.dup(1)
        os.dup2(2, 1)
        result = run_mode(args)
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        print(json.dumps(result))
        return 0

    import subprocess

    started = time.perf_counter()
    passthrough: list[str] = []
    raw_args = list(argv if argv is not None else sys.argv[1:])
    skip = False
    for arg in raw_args:  # everything but --modes goes to the per-mode runs
        if skip:
            skip = False
        elif arg == "--modes":
            skip = True
        elif not arg.startswith("--modes="):
            passthrough.append(arg)
    results: dict[str, Any] = {
        "benchmark": "serve",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k != "mode"},
        "note": "random-weight models built from a config: the compute is real, the forecasts are not. "
        "Raw = chronos pipeline.predict_quantiles in the benchmark process with the same torch threads.",
        "modes": {},
    }
    steps = Steps()
    for mode in args.modes.split(","):

        def run_one(mode: str = mode) -> dict[str, Any]:
            proc = subprocess.run(
                [sys.executable, __file__, "--mode", mode, *passthrough],
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the {mode} run exited {proc.returncode} (its traceback is above)")
            return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

        data = steps.step(mode, run_one)
        results["modes"][mode] = data if data is not None else {"error": steps.errors[mode]}
    summary = []
    targets: dict[str, dict[str, Any]] = {}
    for mode, data in results["modes"].items():
        for m in data.get("models", []):
            summary.append(
                {
                    "mode": mode,
                    "model": m["model"],
                    "big_requests_ratio": m["big_requests"]["ratio_to_raw"],
                    "single_concurrent_ratio": m["single_concurrent"]["ratio_to_raw"],
                    "low_load_p50_overhead_ms": {k: v["p50_overhead_ms"] for k, v in m["low_load"].items()},
                    "throughput_path": m["paths"]["throughput"],
                }
            )
            targets.update(model_targets(mode, m))
            failed = {s: m[s]["errors"] for s in ("big_requests", "single_concurrent") if m[s]["errors"]}
            if failed:  # throughput of requests that failed is no throughput
                steps.fail(f"{mode}/{m['model']}", f"requests answered with an error: {failed}")
    results["summary"] = summary
    results["machine"]["load_average_end"] = os.getloadavg()
    results["wall_s"] = round(time.perf_counter() - started, 1)
    return finish(results, targets, steps.errors)


def model_targets(mode: str, model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of one model in one mode, named ``<mode>/<model>/<figure>``.

    Only the default mode is judged, on the path it is meant for (direct ingress); the proxy
    fallback's figures are in the JSON for comparison, since the proxy's hop alone costs more
    than the targets (README, Performance).
    """
    if mode != DEFAULT_MODE:
        return {}
    prefix = f"{mode}/{model['model']}"
    out = {
        f"{prefix}/big_requests_ratio": target(model["big_requests"]["ratio_to_raw"], ">=", TARGET_BIG_RATIO),
        f"{prefix}/single_concurrent_ratio": target(
            model["single_concurrent"]["ratio_to_raw"], ">=", TARGET_SINGLE_RATIO
        ),
    }
    direct = model["low_load"].get("direct")
    if direct is not None:
        out[f"{prefix}/low_load_p50_overhead_ms"] = target(direct["p50_overhead_ms"], "<=", TARGET_OVERHEAD_MS)
    return out


if __name__ == "__main__":
    raise SystemExit(run_main(main))
