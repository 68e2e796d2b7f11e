"""The in-process reference for served forecasts, and how close a served forecast must be.

Why a served forecast and the raw pipeline can differ at all
------------------------------------------------------------
Both run the same float32 operations, but the order of the additions inside a matrix
product depends on how the BLAS splits the work: on CPUs without AVX-512 (MKL's AVX2 code
path) a different *thread count* splits the reductions differently, and a different *batch
composition* changes the padded length and the kernel MKL picks. Either moves results by a
few float32 rounding steps, which the network and the instance scaling turn into
differences proportional to the series' magnitude. The flaky comparison this module
replaces ran the reference with torch's default threads (2 here) against a replica pinned
to one thread: relative differences of 3.5e-5 on AVX2 machines, 0 on AVX-512 ones.

So the reference runs under the replica's thread count and with the context trimmed the
way :class:`serving.forecaster.Forecaster` trims it (the cause), and the remaining
difference is bounded by :func:`reordering_tolerance` (alignment-dependent kernels, and
comparisons whose batch composition differs on purpose).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)

#: Worst difference measured between two float32 runs of the tiny test checkpoints that
#: differ only in summation order (threads 1 vs 2, batches of 48 vs splits of 1, 5 and 7,
#: MKL's AVX2 and AVX-512 paths; Bolt and Chronos-2): 201 x eps32 x max|context| (Bolt),
#: 2.5 x (Chronos-2). The bound is 5 times that. A real defect (another model, quantile,
#: trimming or scaling) moves forecasts by percents, about 100 times more.
REORDERING_ULPS = 1024


def reordering_tolerance(series: Sequence[Sequence[float] | np.ndarray], context_length: int) -> np.ndarray:
    """Absolute tolerance per series, shaped ``(n, 1)`` to broadcast over steps (and levels).

    Rounding differences scale with the magnitude of the context the model saw (the
    models normalise by it and scale back), so the bound is ``REORDERING_ULPS`` float32
    epsilons of the largest absolute value in each series' trimmed context.
    """
    scale = np.array([float(np.max(np.abs(np.asarray(s, dtype=np.float64)[-context_length:]))) for s in series])
    return (REORDERING_ULPS * FLOAT32_EPS * np.maximum(scale, 1.0))[:, None]


def assert_forecasts_close(
    actual: np.ndarray, expected: np.ndarray, series: Sequence[Sequence[float] | np.ndarray], context_length: int
) -> None:
    """``actual`` equals ``expected`` up to float32 reordering; shapes ``(n, steps)`` or ``(n, steps, levels)``."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    atol = reordering_tolerance(series, context_length)
    if actual.ndim == 3:
        atol = atol[:, :, None]
    excess = np.abs(actual - expected) - atol
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    assert (excess <= 0).all(), (
        f"forecasts differ by more than float32 reordering at {worst}: {actual[worst]} vs {expected[worst]} "
        f"(tolerance {np.broadcast_to(atol, actual.shape)[worst]:.3g})"
    )


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch using ``threads`` intra-op threads (0 keeps the current count)."""
    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_quantiles(
    path: Path | str,
    series: Sequence[Sequence[float] | np.ndarray],
    horizon: int,
    levels: Sequence[float],
    *,
    threads: int,
    past_covariates: Sequence[dict[str, Any]] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Quantiles ``(n, horizon, levels)``, mean ``(n, horizon)`` and the context length, from
    the raw Chronos pipeline in this process, one call for all series, under ``threads``."""
    import torch
    from chronos import BaseChronosPipeline

    pipeline = BaseChronosPipeline.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)
    limit = int(pipeline.model_context_length)  # Bolt and Chronos-2, as serving.models.describe reads it
    arrays = [np.asarray(s, dtype=np.float32)[-limit:] for s in series]
    inputs: list[Any]
    if past_covariates is not None:
        inputs = [
            {"target": s, "past_covariates": {k: np.asarray(v, dtype=np.float32)[-limit:] for k, v in cov.items()}}
            for s, cov in zip(arrays, past_covariates, strict=True)
        ]
    else:
        inputs = [torch.from_numpy(s) for s in arrays]
    with torch_threads(threads), torch.inference_mode():
        q, m = pipeline.predict_quantiles(inputs, prediction_length=horizon, quantile_levels=list(levels))
    if isinstance(q, list):  # Chronos-2 returns one tensor per series (per target row)
        q, m = torch.cat([x[:1] for x in q]), torch.cat([x[:1] for x in m])
    return q.float().numpy(), m.float().numpy(), limit
