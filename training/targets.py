"""What to forecast: a bar field or a series derived from the bars.

A target turns a ticker's bars (sorted by start) into one float series. Bar fields are
taken as they are; derived targets are computed from them:

* ``log_return``: ``log(close_t / close_{t-1})`` (one value shorter than the bars);
* ``log_volume``: ``log(1 + volume)``;
* ``range``: ``high - low``.

Training, fine-tuning and backtests all use the same names, so a model fine-tuned on
``volume`` is evaluated on ``volume``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from tickcast.lake import AsOf, Lake

FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "vwap", "trades")
DERIVED: tuple[str, ...] = ("log_return", "log_volume", "range")
TARGETS: tuple[str, ...] = FIELDS + DERIVED
_ALIASES = {"log-return": "log_return", "log-returns": "log_return", "log_returns": "log_return"}


def normalize_target(target: str) -> str:
    """The canonical name of a target; raises ValueError for an unknown one."""
    name = _ALIASES.get(target, target)
    if name not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    return name


def derive(columns: Mapping[str, Any], target: str) -> np.ndarray:
    """The target series from bar columns (arrays sorted by start)."""
    name = normalize_target(target)
    if name in FIELDS:
        values = np.asarray(columns[name], dtype=np.float64)
    elif name == "log_return":
        close = np.asarray(columns["close"], dtype=np.float64)
        values = np.diff(np.log(close))
    elif name == "log_volume":
        values = np.log1p(np.asarray(columns["volume"], dtype=np.float64))
    else:
        values = np.asarray(columns["high"], dtype=np.float64) - np.asarray(columns["low"], dtype=np.float64)
    return values


def series_from_frame(df: pd.DataFrame, target: str, ticker_column: str = "ticker") -> dict[str, np.ndarray]:
    """``ticker -> target series`` from a bars DataFrame (one row per bar)."""
    time_column = "start" if "start" in df.columns else "timestamp"
    out: dict[str, np.ndarray] = {}
    for ticker, group in df.sort_values([ticker_column, time_column]).groupby(ticker_column, sort=True):
        values = derive({c: group[c].to_numpy() for c in group.columns}, target)
        out[str(ticker)] = values[np.isfinite(values)]
    return out


def bars_version(lake: Lake, as_of: AsOf = None) -> int | None:
    """The version of the lake's bars table as of a version or time (the latest when None);
    None when the lake has no bars table yet.

    Read series with ``as_of=`` this version and record it: a rerun with the same version
    reads exactly the same bars, whatever was appended, corrected or compacted since.
    """
    from tickcast.lake import BARS, tables

    table = tables.open_table(lake, BARS, as_of)
    return None if table is None else int(table.version())


def series_from_lake(
    lake: Lake,
    target: str,
    interval: str,
    tickers: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: AsOf = None,
) -> dict[str, np.ndarray]:
    """``ticker -> target series`` for bars in the lake (all tickers of the interval by default),
    read in one scan of the bars table as of ``as_of`` (a version or time; latest when None)."""
    from tickcast.lake import scan_bars

    table = scan_bars(lake, interval, tickers or (), start, end, as_of=as_of)
    out: dict[str, np.ndarray] = {}
    if table.num_rows == 0:
        return out
    tickers_col = table["ticker"].to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(tickers_col[1:] != tickers_col[:-1]) + 1  # sorted by ticker, then start
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, table.num_rows], strict=True):
        part = table.slice(int(lo), int(hi - lo))
        values = derive({c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names}, target)
        out[str(tickers_col[lo])] = values[np.isfinite(values)]
    return out
