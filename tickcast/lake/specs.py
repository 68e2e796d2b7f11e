"""The lake's tables: name, Arrow schema, partition columns, sort and key columns.

Schemas derive from :mod:`tickcast.contracts` where a row is one contract object (a bar, a
score); the forecast table holds one row per forecast step, so its schema is written here.

Partitioning (see the README's "Lake layout" for the measurements behind it): every
time-series table is partitioned by ``interval`` and a ``period`` string whose width
follows the interval, so a partition holds about a year of daily or hourly bars (10,000
tickers: 2.5 million daily rows) and one day of minute or second bars (10,000 tickers: up
to 9.6 million minute rows). Tickers are *not* a partition column: within a partition,
files are sorted by ticker and time, and per-file min/max statistics skip the files of
other tickers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from tickcast.contracts import Bar, Score

#: Bump when a table's schema changes incompatibly; a table written by a newer version is refused.
SCHEMA_VERSION: Final = 1

TIMESTAMP: Final = pa.timestamp("us", tz="UTC")

#: The width of a ``period`` partition value per interval: a strftime format.
PERIOD_FORMATS: Final[dict[str, str]] = {
    "second": "%Y-%m-%d",
    "minute": "%Y-%m-%d",
    "hour": "%Y",
    "day": "%Y",
}


def period_of(interval: str, when: datetime) -> str:
    """The ``period`` partition value of a time for an interval (``2024`` or ``2024-03-04``)."""
    return when.strftime(PERIOD_FORMATS[interval])


def period_bounds(interval: str, period: str) -> tuple[datetime, datetime]:
    """The UTC time range ``[start, end)`` a ``period`` partition value of an interval covers."""
    start = datetime.strptime(period, PERIOD_FORMATS[interval]).replace(tzinfo=UTC)
    if PERIOD_FORMATS[interval] == "%Y":
        return start, start.replace(year=start.year + 1)
    return start, start + timedelta(days=1)


def period_column(intervals: pa.Array | pa.ChunkedArray, times: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Vectorised :func:`period_of` over an interval column and a UTC timestamp column."""
    intervals = intervals.combine_chunks() if isinstance(intervals, pa.ChunkedArray) else intervals
    times = times.combine_chunks() if isinstance(times, pa.ChunkedArray) else times
    year = pc.strftime(times, format="%Y")
    day = pc.strftime(times, format="%Y-%m-%d")
    coarse = pc.is_in(intervals, value_set=pa.array(["hour", "day"]))
    return pc.if_else(coarse, year, day)


def _arrow_type(hint: Any) -> tuple[pa.DataType, bool]:
    """Arrow type and nullability of a contract field annotation."""
    nullable = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        nullable = True
        (hint,) = [a for a in args if a is not type(None)]
    mapping: dict[Any, pa.DataType] = {
        str: pa.string(),
        float: pa.float64(),
        int: pa.int64(),
        bool: pa.bool_(),
        datetime: TIMESTAMP,
    }
    return mapping[hint], nullable


def contract_fields(cls: type, exclude: Sequence[str] = ()) -> list[pa.Field]:
    """Arrow fields of a contract dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        typ, nullable = _arrow_type(hints[f.name])
        out.append(pa.field(f.name, typ, nullable=nullable or f.name in ("source",)))
    return out


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One lake table.

    Attributes:
        name: the table's folder under the lake root.
        schema: the Arrow schema of a row, partition columns included.
        partition_by: partition columns (strings).
        sort_by: the order ``optimize`` writes rows in (files cluster by ticker and time).
        key: the columns that identify a row; readers and ``optimize`` keep one row per key,
            the one with the greatest ``revision`` column (latest write wins).
        revision: the column ordering revisions of a key (None: the table has no keys).
        time_column: the column a time-range read filters on.
    """

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    sort_by: tuple[str, ...]
    key: tuple[str, ...] = ()
    revision: str | None = None
    time_column: str | None = None

    @property
    def description(self) -> str:
        """The Delta table description: names the table and its schema version (checked on open)."""
        return f'{{"tickcast_table": "{self.name}", "schema_version": {SCHEMA_VERSION}}}'


BARS = TableSpec(
    name="bars",
    schema=pa.schema(
        [
            *contract_fields(Bar),
            pa.field("period", pa.string(), nullable=False),
            # when the bar entered the platform (Kafka record time): the latest revision wins
            pa.field("ingested_at", TIMESTAMP),
        ]
    ),
    partition_by=("interval", "period"),
    sort_by=("ticker", "start"),
    key=("ticker", "interval", "start"),
    revision="ingested_at",
    time_column="start",
)

#: A bar as Arrow: the contract's fields (what readers return; no partition or revision column).
BAR_SCHEMA: Final = pa.schema(contract_fields(Bar))
BAR_COLUMNS: Final = tuple(BAR_SCHEMA.names)

OPEN_CLOSE = TableSpec(
    name="open_close",
    schema=pa.schema(
        [
            ("ticker", pa.string()),
            ("date", pa.string()),
            ("open", pa.float64()),
            ("high", pa.float64()),
            ("low", pa.float64()),
            ("close", pa.float64()),
            ("volume", pa.float64()),
            ("pre_market", pa.float64()),
            ("after_hours", pa.float64()),
            ("status", pa.string()),
            ("source", pa.string()),
            ("fetched_at", TIMESTAMP),
            ("period", pa.string()),
        ]
    ),
    partition_by=("period",),
    sort_by=("ticker", "date"),
    key=("ticker", "date"),
    revision="fetched_at",
    time_column=None,
)

FORECASTS = TableSpec(
    name="forecasts",
    schema=pa.schema(
        [
            ("forecast_id", pa.string()),
            ("ticker", pa.string()),
            ("interval", pa.string()),
            ("model_id", pa.string()),
            ("model_version", pa.string()),
            ("target", pa.string()),
            ("issued_at", TIMESTAMP),
            ("last_bar_start", TIMESTAMP),
            ("bar_event_time", TIMESTAMP),
            ("horizon", pa.int32()),
            ("step", pa.int32()),
            ("step_start", TIMESTAMP),
            ("mean", pa.float64()),
            ("p10", pa.float64()),
            ("p50", pa.float64()),
            ("p90", pa.float64()),
            ("quantile_levels", pa.list_(pa.float64())),
            ("quantile_values", pa.list_(pa.float64())),
            ("period", pa.string()),
            # the live calibrated band (null on uncalibrated forecasts): added after the first
            # release, so they come last (tables.evolve adds them to an older table)
            ("calibrated_coverage", pa.float64()),
            ("calibrated_lower", pa.float64()),
            ("calibrated_upper", pa.float64()),
            ("calibration_alpha", pa.float64()),
        ]
    ),
    partition_by=("interval", "period"),
    sort_by=("ticker", "last_bar_start", "step"),
    key=("forecast_id", "step"),
    revision="issued_at",
    time_column="last_bar_start",
)

SCORES = TableSpec(
    name="scores",
    schema=pa.schema(
        [
            *[
                pa.field(f.name, pa.int32() if f.name == "step" else f.type, nullable=f.nullable)
                for f in contract_fields(Score)
            ],
            ("scored_at", TIMESTAMP),
            ("period", pa.string()),
        ]
    ),
    partition_by=("interval", "period"),
    sort_by=("ticker", "target_start", "step"),
    key=("forecast_id", "step"),
    revision="scored_at",
    time_column="target_start",
)

SCORE_AGGREGATES = TableSpec(
    name="score_aggregates",
    schema=pa.schema(
        [
            ("computed_at", TIMESTAMP),
            ("scope", pa.string()),
            ("ticker", pa.string()),
            ("model_id", pa.string()),
            ("model_version", pa.string()),
            ("window", pa.int32()),
            ("steps", pa.int64()),
            ("mae", pa.float64()),
            ("mase", pa.float64()),
            ("wql", pa.float64()),
            ("coverage_80", pa.float64()),
            ("coverage_steps", pa.int64()),
            ("interval", pa.string()),
            ("period", pa.string()),
            ("calibrated_coverage", pa.float64()),
            ("calibrated_wql", pa.float64()),
            ("calibrated_steps", pa.int64()),
        ]
    ),
    partition_by=("interval", "period"),
    sort_by=("computed_at", "scope", "ticker"),
    time_column="computed_at",
)

#: Every table the code writes, by name.
TABLES: Final[dict[str, TableSpec]] = {
    spec.name: spec for spec in (BARS, OPEN_CLOSE, FORECASTS, SCORES, SCORE_AGGREGATES)
}

#: Blob prefixes (not tables): the model registry, reports, and service state.
BLOB_PREFIXES: Final = ("models", "reports", "_state")
