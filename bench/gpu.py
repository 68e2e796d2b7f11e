"""Benchmark on an NVIDIA GPU: raw pipeline vs the Serve app, fp32 and bf16, and a 5,000-ticker burst.

Run it with ``make bench-gpu`` (``scripts/bench-gpu.sh``), which installs what it needs on a
bare machine first. For a Chronos-2-base-sized and a Chronos-Bolt-base-sized model with
RANDOM weights (built from a config by ``serving.tiny_models``: the compute is real, the
forecasts are not), in fp32 and bf16, it measures in one run:

- ``batches``: for requests of 1, 32 and 256 series of ``--context`` values, the raw
  ``pipeline.predict_quantiles`` on the GPU in this process (series/s, p50 per call) and the
  Serve app on the same GPU, reached through tickcast's default path (a replica's direct
  ingress), loaded by several clients (series/s, p50 per request);
- ``burst``: 5,000 tickers' series at once, sent as the streaming forecaster sends them
  (micro-batches of 256, 2 in flight), against raw calls of 256 series: the wall time, and
  its ratio to raw.

Raw and Serve share the GPU and alternate, never overlap. Prints one JSON document; exits
0 when measured, 2 when a step crashed, and ``NO_GPU`` (3) at once, before loading anything
heavy, when no CUDA device is visible, with ``"error": "no GPU ..."`` in the JSON.

    .venv/bin/python bench/gpu.py                      # both models, fp32 and bf16: ~4-6 minutes
    .venv/bin/python bench/gpu.py --models bolt-base --dtypes bfloat16 --duration 2
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

from _common import Steps, closed_loop, finish, run_main

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

#: Exit status when this machine has no usable NVIDIA GPU (0-2 are bench/_common's).
NO_GPU = 3

#: Published geometries, built with random weights: (tiny kind, config overrides).
MODELS: dict[str, tuple[str, dict[str, int]]] = {
    # amazon/chronos-2: 120M parameters
    "chronos2-base": ("chronos2-tiny", {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12}),
    # amazon/chronos-bolt-base: 205M parameters (T5-base encoder and decoder)
    "bolt-base": (
        "bolt-small",
        {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12},
    ),
}
#: Concurrent Serve clients per request size: enough to keep a replica's dynamic batches full.
CLIENTS = {1: 64, 32: 8, 256: 2}
BURST_TICKERS = 5000
BURST_MICRO_BATCH = 256  # TICKCAST_FORECASTER__MICRO_BATCH_MAX
BURST_IN_FLIGHT = 2  # TICKCAST_FORECASTER__MAX_IN_FLIGHT


def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark (no torch with CUDA, no visible GPU), or None."""
    try:
        import torch
    except ImportError:
        return "no GPU usable: torch is not installed (make bench-gpu installs it)"
    if not torch.cuda.is_available():
        return (
            "no GPU: torch sees no CUDA device (CUDA_VISIBLE_DEVICES, the NVIDIA driver, or a CPU-only torch "
            f"build {torch.__version__})"
        )
    return None


def _series(n: int, length: int, seed: int) -> list[list[float]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(100 + rng.standard_normal(length).cumsum()).round(4).tolist() for _ in range(n)]


def _pct_ms(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def bench_raw(pipeline: Any, batch: int, context: int, horizon: int, duration: float) -> dict[str, Any]:
    """Back-to-back ``predict_quantiles`` calls on ``batch`` series for ``duration`` seconds."""
    import torch

    inputs = [torch.tensor(s, dtype=torch.float32) for s in _series(batch, context, 1)]

    def call() -> None:
        pipeline.predict_quantiles(inputs, prediction_length=horizon, quantile_levels=[0.1, 0.5, 0.9])
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(3):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration or len(times) < 5:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return {"series_per_s": round(batch * len(times) / sum(times), 1), "p50_ms": _pct_ms(times, 50)}


async def _load(url: str, bodies: list[bytes], clients: int, duration: float, per_request: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:
        for body in bodies[:2]:
            async with session.post(url, data=body) as resp:
                await resp.read()
        run = await closed_loop(session, [url], bodies, clients, duration)
    return {
        "clients": clients,
        "requests": len(run.latencies),
        "errors": run.errors,
        "series_per_s": round(len(run.latencies) * per_request / run.elapsed, 1),
        "p50_ms": _pct_ms(run.latencies, 50),
    }


async def _burst(url: str, series: list[list[float]], horizon: int) -> dict[str, Any]:
    """Every series once, in micro-batches, ``BURST_IN_FLIGHT`` requests at a time."""
    import aiohttp

    batches = [series[i : i + BURST_MICRO_BATCH] for i in range(0, len(series), BURST_MICRO_BATCH)]
    bodies = [json.dumps({"series": b, "horizon": horizon}).encode() for b in batches]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    errors = 0
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:

        async def sender() -> None:
            nonlocal errors
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    errors += resp.status != 200

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(BURST_IN_FLIGHT)))
        seconds = time.perf_counter() - start
    return {"series": len(series), "requests": len(bodies), "errors": errors, "seconds": round(seconds, 3)}


def run_model(name: str, dtype: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Raw and Serve for one model in one dtype; the app is deployed for it and removed after."""
    import torch
    from chronos import BaseChronosPipeline
    from ray import serve

    from serving.app import APP_NAME, make_app
    from serving.runtime import direct_url
    from tickcast.settings import load_settings

    pipeline = BaseChronosPipeline.from_pretrained(str(path), device_map=args.device, dtype=getattr(torch, dtype))
    params = sum(p.numel() for p in pipeline.inner_model.parameters())
    settings = load_settings(serving={"port": args.port})
    overrides = {
        "model": str(path),
        "device": args.device,
        "dtype": dtype,
        "num_gpus": 1 if args.device == "cuda" else 0,
        "max_batch_size": max(args.batches),
        "batch_wait_timeout_s": 0.0,
    }
    serve.run(make_app(settings, overrides), name=APP_NAME, route_prefix="/")
    url = direct_url(settings.serving, timeout_s=120)
    if url is None:
        raise RuntimeError("no replica answers on a direct-ingress port")
    out: dict[str, Any] = {"model": name, "dtype": dtype, "parameters": params, "batches": {}}
    for batch in args.batches:
        raw = bench_raw(pipeline, batch, args.context, args.horizon, args.duration)
        bodies = [
            json.dumps({"series": _series(batch, args.context, 10 + i), "horizon": args.horizon}).encode()
            for i in range(4)
        ]
        served = asyncio.run(_load(f"{url}/v1/forecast", bodies, CLIENTS.get(batch, 4), args.duration, batch))
        out["batches"][str(batch)] = {
            "raw": raw,
            "serve": served,
            "serve_over_raw": round(served["series_per_s"] / raw["series_per_s"], 3),
        }
    burst_series = _series(BURST_TICKERS, args.context, 99)
    raw_burst = bench_raw(pipeline, BURST_MICRO_BATCH, args.context, args.horizon, args.duration)
    served_burst = asyncio.run(_burst(f"{url}/v1/forecast", burst_series, args.horizon))
    raw_seconds = BURST_TICKERS / raw_burst["series_per_s"]
    out["burst"] = {
        **served_burst,
        "raw_seconds": round(raw_seconds, 3),
        "raw_series_per_s": raw_burst["series_per_s"],
        "serve_series_per_s": round(BURST_TICKERS / served_burst["seconds"], 1),
        "serve_over_raw": round(raw_seconds / served_burst["seconds"], 3),
    }
    serve.delete(APP_NAME)
    del pipeline
    torch.cuda.empty_cache()
    return out


def run(args: argparse.Namespace, steps: Steps) -> dict[str, Any]:
    import ray
    import torch
    from ray import serve

    from serving.runtime import init_ray
    from serving.tiny_models import build_tiny_model
    from tickcast.settings import load_settings

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    result: dict[str, Any] = {"gpu": gpu, "cuda": torch.version.cuda, "runs": []}
    with tempfile.TemporaryDirectory(prefix="tickcast-gpu-bench-") as tmp:
        paths = {}
        for name in args.models:
            kind, overrides = MODELS[name]
            extra = {"max_horizon": 64} if kind.startswith("chronos2") else {}
            paths[name] = build_tiny_model(
                kind,  # type: ignore[arg-type]
                Path(tmp) / name,
                context_length=max(args.context, 2048),
                **extra,
                **overrides,
            )
        settings = load_settings(serving={"port": args.port}, infra={"state_dir": str(Path(tmp) / "state")})
        init_ray(settings, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        try:
            for name, path in paths.items():
                for dtype in args.dtypes:
                    data = steps.step(f"{name}/{dtype}", lambda: run_model(name, dtype, path, args))  # noqa: B023
                    if data is not None:
                        result["runs"].append(data)
        finally:
            serve.shutdown()
            ray.shutdown()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes")
    parser.add_argument("--batches", default="1,32,256", help="series per request (and per raw call)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per raw or Serve measurement")
    parser.add_argument("--context", type=int, default=512, help="values per series")
    parser.add_argument("--horizon", type=int, default=64)
    parser.add_argument("--port", type=int, default=18500, help="Serve's port; a replica answers above it")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of this script
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    unknown = sorted(set(args.models) - set(MODELS)) + sorted(set(args.dtypes) - {"float32", "bfloat16"})
    if unknown:
        parser.error(f"unknown model or dtype {unknown[0]!r}: models {', '.join(MODELS)}; dtypes float32, bfloat16")

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": dict(vars(args)),
        "note": "random-weight models with the published geometries: the compute is real, the forecasts are not. "
        "Raw = chronos pipeline.predict_quantiles on the GPU in the benchmark process; Serve = the app through "
        "a replica's direct ingress (tickcast's default path), on the same GPU, never at the same time.",
    }
    problem = gpu_problem() if args.device == "cuda" else None
    if problem:
        result["error"] = problem
        print(json.dumps(result, indent=2), flush=True)
        print(f"bench-gpu: {problem}", file=sys.stderr)
        return NO_GPU
    steps = Steps()
    # Ray and its workers write to stdout; keep stdout for the JSON result alone.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        data = steps.step("gpu", lambda: run(args, steps))
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    if data is not None:
        result.update(data)
        result["summary"] = [
            {
                "model": r["model"],
                "dtype": r["dtype"],
                **{f"batch_{b}_serve_over_raw": v["serve_over_raw"] for b, v in r["batches"].items()},
                "burst_serve_over_raw": r["burst"]["serve_over_raw"],
            }
            for r in result["runs"]
        ]
        for r in result["runs"]:
            failed = {b: v["serve"]["errors"] for b, v in r["batches"].items() if v["serve"]["errors"]}
            if failed or r["burst"]["errors"]:
                steps.fail(f"{r['model']}/{r['dtype']}", f"requests answered with an error: {failed or r['burst']}")
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["median_serve_over_raw"] = (
        round(statistics.median(v["serve_over_raw"] for r in result.get("runs", []) for v in r["batches"].values()), 3)
        if result.get("runs")
        else None
    )
    return finish(result, {}, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
