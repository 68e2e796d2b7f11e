"""Reading a ticker's most recent bars from the lake as forecast context.

Bars are partitioned by date, and a day holds a very different number of bars per interval
(one daily bar, hundreds of minute bars), with gaps for weekends and holidays. So the
reader walks back over the date partitions that exist, reading only as many days as the
context needs, instead of scanning the ticker's whole history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from tickcast.lake import Lake

#: A cautious guess of bars per trading day, to decide how many date partitions to read first.
_BARS_PER_DAY = {"second": 5000, "minute": 300, "hour": 6, "day": 1}


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
) -> pa.Table:
    """The last ``count`` bars (start < ``end`` when given) of a ticker, oldest first, deduplicated.

    Raises:
        UnknownTicker: when the ticker has no bars of this interval (before ``end``).
    """
    import pyarrow as pa

    dates = [d.removeprefix("date=") for d in lake.list_dirs(f"bars/interval={interval}/ticker={ticker}")]
    if end is not None:
        last_day = end.astimezone(UTC).date().isoformat()
        dates = [d for d in dates if d <= last_day]
    if not dates:
        raise UnknownTicker(f"no {interval} bars for {ticker} in the lake")
    wanted = sorted(set(columns) | {"start", "end"})
    days = max(1, -(-count // _BARS_PER_DAY.get(interval, 1)) + 1)
    while True:
        first = dates[max(0, len(dates) - days)]
        start = datetime.combine(datetime.fromisoformat(first).date(), time(0), tzinfo=UTC)
        table = lake.read_bars(ticker, interval, start=start, end=end, columns=wanted)
        if table.num_rows > 0:
            # A replayed file may repeat bars; keep the last copy of each start.
            starts = table["start"].cast(pa.int64()).to_numpy()
            _, last_index = np.unique(starts[::-1], return_index=True)
            keep = np.sort(len(starts) - 1 - last_index)
            if len(keep) != table.num_rows:
                table = table.take(pa.array(keep))
        if table.num_rows >= count or days >= len(dates):
            break
        days *= 2
    if table.num_rows == 0:
        raise UnknownTicker(f"no {interval} bars for {ticker} before {end.isoformat() if end else 'now'}")
    return table.slice(max(0, table.num_rows - count))


def read_context(
    lake: Lake,
    ticker: str,
    interval: str,
    count: int,
    target: str,
    covariates: tuple[str, ...] = (),
    end: datetime | None = None,
) -> Context:
    """The forecast context of a ticker: the last ``count`` values of ``target`` and covariates."""
    table = read_recent_bars(lake, ticker, interval, count, [target, *covariates], end)

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
