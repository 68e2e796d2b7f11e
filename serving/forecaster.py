"""A plain Chronos forecaster that works without Ray.

:class:`Forecaster` wraps any ``chronos.BaseChronosPipeline`` (Chronos-2, Chronos-Bolt or
the original T5 Chronos) behind one call: a batch of series of different lengths in,
mean and quantiles out as numpy arrays. The Ray Serve deployment, the batch job and the
tests all use it, so what is served is exactly what runs in-process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.models import ModelInfo, ResolvedModel, load_pipeline, resolve_model

if TYPE_CHECKING:
    from tickcast.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)

Covariates = Mapping[str, Sequence[float] | np.ndarray]


@dataclass
class ForecastJob:
    """One unit of work: some series that share a horizon and covariate names.

    ``past_covariates[i]`` maps a covariate name to values aligned with ``series[i]``;
    ``future_covariates[i]`` holds ``horizon`` known future values of some of them.
    """

    series: list[np.ndarray]
    horizon: int
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILES
    past_covariates: list[dict[str, np.ndarray]] | None = None
    future_covariates: list[dict[str, np.ndarray]] | None = None

    @property
    def size(self) -> int:
        """Number of series, the unit dynamic batching counts in."""
        return len(self.series)

    def group_key(self, native_levels: tuple[float, ...] | None) -> tuple[Any, ...]:
        """Jobs with the same key can share one model call.

        Levels the model predicts natively are picked by index, so jobs asking only for
        those can share a call whatever their levels; other levels are interpolated in a
        way that depends on the whole set asked for, so those jobs group by exact levels.
        """
        past = tuple(sorted(self.past_covariates[0])) if self.past_covariates else ()
        future = tuple(sorted(self.future_covariates[0])) if self.future_covariates else ()
        native = native_levels is not None and set(self.quantile_levels) <= set(native_levels)
        return (self.horizon, past, future, "native" if native else self.quantile_levels)


@dataclass
class ForecastOutput:
    """Forecasts of a batch of series.

    ``mean`` has shape ``(n_series, horizon)``; ``quantiles`` ``(n_series, horizon, n_levels)``
    in the order of ``quantile_levels``. Chronos-2 and Bolt report the median as the mean,
    as their pipelines do.
    """

    mean: np.ndarray
    quantiles: np.ndarray
    quantile_levels: tuple[float, ...]
    covariates_used: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def series(self, i: int) -> dict[str, Any]:
        """Series ``i`` as JSON-friendly lists: ``{"mean": [...], "quantiles": {"0.1": [...]}}``."""
        q = self.quantiles[i]
        return {
            "mean": self.mean[i].tolist(),
            "quantiles": {level_key(level): q[:, j].tolist() for j, level in enumerate(self.quantile_levels)},
        }

    def select(self, rows: slice, levels: Sequence[float]) -> ForecastOutput:
        """A subset of series and quantile levels (levels must be among this output's)."""
        index = [self.quantile_levels.index(level) for level in levels]
        return ForecastOutput(
            mean=self.mean[rows],
            quantiles=self.quantiles[rows][:, :, index],
            quantile_levels=tuple(levels),
            covariates_used=self.covariates_used,
        )


def level_key(level: float) -> str:
    """The JSON key of a quantile level: ``0.1`` -> ``"0.1"`` (as in tickcast.contracts.Forecast)."""
    return repr(float(level))


class Forecaster:
    """Mean and quantile forecasts from a Chronos pipeline, with no Ray involved.

    Build it with :meth:`load` (settings-driven model resolution) or
    :meth:`from_pretrained` (a directory or hub id). Thread-safe: model calls are
    serialized, as one model on one device gains nothing from running two at once.
    """

    def __init__(self, pipeline: Any, info: ModelInfo, max_batch_size: int = 256) -> None:
        self.pipeline = pipeline
        self.info = info
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings, model: str | None = None) -> Forecaster:
        """Resolve ``model`` (default ``settings.serving.model``) and load it on the configured device."""
        resolved = resolve_model(settings, model)
        return cls.from_resolved(
            resolved,
            device=settings.serving.device,
            dtype=settings.serving.dtype,
            torch_threads=settings.serving.torch_threads,
            max_batch_size=max(settings.serving.max_batch_size, 1),
        )

    @classmethod
    def from_pretrained(
        cls, location: str, *, device: str = "auto", torch_threads: int = 0, max_batch_size: int = 256
    ) -> Forecaster:
        """Load a checkpoint directory or a pinned hub id ``ORG/NAME@COMMIT`` directly (no settings needed)."""
        from pathlib import Path

        from serving.models import _local, parse_hub_spec

        path = Path(location)
        if path.is_dir():
            resolved = _local(location, path.resolve(), "local")
        else:
            repo_id, revision = parse_hub_spec(location)
            resolved = ResolvedModel(location, "hub", repo_id, repo_id, revision[:12], revision=revision)
        return cls.from_resolved(resolved, device=device, torch_threads=torch_threads, max_batch_size=max_batch_size)

    @classmethod
    def from_resolved(
        cls,
        resolved: ResolvedModel,
        *,
        device: str = "auto",
        dtype: str = "auto",
        torch_threads: int = 0,
        max_batch_size: int = 256,
    ) -> Forecaster:
        """Load a :class:`ResolvedModel` (``dtype``: ``auto``, ``float32`` or ``bfloat16``)."""
        if torch_threads > 0:
            import torch

            torch.set_num_threads(torch_threads)
        pipeline, info = load_pipeline(resolved, device, dtype)
        log.info(
            "loaded %s %s (%s, %s, %.1fM parameters) on %s/%s",
            info.id,
            info.version,
            info.kind,
            info.source,
            info.parameters / 1e6,
            info.device,
            info.dtype,
        )
        return cls(pipeline, info, max_batch_size=max_batch_size)

    # -- prediction ----------------------------------------------------------------------
    def predict(
        self,
        series: Sequence[Sequence[float] | np.ndarray],
        horizon: int,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        past_covariates: Sequence[Covariates] | None = None,
        future_covariates: Sequence[Covariates] | None = None,
    ) -> ForecastOutput:
        """Forecast ``horizon`` steps for each series.

        Args:
            series: one 1-D array per series; lengths may differ. Values longer than the
                model's context are trimmed from the left.
            horizon: steps to forecast (at most ``info.max_horizon`` is recommended).
            quantile_levels: levels in (0, 1).
            past_covariates: Chronos-2 only; one dict per series of covariates aligned with it
                (e.g. ``{"volume": [...]}``). Other models ignore them (``covariates_used`` False).
            future_covariates: Chronos-2 only; known future values (``horizon`` each).
        """
        job = ForecastJob(
            series=[np.asarray(s, dtype=np.float32) for s in series],
            horizon=int(horizon),
            quantile_levels=tuple(float(q) for q in quantile_levels),
            past_covariates=[_as_arrays(c) for c in past_covariates] if past_covariates else None,
            future_covariates=[_as_arrays(c) for c in future_covariates] if future_covariates else None,
        )
        return self.predict_jobs([job])[0]

    def predict_jobs(self, jobs: Sequence[ForecastJob]) -> list[ForecastOutput]:
        """Forecast several jobs, sharing model calls between jobs that can share them.

        Jobs with the same horizon and covariate names run as one batch (at most
        ``max_batch_size`` series per model call) with the union of their quantile
        levels (see :meth:`ForecastJob.group_key`); each job gets its own rows and levels
        back, in order.
        """
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group_key(self.info.quantiles), []).append(i)
        results: list[ForecastOutput | None] = [None] * len(jobs)
        for members in groups.values():
            group = [jobs[i] for i in members]
            levels = tuple(sorted({q for job in group for q in job.quantile_levels}))
            merged = ForecastJob(
                series=[s for job in group for s in job.series],
                horizon=group[0].horizon,
                quantile_levels=levels,
                past_covariates=_concat([job.past_covariates for job in group]),
                future_covariates=_concat([job.future_covariates for job in group]),
            )
            output = self._run(merged)
            start = 0
            for i, job in zip(members, group, strict=True):
                results[i] = output.select(slice(start, start + job.size), job.quantile_levels)
                start += job.size
        return [r for r in results if r is not None]

    def _run(self, job: ForecastJob) -> ForecastOutput:
        means, quantiles = [], []
        used = False
        step = max(self.max_batch_size, 1)
        for start in range(0, job.size, step):
            stop = start + step
            chunk = ForecastJob(
                series=job.series[start:stop],
                horizon=job.horizon,
                quantile_levels=job.quantile_levels,
                past_covariates=job.past_covariates[start:stop] if job.past_covariates else None,
                future_covariates=job.future_covariates[start:stop] if job.future_covariates else None,
            )
            mean, quant, used = self._call_model(chunk)
            means.append(mean)
            quantiles.append(quant)
        return ForecastOutput(
            mean=np.concatenate(means, axis=0),
            quantiles=np.concatenate(quantiles, axis=0),
            quantile_levels=job.quantile_levels,
            covariates_used=used,
        )

    def _call_model(self, job: ForecastJob) -> tuple[np.ndarray, np.ndarray, bool]:
        import torch

        limit = self.info.context_length
        levels = list(job.quantile_levels)
        with self._lock, torch.inference_mode():
            if self.info.kind == "chronos2":
                use_cov = bool(job.past_covariates)
                inputs: Any
                if use_cov:
                    inputs = []
                    for k, s in enumerate(job.series):
                        item: dict[str, Any] = {
                            "target": s[-limit:],
                            "past_covariates": {n: v[-limit:] for n, v in job.past_covariates[k].items()},  # type: ignore[index]
                        }
                        if job.future_covariates:
                            item["future_covariates"] = job.future_covariates[k]
                        inputs.append(item)
                else:
                    inputs = [torch.from_numpy(s[-limit:]) for s in job.series]
                q_list, m_list = self.pipeline.predict_quantiles(
                    inputs,
                    prediction_length=job.horizon,
                    quantile_levels=levels,
                    batch_size=max(len(job.series), 1),
                )
                quant = torch.cat([q[:1] for q in q_list], dim=0).float().numpy()
                mean = torch.cat([m[:1] for m in m_list], dim=0).float().numpy()
                return mean, quant, use_cov
            context = [torch.from_numpy(s[-limit:]) for s in job.series]
            q_t, m_t = self.pipeline.predict_quantiles(context, prediction_length=job.horizon, quantile_levels=levels)
            return m_t.float().numpy(), q_t.float().numpy(), False


def _as_arrays(covariates: Covariates) -> dict[str, np.ndarray]:
    return {str(name): np.asarray(values, dtype=np.float32) for name, values in covariates.items()}


def _concat(parts: list[list[dict[str, np.ndarray]] | None]) -> list[dict[str, np.ndarray]] | None:
    if not parts or parts[0] is None:
        return None
    return [c for part in parts for c in (part or [])]
