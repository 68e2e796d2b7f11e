"""Benchmark: training throughput of the bundled model's recipe.

Builds the bundled preset (``small``, ~1M parameters, context 256) and trains it on the
synthetic corpus with the bundled recipe (batch 32, one torch thread unless ``--threads``)
for ``--steps`` steps, with no checkpoints. Prints one JSON object: steps/s, series/s and
wall time, plus the projected wall time of the full bundled run.

Measure on a quiet machine: on two cores shared with other work the figure can drop by
half or more (the load average at the start is reported). No speed target; exits 2 when
training crashed or diverged (``errors`` says why).

    .venv/bin/python bench/train.py [--steps 50] [--threads 1] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from typing import Any

from _common import Steps, finish, run_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from dataclasses import replace

    from training.bundle import BundleRecipe
    from training.train import build_model, count_parameters, train_model

    recipe = BundleRecipe(torch_threads=args.threads)
    if args.batch_size:
        recipe = replace(recipe, batch_size=args.batch_size)
    config = replace(recipe.train_config(args.seed, progress=False), num_steps=args.steps, save_steps=0)
    pipeline = build_model(recipe.preset, seed=args.seed)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    steps = Steps()
    with tempfile.TemporaryDirectory() as work:
        result = steps.step(
            "train", lambda: train_model(pipeline, recipe.corpus(args.seed), config, work, resume=False)
        )
    total = time.perf_counter() - started
    document: dict[str, Any] = {
        "benchmark": "train",
        "preset": recipe.preset,
        "parameters": count_parameters(pipeline),
        "batch_size": recipe.batch_size,
        "context_length": pipeline.model_context_length,
        "torch_threads": args.threads,
        "load_avg_1m_at_start": round(load_before, 2),
        "cpus": os.cpu_count(),
    }
    if result is not None:
        document.update(
            steps=result.steps,
            train_wall_s=round(result.wall_s, 2),
            total_wall_s=round(total, 2),
            steps_per_s=round(result.steps_per_s, 3),
            series_per_s=round(result.steps_per_s * recipe.batch_size, 1),
            projected_bundle_train_s=round(recipe.steps / result.steps_per_s, 1) if result.steps_per_s else None,
            final_loss=result.final_loss,
        )
        if result.final_loss is not None and not math.isfinite(result.final_loss):
            # a run that diverged trained nothing, however fast (and NaN is not JSON)
            document["final_loss"] = None
            steps.fail("train", f"final loss is {result.final_loss}: the run diverged")
    # No speed target: the figure is for the README and for planning a training run.
    return finish(document, {}, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
