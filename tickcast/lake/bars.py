"""The bars table: conversions, the exactly-once writer, and the readers every service uses.

One row per bar key ``(ticker, interval, start)``, the latest revision winning. The writer
keeps that true in the table itself, cheaply: a bar newer than everything the table holds
for its ticker and interval (nearly every live bar) is *appended*; only a batch holding a
bar at or before that high-water mark (a backfill re-run, a WebSocket/REST gap-fill
overlap, a corrected bar) is *merged* on the key, which replaces the old revision.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tickcast.contracts import Bar
from tickcast.lake import tables
from tickcast.lake.specs import BAR_COLUMNS, BAR_SCHEMA, BARS, TIMESTAMP, period_bounds, period_column, period_of
from tickcast.lake.tables import AsOf

if TYPE_CHECKING:
    from tickcast.lake.store import Lake

log = logging.getLogger(__name__)


# -- conversions ------------------------------------------------------------------------------


def bars_to_table(bars: Sequence[Bar], ingested_at: datetime | None = None) -> pa.Table:
    """Bars as rows of the bars table (``period`` derived, ``ingested_at`` now by default)."""
    columns: dict[str, list[Any]] = {name: [] for name in BAR_COLUMNS}
    for bar in bars:
        for name in BAR_COLUMNS:
            columns[name].append(getattr(bar, name))
    stamp = ingested_at or datetime.now(UTC)
    table = pa.table(columns, schema=BAR_SCHEMA)
    table = table.append_column("ingested_at", pa.array([stamp] * table.num_rows, TIMESTAMP))
    return with_period(table)


def with_period(table: pa.Table) -> pa.Table:
    """``table`` (bar columns) with its ``period`` partition column (re)computed."""
    if "period" in table.column_names:
        table = table.drop_columns(["period"])
    return table.append_column("period", period_column(table["interval"], table["start"]))


def table_to_bars(table: pa.Table) -> list[Bar]:
    """Rows of the bars table back into :class:`Bar` objects."""
    return [
        Bar(
            ticker=row["ticker"],
            interval=row["interval"],
            start=row["start"],
            end=row["end"],
            open=row["open"],
            high=row["high"],
            low=row["low"],
            close=row["close"],
            volume=row["volume"],
            vwap=row.get("vwap"),
            trades=row.get("trades"),
            source=row.get("source") or "lake",
        )
        for row in table.to_pylist()
    ]


# -- writing ----------------------------------------------------------------------------------


@dataclass(slots=True)
class BarWriteResult:
    """What one :meth:`BarWriter.write` did."""

    version: int
    rows: int
    merged: bool
    partitions: list[tuple[str, ...]]


class BarWriter:
    """Writes bars with their Kafka positions, each key once (see the module docstring).

    Not thread-safe; one per sink. The high-water marks are read from the table on first
    use and after :meth:`reload` (call it when partitions are reassigned: another sink may
    have written this ticker meanwhile).
    """

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._high: dict[tuple[str, str], int] | None = None

    def reload(self) -> None:
        """Forget the high-water marks; they are read again from the table on the next write."""
        self._high = None

    def _load(self) -> dict[tuple[str, str], int]:
        if self._high is None:
            table = tables.scan(self.lake, BARS, columns=["interval", "ticker", "start"], unique=False)
            high: dict[tuple[str, str], int] = {}
            if table.num_rows:
                grouped = table.group_by(["interval", "ticker"], use_threads=False).aggregate([("start", "max")])
                for interval, ticker, start in zip(
                    grouped["interval"].to_pylist(),
                    grouped["ticker"].to_pylist(),
                    grouped["start_max"].cast(pa.int64()).to_pylist(),
                    strict=True,
                ):
                    high[(interval, ticker)] = start
            self._high = high
        return self._high

    def write(
        self,
        data: pa.Table,
        txns: Sequence[tuple[str, int]] = (),
        firsts: dict[str, int] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BarWriteResult:
        """Write bar rows (bar columns plus ``ingested_at``) and their Kafka positions in one commit.

        Raises:
            tickcast.lake.tables.AlreadyCommitted: the table already holds these positions.
            StoreUnavailable: the store failed; nothing was committed.
        """
        if "period" not in data.column_names:
            data = with_period(data)
        high = self._load()
        # per (interval, ticker) of the batch, vectorised (a Python loop per row cost the sink ~10 %):
        # its first and last start, and whether a start repeats within the batch
        grouped = data.group_by(["interval", "ticker"], use_threads=False).aggregate(
            [("start", "min"), ("start", "max"), ("start", "count"), ("start", "count_distinct")]
        )
        overlap = bool(pc.any(pc.not_equal(grouped["start_count"], grouped["start_count_distinct"])).as_py())
        spans = list(
            zip(
                zip(grouped["interval"].to_pylist(), grouped["ticker"].to_pylist(), strict=True),
                grouped["start_min"].cast(pa.int64()).to_pylist(),
                grouped["start_max"].cast(pa.int64()).to_pylist(),
                strict=True,
            )
        )
        overlap = overlap or any(key in high and first <= high[key] for key, first, _ in spans)
        if overlap:
            version = tables.upsert(self.lake, BARS, data, txns=txns, firsts=firsts, metadata=metadata)
        else:
            version = tables.append(self.lake, BARS, data, txns=txns, firsts=firsts, metadata=metadata)
        for key, _, last in spans:
            if last > high.get(key, -(2**63)):
                high[key] = last
        periods = data.group_by(["interval", "period"], use_threads=False).aggregate([])
        touched: list[tuple[str, ...]] = sorted(
            zip(periods["interval"].to_pylist(), periods["period"].to_pylist(), strict=True)
        )
        return BarWriteResult(version, data.num_rows, overlap, touched)


def write_bars(lake: Lake, bars: Iterable[Bar] | pa.Table, ingested_at: datetime | None = None) -> int:
    """Write bars (objects or rows) outside a sink: one upsert commit. Returns the table version."""
    table = bars if isinstance(bars, pa.Table) else bars_to_table(list(bars), ingested_at)
    if "ingested_at" not in table.column_names:
        stamp = ingested_at or datetime.now(UTC)
        table = table.append_column("ingested_at", pa.array([stamp] * table.num_rows, TIMESTAMP))
    return tables.upsert(lake, BARS, with_period(table))


# -- reading ----------------------------------------------------------------------------------


def _ticker_files(interval: str, ticker: str | None) -> list[tuple[str, str, Any]]:
    files: list[tuple[str, str, Any]] = [("interval", "=", interval)]
    if ticker is not None:
        files.append(("ticker", "=", ticker))
    return files


def read_bars(
    lake: Lake,
    ticker: str,
    interval: str = "minute",
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """Bars of one ticker with ``start <= bar.start < end``, sorted by start, each once.

    Only partitions overlapping the range and files whose statistics may hold the ticker
    are read.
    """
    files = _ticker_files(interval, ticker)
    where = (ds.field("interval") == interval) & (ds.field("ticker") == ticker)
    if start is not None:
        start = start.astimezone(UTC)
        files.append(("period", ">=", period_of(interval, start)))
        where = where & (ds.field("start") >= pa.scalar(start, TIMESTAMP))
    if end is not None:
        end = end.astimezone(UTC)
        files.append(("period", "<=", period_of(interval, end - timedelta(microseconds=1))))
        where = where & (ds.field("start") < pa.scalar(end, TIMESTAMP))
    wanted = list(dict.fromkeys([*(columns or BAR_COLUMNS), "start"]))
    table = tables.scan(lake, BARS, where=where, files=files, columns=wanted, as_of=as_of)
    return table.sort_by("start")


def scan_bars(
    lake: Lake,
    interval: str,
    tickers: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """Bars of several tickers (all when empty) with ``start <= bar.start < end``, each once,
    sorted by ticker then start (``ticker`` and ``start`` are always among the columns): one
    scan of one table version, cheaper for many tickers than a :func:`read_bars` per ticker.

    Only partitions overlapping the range and files whose statistics may hold the tickers are read.
    """
    files: list[tuple[str, str, Any]] = [("interval", "=", interval)]
    where = ds.field("interval") == interval
    if tickers:
        files.append(("ticker", "in", list(tickers)))
        where = where & ds.field("ticker").isin(list(tickers))
    if start is not None:
        start = start.astimezone(UTC)
        files.append(("period", ">=", period_of(interval, start)))
        where = where & (ds.field("start") >= pa.scalar(start, TIMESTAMP))
    if end is not None:
        end = end.astimezone(UTC)
        files.append(("period", "<=", period_of(interval, end - timedelta(microseconds=1))))
        where = where & (ds.field("start") < pa.scalar(end, TIMESTAMP))
    wanted = list(dict.fromkeys([*(columns or BAR_COLUMNS), "ticker", "start"]))
    table = tables.scan(lake, BARS, where=where, files=files, columns=wanted, as_of=as_of)
    return table.sort_by([("ticker", "ascending"), ("start", "ascending")])


def bar_periods(lake: Lake, interval: str, ticker: str | None = None, as_of: AsOf = None) -> list[str]:
    """The ``period`` partitions (sorted) whose files may hold bars of a ticker (or any)."""
    table = tables.open_table(lake, BARS, as_of)
    if table is None:
        return []
    return _periods(tables.add_actions(table), interval, ticker)


def _periods(actions: pa.Table, interval: str, ticker: str | None) -> list[str]:
    """:func:`bar_periods` over a version's add actions."""
    if actions.num_rows == 0:
        return []
    mask = pc.equal(actions["partition.interval"], interval)
    if ticker is not None and "min.ticker" in actions.column_names:
        mask = pc.and_(
            mask,
            pc.and_(pc.less_equal(actions["min.ticker"], ticker), pc.greater_equal(actions["max.ticker"], ticker)),
        )
    return sorted(set(actions.filter(mask)["partition.period"].to_pylist()))


def recent_bars(
    lake: Lake,
    ticker: str,
    interval: str,
    n: int,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """A ticker's last ``n`` bars starting before ``end`` (all when None), oldest first.

    Reads the newest partitions first and stops as soon as it has ``n`` bars (one table
    version, its log replayed once).
    """
    wanted = list(dict.fromkeys([*(columns or BAR_COLUMNS), "start"]))
    table = tables.open_table(lake, BARS, as_of)
    if table is None:
        return tables.empty(BARS, wanted)
    actions = tables.add_actions(table)
    periods = _periods(actions, interval, ticker)
    if end is not None:
        last = period_of(interval, end.astimezone(UTC) - timedelta(microseconds=1))
        periods = [p for p in periods if p <= last]
    parts: list[pa.Table] = []
    have = 0
    where = (ds.field("interval") == interval) & (ds.field("ticker") == ticker)
    if end is not None:
        where = where & (ds.field("start") < pa.scalar(end.astimezone(UTC), TIMESTAMP))
    for period in reversed(periods):
        files = [*_ticker_files(interval, ticker), ("period", "=", period)]
        part = tables.read(lake, BARS, table, where=where, files=files, columns=wanted, actions=actions)
        if part.num_rows:
            parts.append(part)
            have += part.num_rows
        if have >= n:
            break
    if not parts:
        return tables.empty(BARS, wanted)
    rows = pa.concat_tables(list(reversed(parts))).sort_by("start")
    return rows.slice(max(0, rows.num_rows - n))


def latest_bars(
    lake: Lake,
    interval: str,
    tickers: Sequence[str],
    n: int,
    ends: Mapping[str, datetime] | None = None,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> dict[str, pa.Table]:
    """Per ticker, its last ``n`` bars starting before ``ends[ticker]`` (all when the ticker
    has no end), oldest first, each once; ``ticker`` and ``start`` are always among the columns.

    The many-ticker form of :func:`recent_bars` (a service's warm start): one table version,
    period partitions read newest first for all tickers at once, stopping once every ticker
    has ``n`` bars or no older partition may hold the others (per-file ticker statistics).
    Tickers without bars are absent from the result.
    """
    table = tables.open_table(lake, BARS, as_of)
    if table is None or not tickers or n < 1:
        return {}
    version = int(table.version())
    actions = tables.add_actions(table)
    if not actions.num_rows:
        return {}
    actions = actions.filter(pc.equal(actions["partition.interval"], interval))
    limits = {t: e.astimezone(UTC) for t, e in (ends or {}).items()}
    missing = set(tickers)
    periods = sorted(set(actions["partition.period"].to_pylist()), reverse=True)
    if missing <= limits.keys():
        last = period_of(interval, max(limits[t] for t in missing) - timedelta(microseconds=1))
        periods = [p for p in periods if p <= last]
    found: dict[str, int] = {}
    parts: list[pa.Table] = []
    for period in periods:
        if not _may_hold(actions, period, missing):
            continue
        start, end = period_bounds(interval, period)
        # a long ticker list costs more as a file filter than the rows it would skip
        names = sorted(missing) if len(missing) <= 256 else ()
        part = scan_bars(lake, interval, names, start, end, columns, as_of=version)
        if not names:
            part = part.filter(pc.is_in(part["ticker"], value_set=pa.array(sorted(missing), pa.string())))
        part = _before(part, limits)
        if part.num_rows:
            parts.append(part)
            counts = part.group_by("ticker", use_threads=False).aggregate([("start", "count")])
            for ticker, count in zip(counts["ticker"].to_pylist(), counts["start_count"].to_pylist(), strict=True):
                found[ticker] = found.get(ticker, 0) + count
                if found[ticker] >= n:
                    missing.discard(ticker)
        if not missing:
            break
    if not parts:
        return {}
    rows = pa.concat_tables(parts).sort_by([("ticker", "ascending"), ("start", "ascending")])
    return tail_by_ticker(rows, n)


def _may_hold(actions: pa.Table, period: str, tickers: set[str]) -> bool:
    """Whether a file of ``period`` may hold one of ``tickers`` (by its ticker statistics)."""
    files = actions.filter(pc.equal(actions["partition.period"], period))
    if "min.ticker" not in files.column_names:
        return files.num_rows > 0
    names = sorted(tickers)
    for low, high in zip(files["min.ticker"].to_pylist(), files["max.ticker"].to_pylist(), strict=True):
        if low is None or high is None:
            return True
        i = bisect.bisect_left(names, low)
        if i < len(names) and names[i] <= high:
            return True
    return False


def _before(table: pa.Table, limits: Mapping[str, datetime]) -> pa.Table:
    """Rows whose ``start`` is before their ticker's limit (rows of tickers without one are kept)."""
    if not limits or not table.num_rows:
        return table
    keys = pa.array(list(limits), pa.string())
    ends = pa.array(list(limits.values()), TIMESTAMP)
    limit = pc.take(ends, pc.index_in(table["ticker"], value_set=keys))
    return table.filter(pc.fill_null(pc.less(table["start"], limit), True))


def tail_by_ticker(table: pa.Table, n: int) -> dict[str, pa.Table]:
    """Split rows sorted by ticker (then time) into per-ticker tables of their last ``n`` rows."""
    out: dict[str, pa.Table] = {}
    if not table.num_rows:
        return out
    tickers = table["ticker"].to_pylist()
    first = 0
    for i in range(1, len(tickers) + 1):
        if i == len(tickers) or tickers[i] != tickers[first]:
            out[tickers[first]] = table.slice(max(first, i - n), min(n, i - first))
            first = i
    return out


def bar_tickers(lake: Lake, interval: str = "minute", as_of: AsOf = None) -> list[str]:
    """Tickers with bars of this interval, sorted."""
    table = tables.scan(lake, BARS, files=[("interval", "=", interval)], columns=["ticker"], as_of=as_of, unique=False)
    return sorted(pc.unique(table["ticker"]).to_pylist()) if table.num_rows else []


def bar_intervals(lake: Lake, as_of: AsOf = None) -> list[str]:
    """Intervals with bars in the lake."""
    table = tables.open_table(lake, BARS, as_of)
    if table is None:
        return []
    actions = tables.add_actions(table)
    return sorted(set(actions["partition.interval"].to_pylist())) if actions.num_rows else []


def bar_days(lake: Lake, interval: str, tickers: Sequence[str] = (), as_of: AsOf = None) -> list[str]:
    """The UTC dates (ISO strings, sorted) on which these tickers (or any) have bars."""
    where = ds.field("interval") == interval
    if tickers:
        where = where & ds.field("ticker").isin(list(tickers))
    table = tables.scan(
        lake, BARS, where=where, files=[("interval", "=", interval)], columns=["start"], as_of=as_of, unique=False
    )
    if not table.num_rows:
        return []
    return sorted(pc.unique(pc.strftime(table["start"], format="%Y-%m-%d")).to_pylist())
