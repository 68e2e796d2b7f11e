"""The forecaster's tables: forecasts (one row per step), scores, and score aggregates.

Forecasts and scores are keyed by ``(forecast_id, step)``: a forecaster that replays bars
after a crash writes the same keys again, and every read through this module sees each
once (``optimize`` folds the copies). Aggregates are snapshots: each flush appends the
current rolling aggregates with their ``computed_at``; the newest snapshot is the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tickcast.lake import tables
from tickcast.lake.bars import tail_by_ticker
from tickcast.lake.specs import FORECASTS, SCORE_AGGREGATES, SCORES, TIMESTAMP, TableSpec, period_of
from tickcast.lake.tables import AsOf

if TYPE_CHECKING:
    from tickcast.lake.store import Lake


def forecasts_to_table(forecasts: Sequence[Any]) -> pa.Table:
    """Forecasts (:class:`tickcast.contracts.Forecast`) as rows, one per step."""
    rows: dict[str, list[Any]] = {name: [] for name in FORECASTS.schema.names}
    for f in forecasts:
        levels = sorted(f.quantiles, key=float)
        starts = f.step_starts()
        period = period_of(f.interval, f.last_bar_start.astimezone(UTC))
        for i in range(f.horizon):
            by_level = {float(k): f.quantiles[k][i] for k in levels}
            values = {
                "forecast_id": f.id,
                "ticker": f.ticker,
                "interval": f.interval,
                "model_id": f.model_id,
                "model_version": f.model_version,
                "target": f.target,
                "issued_at": f.issued_at,
                "last_bar_start": f.last_bar_start,
                "bar_event_time": f.bar_event_time,
                "horizon": f.horizon,
                "step": i + 1,
                "step_start": starts[i],
                "mean": f.mean[i],
                "p10": by_level.get(0.1),
                "p50": by_level.get(0.5),
                "p90": by_level.get(0.9),
                "quantile_levels": [float(k) for k in levels],
                "quantile_values": [f.quantiles[k][i] for k in levels],
                "period": period,
                "calibrated_coverage": f.calibrated_coverage,
                "calibrated_lower": f.calibrated_lower[i] if f.calibrated_lower is not None else None,
                "calibrated_upper": f.calibrated_upper[i] if f.calibrated_upper is not None else None,
                "calibration_alpha": f.calibration_alpha[i] if f.calibration_alpha is not None else None,
            }
            for name, value in values.items():
                rows[name].append(value)
    return pa.Table.from_pydict(rows, schema=FORECASTS.schema)


def scores_to_table(scores: Sequence[Any], scored_at: datetime | None = None) -> pa.Table:
    """Scores (:class:`tickcast.contracts.Score`) as rows, partitioned by their target bar's period."""
    rows: dict[str, list[Any]] = {name: [] for name in SCORES.schema.names}
    stamp = scored_at or datetime.now(UTC)
    for s in scores:
        data = s.to_dict()
        data["scored_at"] = stamp
        data["period"] = period_of(s.interval, s.target_start.astimezone(UTC))
        for name in SCORES.schema.names:
            rows[name].append(data[name])
    return pa.Table.from_pydict(rows, schema=SCORES.schema)


def aggregates_to_table(aggregates: Sequence[Any], computed_at: datetime, interval: str, window: int) -> pa.Table:
    """Rolling aggregates (objects with ``to_dict()``) as one snapshot of ``score_aggregates`` rows."""
    rows: dict[str, list[Any]] = {name: [] for name in SCORE_AGGREGATES.schema.names}
    period = period_of(interval, computed_at.astimezone(UTC))
    for agg in aggregates:
        data = {**agg.to_dict(), "computed_at": computed_at, "window": window, "interval": interval}
        data["period"] = period
        for name in SCORE_AGGREGATES.schema.names:
            rows[name].append(data.get(name))
    return pa.Table.from_pydict(rows, schema=SCORE_AGGREGATES.schema)


def write_forecasts(lake: Lake, forecasts: Sequence[Any], txns: Sequence[tuple[str, int]] = ()) -> int | None:
    """Append forecasts in one commit; returns the table version (None when there was nothing)."""
    if not forecasts:
        return None
    return tables.append(lake, FORECASTS, forecasts_to_table(forecasts), txns=txns)


def write_scores(lake: Lake, scores: Sequence[Any], txns: Sequence[tuple[str, int]] = ()) -> int | None:
    """Append scores in one commit; returns the table version (None when there was nothing)."""
    if not scores:
        return None
    return tables.append(lake, SCORES, scores_to_table(scores), txns=txns)


def write_aggregates(
    lake: Lake, aggregates: Sequence[Any], computed_at: datetime, interval: str, window: int
) -> int | None:
    """Append one snapshot of aggregates; returns the table version (None when there was nothing)."""
    if not aggregates:
        return None
    return tables.append(lake, SCORE_AGGREGATES, aggregates_to_table(aggregates, computed_at, interval, window))


def _read_ticker(
    lake: Lake,
    spec: TableSpec,
    ticker: str | None,
    interval: str,
    start: datetime | None,
    end: datetime | None,
    as_of: AsOf,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    assert spec.time_column is not None
    files: list[tuple[str, str, Any]] = [("interval", "=", interval)]
    where = ds.field("interval") == interval
    if ticker is not None:
        files.append(("ticker", "=", ticker))
        where = where & (ds.field("ticker") == ticker)
    if start is not None:
        where = where & (ds.field(spec.time_column) >= pa.scalar(start.astimezone(UTC), TIMESTAMP))
        files.append((spec.time_column, ">=", start.astimezone(UTC)))
    if end is not None:
        where = where & (ds.field(spec.time_column) < pa.scalar(end.astimezone(UTC), TIMESTAMP))
        files.append((spec.time_column, "<", end.astimezone(UTC)))
    return tables.scan(lake, spec, where=where, files=files, columns=columns, as_of=as_of)


def read_forecasts(
    lake: Lake,
    ticker: str | None,
    interval: str = "minute",
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: AsOf = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Forecast rows of a ticker (all when None) whose last bar is in ``[start, end)``, sorted."""
    table = _read_ticker(lake, FORECASTS, ticker, interval, start, end, as_of, columns)
    order = [c for c in ("ticker", "last_bar_start", "step") if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in order]) if order else table


def read_scores(
    lake: Lake,
    ticker: str | None,
    interval: str = "minute",
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: AsOf = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Score rows of a ticker (all when None) whose target bar is in ``[start, end)``, sorted."""
    table = _read_ticker(lake, SCORES, ticker, interval, start, end, as_of, columns)
    order = [c for c in ("ticker", "target_start", "step") if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in order]) if order else table


def forecast_periods(lake: Lake, interval: str, ticker: str | None = None, as_of: AsOf = None) -> list[str]:
    """The ``period`` partitions (sorted) whose files may hold forecasts of a ticker (or any).

    Reads the Delta log only (partition values and per-file ticker statistics)."""
    return tables.partition_values(lake, FORECASTS, "period", _period_files(interval, ticker), as_of)


def score_periods(lake: Lake, interval: str, ticker: str | None = None, as_of: AsOf = None) -> list[str]:
    """The ``period`` partitions (sorted) whose files may hold scores of a ticker (or any)."""
    return tables.partition_values(lake, SCORES, "period", _period_files(interval, ticker), as_of)


def _period_files(interval: str, ticker: str | None) -> list[tuple[str, str, Any]]:
    files: list[tuple[str, str, Any]] = [("interval", "=", interval)]
    if ticker is not None:
        files.append(("ticker", "=", ticker))
    return files


def _newest(lake: Lake, spec: TableSpec, interval: str, version: int) -> datetime | None:
    """The greatest time-column value of an interval's rows (from its newest partition only)."""
    assert spec.time_column is not None
    periods = tables.partition_values(lake, spec, "period", [("interval", "=", interval)], version)
    if not periods:
        return None
    files: list[tuple[str, str, Any]] = [("interval", "=", interval), ("period", "=", periods[-1])]
    where = ds.field("interval") == interval
    part = tables.scan(lake, spec, where=where, files=files, columns=[spec.time_column], as_of=version, unique=False)
    return pc.max(part[spec.time_column]).as_py() if part.num_rows else None


def latest_forecasts(
    lake: Lake, interval: str, window: timedelta, lookback: timedelta, as_of: AsOf = None
) -> dict[str, pa.Table]:
    """Per ticker, its newest forecasts: the rows (sorted by ``last_bar_start`` and ``step``,
    each key once) whose last bar lies within ``window`` of the ticker's newest forecast
    (``last_bar_start > newest - window``), which include that newest forecast.

    What a restarted forecaster needs (its last forecast per ticker, and those that may still
    have unscored steps), in two scans of one table version, for every ticker at once. Only
    tickers forecast within ``lookback`` of the interval's newest forecast are included.
    """
    table = tables.open_table(lake, FORECASTS, as_of)
    if table is None:
        return {}
    version = int(table.version())
    newest = _newest(lake, FORECASTS, interval, version)
    if newest is None:
        return {}
    since = newest - lookback
    light = _read_ticker(lake, FORECASTS, None, interval, since, None, version, ["ticker", "last_bar_start"])
    lasts = light.group_by("ticker", use_threads=False).aggregate([("last_bar_start", "max")])
    tickers = lasts["ticker"]
    cutoffs = pc.subtract(lasts["last_bar_start_max"], pa.scalar(window, pa.duration("us")))
    since = pc.min(cutoffs).as_py()
    rows = _read_ticker(lake, FORECASTS, None, interval, since, None, version)
    cutoff = pc.take(cutoffs, pc.index_in(rows["ticker"], value_set=tickers))
    rows = rows.filter(pc.greater(rows["last_bar_start"], cutoff))
    rows = rows.sort_by([("ticker", "ascending"), ("last_bar_start", "ascending"), ("step", "ascending")])
    return tail_by_ticker(rows, rows.num_rows)


def latest_scores(lake: Lake, interval: str, n: int, lookback: timedelta, as_of: AsOf = None) -> dict[str, pa.Table]:
    """Per ticker, its newest ``n`` score rows (sorted by ``target_start`` and ``step``, each
    key once): a restarted forecaster's rolling windows, for every ticker at once. Only
    scores whose target bar lies within ``lookback`` of the interval's newest are read.
    """
    table = tables.open_table(lake, SCORES, as_of)
    if table is None:
        return {}
    version = int(table.version())
    newest = _newest(lake, SCORES, interval, version)
    if newest is None:
        return {}
    rows = _read_ticker(lake, SCORES, None, interval, newest - lookback, None, version)
    rows = rows.sort_by([("ticker", "ascending"), ("target_start", "ascending"), ("step", "ascending")])
    return tail_by_ticker(rows, n)


def read_latest_aggregates(lake: Lake, interval: str, as_of: AsOf = None) -> pa.Table:
    """The newest snapshot of ``score_aggregates`` for an interval (empty when none)."""
    periods_table = tables.open_table(lake, SCORE_AGGREGATES, as_of)
    if periods_table is None:
        return tables.empty(SCORE_AGGREGATES)
    actions = tables.add_actions(periods_table)
    if not actions.num_rows:
        return tables.empty(SCORE_AGGREGATES)
    mine = actions.filter(pc.equal(actions["partition.interval"], interval))
    if not mine.num_rows:
        return tables.empty(SCORE_AGGREGATES)
    newest_period = max(mine["partition.period"].to_pylist())
    files = [("interval", "=", interval), ("period", "=", newest_period)]
    table = tables.scan(lake, SCORE_AGGREGATES, where=ds.field("interval") == interval, files=files, as_of=as_of)
    if not table.num_rows:
        return table
    newest = pc.max(table["computed_at"])
    return table.filter(pc.equal(table["computed_at"], newest))
