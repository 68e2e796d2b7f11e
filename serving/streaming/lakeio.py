"""The forecaster's lake tables: writing forecasts, scores and score aggregates in batches,
and reading back what a restart needs.

File naming (deterministic, so a replay after a crash overwrites instead of duplicating):

- ``forecasts/interval=I/ticker=T/date=D/fc-<model>-<first>-<last>.parquet``: one file per
  ticker and flush; ``<first>``/``<last>`` are the first and last ``last_bar_start`` of the
  ticker's forecasts in the batch (UTC, ``YYYYMMDDTHHMMSSZ``) and ``<model>`` is the first
  8 hex digits of sha1(model id|version). A ticker's forecasts are strictly increasing in
  ``last_bar_start``, so two flushes never share a name, and re-forecasting the same bars
  with the same model rewrites the same object.
- ``scores/interval=I/ticker=T/date=D/sc-<first>-<last>-<keys>.parquet``: ``<first>``/``<last>``
  are the first and last ``target_start``; ``<keys>`` is a hash of the (forecast id, step)
  pairs in the file.
- ``score_aggregates/interval=I/date=D/agg-<computed_at>.parquet``: one file per flush in
  which anything was scored, a full snapshot of every rolling aggregate held (``scope`` =
  ticker or model); the newest file is the current state.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds

from tickcast.contracts import INTERVALS, Forecast, Score
from tickcast.lake import forecasts_to_table, partition_path, scores_to_table

from .context import date_partitions
from .scoring import Aggregate

if TYPE_CHECKING:
    from tickcast.lake import Lake

PARTITIONS = ("interval", "ticker", "date")

AGGREGATE_FILE_SCHEMA = pa.schema(
    [
        ("computed_at", pa.timestamp("us", tz="UTC")),
        ("scope", pa.string()),
        ("ticker", pa.string()),
        ("model_id", pa.string()),
        ("model_version", pa.string()),
        ("window", pa.int32()),
        ("steps", pa.int64()),
        ("mae", pa.float64()),
        ("mase", pa.float64()),
        ("wql", pa.float64()),
        ("coverage_80", pa.float64()),
        ("coverage_steps", pa.int64()),
    ]
)


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def forecast_file_name(forecasts: Sequence[Forecast]) -> str:
    """The deterministic file name of one ticker's forecasts in one flush."""
    first = min(f.last_bar_start for f in forecasts)
    last = max(f.last_bar_start for f in forecasts)
    models = sorted({f"{f.model_id}|{f.model_version}" for f in forecasts})
    return f"fc-{_short_hash(';'.join(models))}-{_stamp(first)}-{_stamp(last)}.parquet"


def score_file_name(scores: Sequence[Score]) -> str:
    """The deterministic file name of one ticker's scores in one flush."""
    first = min(s.target_start for s in scores)
    last = max(s.target_start for s in scores)
    keys = ";".join(sorted(f"{s.forecast_id}:{s.step}" for s in scores))
    return f"sc-{_stamp(first)}-{_stamp(last)}-{_short_hash(keys, 10)}.parquet"


def _by_ticker(items: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        groups[item.ticker].append(item)
    return groups


def _run(tasks: list[Callable[[], list[str]]], executor: Executor | None) -> list[str]:
    if executor is None:
        return [path for task in tasks for path in task()]
    return [path for future in [executor.submit(t) for t in tasks] for path in future.result()]


def _write_ticker_table(lake: Lake, table_name: str, data: pa.Table, file_name: str) -> list[str]:
    """One ticker's rows: what :meth:`Lake.write_partitioned` writes, without its group-by.

    The rows already share interval and ticker, and nearly always one date, so the
    general split (a group-by plus one filter per partition) would cost more CPU than the
    Parquet encoding itself; with thousands of tickers per flush that matters on 2 cores.
    Files, paths and names are exactly those of ``write_partitioned``.
    """
    dates = data.column("date").unique().to_pylist()
    if len(dates) != 1:
        return lake.write_partitioned(table_name, data, PARTITIONS, file_name)
    first = {c: str(data.column(c)[0].as_py()) for c in PARTITIONS}
    rel = f"{partition_path(table_name, [(c, first[c]) for c in PARTITIONS])}/{file_name}"
    return [lake.write_parquet(rel, data.drop_columns(list(PARTITIONS)))]


def write_forecasts(lake: Lake, forecasts: Sequence[Forecast], executor: Executor | None = None) -> list[str]:
    """Write forecasts, one file per ticker (and date); returns the lake paths written.

    Each ticker's rows go through :func:`tickcast.lake.forecasts_to_table` and land where
    :meth:`Lake.write_partitioned` puts them; the per-ticker split keeps a flush linear in
    its size, and ``executor`` writes the files in parallel.
    """

    def task(group: list[Forecast]) -> Callable[[], list[str]]:
        return lambda: _write_ticker_table(lake, "forecasts", forecasts_to_table(group), forecast_file_name(group))

    return _run([task(g) for g in _by_ticker(forecasts).values()], executor)


def write_scores(lake: Lake, scores: Sequence[Score], executor: Executor | None = None) -> list[str]:
    """Write scores, one file per ticker (and date); returns the lake paths written."""

    def task(group: list[Score]) -> Callable[[], list[str]]:
        return lambda: _write_ticker_table(lake, "scores", scores_to_table(group), score_file_name(group))

    return _run([task(g) for g in _by_ticker(scores).values()], executor)


def aggregates_to_table(aggregates: Sequence[Aggregate], computed_at: datetime, interval: str, window: int) -> pa.Table:
    """Aggregates as rows of the ``score_aggregates`` table (plus partition columns)."""
    rows: dict[str, list[Any]] = {name: [] for name in AGGREGATE_FILE_SCHEMA.names}
    for agg in aggregates:
        data = agg.to_dict()
        rows["computed_at"].append(computed_at)
        rows["window"].append(window)
        for name in AGGREGATE_FILE_SCHEMA.names:
            if name in data:
                rows[name].append(data[name])
    table = pa.Table.from_pydict(rows, schema=AGGREGATE_FILE_SCHEMA)
    day = computed_at.astimezone(UTC).date().isoformat()
    table = table.append_column("interval", pa.array([interval] * table.num_rows, pa.string()))
    return table.append_column("date", pa.array([day] * table.num_rows, pa.string()))


def write_aggregates(
    lake: Lake, aggregates: Sequence[Aggregate], computed_at: datetime, interval: str, window: int
) -> list[str]:
    """Write one ``score_aggregates`` file with these aggregates."""
    if not aggregates:
        return []
    table = aggregates_to_table(aggregates, computed_at, interval, window)
    name = f"agg-{computed_at.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.parquet"
    return lake.write_partitioned("score_aggregates", table, ("interval", "date"), name)


# -- reading back (warm start) ----------------------------------------------------------------


def _read_dates(lake: Lake, prefix: str, dates: list[str], columns: list[str] | None = None) -> pa.Table | None:
    if not dates:
        return None
    return lake.read_table(prefix, ("date",), filter=ds.field("date") >= dates[0], columns=columns)


def recent_forecasts(lake: Lake, ticker: str, interval: str, horizon: int) -> tuple[datetime | None, list[Forecast]]:
    """The last forecast's ``last_bar_start`` of a ticker and the forecasts that may still
    have unscored steps after it (those issued within ``horizon`` bars of it)."""
    prefix = f"forecasts/interval={interval}/ticker={ticker}"
    dates = date_partitions(lake, prefix)
    if not dates:
        return None, []
    latest = _read_dates(lake, prefix, dates[-1:], ["last_bar_start"])
    if latest is None or latest.num_rows == 0:
        return None, []
    last = max(latest.column("last_bar_start").to_pylist())
    cutoff = last - INTERVALS[interval] * horizon
    table = _read_dates(lake, prefix, [d for d in dates if d >= cutoff.date().isoformat()])
    if table is None:
        return last, []
    table = table.filter(ds.field("last_bar_start") > pa.scalar(cutoff))
    return last, rows_to_forecasts(table, ticker, interval)


def rows_to_forecasts(table: pa.Table, ticker: str, interval: str) -> list[Forecast]:
    """Forecast rows (one per step, as in the lake) back into :class:`Forecast` objects."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        grouped[row["forecast_id"]].append(row)
    out = []
    for fid, rows in grouped.items():
        rows.sort(key=lambda r: r["step"])
        first = rows[0]
        levels = first["quantile_levels"] or []
        quantiles = {str(level): [r["quantile_values"][i] for r in rows] for i, level in enumerate(levels)}
        out.append(
            Forecast(
                id=fid,
                ticker=ticker,
                interval=interval,
                model_id=first["model_id"],
                model_version=first["model_version"],
                issued_at=first["issued_at"],
                last_bar_start=first["last_bar_start"],
                bar_event_time=first["bar_event_time"],
                horizon=int(first["horizon"]),
                target=first["target"],
                mean=[float(r["mean"]) for r in rows],
                quantiles=quantiles,
            )
        )
    out.sort(key=lambda f: f.last_bar_start)
    return out


def recent_scores(lake: Lake, ticker: str, interval: str, rows: int) -> list[Score]:
    """The newest ``rows`` scores of a ticker, oldest first."""
    prefix = f"scores/interval={interval}/ticker={ticker}"
    dates = date_partitions(lake, prefix)
    if not dates:
        return []
    n = 1
    while True:
        table = _read_dates(lake, prefix, dates[-n:])
        if table is None or table.num_rows >= rows or n >= len(dates):
            break
        n = min(len(dates), n * 2)
    if table is None or table.num_rows == 0:
        return []
    table = table.sort_by([("target_start", "ascending"), ("step", "ascending")])
    table = table.slice(max(0, table.num_rows - rows))
    names = [f.name for f in fields(Score) if f.name not in ("ticker", "interval")]
    return [Score(ticker=ticker, interval=interval, **{k: r[k] for k in names}) for r in table.to_pylist()]
