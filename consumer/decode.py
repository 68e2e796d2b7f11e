"""Decode a poll's worth of Kafka record values into an Arrow table of bars, fast.

Decoding is the sink's hot path, so it works on whole batches: the values are joined
into one newline-delimited block and parsed by Arrow's C++ JSON reader into typed
columns, and the bar contract is checked with vectorized compute kernels.

The fast path only ever *accepts*. Every row it is not sure about — bad JSON, a
missing field, a number out of range, a timestamp not in the canonical ``...Z`` form,
anything odd — is handed to the slow path, which is exactly :meth:`Bar.from_json`
followed by ``validate()``. So the sink accepts and rejects precisely what the
contract accepts and rejects, with the contract's own reason, and the fast path
cannot make that differ: it is conservative by construction and the unit tests
compare both paths on random and hostile inputs.

Why the block parse maps rows to records safely: only values that start with ``{``,
end with ``}`` and contain no newline enter the block, so each line holds one value and
every value yields at least one row (or a parse error). If the row count equals the
value count, each value yielded exactly one row, in order; otherwise the block is split
in halves until the offending values are isolated and sent to the slow path.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tickcast.contracts import INTERVALS, SCHEMA_VERSION, Bar
from tickcast.errors import TickcastError
from tickcast.lake import BAR_SCHEMA

#: Provenance columns: where the row came from in Kafka (the buffer cuts batches by offset).
PARTITION_COLUMN: Final = "_partition"
OFFSET_COLUMN: Final = "_offset"
#: When the bar entered the platform: its Kafka record timestamp (the bars table's revision).
INGESTED_COLUMN: Final = "ingested_at"

#: What the decoder produces: the bar columns of the lake, the ingestion time and provenance.
SINK_SCHEMA: Final = pa.schema(
    [
        *BAR_SCHEMA,
        pa.field(INGESTED_COLUMN, pa.timestamp("us", tz="UTC")),
        pa.field(PARTITION_COLUMN, pa.int32()),
        pa.field(OFFSET_COLUMN, pa.int64()),
    ]
)

# The wire fields as Arrow parses them; a value of another JSON type fails the block,
# which sends the record to the exact slow path.
_WIRE_SCHEMA: Final = pa.schema(
    [
        ("schema_version", pa.int64()),
        ("ticker", pa.string()),
        ("interval", pa.string()),
        ("start", pa.string()),
        ("end", pa.string()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("vwap", pa.float64()),
        ("trades", pa.int64()),
        ("source", pa.string()),
    ]
)
_PARSE: Final = pj.ParseOptions(explicit_schema=_WIRE_SCHEMA, unexpected_field_behavior="ignore")
_READ: Final = pj.ReadOptions(use_threads=True, block_size=1 << 22)

# RE2 (Arrow) patterns. The ticker pattern is the contract's; RE2's "$" only matches at
# the very end, like the contract's "\Z". Timestamps: only the canonical wire form that
# Bar.to_json writes (and the "+00:00" spelling); every other ISO form Python accepts
# goes to the slow path, which parses it exactly as the contract does.
_TICKER_RE2: Final = r"^[A-Z][A-Z0-9.\-]{0,11}$"
_TS_RE2: Final = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|\+00:00)$"
_TS_TYPE: Final = pa.timestamp("us", tz="UTC")
_INTERVAL_SET: Final = pa.array(list(INTERVALS), pa.string())
_SMALLEST_BLOCK: Final = 8
_INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that is not a valid bar: it goes to the DLQ with ``reason``."""

    index: int
    offset: int
    reason: str
    error: str


@dataclass(slots=True)
class Decoded:
    """The valid bars of a batch as a :data:`SINK_SCHEMA` table in offset order, and the rejects."""

    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)


def _eligible(value: bytes | None) -> bool:
    return value is not None and value[:1] == b"{" and value[-1:] == b"}" and b"\n" not in value


def _parse_block(values: Sequence[bytes]) -> pa.Table | None:
    """One Arrow parse of the values; None when the block is not one clean row per value."""
    block = b"\n".join(values)
    try:
        # Arrow's reader does not check UTF-8 (not even in ignored fields); Python's json does.
        block.decode("utf-8")
        table = pj.read_json(io.BytesIO(block), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowException, ValueError):
        return None
    return table if table.num_rows == len(values) else None


def _parse(values: Sequence[bytes], positions: Sequence[int], out: list[tuple[list[int], pa.Table]]) -> list[int]:
    """Parse ``values`` in as few blocks as possible; returns the positions left to the slow path."""
    table = _parse_block(values)
    if table is not None:
        out.append((list(positions), table))
        return []
    if len(values) <= _SMALLEST_BLOCK:
        return list(positions)
    mid = len(values) // 2
    return _parse(values[:mid], positions[:mid], out) + _parse(values[mid:], positions[mid:], out)


def _and(*conditions: pa.ChunkedArray | pa.Array) -> pa.Array:
    result = conditions[0]
    for cond in conditions[1:]:
        result = pc.and_kleene(result, cond)
    return pc.fill_null(result, False)


def _contract_mask(t: pa.Table) -> pa.ChunkedArray:
    """Rows that certainly pass :meth:`Bar.validate` (nulls count as failures)."""
    o, h, lo, c, v = (t[name] for name in ("open", "high", "low", "close", "volume"))
    vwap, trades = t["vwap"], t["trades"]
    return _and(
        pc.equal(t["schema_version"], SCHEMA_VERSION),
        pc.match_substring_regex(t["ticker"], _TICKER_RE2),
        pc.is_in(t["interval"], value_set=_INTERVAL_SET),
        pc.match_substring_regex(t["start"], _TS_RE2),
        pc.match_substring_regex(t["end"], _TS_RE2),
        *(pc.is_finite(x) for x in (o, h, lo, c, v)),
        pc.greater(lo, 0.0),
        pc.less_equal(lo, o),
        pc.less_equal(o, h),
        pc.less_equal(lo, c),
        pc.less_equal(c, h),
        pc.greater_equal(v, 0.0),
        pc.or_kleene(pc.is_null(vwap), pc.and_kleene(pc.is_finite(vwap), pc.greater(vwap, 0.0))),
        pc.or_kleene(pc.is_null(trades), pc.greater_equal(trades, 0)),
        pc.is_valid(t["source"]),
    )


def _cast_times(strings: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[int]]:
    """Cast canonical ISO strings to timestamps; rows Arrow cannot parse (2024-02-30) are listed."""
    try:
        return strings.cast(_TS_TYPE), []
    except pa.ArrowException:
        bad = []
        values = []
        for i, text in enumerate(strings.to_pylist()):
            try:
                values.append(pa.scalar(text).cast(_TS_TYPE))
            except pa.ArrowException:
                bad.append(i)
                values.append(pa.scalar(None, _TS_TYPE))
        return pa.chunked_array([pa.array([x.as_py() for x in values], _TS_TYPE)]), bad


def _fast_rows(t: pa.Table, positions: list[int]) -> tuple[pa.Table, list[int], list[int]]:
    """Validate a parsed block; returns (good rows as wire columns + times, their positions, the rest)."""
    mask = _contract_mask(t)
    good = t.filter(mask)
    mask_list = mask.to_pylist()
    good_pos = [p for p, ok in zip(positions, mask_list, strict=True) if ok]
    rest = [p for p, ok in zip(positions, mask_list, strict=True) if not ok]
    if good.num_rows == 0:
        return good, good_pos, rest
    start, bad_start = _cast_times(good["start"])
    end, bad_end = _cast_times(good["end"])
    keep = pc.fill_null(pc.greater(end, start), False)  # a null marks a bad cast
    if bad_start or bad_end or not pc.all(keep).as_py():
        keep_list = keep.to_pylist()
        rest += [p for p, ok in zip(good_pos, keep_list, strict=True) if not ok]
        good_pos = [p for p, ok in zip(good_pos, keep_list, strict=True) if ok]
        good, start, end = good.filter(keep), start.filter(keep), end.filter(keep)
    good = good.set_column(good.schema.get_field_index("start"), "start", start)
    good = good.set_column(good.schema.get_field_index("end"), "end", end)
    return good, good_pos, rest


def _slow(value: bytes | None) -> Bar | tuple[str, str]:
    """Exactly the contract: a valid Bar, or (reason, error) for the DLQ. Never raises."""
    if value is None:
        return "record has no value", "invalid record: record has no value (a tombstone?)"
    try:
        bar = Bar.from_json(value)
    except TickcastError as exc:
        return getattr(exc, "reason", exc.message), exc.one_line()
    except Exception as exc:  # the contract raises a few non-Tickcast errors on hostile input
        return f"unexpected value: {type(exc).__name__}: {exc}"[:500], repr(exc)[:1000]
    # Storage rules beyond the contract: the lake stores source as UTF-8 text and trades as int64.
    if bar.source is not None and not isinstance(bar.source, str):
        return f"source is {type(bar.source).__name__}, not text", "invalid bar: source must be a string"
    if isinstance(bar.source, str):
        try:
            bar.source.encode("utf-8")
        except UnicodeEncodeError:
            return "source is not valid Unicode text", "invalid bar: source has unpaired surrogates"
    if bar.trades is not None and bar.trades > _INT64_MAX:
        return f"trades is {bar.trades}, beyond int64", "invalid bar: trades too large to store"
    return bar


def _ingested(timestamps_ms: Sequence[int]) -> pa.Array:
    return pa.array(np.asarray(timestamps_ms, dtype=np.int64) * 1000, pa.int64()).cast(_TS_TYPE)


def _slow_table(bars: list[Bar], offsets: list[int], timestamps: list[int], partition: int) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in SINK_SCHEMA.names}
    for bar, offset in zip(bars, offsets, strict=True):
        columns["ticker"].append(bar.ticker)
        columns["interval"].append(bar.interval)
        columns["start"].append(bar.start)
        columns["end"].append(bar.end)
        columns["open"].append(float(bar.open))
        columns["high"].append(float(bar.high))
        columns["low"].append(float(bar.low))
        columns["close"].append(float(bar.close))
        columns["volume"].append(float(bar.volume))
        columns["vwap"].append(None if bar.vwap is None else float(bar.vwap))
        columns["trades"].append(bar.trades)
        columns["source"].append(bar.source)
        columns[INGESTED_COLUMN].append(None)
        columns[PARTITION_COLUMN].append(partition)
        columns[OFFSET_COLUMN].append(offset)
    table = pa.Table.from_pydict(columns, schema=SINK_SCHEMA)
    return table.set_column(SINK_SCHEMA.get_field_index(INGESTED_COLUMN), INGESTED_COLUMN, _ingested(timestamps))


def _sink_table(good: pa.Table, offsets: pa.Array, timestamps: Sequence[int], partition: int) -> pa.Table:
    n = good.num_rows
    arrays = [good[name] for name in BAR_SCHEMA.names]
    arrays += [_ingested(timestamps), pa.array(np.full(n, partition, dtype=np.int32)), offsets]
    return pa.Table.from_arrays(arrays, schema=SINK_SCHEMA)


def decode_batch(
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    partition: int,
    timestamps: Sequence[int] | None = None,
) -> Decoded:
    """Decode the values of one partition's records (in offset order).

    Args:
        values: the record values.
        offsets: their Kafka offsets, same length.
        partition: the Kafka partition, stored in the ``_partition`` column.
        timestamps: their Kafka timestamps in epoch milliseconds (``ingested_at``); default now.

    Returns:
        The valid bars as a :data:`SINK_SCHEMA` table in offset order, and the rejects
        with the contract's reason. Never raises for bad input.
    """
    n = len(values)
    if timestamps is None:
        timestamps = [int(time.time() * 1000)] * n
    eligible = [i for i in range(n) if _eligible(values[i])]
    slow_positions: list[int] = [i for i in range(n) if not _eligible(values[i])] if len(eligible) < n else []
    blocks: list[tuple[list[int], pa.Table]] = []
    if eligible:
        slow_positions += _parse([values[i] for i in eligible], eligible, blocks)  # type: ignore[misc]
    tables: list[pa.Table] = []
    for positions, block in blocks:
        good, good_pos, rest = _fast_rows(block, positions)
        slow_positions += rest
        if good_pos:
            chosen = offsets if len(good_pos) == n else [offsets[p] for p in good_pos]
            stamps = timestamps if len(good_pos) == n else [timestamps[p] for p in good_pos]
            tables.append(_sink_table(good, pa.array(chosen, pa.int64()), stamps, partition))
    rejects: list[Reject] = []
    if slow_positions:
        slow_positions.sort()
        bars: list[Bar] = []
        bar_offsets: list[int] = []
        bar_stamps: list[int] = []
        for p in slow_positions:
            result = _slow(values[p])
            if isinstance(result, Bar):
                bars.append(result)
                bar_offsets.append(offsets[p])
                bar_stamps.append(timestamps[p])
            else:
                rejects.append(Reject(p, offsets[p], result[0], result[1]))
        if bars:
            tables.append(_slow_table(bars, bar_offsets, bar_stamps, partition))
    if not tables:
        return Decoded(SINK_SCHEMA.empty_table(), rejects)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    if len(tables) > 1:
        table = table.sort_by(OFFSET_COLUMN)
    return Decoded(table.combine_chunks(), rejects)


def bar_from_row(row: dict[str, Any]) -> Bar:
    """A sink row (as from ``table.to_pylist()``) back into a Bar, for tests and tools."""
    return Bar(
        ticker=row["ticker"],
        interval=row["interval"],
        start=row["start"],
        end=row["end"],
        open=row["open"],
        high=row["high"],
        low=row["low"],
        close=row["close"],
        volume=row["volume"],
        vwap=row["vwap"],
        trades=row["trades"],
        source=row["source"],
    )


def reference_decode(value: bytes | None) -> Bar | str:
    """The contract's verdict on one value: a Bar, or the DLQ reason (for tests)."""
    result = _slow(value)
    return result if isinstance(result, Bar) else result[0]


__all__ = [
    "INGESTED_COLUMN",
    "OFFSET_COLUMN",
    "PARTITION_COLUMN",
    "SINK_SCHEMA",
    "Decoded",
    "Reject",
    "bar_from_row",
    "decode_batch",
    "reference_decode",
]
