"""Reading the lake for the dashboard: pruned reads, and Streamlit caches around them.

Every read goes through :mod:`tickcast.lake` and names one ticker, an interval and a range
of ``period`` partitions (a day of minute or second bars, a year of hourly or daily bars),
so a page never opens the files of other periods, and the files of other tickers are
skipped by their statistics. The periods that may hold a ticker's rows come from the Delta
log alone (:func:`tickcast.lake.bar_periods`, :func:`~tickcast.lake.forecast_periods`,
:func:`~tickcast.lake.score_periods`). A window of bars is read in two parts: the periods
before the newest one, cached for minutes because they no longer change, and the newest
period, cached for a couple of seconds, so the live page's refresh re-reads one partition
instead of the whole range.

The plain functions take a :class:`~tickcast.lake.Lake` and work without Streamlit (the
benchmark and tests use them); the ``cached_*`` functions are the pages' entry points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from io import StringIO
from typing import Any

import pandas as pd
import pyarrow as pa
import streamlit as st

from dashboard.analysis import bars_frame, forecasts_frame, scores_frame
from tickcast import lake as tl
from tickcast.contracts import INTERVALS
from tickcast.lake import FORECASTS, SCORES, Lake
from tickcast.lake import tables as lake_tables
from tickcast.settings import Settings, load_settings

BAR_COLUMNS = ["start", "open", "high", "low", "close", "volume", "vwap"]

#: The forecaster's tables the pages read, and the time column each is partitioned by.
ROW_TABLES: dict[str, str] = {"forecasts": "last_bar_start", "scores": "target_start"}

#: Time ranges offered per interval, ending at the newest bar (None: everything).
RANGES: dict[str, dict[str, timedelta | None]] = {
    "second": {
        "5 min": timedelta(minutes=5),
        "15 min": timedelta(minutes=15),
        "1 hour": timedelta(hours=1),
        "1 day": timedelta(days=1),
        "all": None,
    },
    "minute": {
        "1 hour": timedelta(hours=1),
        "1 day": timedelta(days=1),
        "5 days": timedelta(days=5),
        "1 month": timedelta(days=31),
        "3 months": timedelta(days=92),
        "1 year": timedelta(days=366),
        "all": None,
    },
    "hour": {
        "1 day": timedelta(days=1),
        "5 days": timedelta(days=5),
        "1 month": timedelta(days=31),
        "3 months": timedelta(days=92),
        "1 year": timedelta(days=366),
        "all": None,
    },
    "day": {
        "1 month": timedelta(days=31),
        "3 months": timedelta(days=92),
        "6 months": timedelta(days=183),
        "1 year": timedelta(days=366),
        "5 years": timedelta(days=5 * 366),
        "all": None,
    },
}
DEFAULT_RANGE = {"second": "15 min", "minute": "1 day", "hour": "1 month", "day": "1 year"}

LIVE_TTL_S = 2.0  # the newest partition and period listings: the live page refreshes every few seconds
LIST_TTL_S = 15.0
HISTORY_TTL_S = 600.0  # past periods of bars, forecasts and scores do not change
REPORT_TTL_S = 60.0


# -- plain readers (no Streamlit) -----------------------------------------------------------------
def bar_intervals(lake: Lake) -> list[str]:
    """Intervals that have bars in the lake, finest first."""
    present = set(tl.bar_intervals(lake))
    return [i for i in INTERVALS if i in present]


def periods(lake: Lake, table: str, ticker: str, interval: str) -> list[str]:
    """The ``period`` partitions of ``table`` (bars, forecasts, scores) that may hold rows of
    ``ticker``, oldest first (from the Delta log; no data file is read)."""
    if table == "bars":
        return tl.bar_periods(lake, interval, ticker)
    if table == "forecasts":
        return tl.forecast_periods(lake, interval, ticker)
    if table == "scores":
        return tl.score_periods(lake, interval, ticker)
    raise ValueError(f"unknown table {table!r}: use bars, forecasts or scores")


def read_bar_periods(lake: Lake, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    """Bars of the periods ``first`` to ``last`` (inclusive), as a DataFrame."""
    start, end = tl.period_bounds(interval, first)[0], tl.period_bounds(interval, last)[1]
    return bars_frame(lake.read_bars(ticker, interval, start=start, end=end, columns=BAR_COLUMNS))


def read_row_periods(lake: Lake, table: str, ticker: str, interval: str, first: str, last: str) -> pa.Table:
    """Rows of a forecasts or scores table of ``ticker`` in the periods ``first``..``last`` (inclusive)."""
    start, end = tl.period_bounds(interval, first)[0], tl.period_bounds(interval, last)[1]
    read = tl.read_forecasts if table == "forecasts" else tl.read_scores
    return read(lake, ticker, interval, start, end)


@dataclass
class Window:
    """Bars of one ticker over a range ending at its newest bar."""

    bars: pd.DataFrame
    start: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    periods: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether there are no bars."""
        return self.bars.empty


PeriodReader = Callable[[str, str], pd.DataFrame]  # (first period, last period) -> bars


def assemble_window(
    periods: list[str], span: timedelta | None, interval: str, newest: PeriodReader, older: PeriodReader
) -> Window:
    """Bars of the range ``span`` ending at the newest bar, from the newest period and the older ones.

    ``newest(p, p)`` reads the newest period, ``older(first, last)`` the rest; the caller
    decides how each is cached. A period whose files only *may* hold the ticker (their
    ticker statistics span it) and hold none is skipped.
    """
    periods = list(periods)
    tail = bars_frame_empty()
    while periods:
        tail = newest(periods[-1], periods[-1])
        if not tail.empty:
            break
        periods.pop()
    if tail.empty:
        return Window(bars_frame_empty())
    last = tail["start"].iloc[-1]
    if span is None:
        start = None
        first = periods[0]
    else:
        start = last - pd.Timedelta(span) + pd.Timedelta(INTERVALS[interval])
        first = tl.period_of(interval, start.to_pydatetime())
    older_periods = [p for p in periods[:-1] if p >= first]
    parts = [older(older_periods[0], older_periods[-1]), tail] if older_periods else [tail]
    bars = pd.concat([p for p in parts if not p.empty], ignore_index=True) if len(parts) > 1 else tail
    if start is not None:
        bars = bars[bars["start"] >= start].reset_index(drop=True)
    return Window(bars, start, last, [*older_periods, periods[-1]])


def bars_frame_empty() -> pd.DataFrame:
    """An empty bars DataFrame with the usual columns."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS}).astype({"start": "datetime64[us, UTC]"})


def read_window(lake: Lake, ticker: str, interval: str, span: timedelta | None) -> Window:
    """Uncached :func:`assemble_window` straight from the lake (benchmarks, tests)."""

    def reader(first: str, last: str) -> pd.DataFrame:
        return read_bar_periods(lake, ticker, interval, first, last)

    return assemble_window(periods(lake, "bars", ticker, interval), span, interval, reader, reader)


def periods_since(found: list[str], interval: str, since: pd.Timestamp | None) -> list[str]:
    """The periods that can hold rows at or after ``since`` (forecasts are partitioned by their
    last bar's period, scores by their target bar's: both at or before the row's time)."""
    if since is None:
        return found
    first = tl.period_of(interval, since.to_pydatetime())
    return [p for p in found if p >= first]


@dataclass
class ReportInfo:
    """A backtest report under ``reports/<name>/``."""

    name: str
    created_at: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """A backtest report's tables."""

    info: ReportInfo
    summary: pd.DataFrame
    per_step: pd.DataFrame
    images: list[str] = field(default_factory=list)


def _report_meta(lake: Lake, name: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(lake.read_bytes(f"reports/{name}/report.json"))
        return meta if isinstance(meta, dict) else {}
    except (FileNotFoundError, ValueError):
        return {} if lake.exists(f"reports/{name}/summary.json") else None


def list_reports(lake: Lake) -> list[ReportInfo]:
    """Backtest reports in the lake, newest first (by ``report.json``'s ``created_at``)."""
    out = []
    for name in lake.list_dirs("reports"):
        meta = _report_meta(lake, name)
        if meta is not None:
            out.append(ReportInfo(name=name, created_at=str(meta.get("created_at", "")), meta=meta))
    return sorted(out, key=lambda r: (r.created_at, r.name), reverse=True)


def read_report(lake: Lake, name: str) -> Report:
    """The summary (one row per model), the per-step table and the plot names of a report."""
    prefix = f"reports/{name}"
    meta = _report_meta(lake, name) or {}
    info = ReportInfo(name=name, created_at=str(meta.get("created_at", "")), meta=meta)
    try:
        summary = pd.DataFrame(json.loads(lake.read_bytes(f"{prefix}/summary.json")))
    except (FileNotFoundError, ValueError):
        summary = pd.DataFrame()
    try:
        per_step = pd.read_csv(StringIO(lake.read_bytes(f"{prefix}/per_step.csv").decode()))
    except (FileNotFoundError, ValueError):
        per_step = pd.DataFrame()
    images = [p.rsplit("/", 1)[-1] for p in lake.list_files(prefix, suffix=".png")]
    return Report(info, summary, per_step, images)


def latest_aggregates(lake: Lake, interval: str) -> pd.DataFrame:
    """The newest snapshot of the forecaster's rolling score aggregates (empty when there is none)."""
    table = tl.read_latest_aggregates(lake, interval)
    if table.num_rows == 0:
        return pd.DataFrame()
    return table.drop_columns(["interval", "period"]).to_pandas()


# -- Streamlit caches -----------------------------------------------------------------------------
def _env_key() -> tuple[tuple[str, str], ...]:
    # The settings come from TICKCAST_* variables; keying the cache on them builds one
    # Settings per configuration (tests change the lake between apps in one process).
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("TICKCAST_")))


@st.cache_resource(show_spinner=False)
def _settings(env_key: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings()


def get_settings() -> Settings:
    """The process's settings, built once from the environment."""
    return _settings(_env_key())


@st.cache_resource(show_spinner=False)
def _lake(env_key: tuple[tuple[str, str], ...]) -> Lake:
    return Lake(get_settings().lake)


def get_lake() -> Lake:
    """The lake of the settings (raises ConfigError when its URL or credentials are wrong)."""
    return _lake(_env_key())


@st.cache_data(ttl=LIST_TTL_S, show_spinner=False)
def cached_intervals(url: str) -> list[str]:
    """:func:`bar_intervals`, cached."""
    return bar_intervals(get_lake())


@st.cache_data(ttl=LIST_TTL_S, show_spinner=False)
def cached_tickers(url: str, interval: str) -> list[str]:
    """Tickers with bars of ``interval``, cached."""
    return get_lake().bar_tickers(interval)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def cached_periods(url: str, table: str, ticker: str, interval: str) -> list[str]:
    """:func:`periods`, cached briefly (a new period appears during the session)."""
    return periods(get_lake(), table, ticker, interval)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False, max_entries=64)
def _newest_bars(url: str, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    return read_bar_periods(get_lake(), ticker, interval, first, last)


@st.cache_data(ttl=HISTORY_TTL_S, show_spinner=False, max_entries=32)
def _older_bars(url: str, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    return read_bar_periods(get_lake(), ticker, interval, first, last)


def cached_window(ticker: str, interval: str, span: timedelta | None) -> Window:
    """Bars of ``ticker`` over ``span`` ending at its newest bar (newest period re-read every couple of seconds)."""
    url = get_lake().url
    return assemble_window(
        cached_periods(url, "bars", ticker, interval),
        span,
        interval,
        lambda a, b: _newest_bars(url, ticker, interval, a, b),
        lambda a, b: _older_bars(url, ticker, interval, a, b),
    )


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False, max_entries=64)
def _newest_rows(url: str, table: str, ticker: str, interval: str, period: str) -> pd.DataFrame:
    return _frame(table, read_row_periods(get_lake(), table, ticker, interval, period, period))


@st.cache_data(ttl=HISTORY_TTL_S, show_spinner=False, max_entries=32)
def _older_rows(url: str, table: str, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    return _frame(table, read_row_periods(get_lake(), table, ticker, interval, first, last))


def _frame(table: str, data: pa.Table | None) -> pd.DataFrame:
    if data is None:
        data = lake_tables.empty(FORECASTS if table == "forecasts" else SCORES)
    data = data.drop_columns([c for c in ("period",) if c in data.column_names])
    return forecasts_frame(data) if table == "forecasts" else scores_frame(data)


def cached_rows(table: str, ticker: str, interval: str, since: pd.Timestamp | None) -> pd.DataFrame:
    """Forecast or score rows of ``ticker`` from the periods that can hold rows at or after ``since``."""
    url = get_lake().url
    found = periods_since(cached_periods(url, table, ticker, interval), interval, since)
    if not found:
        return _frame(table, None)
    parts = [_newest_rows(url, table, ticker, interval, found[-1])]
    if len(found) > 1:
        parts.insert(0, _older_rows(url, table, ticker, interval, found[0], found[-2]))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _frame(table, None)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if since is not None:
        out = out[out[ROW_TABLES[table]] >= since]
    return out.reset_index(drop=True)


def cached_newest(table: str, ticker: str, interval: str) -> pd.Timestamp | None:
    """The time of ``ticker``'s newest forecast (last bar) or score (target bar); None when it has none."""
    url = get_lake().url
    found = cached_periods(url, table, ticker, interval)
    for period in reversed(found):
        rows = _newest_rows(url, table, ticker, interval, period)
        if not rows.empty:
            return pd.Timestamp(rows[ROW_TABLES[table]].max())
    return None


@st.cache_data(ttl=REPORT_TTL_S, show_spinner=False)
def cached_reports(url: str) -> list[ReportInfo]:
    """:func:`list_reports`, cached."""
    return list_reports(get_lake())


@st.cache_data(ttl=REPORT_TTL_S, show_spinner=False)
def cached_report(url: str, name: str) -> Report:
    """:func:`read_report`, cached."""
    return read_report(get_lake(), name)


@st.cache_data(ttl=REPORT_TTL_S, show_spinner=False)
def cached_report_image(url: str, name: str, image: str) -> bytes:
    """One PNG of a report."""
    return get_lake().read_bytes(f"reports/{name}/{image}")


@st.cache_data(ttl=LIST_TTL_S, show_spinner=False)
def cached_aggregates(url: str, interval: str) -> pd.DataFrame:
    """:func:`latest_aggregates`, cached."""
    return latest_aggregates(get_lake(), interval)
