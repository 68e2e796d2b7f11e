"""Batch inference over the lake on Ray: forecast many tickers into the ``forecasts`` table.

Tickers are split into chunks and handed to a pool of Ray actors; each actor loads the
model once (on a GPU when ``num_gpus`` > 0, so the pool spreads over GPU nodes), reads each
ticker's recent bars from the lake, forecasts the whole chunk in one model call and returns
the forecast rows. The driver writes them in one MERGE commit on the table's key
``(forecast_id, step)``: forecast ids derive from ticker, model, target and last bar, so
running the same batch again replaces its rows instead of duplicating them.

Every actor reads the same bars table version: the latest when the run starts, or the one
``as_of`` names (a version, or an aware time). The report and the forecasts' commit metadata
record that version, and a rerun with ``as_of`` set to it reproduces the forecasts exactly
(same model, same torch threads, on CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tickcast.errors import ConfigError, TickcastError
from tickcast.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

    from serving.runtime import DetachedSettings
    from tickcast.lake import AsOf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchParams:
    """What a batch run forecasts, and the bars table version it reads."""

    interval: str
    horizon: int
    quantile_levels: tuple[float, ...]
    context_length: int
    target: str
    bars_version: int
    end: datetime | None = None


@dataclass
class ChunkResult:
    """What one actor call did: its forecast rows (``forecasts`` table rows) and the tickers it could not forecast."""

    forecast: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: pa.Table | None = None


@dataclass
class BatchReport:
    """The outcome of :func:`batch_forecast`.

    ``bars_version`` is the bars table version every context was read from (pass it as
    ``as_of`` to reproduce the run); ``forecasts_version`` the forecasts table version of
    the commit holding the rows (None when nothing was forecast).
    """

    model_id: str
    model_version: str
    bundled: bool
    tickers: int
    forecast: int
    skipped: list[str]
    failed: dict[str, str]
    rows: int
    bars_version: int
    forecasts_version: int | None
    as_of: str | None
    seconds: float
    actors: int
    nodes: int = 1  # Ray nodes the actors ran on

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


class ChunkForecaster:
    """Loads the model once and forecasts chunks of tickers from the lake (a Ray actor's body)."""

    def __init__(self, settings: Settings | DetachedSettings, model: str | None = None) -> None:
        from serving.forecaster import Forecaster
        from serving.runtime import attach_secrets
        from tickcast.lake import Lake

        settings = attach_secrets(settings)  # sent without secrets: Ray keeps actor arguments in GCS
        self.settings = settings
        self.forecaster = Forecaster.load(settings, model)
        self.lake = Lake(settings.lake)

    def info(self) -> dict[str, Any]:
        """The loaded model's :class:`serving.models.ModelInfo` as a dict."""
        return self.forecaster.info.to_dict()

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def run(self, tickers: Sequence[str], params: BatchParams, issued_at: datetime) -> ChunkResult:
        """Forecast ``tickers`` and return their rows; unknown tickers are skipped, not fatal."""
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
                        self.lake,
                        ticker,
                        params.interval,
                        params.context_length,
                        params.target,
                        (),
                        params.end,
                        as_of=params.bars_version,
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
        forecasts = []
        for i, context in enumerate(contexts):
            try:
                values = output.series(i)
                forecasts.append(
                    Forecast(
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
                )
            except TickcastError as exc:  # e.g. non-finite forecasts from a degenerate series
                result.failed[context.ticker] = exc.one_line()
        result.forecast = len(forecasts)
        result.rows = forecasts_to_table(forecasts) if forecasts else None
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
    as_of: AsOf = None,
    model: str | None = None,
    actors: int | None = None,
    num_gpus: float | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> BatchReport:
    """Forecast ``tickers`` (default: every ticker with bars of ``interval``) into the lake's
    ``forecasts`` table, in one commit.

    Runs on the Ray cluster this process is connected to (a local one is started when
    none is). Defaults come from ``settings.forecaster`` and ``settings.serving``.

    Args:
        end: use only bars starting before this time.
        as_of: read the bars table as of this version (int) or aware time; default the
            latest version when the run starts. The version read is in the report.
        actors: size of the actor pool; default one per GPU share, or one per two CPUs of
            each node (at least one per node: an actor cannot use two nodes' CPUs).
        num_gpus: GPUs per actor (fractions allowed); default ``settings.serving.num_gpus``.
        chunk_size: tickers per model call; default ``settings.serving.max_batch_size``.
    """
    import pyarrow as pa
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from serving.runtime import detach_secrets, init_ray
    from tickcast.lake import BARS, FORECASTS, Lake, bar_tickers, tables

    if end is not None and end.tzinfo is None:
        raise ConfigError("--end", "needs a UTC offset", "use e.g. 2024-01-02T16:00:00Z")
    if isinstance(as_of, datetime) and as_of.tzinfo is None:
        raise ConfigError("--as-of", "needs a UTC offset", "use e.g. 2024-01-02T16:00:00Z, or a table version")
    lake = Lake(settings.lake)
    bars = tables.open_table(lake, BARS, as_of)
    if bars is None:
        raise TickcastError(
            f"the lake at {settings.lake.url} has no bars table yet",
            "ingest bars first (tickcast produce / consume)",
        )
    bars_version = int(bars.version())
    f = settings.forecaster
    params = BatchParams(
        interval=interval,
        horizon=horizon or f.horizon,
        quantile_levels=tuple(quantile_levels or f.quantiles),
        context_length=context_length or f.context_length,
        target=target or f.target,
        bars_version=bars_version,
        end=end,
    )
    if tickers:
        names = sorted(dict.fromkeys(t.strip().upper() for t in tickers))
    else:
        names = bar_tickers(lake, interval, as_of=bars_version)
    if not names:
        raise TickcastError(
            f"no tickers with {interval} bars in the lake at {settings.lake.url} (bars table version {bars_version})",
            "ingest bars first (tickcast produce / consume), or pass --tickers",
        )
    init_ray(settings, log_to_driver=False)  # joins RAY_ADDRESS, else a local loopback-only cluster
    gpus = settings.serving.num_gpus if num_gpus is None else num_gpus
    if actors is None:
        if gpus > 0:
            actors = max(1, int(ray.cluster_resources().get("GPU", 0) / gpus))
        else:
            cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            actors = max(1, sum(max(1, int(c // 2)) for c in cpus if c >= 1))
    chunk = chunk_size or settings.serving.max_batch_size
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    actors = max(1, min(actors, len(chunks)))

    remote_cls: Any = ray.remote(num_cpus=1, num_gpus=gpus)(ChunkForecaster)
    detached = detach_secrets(settings)
    pool_actors = [remote_cls.remote(detached, model) for _ in range(actors)]
    info: dict[str, Any] = ray.get(pool_actors[0].info.remote())
    nodes = len(set(ray.get([actor.node_id.remote() for actor in pool_actors])))
    log.info(
        "batch forecast of %d tickers with %s %s on %d actor(s) on %d node(s), bars table version %d%s",
        len(names),
        info["id"],
        info["version"],
        actors,
        nodes,
        bars_version,
        " [bundled model]" if info["bundled"] else "",
    )
    issued_at = datetime.now(UTC)
    started = time.perf_counter()
    total = ChunkResult()
    parts: list[pa.Table] = []
    pool = ActorPool(pool_actors)
    bar = tqdm(total=len(names), unit="ticker", desc="batch forecast", disable=not progress)
    try:
        results = pool.map_unordered(lambda a, c: a.run.remote(c, params, issued_at), chunks)
        for res in results:
            total.forecast += res.forecast
            total.skipped.extend(res.skipped)
            total.failed.update(res.failed)
            if res.rows is not None:
                parts.append(res.rows)
            bar.update(res.forecast + len(res.skipped) + len(res.failed))
    finally:
        bar.close()
        for actor in pool_actors:
            ray.kill(actor)
    rows = pa.concat_tables(parts) if parts else None
    forecasts_version = None
    if rows is not None:
        metadata = {
            "tickcast_operation": "batch-forecast",
            "bars_version": bars_version,
            "model_id": info["id"],
            "model_version": info["version"],
        }
        forecasts_version = tables.upsert(lake, FORECASTS, rows, metadata=metadata)
    return BatchReport(
        model_id=info["id"],
        model_version=info["version"],
        bundled=bool(info["bundled"]),
        tickers=len(names),
        forecast=total.forecast,
        skipped=sorted(total.skipped),
        failed=total.failed,
        rows=0 if rows is None else rows.num_rows,
        bars_version=bars_version,
        forecasts_version=forecasts_version,
        as_of=None if as_of is None else str(as_of.isoformat() if isinstance(as_of, datetime) else as_of),
        seconds=round(time.perf_counter() - started, 2),
        actors=actors,
        nodes=nodes,
    )
