"""The forecaster's lake tables: what a flush writes and what a restart reads back.

Writing is :mod:`tickcast.lake.results`: each flush appends its forecasts in one commit to the
``forecasts`` table, its scores in one commit to ``scores``, and one snapshot of every
rolling aggregate held to ``score_aggregates`` (the newest snapshot is the current state).

A forecaster that crashed after a lake commit but before its Kafka commit replays those bars
and appends the same forecasts and scores again (same ``forecast_id`` and ``step``: forecast
ids derive from ticker, model and last bar). The table may then hold a key twice until
``tickcast lake optimize`` folds it; every reader (these, :func:`tickcast.lake.read_forecasts`,
the dashboard) sees each key once, the latest write winning.
"""

from __future__ import annotations

import math
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tickcast.contracts import INTERVALS, Forecast, Score
from tickcast.lake import latest_forecasts, latest_scores, write_aggregates, write_forecasts, write_scores

if TYPE_CHECKING:
    import pyarrow as pa

    from tickcast.lake import Lake

__all__ = [
    "pylist",
    "recent_forecasts",
    "recent_scores",
    "rows_to_forecasts",
    "rows_to_scores",
    "warm_lookback",
    "write_aggregates",
    "write_forecasts",
    "write_scores",
]

#: How many times the bars a score window spans a warm start looks back (gaps, illiquid tickers).
LOOKBACK_FACTOR = 4


def warm_lookback(interval: str, horizon: int, score_window: int) -> timedelta:
    """How far before the newest forecast (and score) of an interval a warm start reads.

    A ticker's last ``score_window`` scores come from about ``score_window / horizon +
    horizon`` bars; four times that is read. A ticker not forecast within the lookback
    starts without a last forecast: its context then ends at its newest bar, so replayed
    bars are older than the context and are not forecast again either.
    """
    bars = math.ceil(score_window / horizon) + horizon
    return INTERVALS[interval] * LOOKBACK_FACTOR * bars


def recent_forecasts(
    lake: Lake, interval: str, horizon: int, lookback: timedelta
) -> tuple[dict[str, datetime], dict[str, list[Forecast]]]:
    """Per ticker: the ``last_bar_start`` of its newest forecast, and the forecasts that may
    still have unscored steps (those within ``horizon`` bars of it), oldest first.

    Reads every ticker at once (see :func:`tickcast.lake.latest_forecasts`); a forecast the
    table holds twice after a replay comes back once.
    """
    window = INTERVALS[interval] * horizon
    last: dict[str, datetime] = {}
    pending: dict[str, list[Forecast]] = {}
    for ticker, rows in latest_forecasts(lake, interval, window, lookback).items():
        forecasts = rows_to_forecasts(rows, ticker, interval)
        last[ticker] = forecasts[-1].last_bar_start
        pending[ticker] = forecasts
    return last, pending


def recent_scores(lake: Lake, interval: str, rows: int, lookback: timedelta) -> dict[str, list[Score]]:
    """Per ticker, its newest ``rows`` scores, oldest first (each scored step once)."""
    return {
        ticker: rows_to_scores(table, ticker, interval)
        for ticker, table in latest_scores(lake, interval, rows, lookback).items()
    }


def pylist(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column as Python values; UTC timestamps several times faster than ``to_pylist``
    (which builds a time zone per value), as aware datetimes all the same."""
    import pyarrow as pa

    if pa.types.is_timestamp(column.type) and column.null_count == 0:
        micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy().tolist()
        return [_EPOCH + timedelta(microseconds=m) for m in micros]
    return column.to_pylist()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_FORECAST_COLUMNS = (
    "forecast_id",
    "model_id",
    "model_version",
    "issued_at",
    "last_bar_start",
    "bar_event_time",
    "horizon",
    "target",
    "step",
    "mean",
    "quantile_levels",
    "quantile_values",
    "calibrated_coverage",
    "calibrated_lower",
    "calibrated_upper",
    "calibration_alpha",
)


_CALIBRATED = ("calibrated_lower", "calibrated_upper", "calibration_alpha")


def rows_to_forecasts(table: pa.Table, ticker: str, interval: str) -> list[Forecast]:
    """Forecast rows (one per step, as in the lake) back into :class:`Forecast` objects,
    sorted by ``last_bar_start``."""
    columns = {name: pylist(table[name]) for name in _FORECAST_COLUMNS}
    grouped: dict[str, list[int]] = {}
    for i, fid in enumerate(columns["forecast_id"]):
        grouped.setdefault(fid, []).append(i)
    out = []
    for fid, rows in grouped.items():
        rows.sort(key=lambda r: columns["step"][r])
        first = rows[0]
        levels = columns["quantile_levels"][first] or []
        values = columns["quantile_values"]
        band = {name: [columns[name][r] for r in rows] for name in _CALIBRATED}
        calibrated = columns["calibrated_coverage"][first] is not None and all(
            v is not None for values_ in band.values() for v in values_
        )
        out.append(
            Forecast(
                id=fid,
                ticker=ticker,
                interval=interval,
                model_id=columns["model_id"][first],
                model_version=columns["model_version"][first],
                issued_at=columns["issued_at"][first],
                last_bar_start=columns["last_bar_start"][first],
                bar_event_time=columns["bar_event_time"][first],
                horizon=int(columns["horizon"][first]),
                target=columns["target"][first],
                mean=[float(columns["mean"][r]) for r in rows],
                quantiles={str(level): [values[r][i] for r in rows] for i, level in enumerate(levels)},
                # rows written before calibration (or uncalibrated) have nulls: no band then
                calibrated_coverage=columns["calibrated_coverage"][first] if calibrated else None,
                calibrated_lower=band["calibrated_lower"] if calibrated else None,
                calibrated_upper=band["calibrated_upper"] if calibrated else None,
                calibration_alpha=band["calibration_alpha"] if calibrated else None,
            )
        )
    out.sort(key=lambda f: f.last_bar_start)
    return out


def rows_to_scores(table: pa.Table, ticker: str, interval: str) -> list[Score]:
    """Score rows back into :class:`Score` objects, in row order."""
    names = [f.name for f in fields(Score) if f.name not in ("ticker", "interval")]
    columns = [pylist(table[name]) for name in names]  # column-wise: much faster than row dicts
    return [
        Score(ticker=ticker, interval=interval, **dict(zip(names, values, strict=True)))
        for values in zip(*columns, strict=True)
    ]
