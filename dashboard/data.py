"""Reading the lake for the dashboard: pruned reads, and Streamlit caches around them.

Every read names one ticker's folder and a range of date partitions, so a page never scans
other tickers or days (``Lake.read_bars`` prunes by the Hive partitions before opening a
file). A window of bars is read in two parts: the days before the newest one, cached for
minutes because they no longer change, and the newest day, cached for a couple of seconds,
so the live page's refresh re-reads one partition instead of the whole range.

The plain functions take a :class:`~tickcast.lake.Lake` and work without Streamlit (the
benchmark and tests use them); the ``cached_*`` functions are the pages' entry points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import streamlit as st

from dashboard.analysis import bars_frame, forecasts_frame, scores_frame
from tickcast.contracts import INTERVALS
from tickcast.lake import Lake
from tickcast.settings import Settings, load_settings

BAR_COLUMNS = ["start", "open", "high", "low", "close", "volume", "vwap"]

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

LIVE_TTL_S = 2.0  # the newest partition and folder listings: the live page refreshes every few seconds
LIST_TTL_S = 15.0
HISTORY_TTL_S = 600.0  # past days of bars, forecasts and scores do not change
REPORT_TTL_S = 60.0


# -- plain readers (no Streamlit) -----------------------------------------------------------------
def bar_intervals(lake: Lake) -> list[str]:
    """Intervals that have bars in the lake, finest first."""
    present = {d.removeprefix("interval=") for d in lake.list_dirs("bars") if d.startswith("interval=")}
    return [i for i in INTERVALS if i in present]


def partition_dates(lake: Lake, table: str, ticker: str, interval: str) -> list[str]:
    """The ``date=`` partitions of one ticker in ``table`` (bars, forecasts, scores), oldest first."""
    prefix = f"{table}/interval={interval}/ticker={ticker}"
    return [d.removeprefix("date=") for d in lake.list_dirs(prefix) if d.startswith("date=")]


def _day_start(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)


def read_bar_days(lake: Lake, ticker: str, interval: str, first_day: str, last_day: str) -> pd.DataFrame:
    """Bars of the date partitions ``first_day`` to ``last_day`` (inclusive), as a DataFrame."""
    end = _day_start(last_day) + timedelta(days=1)
    table = lake.read_bars(ticker, interval, start=_day_start(first_day), end=end, columns=BAR_COLUMNS)
    return bars_frame(table)


def read_table_days(
    lake: Lake, table: str, ticker: str, interval: str, first_day: str, last_day: str
) -> pa.Table | None:
    """Rows of the date partitions ``first_day``..``last_day`` of a forecasts or scores table (or None)."""
    expr = (ds.field("date") >= first_day) & (ds.field("date") <= last_day)
    return lake.read_table(f"{table}/interval={interval}/ticker={ticker}", ("date",), filter=expr)


@dataclass
class Window:
    """Bars of one ticker over a range ending at its newest bar."""

    bars: pd.DataFrame
    start: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    days: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether there are no bars."""
        return self.bars.empty


DayReader = Callable[[str, str], pd.DataFrame]  # (first_day, last_day) -> bars


def assemble_window(
    dates: list[str], span: timedelta | None, interval: str, newest: DayReader, older: DayReader
) -> Window:
    """Bars of the range ``span`` ending at the newest bar, from the newest day and the older ones.

    ``newest(day, day)`` reads the newest partition, ``older(first, last)`` the rest; the
    caller decides how each is cached.
    """
    if not dates:
        return Window(bars_frame_empty())
    tail = newest(dates[-1], dates[-1])
    if tail.empty:
        return Window(tail, days=dates)
    last = tail["start"].iloc[-1]
    if span is None:
        start = None
        first_day = dates[0]
    else:
        start = last - pd.Timedelta(span) + pd.Timedelta(INTERVALS[interval])
        first_day = start.date().isoformat()
    older_days = [d for d in dates[:-1] if d >= first_day]
    parts = [older(older_days[0], older_days[-1]), tail] if older_days else [tail]
    bars = pd.concat([p for p in parts if not p.empty], ignore_index=True) if len(parts) > 1 else tail
    if start is not None:
        bars = bars[bars["start"] >= start].reset_index(drop=True)
    return Window(bars, start, last, [*older_days, dates[-1]])


def bars_frame_empty() -> pd.DataFrame:
    """An empty bars DataFrame with the usual columns."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS}).astype({"start": "datetime64[us, UTC]"})


def read_window(lake: Lake, ticker: str, interval: str, span: timedelta | None) -> Window:
    """Uncached :func:`assemble_window` straight from the lake (benchmarks, tests)."""
    dates = partition_dates(lake, "bars", ticker, interval)

    def reader(first: str, last: str) -> pd.DataFrame:
        return read_bar_days(lake, ticker, interval, first, last)

    return assemble_window(dates, span, interval, reader, reader)


def days_since(dates: list[str], since: pd.Timestamp | None) -> list[str]:
    """The date partitions that can hold rows at or after ``since`` (forecasts are partitioned by
    their last bar's date, scores by their target bar's date: both at or before the row's time)."""
    if since is None:
        return dates
    first = since.date().isoformat()
    return [d for d in dates if d >= first]


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
    prefix = f"score_aggregates/interval={interval}"
    days = [d.removeprefix("date=") for d in lake.list_dirs(prefix) if d.startswith("date=")]
    if not days:
        return pd.DataFrame()
    table = lake.read_table(prefix, ("date",), filter=ds.field("date") == days[-1])
    if table is None or table.num_rows == 0:
        return pd.DataFrame()
    df = table.to_pandas()
    return df[df["computed_at"] == df["computed_at"].max()].reset_index(drop=True)


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
def cached_dates(url: str, table: str, ticker: str, interval: str) -> list[str]:
    """:func:`partition_dates`, cached briefly (a new day appears during the session)."""
    return partition_dates(get_lake(), table, ticker, interval)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False, max_entries=64)
def _newest_bars(url: str, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    return read_bar_days(get_lake(), ticker, interval, first, last)


@st.cache_data(ttl=HISTORY_TTL_S, show_spinner=False, max_entries=32)
def _older_bars(url: str, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    return read_bar_days(get_lake(), ticker, interval, first, last)


def cached_window(ticker: str, interval: str, span: timedelta | None) -> Window:
    """Bars of ``ticker`` over ``span`` ending at its newest bar (newest day re-read every couple of seconds)."""
    url = get_lake().url
    dates = cached_dates(url, "bars", ticker, interval)
    return assemble_window(
        dates,
        span,
        interval,
        lambda a, b: _newest_bars(url, ticker, interval, a, b),
        lambda a, b: _older_bars(url, ticker, interval, a, b),
    )


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False, max_entries=64)
def _newest_rows(url: str, table: str, ticker: str, interval: str, day: str) -> pd.DataFrame:
    data = read_table_days(get_lake(), table, ticker, interval, day, day)
    return _frame(table, data)


@st.cache_data(ttl=HISTORY_TTL_S, show_spinner=False, max_entries=32)
def _older_rows(url: str, table: str, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
    data = read_table_days(get_lake(), table, ticker, interval, first, last)
    return _frame(table, data)


def _frame(table: str, data: pa.Table | None) -> pd.DataFrame:
    from tickcast.lake import FORECAST_FILE_SCHEMA, SCORE_FILE_SCHEMA

    if data is None:
        data = (FORECAST_FILE_SCHEMA if table == "forecasts" else SCORE_FILE_SCHEMA).empty_table()
    if "date" in data.column_names:
        data = data.drop_columns(["date"])
    return forecasts_frame(data) if table == "forecasts" else scores_frame(data)


def cached_rows(table: str, ticker: str, interval: str, since: pd.Timestamp | None) -> pd.DataFrame:
    """Forecast or score rows of ``ticker`` from the partitions on or after ``since``'s date."""
    url = get_lake().url
    days = days_since(cached_dates(url, table, ticker, interval), since)
    if not days:
        return _frame(table, None)
    parts = [_newest_rows(url, table, ticker, interval, days[-1])]
    if len(days) > 1:
        parts.insert(0, _older_rows(url, table, ticker, interval, days[0], days[-2]))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _frame(table, None)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    time_col = "last_bar_start" if table == "forecasts" else "target_start"
    if since is not None:
        out = out[out[time_col] >= since]
    return out.reset_index(drop=True)


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
