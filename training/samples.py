"""A small, license-clean sample of real daily bars shipped with tickcast.

``training/data/daily_real.parquet`` holds daily OHLCV bars of the S&P 500 index (``SPX``)
and the NASDAQ Composite index (``IXIC``) from
1999-01-04 to 2018-12-31, 5,031 sessions each, in tickcast's bar schema (interval ``day``).
They come from the data sets shipped inside the ``arch`` package (``arch.data.sp500`` and
``arch.data.nasdaq``, arch 8.0.0, University of Illinois/NCSA Open Source License).

The sample is the held-out set of the bundled model (which never sees real data while
training) and the default data of the replay source. :func:`build_daily_sample` rebuilds
the file from an ``arch`` wheel, so anyone can check what is in it.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from tickcast.contracts import Bar
    from tickcast.lake import Lake

#: Where the shipped sample lives (inside the package, so an installed wheel has it too).
DAILY_SAMPLE = Path(__file__).resolve().parent / "data" / "daily_real.parquet"

#: arch data set -> tickcast ticker.
ARCH_SETS: dict[str, str] = {"sp500": "SPX", "nasdaq": "IXIC"}

SOURCE = "sample:arch"
_NEW_YORK = ZoneInfo("America/New_York")

BAR_COLUMNS = [
    "ticker",
    "interval",
    "start",
    "end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trades",
    "source",
]


def _session_start(day: pd.Timestamp) -> datetime:
    """Midnight New York time of a trading day, in UTC: how Polygon stamps daily bars."""
    return datetime(day.year, day.month, day.day, tzinfo=_NEW_YORK).astimezone(UTC)


def convert_arch_csv(raw: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """Turn one of arch's OHLCV CSV frames (Date, Open, High, Low, Close, Adj Close, Volume)
    into bars.

    The few rows where the source's open or close lies outside its high-low range (rounding
    in the source) get high/low widened to include them, so every bar passes
    :meth:`Bar.validate`.
    """
    dates = pd.to_datetime(raw["Date"], format="%m/%d/%Y")
    starts = [_session_start(d) for d in dates]
    high = raw[["High", "Open", "Close"]].max(axis=1)
    low = raw[["Low", "Open", "Close"]].min(axis=1)
    out = pd.DataFrame(
        {
            "ticker": ticker,
            "interval": "day",
            "start": pd.to_datetime(starts, utc=True),
            "end": pd.to_datetime([s + timedelta(days=1) for s in starts], utc=True),
            "open": raw["Open"].astype(float),
            "high": high.astype(float),
            "low": low.astype(float),
            "close": raw["Close"].astype(float),
            "volume": raw["Volume"].astype(float),
            "vwap": pd.Series([None] * len(raw), dtype="float64"),
            "trades": pd.Series([None] * len(raw), dtype="Int64"),
            "source": SOURCE,
        }
    )
    return out.sort_values("start").reset_index(drop=True)


def build_daily_sample(arch_wheel: str | Path, out: str | Path = DAILY_SAMPLE) -> pd.DataFrame:
    """Rebuild the sample from an ``arch`` wheel (``pip download --no-deps arch==8.0.0``)."""
    frames = []
    with zipfile.ZipFile(arch_wheel) as wheel:
        for name, ticker in ARCH_SETS.items():
            data = gzip.decompress(wheel.read(f"arch/data/{name}/{name}.csv.gz"))
            frames.append(convert_arch_csv(pd.read_csv(io.BytesIO(data)), ticker))
    df = pd.concat(frames, ignore_index=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False, compression="zstd")
    return df


def load_real_daily(tickers: list[str] | None = None) -> pd.DataFrame:
    """The shipped real daily bars as a DataFrame with the bar columns (sorted by ticker, start).

    Args:
        tickers: keep only these (``SPX``, ``IXIC``); None keeps both.
    """
    df = pd.read_parquet(DAILY_SAMPLE)
    if tickers is not None:
        df = df[df["ticker"].isin(tickers)]
    return df.sort_values(["ticker", "start"]).reset_index(drop=True)


def sample_bars(tickers: list[str] | None = None) -> list[Bar]:
    """The sample as validated :class:`Bar` objects."""
    from tickcast.contracts import Bar

    df = load_real_daily(tickers)
    bars = []
    for row in df.itertuples(index=False):
        bars.append(
            Bar(
                ticker=row.ticker,
                interval=row.interval,
                start=row.start.to_pydatetime(),
                end=row.end.to_pydatetime(),
                open=float(row.open),
                high=float(row.high),
                low=float(row.low),
                close=float(row.close),
                volume=float(row.volume),
                source=row.source,
            ).validate()
        )
    return bars


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """Bars DataFrame -> Arrow table of bars (:data:`tickcast.lake.BAR_SCHEMA`, ticker and interval included)."""
    from tickcast.lake import BAR_SCHEMA

    return pa.Table.from_pandas(df[list(BAR_SCHEMA.names)], schema=BAR_SCHEMA, preserve_index=False)


def write_sample_to_lake(
    lake: Lake,
    tickers: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """Write the sample (or the bars with ``start <= bar.start < end``) into the lake's bars
    table in one commit; returns the bar count.

    The write is an upsert on the bar key, so writing twice leaves each bar once.
    """
    df = load_real_daily(tickers)
    if start is not None:
        df = df[df["start"] >= pd.Timestamp(start)]
    if end is not None:
        df = df[df["start"] < pd.Timestamp(end)]
    if not df.empty:
        lake.write_bars(to_arrow(df))
    return len(df)
