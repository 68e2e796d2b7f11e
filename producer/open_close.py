"""Daily open/close summaries (``/v1/open-close/{T}/{date}``): the session's OHLCV plus the
pre-market and after-hours prices, for analysing moves outside regular hours.

They go to the Kafka topic ``kafka.topic_open_close`` (key = ticker, JSON value with a
``schema_version``) and, written by the producer itself, to the lake table::

    open_close/ticker=AAPL/date=2024-01-02/open_close.parquet

The producer writes the lake table directly because the summaries are few (one per ticker
and day) and the consumer sinks only ``bars``. The file name is fixed, so a re-run
overwrites a day instead of duplicating it.
"""

from __future__ import annotations

import json
import math
from datetime import date
from typing import Any, Final

import pyarrow as pa

from tickcast.contracts import SCHEMA_VERSION, TICKER_RE, now_utc, to_iso
from tickcast.errors import InvalidBar, InvalidRecord
from tickcast.lake import Lake

TABLE: Final = "open_close"
FILE_NAME: Final = "open_close.parquet"

#: Columns of the open_close files (ticker and date are partition folders).
OPEN_CLOSE_FILE_SCHEMA: Final = pa.schema(
    [
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("pre_market", pa.float64()),
        ("after_hours", pa.float64()),
        ("source", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _number(body: dict[str, Any], name: str, where: str, optional: bool = False) -> float | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"open-close {name} is {value!r}, not a number ({where})")
    if not math.isfinite(value):
        raise InvalidBar(f"open-close {name} is {value}, not finite", where)
    return float(value)


def parse_open_close(body: Any, ticker: str, day: date, source: str = "polygon-rest") -> dict[str, Any]:
    """Polygon's answer (open, high, low, close, volume, preMarket, afterHours) as a row.

    Raises:
        InvalidRecord: when fields are missing or not numbers.
        InvalidBar: when prices are out of order or not positive.
    """
    where = f"{ticker}@{day.isoformat()}"
    if not isinstance(body, dict):
        raise InvalidRecord(f"open-close answer is a {type(body).__name__}, not an object ({where})")
    if not TICKER_RE.match(ticker):
        raise InvalidBar(f"ticker {ticker!r} is not a plausible symbol", where)
    o = _number(body, "open", where)
    h = _number(body, "high", where)
    lo = _number(body, "low", where)
    c = _number(body, "close", where)
    v = _number(body, "volume", where)
    pre = _number(body, "preMarket", where, optional=True)
    after = _number(body, "afterHours", where, optional=True)
    assert o is not None and h is not None and lo is not None and c is not None and v is not None
    if lo <= 0 or not (lo <= o <= h and lo <= c <= h):
        raise InvalidBar(f"prices out of order: need 0 < low <= open, close <= high (o={o} h={h} l={lo} c={c})", where)
    if v < 0:
        raise InvalidBar(f"volume is {v}, must be >= 0", where)
    for name, value in (("preMarket", pre), ("afterHours", after)):
        if value is not None and value <= 0:
            raise InvalidBar(f"{name} is {value}, must be positive", where)
    return {
        "ticker": ticker,
        "date": day.isoformat(),
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
        "pre_market": pre,
        "after_hours": after,
        "source": source,
        "fetched_at": now_utc(),
    }


def to_record(row: dict[str, Any]) -> bytes:
    """The Kafka value of one open/close row."""
    out = {"schema_version": SCHEMA_VERSION, **row, "fetched_at": to_iso(row["fetched_at"])}
    return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table: the file columns plus ``ticker`` and ``date``."""
    table = pa.Table.from_pylist(
        [{k: r.get(k) for k in OPEN_CLOSE_FILE_SCHEMA.names} for r in rows], schema=OPEN_CLOSE_FILE_SCHEMA
    )
    return table.append_column("ticker", pa.array([r["ticker"] for r in rows], pa.string())).append_column(
        "date", pa.array([r["date"] for r in rows], pa.string())
    )


def write_open_close(lake: Lake, rows: list[dict[str, Any]]) -> list[str]:
    """Write rows to ``open_close/ticker=/date=/open_close.parquet`` (one file per ticker-day)."""
    if not rows:
        return []
    return lake.write_partitioned(TABLE, rows_to_table(rows), ["ticker", "date"], FILE_NAME)


def read_open_close(lake: Lake, ticker: str | None = None) -> pa.Table | None:
    """Read the open_close table (optionally one ticker), with ``ticker`` and ``date`` columns."""
    prefix = f"{TABLE}/ticker={ticker}" if ticker else TABLE
    names = ("date",) if ticker else ("ticker", "date")
    table = lake.read_table(prefix, names)
    if table is not None and ticker:
        table = table.append_column("ticker", pa.array([ticker] * table.num_rows, pa.string()))
    return table
