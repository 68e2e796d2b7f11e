"""What every page shares: the ticker and interval pickers, range pickers, and degrading
to a clear message instead of a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pyarrow as pa
import streamlit as st

from dashboard import data
from tickcast.contracts import INTERVALS
from tickcast.errors import TickcastError

SELECTION_KEY = "tickcast_selection"


@dataclass(frozen=True)
class Selection:
    """The sidebar's choice: an interval, and a ticker when the lake has bars of that interval."""

    interval: str
    ticker: str | None
    tickers: list[str] = field(default_factory=list)
    lake_url: str = ""
    lake_error: str | None = None


@contextlib.contextmanager
def degrade(what: str) -> Iterator[None]:
    """Show a failure while ``what`` as a warning that says how to fix it, not a traceback."""
    try:
        yield
    except TickcastError as exc:
        st.warning(f"**{what}** failed: {exc.message}" + (f"  \nFix: {exc.fix}" if exc.fix else ""), icon="⚠️")
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        st.warning(f"**{what}** failed: {first}", icon="⚠️")


def sidebar_selection() -> Selection:
    """Draw the interval and ticker pickers in the sidebar (bound to the URL) and remember the choice."""
    settings = data.get_settings()
    lake_error = None
    intervals: list[str] = []
    url = settings.lake.url
    try:
        lake = data.get_lake()
        url = lake.url
        intervals = data.cached_intervals(url)
    except TickcastError as exc:
        lake_error = exc.one_line()
    except (OSError, pa.ArrowException) as exc:
        lake_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    options = intervals or list(INTERVALS)
    preferred = settings.forecaster.interval if settings.forecaster.interval in options else options[0]
    with st.sidebar:
        interval = st.selectbox(
            "Interval",
            options,
            index=options.index(preferred),
            key="interval",
            bind="query-params",
            help="Bar interval; only intervals with bars in the lake are listed.",
        )
        tickers: list[str] = []
        if intervals and lake_error is None:
            try:
                tickers = data.cached_tickers(url, interval)
            except (TickcastError, OSError, pa.ArrowException) as exc:
                lake_error = str(exc)
        ticker = None
        if tickers:
            ticker = st.selectbox(
                "Ticker",
                tickers,
                index=0,
                key="ticker",
                bind="query-params",
                placeholder="Type to search",
                help=f"{len(tickers)} tickers with {interval} bars; type to search.",
            )
        st.caption(f"Lake: `{url}`")
    selection = Selection(interval, ticker, tickers, url, lake_error)
    st.session_state[SELECTION_KEY] = selection
    return selection


def selection() -> Selection:
    """The sidebar's current choice (drawn by the app's entry script before the page runs)."""
    found = st.session_state.get(SELECTION_KEY)
    if isinstance(found, Selection):
        return found
    return sidebar_selection()


def explain_no_bars(sel: Selection) -> None:
    """Say why there is nothing to show, and what to run."""
    if sel.lake_error:
        st.warning(f"The lake at `{sel.lake_url}` cannot be read: {sel.lake_error}", icon="⚠️")
        return
    st.info(
        f"The lake at `{sel.lake_url}` has no **{sel.interval}** bars yet. Start the platform with "
        "`tickcast up` (it replays a bundled sample), or run `tickcast produce` and `tickcast consume` "
        "to land bars; this page fills in as they arrive.",
        icon="ℹ️",
    )


def range_picker(interval: str, key: str, label: str = "Range") -> tuple[str, timedelta | None]:
    """A segmented control of the ranges of ``interval``, ending at the newest bar."""
    ranges = data.RANGES[interval]
    default = data.DEFAULT_RANGE[interval]
    choice = st.segmented_control(
        label, list(ranges), default=default, key=f"{key}_{interval}", help="Ends at the newest bar."
    )
    choice = choice or default
    return choice, ranges[choice]


def interval_delta(interval: str) -> timedelta:
    """The length of one bar."""
    return INTERVALS[interval]
