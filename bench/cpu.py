"""Benchmark: CPU inference variants, raw series/s against accuracy on the backtest suites.

For the bundled model (Chronos-2, trained) and a Bolt-tiny-sized Chronos-Bolt (random
weights: its accuracy figures only say whether a variant changes the numbers), each variant
runs in this process, one after another:

- ``fp32``: what serving runs today on CPU (float32, ``torch.inference_mode``, torch's
  default threads): the reference every other variant is compared with;
- ``fp32_no_inference_mode``: autograd bookkeeping left on, to show what inference mode buys;
- ``fp32_threads_1``: one intra-op thread (what a replica with ``torch_threads=1`` runs);
- ``bf16``: weights and activations in bfloat16 (``TICKCAST_SERVING__DTYPE=bfloat16``);
- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` to int8.

Throughput: back-to-back ``predict_quantiles`` calls of ``--batch`` series of ``--context``
values for ``--duration`` seconds (series/s). Accuracy: WQL on the ``seasonal``,
``intraday_volume`` and ``real_daily`` backtest suites (training.suites), relative to ``fp32``.
A variant counts as correct when every suite's WQL is within 1% of ``fp32``'s.

Prints one JSON document; exits 1 when no correct variant reaches ``TARGET_SPEEDUP`` (2x)
over ``fp32`` for a model, 2 when a variant crashed.

    nice -n 15 .venv/bin/python bench/cpu.py                 # ~3-5 minutes on 2 cores
    nice -n 15 .venv/bin/python bench/cpu.py --models bundled --variants fp32,bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _common import Steps, finish, run_main, target

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
#: Raw series/s of the fastest correct variant over fp32's (issue 17, point 2).
TARGET_SPEEDUP = 2.0
#: A variant is as accurate as fp32 when each suite's WQL is within this fraction of fp32's.
WQL_TOLERANCE = 0.01
SUITES = ("seasonal", "intraday_volume", "real_daily")
VARIANTS = ("fp32", "fp32_no_inference_mode", "fp32_threads_1", "bf16", "int8_dynamic")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_variant(base: Any, variant: str) -> tuple[Any, Callable[[], contextlib.AbstractContextManager[Any]]]:
    """A pipeline for ``variant`` (a copy of ``base`` where it changes weights) and the context its calls run in."""
    import torch

    if variant in ("fp32", "fp32_threads_1"):
        threads = 1 if variant == "fp32_threads_1" else 0
        return base, lambda: _stacked(torch.inference_mode(), _threads(threads))
    if variant == "fp32_no_inference_mode":
        return base, contextlib.nullcontext
    pipeline = copy.deepcopy(base)
    if variant == "bf16":
        pipeline.model = pipeline.model.to(torch.bfloat16)
    elif variant == "int8_dynamic":
        pipeline.model = torch.ao.quantization.quantize_dynamic(pipeline.model, {torch.nn.Linear}, dtype=torch.qint8)
    else:
        raise ValueError(f"unknown variant {variant!r}: use any of {', '.join(VARIANTS)}")
    return pipeline, torch.inference_mode


@contextlib.contextmanager
def _stacked(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def throughput(pipeline: Any, scope: Callable[[], Any], batch: int, context: int, duration: float) -> dict[str, Any]:
    """Back-to-back calls on ``batch`` series for ``duration`` seconds."""
    import torch

    rng = np.random.default_rng(1)
    inputs = [torch.tensor(100 + rng.standard_normal(context).cumsum(), dtype=torch.float32) for _ in range(batch)]
    with scope():
        pipeline.predict_quantiles(inputs, prediction_length=8, quantile_levels=[0.1, 0.5, 0.9])
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < duration or len(times) < 2:
            t = time.perf_counter()
            pipeline.predict_quantiles(inputs, prediction_length=8, quantile_levels=[0.1, 0.5, 0.9])
            times.append(time.perf_counter() - t)
    return {"series_per_s": round(batch * len(times) / sum(times), 1), "calls": len(times)}


def accuracy(pipeline: Any, scope: Callable[[], Any]) -> dict[str, float]:
    """WQL of ``pipeline`` on each suite (no baselines)."""
    from training.suites import run_suite

    out = {}
    with scope():
        for suite in SUITES:
            result = run_suite(suite, {"model": pipeline}, baselines=())
            summary = result.summary.set_index("model")
            out[suite] = round(float(summary.loc["model", "WQL"]), 6)
    return out


def run_model(name: str, path: Path, args: argparse.Namespace, steps: Steps) -> dict[str, Any]:
    import torch
    from chronos import BaseChronosPipeline

    base = BaseChronosPipeline.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)
    out: dict[str, Any] = {
        "model": name,
        "parameters": sum(p.numel() for p in base.inner_model.parameters()),
        "torch_threads_default": torch.get_num_threads(),
        "variants": {},
    }
    for variant in args.variants:

        def measure(variant: str = variant) -> dict[str, Any]:
            pipeline, scope = make_variant(base, variant)
            return {
                **throughput(pipeline, scope, args.batch, args.context, args.duration),
                "wql": accuracy(pipeline, scope),
            }

        data = steps.step(f"{name}/{variant}", measure)
        if data is not None:
            out["variants"][variant] = data
    ref = out["variants"].get("fp32")
    if ref:
        for data in out["variants"].values():
            data["speedup"] = round(data["series_per_s"] / ref["series_per_s"], 3)
            data["wql_vs_fp32"] = {s: round(data["wql"][s] / ref["wql"][s], 4) for s in SUITES}
            data["correct"] = all(abs(r - 1) <= WQL_TOLERANCE for r in data["wql_vs_fp32"].values())
        correct = {v: d for v, d in out["variants"].items() if d["correct"]}
        best = max(correct, key=lambda v: correct[v]["series_per_s"])
        out["fastest_correct"] = {"variant": best, "speedup": correct[best]["speedup"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bundled,bolt-tiny", help="bundled and/or a tiny model kind")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch", type=int, default=64, help="series per call")
    parser.add_argument("--context", type=int, default=512, help="values per series")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of calls per variant")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    if "fp32" not in args.variants:
        parser.error("--variants must include fp32, the reference")

    from serving.tiny_models import build_tiny_model

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "cpu",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_start": os.getloadavg()},
        "settings": vars(args),
        "models": [],
    }
    steps = Steps()
    targets: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tickcast-cpu-bench-") as tmp:
        for name in args.models:
            path = REPO / "models" / "bundled" if name == "bundled" else build_tiny_model(name, Path(tmp) / name)  # type: ignore[arg-type]
            data = steps.step(name, lambda name=name, path=path: run_model(name, path, args, steps))
            if data is not None:
                result["models"].append(data)
                best = data.get("fastest_correct")
                targets[f"{name}/fastest_correct_speedup"] = target(
                    best["speedup"] if best else None, ">=", TARGET_SPEEDUP
                )
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return finish(result, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
