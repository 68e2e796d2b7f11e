"""Daily open/close summaries (``/v1/open-close/{T}/{date}``): the session's OHLCV plus the
pre-market and after-hours prices, for analysing moves outside regular hours.

They go to the Kafka topic ``kafka.topic_open_close`` (key = ticker, JSON value with a
``schema_version``) and, written by the producer itself, to the lake's ``open_close`` Delta
table (:data:`tickcast.lake.OPEN_CLOSE`: one row per ticker and date, partitioned by year).

The producer writes the table directly because the summaries are few (one per ticker and
day) and the consumer sinks only ``bars``. Writes are a MERGE on (ticker, date), so a
re-run replaces a day instead of duplicating it.
"""

from __future__ import annotations

import json
import math
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from tickcast.contracts import SCHEMA_VERSION, TICKER_RE, now_utc, to_iso
from tickcast.errors import InvalidBar, InvalidRecord
from tickcast.lake import OPEN_CLOSE, AsOf, Lake, tables


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
    """Rows (from :func:`parse_open_close`) as rows of the ``open_close`` table (``period`` = the year)."""
    names = OPEN_CLOSE.schema.names
    data = [{**{k: r.get(k) for k in names}, "period": r["date"][:4]} for r in rows]
    return pa.Table.from_pylist(data, schema=OPEN_CLOSE.schema)


def write_open_close(lake: Lake, rows: list[dict[str, Any]]) -> int | None:
    """Upsert rows into the ``open_close`` table in one commit; returns the table version (None: no rows)."""
    if not rows:
        return None
    return tables.upsert(lake, OPEN_CLOSE, rows_to_table(rows))


def read_open_close(lake: Lake, ticker: str | None = None, as_of: AsOf = None) -> pa.Table:
    """The ``open_close`` rows (of one ticker, or all), each (ticker, date) once, sorted by ticker and date."""
    where = None if ticker is None else ds.field("ticker") == ticker
    files = None if ticker is None else [("ticker", "=", ticker)]
    table = tables.scan(lake, OPEN_CLOSE, where=where, files=files, as_of=as_of)
    return table.drop_columns(["period"]).sort_by([("ticker", "ascending"), ("date", "ascending")])
