"""Fine-tune a Chronos-2 model on bars from the lake and register the result.

The base model is any spec serving resolves (hub id, local directory, ``s3://`` prefix,
registry ``NAME/VERSION``, ``bundled``). The target is any bar field or derived series
(:mod:`training.targets`). Synthetic series can be mixed in (``augment``) so a small data
set does not pull the model away from what it knew. The last ``holdout`` values of every
series are kept out of training and used for a backtest whose scores go into the
registry metadata next to the naive baseline's. The bars table version read is recorded
in the metadata (``data.table_versions.bars``); ``as_of`` (``tickcast train --as-of``)
reads that version again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tickcast.errors import ModelError
from training.registry import ModelEntry, get_entry, list_versions, register_model
from training.synthetic import SyntheticSeries
from training.train import TrainConfig, TrainResult, train_model

if TYPE_CHECKING:
    from tickcast.settings import Settings

log = logging.getLogger(__name__)


class MixedInputs(Sequence[Any]):
    """Real series mixed with synthetic ones at a given fraction, as lazy Chronos-2 inputs.

    Indices below ``n_real_slots`` map onto the real series (cycling), the rest onto a
    synthetic collection, so uniform sampling by index draws synthetic series with
    probability ``synthetic_fraction``.
    """

    SLOTS = 100_000

    def __init__(
        self,
        real: Sequence[np.ndarray],
        synthetic_fraction: float,
        prediction_length: int,
        seed: int = 0,
    ) -> None:
        from chronos.chronos2.preprocess import from_list_of_tensors

        if not 0.0 <= synthetic_fraction < 1.0:
            raise ValueError("synthetic_fraction must be in [0, 1)")
        self.real = from_list_of_tensors([np.asarray(r, dtype=np.float32) for r in real], prediction_length)
        self.n_real_slots = round(self.SLOTS * (1.0 - synthetic_fraction)) if self.real else 0
        self.synthetic = SyntheticSeries(
            self.SLOTS, seed=seed, min_length=256, max_length=1024, prediction_length=prediction_length
        )

    def __len__(self) -> int:
        return self.SLOTS

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        if i < self.n_real_slots:
            return self.real[i % len(self.real)]
        return self.synthetic[i]


def training_inputs(
    series: Sequence[np.ndarray], augment: float, prediction_length: int, seed: int = 0
) -> Sequence[Any]:
    """What :func:`train_model` gets: the plain arrays, or a mix with synthetic series."""
    if augment <= 0:
        return [np.asarray(s, dtype=np.float32) for s in series]
    return MixedInputs(series, augment, prediction_length, seed=seed)


def finetune(
    settings: Settings,
    base: str,
    name: str,
    *,
    target: str = "close",
    interval: str = "day",
    tickers: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: int | datetime | None = None,
    config: TrainConfig | None = None,
    augment: float = 0.0,
    holdout: int = 0,
    version: str | None = None,
    work_dir: str | Path | None = None,
    resume: bool = True,
    label: str | None = None,
) -> tuple[ModelEntry, TrainResult | None]:
    """Fine-tune ``base`` on lake bars and register it as ``name`` (next version unless given).

    The command is idempotent and restartable: an interrupted run resumes from its last
    checkpoint (the work directory is keyed by base, data and settings), and a run that
    was already registered returns its entry without training again (result None).

    Args:
        settings: tickcast settings (lake, serving device, state dir).
        base: model spec of the starting point (must be a Chronos-2 model).
        name: registry name of the result.
        target: bar field or derived target.
        interval, tickers, start, end: which bars (all tickers of the interval by default).
        as_of: read the bars table as of this version or time (latest when None); the
            version read is recorded in the registry metadata (``data.table_versions``).
        config: training hyper-parameters.
        augment: fraction of synthetic series in the training mix (0 disables).
        holdout: last values per series kept out of training and backtested (0 disables).
        version: registry version (default: the next number).
        work_dir: checkpoints (default ``<state_dir>/training/<name>``); resumable.
        resume: continue from the newest checkpoint in ``work_dir``.
        label: one-line description for the registry (default says what and from what).

    Returns:
        The registry entry and the training result (None when it was already registered).
    """
    from chronos import Chronos2Pipeline

    from serving.models import load_pipeline, resolve_model
    from tickcast.lake import BARS, Lake
    from training.evaluation import BacktestConfig, backtest
    from training.targets import bars_version, normalize_target, series_from_lake

    config = config or TrainConfig(learning_rate=1e-5)
    target = normalize_target(target)
    resolved = resolve_model(settings, base)
    pipeline, info = load_pipeline(resolved, device=settings.serving.device)
    if not isinstance(pipeline, Chronos2Pipeline):
        raise ModelError(
            f"{base} is a {info.kind} model; fine-tuning needs a Chronos-2 model",
            "pass a Chronos-2 checkpoint (e.g. amazon/chronos-2, autogluon/chronos-2-small or bundled)",
        )
    lake = Lake(settings.lake)
    read_version = bars_version(lake, as_of)  # every read below sees this one version of the bars table
    series = (
        series_from_lake(lake, target, interval, tickers, start, end, as_of=read_version)
        if read_version is not None
        else {}
    )
    min_len = config.min_past + config.prediction_length + holdout
    usable = {k: v for k, v in series.items() if len(v) >= min_len}
    if not usable:
        raise ModelError(
            f"no {interval} bars with at least {min_len} values of {target} in the lake at {lake.url}"
            + (f" for {', '.join(tickers)}" if tickers else "")
            + (f" as of {as_of}" if as_of is not None else ""),
            "load bars first (tickcast backfill or the replay source), widen --start/--end, "
            "or lower --holdout/--min-past",
        )
    train_series = [v[:-holdout] if holdout else v for v in usable.values()]
    log.info(
        "fine-tuning %s on %d series of %s %s (%d values), %d steps, mode %s",
        resolved.where,
        len(train_series),
        interval,
        target,
        sum(len(s) for s in train_series),
        config.num_steps,
        config.finetune_mode,
    )
    # One work directory per distinct run, so running the same command again resumes it and
    # a different run never picks up its checkpoints.
    run = {
        "base": resolved.where,
        "base_version": resolved.version,
        "target": target,
        "interval": interval,
        "tickers": sorted(usable),
        "start": start,
        "end": end,
        "as_of": as_of,  # not the version read: a resumed run without --as-of reads the newest bars
        "config": asdict(config),
        "augment": augment,
        "holdout": holdout,
    }
    run_key = hashlib.sha1(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:12]
    if version is None:
        for existing in list_versions(lake, name):
            done = get_entry(lake, name, existing)
            if done.training.get("run_key") == run_key:
                log.info("this run is already registered as %s; nothing to do", done.ref)
                return done, None
    work = Path(work_dir) if work_dir else Path(settings.infra.state_dir) / "training" / name / run_key
    result = train_model(
        pipeline, training_inputs(train_series, augment, config.prediction_length, config.seed), config, work, resume
    )
    metrics: dict[str, Any] = {"final_loss": result.final_loss, "steps_per_s": round(result.steps_per_s, 3)}
    if holdout:
        h = config.prediction_length
        bt_config = BacktestConfig(
            horizon=h,
            context_length=result.pipeline.model_context_length,
            n_origins=max(1, holdout // h),
            baselines=("naive",),
            min_context=config.min_past,
        )
        bt = backtest(usable, {"finetuned": result.pipeline, "base": pipeline}, bt_config, use_ray=False)
        metrics["holdout"] = bt.summary.to_dict(orient="records")
    data = {
        "source": lake.table_uri(BARS.name),
        "table_versions": {"bars": read_version},
        "as_of": as_of.isoformat() if isinstance(as_of, datetime) else as_of,
        "interval": interval,
        "target": target,
        "tickers": sorted(usable),
        "start": start.isoformat() if start else None,
        "end": end.isoformat() if end else None,
        "values_per_series": {k: len(v) for k, v in usable.items()},
        "holdout": holdout,
        "synthetic_fraction": augment,
    }
    base_name = f"{resolved.id}/{resolved.version}" if resolved.source == "registry" else resolved.id
    entry = register_model(
        lake,
        name,
        result.path,
        label=label or f"{name}: {base_name} fine-tuned by tickcast on {interval} {target} ({config.finetune_mode})",
        base_model=resolved.where if resolved.source != "bundled" else "bundled",
        version=version,
        data=data,
        training={
            **asdict(config),
            "steps_done": result.steps,
            "resumed_from": result.resumed_from,
            "wall_s": round(result.wall_s, 1),
            "run_key": run_key,
        },
        metrics=metrics,
    )
    log.info("registered %s at %s", entry.ref, lake.uri(entry.path))
    return entry, result
