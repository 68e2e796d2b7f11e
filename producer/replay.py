"""The replay source: bars from the lake or from a Parquet/CSV file, played as a live stream.

Bars are emitted in start order (ties by ticker), so every ticker's bars stay in order.
With ``speed`` 1 a bar is sent when as much wall time has passed since the first bar as
market time has (measured at bar ends); 60 plays an hour a minute; None (``max``) sends
as fast as Kafka takes them. The lake's bars table is read one ``period`` partition at a
time (a day of minute bars, a year of daily bars), so a long replay does not load the
whole range.

Files: Parquet or CSV with a ``ticker`` column (or ``symbol``/``sym``), a start time
(``start``, ``timestamp``, ``time``, ``datetime``, or Polygon's ``t`` in epoch ms), the
OHLCV columns (``open``... or ``o``, ``h``, ``l``, ``c``, ``v``), and optionally ``end``,
``interval``, ``vwap``/``vw``, ``trades``/``n``, ``source``. Naive times are taken as UTC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from producer.encode import bar_json, plausible_ticker, prefix, times, valid_mask
from producer.metrics import get_metrics
from producer.sink import BarPublisher
from tickcast.contracts import INTERVALS, Bar
from tickcast.errors import SourceError
from tickcast.lake import BARS, Lake, bar_periods, period_bounds, scan_bars
from tickcast.lake.tables import table_version
from tickcast.settings import KafkaSettings

log = logging.getLogger(__name__)

SOURCE = "replay"

_ALIASES = {
    "ticker": ("ticker", "symbol", "sym"),
    "start": ("start", "timestamp", "time", "datetime", "date", "t"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "v"),
    "vwap": ("vwap", "vw"),
    "trades": ("trades", "n"),
}
_TS = pa.timestamp("us", tz="UTC")


def parse_speed(text: str | float | None) -> float | None:
    """``"max"`` (or None) -> None; ``"60"``/``"60x"`` -> 60.0."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text)
    value = text.strip().lower()
    if value in ("max", "inf", "0", ""):
        return None
    value = value.removesuffix("x")
    speed = float(value)
    if speed <= 0:
        raise ValueError(f"speed {text!r} must be positive or max")
    return speed


def _to_timestamp(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return pc.cast(column, _TS)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        # epoch numbers: Polygon's t is milliseconds
        return pc.cast(pc.multiply(pc.cast(column, pa.int64()), 1000), pa.int64()).cast(_TS)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        import pandas as pd

        parsed = pd.to_datetime(column.to_pandas(), utc=True, format="ISO8601")
        return pa.chunked_array([pa.array(parsed, type=_TS)])
    if pa.types.is_date(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("s")), _TS)
    raise SourceError(f"column {name} has type {column.type}, not a time", "use ISO-8601 text, a timestamp or epoch ms")


def normalize(table: pa.Table, interval: str | None = None, where: str = "input") -> pa.Table:
    """A bars table with the canonical columns (see the module docstring), sorted by start, ticker."""
    names = {n.lower(): n for n in table.column_names}
    out: dict[str, Any] = {}
    for canonical, aliases in _ALIASES.items():
        found = next((names[a] for a in aliases if a in names), None)
        if found is None:
            if canonical in ("vwap", "trades"):
                continue
            raise SourceError(
                f"{where} has no {canonical} column (looked for {', '.join(aliases)})",
                "provide bars with ticker, start, open, high, low, close and volume columns",
            )
        out[canonical] = table[found]
    out["start"] = _to_timestamp(out["start"], "start")
    if "end" in names:
        out["end"] = _to_timestamp(table[names["end"]], "end")
    if "interval" in names:
        out["interval"] = pc.cast(table[names["interval"]], pa.string())
    elif interval is not None:
        out["interval"] = pa.chunked_array([pa.array([interval] * table.num_rows, pa.string())])
    else:
        raise SourceError(f"{where} has no interval column", "pass --interval")
    if "end" not in out:
        intervals = out["interval"].to_pylist()
        starts = out["start"].to_pylist()
        out["end"] = pa.chunked_array(
            [pa.array([s + INTERVALS[i] for s, i in zip(starts, intervals, strict=True)], _TS)]
        )
    for name in ("open", "high", "low", "close", "volume", "vwap"):
        if name in out:
            out[name] = pc.cast(out[name], pa.float64())
    if "trades" in out:
        out["trades"] = pc.cast(out["trades"], pa.int64())
    out["ticker"] = pc.cast(out["ticker"], pa.string())
    if "source" in names:
        out["source"] = pc.cast(table[names["source"]], pa.string())
    result = pa.table(out)
    return result.sort_by([("start", "ascending"), ("ticker", "ascending")])


def read_bars_file(path: str | Path, interval: str | None = None) -> pa.Table:
    """Read a Parquet or CSV file of bars into the canonical table."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"replay file {path} does not exist", "pass an existing Parquet or CSV file with --file")
    suffix = "".join(path.suffixes).lower()
    if suffix.endswith((".csv", ".csv.gz")):
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    return normalize(table, interval, where=str(path))


def file_batches(
    path: str | Path,
    interval: str | None,
    tickers: Iterable[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> Iterator[pa.Table]:
    """The file's bars (filtered) as one sorted table."""
    table = read_bars_file(path, interval)
    yield _filter(table, interval if "interval" not in table.column_names else None, tickers, start, end)


def _filter(
    table: pa.Table, interval: str | None, tickers: Iterable[str], start: datetime | None, end: datetime | None
) -> pa.Table:
    mask = None

    def both(a: Any, b: Any) -> Any:
        return b if a is None else pc.and_(a, b)

    wanted = list(tickers)
    if wanted:
        mask = both(mask, pc.is_in(table["ticker"], pa.array(wanted, pa.string())))
    if interval is not None:
        mask = both(mask, pc.equal(table["interval"], interval))
    if start is not None:
        mask = both(mask, pc.greater_equal(table["start"], pa.scalar(start, _TS)))
    if end is not None:
        mask = both(mask, pc.less(table["start"], pa.scalar(end, _TS)))
    return table if mask is None else table.filter(mask)


def lake_batches(
    lake: Lake, interval: str, tickers: Iterable[str] = (), start: datetime | None = None, end: datetime | None = None
) -> Iterator[pa.Table]:
    """The lake's bars one ``period`` partition at a time (a day of minute or second bars, a
    year of hourly or daily bars), each sorted by start, ticker.

    Every read is of the table version current when the replay starts, so bars the sink
    commits meanwhile (the replay's own, looping back through Kafka) do not shift it.
    """
    names = list(tickers)
    version = table_version(lake, BARS)
    found = [] if version is None else bar_periods(lake, interval, as_of=version)
    if not found:
        raise SourceError(
            f"the lake at {lake.url} has no {interval} bars to replay",
            "load bars first (a polygon-rest backfill, or the bundled sample), or replay a file with --file",
        )
    for period in found:
        first, last = period_bounds(interval, period)
        first, last = max(first, start or first), min(last, end or last)
        if first >= last:
            continue  # the period is outside [start, end)
        table = scan_bars(lake, interval, names, first, last, as_of=version)
        if table.num_rows:
            yield normalize(table, interval, where=f"lake {interval} bars of {period}")


@dataclass
class ReplayResult:
    """What a replay did."""

    bars: int = 0
    rejected: int = 0
    first_start: datetime | None = None
    last_start: datetime | None = None


class Replay:
    """Plays sorted bar tables into Kafka at a speed factor.

    Args:
        publisher: where bars go.
        speed: market seconds per wall second (1, 60, ...); None for as fast as possible.
        stop: a StopFlag-like object.
        source: the ``source`` written into bars that have none.
    """

    def __init__(
        self, publisher: BarPublisher, speed: float | None = None, stop: Any = None, source: str = SOURCE
    ) -> None:
        self.publisher = publisher
        self.speed = speed
        self.stop = stop
        self.source = source
        self.metrics = get_metrics().source(source)
        self._t0_market: float | None = None
        self._t0_wall = 0.0
        self._paced = True

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _pace(self, market_ts: float) -> bool:
        """Wait until ``market_ts`` is due; returns whether to stop."""
        if self.speed is None or not self._paced:
            return self._stopping()
        if self._t0_market is None:
            self._t0_market, self._t0_wall = market_ts, time.monotonic()
            return self._stopping()
        due = self._t0_wall + (market_ts - self._t0_market) / self.speed
        while True:
            wait = due - time.monotonic()
            if wait <= 0:
                return self._stopping()
            if self.stop is not None:
                if self.stop.wait(min(wait, 0.5)):
                    return True
            else:
                time.sleep(min(wait, 0.5))

    def run(
        self, batches: Iterable[pa.Table], max_bars: int | None = None, duration: float | None = None
    ) -> ReplayResult:
        """Replay every table in order; stop early at ``max_bars`` or after ``duration`` seconds."""
        result = ReplayResult()
        deadline = None if duration is None else time.monotonic() + duration
        for table in batches:
            if table.num_rows == 0:
                continue
            if self._play(table, result, max_bars, deadline):
                break
        self.publisher.flush()
        return result

    def _play(self, table: pa.Table, result: ReplayResult, max_bars: int | None, deadline: float | None) -> bool:
        # a table marked by resumable_batches as catch-up is played as fast as possible
        self._paced = (table.schema.metadata or {}).get(b"tickcast.pace") != b"off"
        ok = valid_mask(table).to_pylist()
        tickers = table["ticker"].to_pylist()
        intervals = table["interval"].to_pylist()
        starts = table["start"].to_pylist()
        ends = table["end"].to_pylist()
        cols = {n: table[n].to_pylist() for n in ("open", "high", "low", "close", "volume")}
        vwaps = table["vwap"].to_pylist() if "vwap" in table.column_names else [None] * table.num_rows
        trades = table["trades"].to_pylist() if "trades" in table.column_names else [None] * table.num_rows
        sources = table["source"].to_pylist() if "source" in table.column_names else None
        heads: dict[tuple[str, str], str] = {}
        middles: dict[tuple[datetime, datetime], str] = {}
        current_end: datetime | None = None
        sent = rejected = 0
        for i in range(table.num_rows):
            if ends[i] != current_end:
                current_end = ends[i]
                self.metrics.bars_in.inc(sent + rejected)
                result.bars += sent
                result.rejected += rejected
                sent = rejected = 0
                if self._pace(current_end.timestamp()):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return True
            if max_bars is not None and result.bars + sent >= max_bars:
                result.bars += sent
                self.metrics.bars_in.inc(sent + rejected)
                result.rejected += rejected
                return True
            ticker, interval = tickers[i], intervals[i]
            source = (sources[i] if sources else None) or self.source
            if ok[i] and plausible_ticker(ticker) and interval in INTERVALS and '"' not in source:
                head = heads.get((ticker, interval))
                if head is None:
                    head = heads[(ticker, interval)] = prefix(ticker, interval)
                key = (starts[i], ends[i])
                middle = middles.get(key)
                if middle is None:
                    if len(middles) > 4096:
                        middles.clear()
                    middle = middles[key] = times(starts[i], ends[i])
                value = bar_json(
                    head,
                    middle,
                    cols["open"][i],
                    cols["high"][i],
                    cols["low"][i],
                    cols["close"][i],
                    cols["volume"][i],
                    vwaps[i],
                    trades[i],
                    source,
                )
                self.publisher.send_encoded(ticker, value, ends[i].timestamp())
                sent += 1
            else:
                bar = Bar(
                    ticker,
                    interval,
                    starts[i],
                    ends[i],
                    cols["open"][i],
                    cols["high"][i],
                    cols["low"][i],
                    cols["close"][i],
                    cols["volume"][i],
                    vwaps[i],
                    trades[i],
                    source,
                )
                if self.publisher.publish(bar):
                    sent += 1
                else:
                    rejected += 1
            if result.first_start is None:
                result.first_start = starts[i]
            result.last_start = starts[i]
        self.metrics.bars_in.inc(sent + rejected)
        result.bars += sent
        result.rejected += rejected
        return False


def resumable_batches(
    kafka: KafkaSettings, batches: Iterable[pa.Table], resume: bool, live_tail: int | None
) -> Iterator[pa.Table]:
    """Wrap replay batches for the platform: resume after what the topic holds, pace only the tail.

    ``resume``: per ticker, bars whose start is not after the newest bar of the same ticker,
    interval and source already in the bars topic are skipped. The idempotent producer keeps
    each partition gap-free and ordered, so everything before that bar is in the topic too:
    a replay stopped at any point and started again continues without gaps or duplicates.

    ``live_tail``: every table is split at the N-th last distinct bar end; the part before it
    is yielded with ``pace=False`` metadata (played as fast as possible), the rest paced.
    """
    table = pa.concat_tables([t for t in batches if t.num_rows])
    if table.num_rows == 0:
        return
    if resume:
        table = _after_topic(kafka, table)
    if live_tail and table.num_rows:
        ends = pc.unique(table["end"]).sort()
        cut = ends[max(0, len(ends) - live_tail)] if len(ends) else None
        if cut is not None:
            fast = table.filter(pc.less(table["end"], cut))
            if fast.num_rows:
                yield fast.replace_schema_metadata({b"tickcast.pace": b"off"})
            table = table.filter(pc.greater_equal(table["end"], cut))
    if table.num_rows:
        yield table


def _after_topic(kafka: KafkaSettings, table: pa.Table) -> pa.Table:
    from producer.checkpoint import TopicTail

    tickers = set(pc.unique(table["ticker"]).to_pylist())
    intervals = pc.unique(table["interval"]).to_pylist()
    sources = pc.unique(table["source"]).to_pylist() if "source" in table.column_names else [SOURCE]
    tail = TopicTail(kafka, kafka.topic_bars)
    try:
        newest: dict[str, int] = {}
        for interval in intervals:
            for source in sources:
                found = tail.newest_bars({}, tickers, interval, source or SOURCE, 0, 2**62)
                for ticker, ms in found.items():
                    newest[ticker] = max(newest.get(ticker, ms), ms)
    finally:
        tail.close()
    if not newest:
        return table
    log.info("resuming replay after the topic's newest bars: %s", newest)
    starts_ms = pc.cast(pc.cast(table["start"], pa.timestamp("ms", tz="UTC")), pa.int64())
    keep = pc.invert(pc.is_in(table["ticker"], pa.array(list(newest), pa.string())))
    for ticker, ms in newest.items():
        keep = pc.or_(keep, pc.and_(pc.equal(table["ticker"], ticker), pc.greater(starts_ms, ms)))
    return table.filter(keep)
