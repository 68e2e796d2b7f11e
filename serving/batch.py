"""Batch inference over the lake on Ray: forecast many tickers into ``forecasts/``.

Tickers are split into chunks and handed to a pool of Ray actors; each actor loads the
model once (on a GPU when ``num_gpus`` > 0, so the pool spreads over GPU nodes), reads each
ticker's recent bars from the lake, forecasts the whole chunk in one model call, and writes
the forecasts to the lake itself, so the driver only tracks progress.

Files are named from the model, the run's parameters and the ticker's last bar, so running
the same batch again overwrites its files instead of duplicating forecasts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from tickcast.errors import ConfigError, TickcastError
from tickcast.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchParams:
    """What a batch run forecasts."""

    interval: str
    horizon: int
    quantile_levels: tuple[float, ...]
    context_length: int
    target: str
    end: datetime | None = None

    def key(self, model_id: str, model_version: str) -> str:
        """A short id of the run's parameters and model, part of every file name."""
        text = "|".join(
            [
                model_id,
                model_version,
                self.interval,
                str(self.horizon),
                ",".join(map(str, self.quantile_levels)),
                str(self.context_length),
                self.target,
                self.end.isoformat() if self.end else "latest",
            ]
        )
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class ChunkResult:
    """What one actor call did."""

    forecast: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    files: int = 0


@dataclass
class BatchReport:
    """The outcome of :func:`batch_forecast`."""

    model_id: str
    model_version: str
    bundled: bool
    tickers: int
    forecast: int
    skipped: list[str]
    failed: dict[str, str]
    files: int
    seconds: float
    actors: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


class ChunkForecaster:
    """Loads the model once and forecasts chunks of tickers from the lake (a Ray actor's body)."""

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        from serving.forecaster import Forecaster
        from tickcast.lake import Lake

        self.settings = settings
        self.forecaster = Forecaster.load(settings, model)
        self.lake = Lake(settings.lake)

    def info(self) -> dict[str, Any]:
        """The loaded model's :class:`serving.models.ModelInfo` as a dict."""
        return self.forecaster.info.to_dict()

    def run(self, tickers: Sequence[str], params: BatchParams, issued_at: datetime) -> ChunkResult:
        """Forecast ``tickers`` and write their forecasts; unknown tickers are skipped, not fatal."""
        from serving.context import UnknownTicker, read_context
        from serving.forecaster import ForecastJob, level_key
        from tickcast.contracts import Forecast
        from tickcast.lake import forecasts_to_table

        result = ChunkResult()
        contexts = []
        for ticker in tickers:
            try:
                contexts.append(
                    read_context(
                        self.lake, ticker, params.interval, params.context_length, params.target, (), params.end
                    )
                )
            except UnknownTicker:
                result.skipped.append(ticker)
        if not contexts:
            return result
        info = self.forecaster.info
        job = ForecastJob(
            series=[c.target for c in contexts], horizon=params.horizon, quantile_levels=params.quantile_levels
        )
        output = self.forecaster.predict_jobs([job])[0]
        key = params.key(info.id, info.version)
        for i, context in enumerate(contexts):
            try:
                values = output.series(i)
                forecast = Forecast(
                    ticker=context.ticker,
                    interval=params.interval,
                    model_id=info.id,
                    model_version=info.version,
                    issued_at=issued_at,
                    last_bar_start=context.last_bar_start,
                    horizon=params.horizon,
                    target=params.target,
                    mean=values["mean"],
                    quantiles={level_key(q): values["quantiles"][level_key(q)] for q in output.quantile_levels},
                )
                stamp = context.last_bar_start.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
                written = self.lake.write_partitioned(
                    "forecasts",
                    forecasts_to_table([forecast]),
                    ("interval", "ticker", "date"),
                    f"batch-{key}-{stamp}.parquet",
                )
                result.files += len(written)
                result.forecast += 1
            except TickcastError as exc:  # e.g. non-finite forecasts from a degenerate series
                result.failed[context.ticker] = exc.one_line()
        return result


def batch_forecast(
    settings: Settings,
    tickers: Sequence[str] | None = None,
    *,
    interval: str = "minute",
    horizon: int | None = None,
    quantile_levels: Sequence[float] | None = None,
    context_length: int | None = None,
    target: str | None = None,
    end: datetime | None = None,
    model: str | None = None,
    actors: int | None = None,
    num_gpus: float | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> BatchReport:
    """Forecast ``tickers`` (default: every ticker with bars of ``interval``) into the lake's ``forecasts/``.

    Runs on the Ray cluster this process is connected to (a local one is started when
    none is). Defaults come from ``settings.forecaster`` and ``settings.serving``.

    Args:
        actors: size of the actor pool; default one per GPU share, or one per two CPUs.
        num_gpus: GPUs per actor (fractions allowed); default ``settings.serving.num_gpus``.
        chunk_size: tickers per model call; default ``settings.serving.max_batch_size``.
    """
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from serving.runtime import apply_ray_env
    from tickcast.lake import Lake

    f = settings.forecaster
    params = BatchParams(
        interval=interval,
        horizon=horizon or f.horizon,
        quantile_levels=tuple(quantile_levels or f.quantiles),
        context_length=context_length or f.context_length,
        target=target or f.target,
        end=end,
    )
    if end is not None and end.tzinfo is None:
        raise ConfigError("--end", "needs a UTC offset", "use e.g. 2024-01-02T16:00:00Z")
    lake = Lake(settings.lake)
    names = sorted(dict.fromkeys(t.strip().upper() for t in tickers)) if tickers else lake.bar_tickers(interval)
    if not names:
        raise TickcastError(
            f"no tickers with {interval} bars in the lake at {settings.lake.url}",
            "ingest bars first (tickcast produce / consume), or pass --tickers",
        )
    if not ray.is_initialized():
        apply_ray_env(settings.serving)
        ray.init(include_dashboard=False, log_to_driver=False)
    gpus = settings.serving.num_gpus if num_gpus is None else num_gpus
    if actors is None:
        resources = ray.cluster_resources()
        share = resources.get("GPU", 0) / gpus if gpus > 0 else resources.get("CPU", 1) // 2
        actors = max(1, int(share))
    chunk = chunk_size or settings.serving.max_batch_size
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    actors = max(1, min(actors, len(chunks)))

    remote_cls: Any = ray.remote(num_cpus=1, num_gpus=gpus)(ChunkForecaster)
    pool_actors = [remote_cls.remote(settings, model) for _ in range(actors)]
    info: dict[str, Any] = ray.get(pool_actors[0].info.remote())
    log.info(
        "batch forecast of %d tickers with %s %s on %d actor(s)%s",
        len(names),
        info["id"],
        info["version"],
        actors,
        " [bundled model]" if info["bundled"] else "",
    )
    issued_at = datetime.now(UTC)
    started = time.perf_counter()
    total = ChunkResult()
    pool = ActorPool(pool_actors)
    bar = tqdm(total=len(names), unit="ticker", desc="batch forecast", disable=not progress)
    try:
        results = pool.map_unordered(lambda a, c: a.run.remote(c, params, issued_at), chunks)
        for res in results:
            total.forecast += res.forecast
            total.files += res.files
            total.skipped.extend(res.skipped)
            total.failed.update(res.failed)
            bar.update(res.forecast + len(res.skipped) + len(res.failed))
    finally:
        bar.close()
        for actor in pool_actors:
            ray.kill(actor)
    return BatchReport(
        model_id=info["id"],
        model_version=info["version"],
        bundled=bool(info["bundled"]),
        tickers=len(names),
        forecast=total.forecast,
        skipped=sorted(total.skipped),
        failed=total.failed,
        files=total.files,
        seconds=round(time.perf_counter() - started, 2),
        actors=actors,
    )
