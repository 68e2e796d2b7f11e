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
from datetime import datetime, timedelta
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
        """Replace a ticker's context with bars read from the lake (sorted by start; a bar at
        or before the previous one is skipped).

        Returns the number of values kept (at most ``context_length``).
        """
        kept: list[float] = []
        last: tuple[datetime, datetime] | None = None
        for start, end, value in zip(starts, ends, values, strict=True):
            if last is None or start > last[0]:
                kept.append(float(value))
                last = (start, end)
        return self.load_window(ticker, np.asarray(kept, dtype=np.float64), last, last_forecast_start)

    def load_window(
        self,
        ticker: str,
        values: np.ndarray,
        last_bar: tuple[datetime, datetime] | None,
        last_forecast_start: datetime | None = None,
    ) -> int:
        """Replace a ticker's context with ``values`` (oldest first, one per bar, the newest
        bar's ``(start, end)`` being ``last_bar``): the vectorised :meth:`load`.

        Returns the number of values kept (at most ``context_length``).
        """
        entry = self._entry(ticker)
        tail = np.asarray(values, dtype=np.float64)[-self.context_length :]
        entry.values[:] = 0.0
        entry.values[: len(tail)] = tail
        entry.count = len(tail)
        entry.head = len(tail) % self.context_length
        entry.last_start, entry.last_end = last_bar if len(tail) and last_bar is not None else (None, None)
        entry.last_forecast_start = last_forecast_start
        return entry.count

    def memory_bytes(self) -> int:
        """Bytes held by the ring buffers (the part that scales with the stream)."""
        return sum(e.values.nbytes for e in self._tickers.values())


# -- warm start -----------------------------------------------------------------------------


def warm_start_bars(
    store: ContextStore,
    lake: Lake,
    tickers: Iterable[str],
    interval: str,
    target: str,
    last_forecasts: dict[str, datetime],
) -> int:
    """Fill the store from the lake: per ticker, the last ``context_length`` bars
    (:func:`tickcast.lake.latest_bars`, all tickers at once).

    When a ticker already has forecasts in the lake, its context ends at the bar of its
    last forecast: the bars after it have not been forecast yet, and Kafka redelivers them
    (offsets are committed only after forecasts are persisted), so they are appended and
    forecast as if new. Returns the number of tickers loaded.
    """
    from tickcast.lake import latest_bars

    names = list(dict.fromkeys(tickers))
    ends = {t: last_forecasts[t] + timedelta(microseconds=1) for t in names if t in last_forecasts}
    tables = latest_bars(lake, interval, names, store.context_length, ends, ["start", "end", target])
    loaded = 0
    for ticker in names:
        until = last_forecasts.get(ticker)
        table = tables.get(ticker)
        if table is None:
            if until is not None:
                # no bars (yet), but remember the last forecast so redelivered bars are not re-forecast
                store.load(ticker, [], [], [], last_forecast_start=until)
            continue
        last_bar = (table.column("start")[-1].as_py(), table.column("end")[-1].as_py())
        values = table.column(target).to_numpy(zero_copy_only=False).astype(np.float64)
        store.load_window(ticker, values, last_bar, last_forecast_start=until)
        loaded += 1
    return loaded
