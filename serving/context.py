"""Reading a ticker's most recent bars from the lake as forecast context.

:func:`tickcast.lake.recent_bars` reads the bars table's newest partitions first and stops
once it has enough bars, so a context costs the same after a year of history as after a
week; the table holds each bar once, the latest revision winning. ``as_of`` (a bars table
version or an aware time) reads the table as it was then, which makes a batch forecast
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from tickcast.lake import AsOf, Lake


class UnknownTicker(LookupError):
    """The lake has no bars for this ticker and interval."""


@dataclass(frozen=True)
class Context:
    """The last ``n`` bars of a ticker: target values, covariates and the last bar's start."""

    ticker: str
    interval: str
    target: np.ndarray
    covariates: dict[str, np.ndarray]
    last_bar_start: datetime
    last_bar_end: datetime


def read_recent_bars(
    lake: Lake,
    ticker: str,
    interval: str,
    count: int,
    columns: list[str],
    end: datetime | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """The last ``count`` bars (start < ``end`` when given) of a ticker, oldest first, each once;
    ``start`` and ``end`` are always among the columns.

    Raises:
        UnknownTicker: when the ticker has no bars of this interval (before ``end``).
    """
    from tickcast.lake import recent_bars

    wanted = list(dict.fromkeys([*columns, "start", "end"]))
    table = recent_bars(lake, ticker, interval, count, end, wanted, as_of)
    if table.num_rows == 0:
        when = f" before {end.isoformat()}" if end is not None else ""
        raise UnknownTicker(f"no {interval} bars for {ticker}{when} in the lake")
    return table


def read_context(
    lake: Lake,
    ticker: str,
    interval: str,
    count: int,
    target: str,
    covariates: tuple[str, ...] = (),
    end: datetime | None = None,
    as_of: AsOf = None,
) -> Context:
    """The forecast context of a ticker: the last ``count`` values of ``target`` and covariates
    (of the bars table as of ``as_of``, a version or an aware time, when given)."""
    table = read_recent_bars(lake, ticker, interval, count, [target, *covariates], end, as_of)

    def column(name: str) -> np.ndarray:
        # nulls (a missing vwap) become NaN, which Chronos treats as missing values
        return table[name].to_numpy(zero_copy_only=False).astype(np.float32)

    starts = table["start"].to_pylist()
    ends = table["end"].to_pylist()
    return Context(
        ticker=ticker,
        interval=interval,
        target=column(target),
        covariates={name: column(name) for name in covariates},
        last_bar_start=starts[-1],
        last_bar_end=ends[-1],
    )
