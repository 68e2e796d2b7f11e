"""Rolling per-ticker context with bounded memory, warm-started from the lake.

Each ticker gets a fixed-size ring buffer of its target values (``context_length`` floats),
and the store holds at most ``max_tickers`` tickers, evicting the least recently updated
one. Memory is therefore at most ``max_tickers * context_length * 8`` bytes plus a few
hundred bytes of bookkeeping per ticker, whatever the stream does.

The store also remembers, per ticker, the start of the last bar a forecast was issued for,
so a restarted forecaster never forecasts the same (ticker, last bar) twice.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tickcast.lake import Lake

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TickerContext:
    """The ring buffer and bookkeeping of one ticker."""

    values: np.ndarray
    head: int = 0
    count: int = 0
    last_start: datetime | None = None
    last_end: datetime | None = None
    last_forecast_start: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def push(self, value: float) -> None:
        """Append one value, overwriting the oldest when full."""
        self.values[self.head] = value
        self.head = (self.head + 1) % len(self.values)
        self.count = min(self.count + 1, len(self.values))

    def window(self) -> np.ndarray:
        """The values in time order, oldest first (a copy)."""
        size = len(self.values)
        if self.count < size:
            return self.values[: self.count].copy()
        return np.concatenate((self.values[self.head :], self.values[: self.head]))

    def last_value(self) -> float | None:
        """The newest value, or None when empty."""
        if self.count == 0:
            return None
        return float(self.values[(self.head - 1) % len(self.values)])


class ContextStore:
    """Bounded per-ticker contexts with LRU eviction.

    Args:
        context_length: values kept per ticker (the ring buffer size).
        max_tickers: tickers kept at most; adding one more evicts the least recently updated.
    """

    def __init__(self, context_length: int, max_tickers: int) -> None:
        if context_length < 1 or max_tickers < 1:
            raise ValueError("context_length and max_tickers must be positive")
        self.context_length = context_length
        self.max_tickers = max_tickers
        self._tickers: OrderedDict[str, TickerContext] = OrderedDict()
        self.evicted = 0
        self._evicted_recent: list[str] = []

    def __len__(self) -> int:
        return len(self._tickers)

    def __contains__(self, ticker: object) -> bool:
        return ticker in self._tickers

    def tickers(self) -> list[str]:
        """Tracked tickers, least recently updated first."""
        return list(self._tickers)

    def get(self, ticker: str) -> TickerContext | None:
        """The ticker's context, or None (does not change the LRU order)."""
        return self._tickers.get(ticker)

    def _entry(self, ticker: str) -> TickerContext:
        entry = self._tickers.get(ticker)
        if entry is None:
            entry = TickerContext(values=np.zeros(self.context_length, dtype=np.float64))
            self._tickers[ticker] = entry
            while len(self._tickers) > self.max_tickers:
                old, _ = self._tickers.popitem(last=False)
                self.evicted += 1
                self._evicted_recent.append(old)
        else:
            self._tickers.move_to_end(ticker)
        return entry

    def pop_evicted(self) -> list[str]:
        """Tickers evicted since the last call (so owners can drop their related state)."""
        out, self._evicted_recent = self._evicted_recent, []
        return out

    def append(self, ticker: str, start: datetime, end: datetime, value: float) -> bool:
        """Add a bar's value if it is newer than the ticker's last bar.

        Returns:
            True when appended; False for a bar at or before the last one (a redelivery or
            an out-of-order duplicate), which leaves the context unchanged.
        """
        entry = self._tickers.get(ticker)
        if entry is not None and entry.last_start is not None and start <= entry.last_start:
            return False
        entry = self._entry(ticker)
        entry.push(float(value))
        entry.last_start = start
        entry.last_end = end
        return True

    def window(self, ticker: str) -> np.ndarray | None:
        """The ticker's context, oldest first, or None when the ticker is not tracked."""
        entry = self._tickers.get(ticker)
        return None if entry is None else entry.window()

    def needs_forecast(self, ticker: str) -> bool:
        """Whether the ticker has a bar newer than its last forecast."""
        entry = self._tickers.get(ticker)
        if entry is None or entry.last_start is None:
            return False
        return entry.last_forecast_start is None or entry.last_start > entry.last_forecast_start

    def mark_forecast(self, ticker: str, last_bar_start: datetime) -> None:
        """Record that a forecast for the bar starting ``last_bar_start`` was issued."""
        entry = self._tickers.get(ticker)
        if entry is not None and (entry.last_forecast_start is None or last_bar_start > entry.last_forecast_start):
            entry.last_forecast_start = last_bar_start

    def load(
        self,
        ticker: str,
        starts: Sequence[datetime],
        ends: Sequence[datetime],
        values: Sequence[float],
        last_forecast_start: datetime | None = None,
    ) -> int:
        """Replace a ticker's context with bars read from the lake (sorted by start).

        Returns the number of values kept (at most ``context_length``).
        """
        entry = self._entry(ticker)
        entry.values[:] = 0.0
        entry.head = entry.count = 0
        entry.last_start = entry.last_end = None
        n = self.context_length
        for start, end, value in zip(starts[-n:], ends[-n:], values[-n:], strict=True):
            if entry.last_start is not None and start <= entry.last_start:
                continue
            entry.push(float(value))
            entry.last_start, entry.last_end = start, end
        entry.last_forecast_start = last_forecast_start
        return entry.count

    def memory_bytes(self) -> int:
        """Bytes held by the ring buffers (the part that scales with the stream)."""
        return sum(e.values.nbytes for e in self._tickers.values())


# -- warm start -----------------------------------------------------------------------------


def date_partitions(lake: Lake, prefix: str) -> list[str]:
    """The ``date=`` partition values under ``prefix``, oldest first."""
    return [d.removeprefix("date=") for d in lake.list_dirs(prefix) if d.startswith("date=")]


def _day_start(day: str) -> datetime:
    return datetime.combine(datetime.fromisoformat(day).date(), time(0), tzinfo=UTC)


def read_recent_bars(
    lake: Lake,
    ticker: str,
    interval: str,
    rows: int,
    columns: list[str],
    until: datetime | None = None,
) -> Any:
    """The newest ``rows`` bars of a ticker (with ``start <= until`` when given), via
    :meth:`Lake.read_bars`, reading date partitions newest first until enough are found."""
    dates = date_partitions(lake, f"bars/interval={interval}/ticker={ticker}")
    if until is not None:
        last_day = until.astimezone(UTC).date().isoformat()
        dates = [d for d in dates if d <= last_day]
    if not dates:
        return None
    end = until + timedelta(microseconds=1) if until is not None else None
    n = 1
    while True:
        table = lake.read_bars(ticker, interval, start=_day_start(dates[-n]), end=end, columns=columns)
        if table.num_rows >= rows or n >= len(dates):
            break
        n = min(len(dates), n * 2)
    return table.slice(max(0, table.num_rows - rows))


def warm_start_bars(
    store: ContextStore,
    lake: Lake,
    tickers: Iterable[str],
    interval: str,
    target: str,
    last_forecasts: dict[str, datetime],
) -> int:
    """Fill the store from the lake: per ticker, the last ``context_length`` bars.

    When a ticker already has forecasts in the lake, its context ends at the bar of its
    last forecast: the bars after it have not been forecast yet, and Kafka redelivers them
    (offsets are committed only after forecasts are persisted), so they are appended and
    forecast as if new. Returns the number of tickers loaded.
    """
    loaded = 0
    for ticker in tickers:
        until = last_forecasts.get(ticker)
        table = read_recent_bars(lake, ticker, interval, store.context_length, ["start", "end", target], until)
        if table is None or table.num_rows == 0:
            if until is not None:
                # no bars (yet), but remember the last forecast so redelivered bars are not re-forecast
                store.load(ticker, [], [], [], last_forecast_start=until)
            continue
        store.load(
            ticker,
            table.column("start").to_pylist(),
            table.column("end").to_pylist(),
            table.column(target).to_numpy(zero_copy_only=False).astype(np.float64).tolist(),
            last_forecast_start=until,
        )
        loaded += 1
    return loaded
