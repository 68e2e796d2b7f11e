"""Delta Lake tables through delta-rs: open, create, append, upsert, scan, time travel.

Every write is one Delta commit: readers see all of it or none of it. A commit may carry
*application transactions* (``(app id, version)`` pairs stored in the table's log), which is
how the sink records the Kafka offsets a commit covers (see :mod:`consumer.sink`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tickcast.errors import StoreUnavailable, TickcastError
from tickcast.lake.specs import SCHEMA_VERSION, TableSpec

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from tickcast.lake.store import Lake

log = logging.getLogger(__name__)

#: A table version (int) or a point in time (aware datetime) to read as of.
AsOf = int | datetime | None
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: How often a commit that lost a race with a conflicting commit is retried.
_CONFLICT_RETRIES = 8


class SchemaVersionError(TickcastError):
    """A table was written by a newer tickcast whose schema this code does not know."""


class AlreadyCommitted(TickcastError):
    """The table already holds a commit at or past this application transaction version."""


def _store_error(lake: Lake, spec: TableSpec, action: str, exc: Exception) -> StoreUnavailable:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    denied = any(word in str(exc) for word in ("AccessDenied", "Forbidden", "403", "Permission denied"))
    if denied:
        hint = (
            f"the credentials may not {action} table {spec.name}: grant it to this workload "
            "(its IAM role, or its MinIO policy locally)"
        )
    elif lake.is_local:
        hint = f"check that {lake.root} is writable"
    else:
        hint = (
            f"check that the object store at {lake.settings.s3_endpoint_url or 'AWS S3'} is up and "
            "TICKCAST_LAKE__URL / TICKCAST_LAKE__S3_ENDPOINT_URL are right"
        )
    return StoreUnavailable(f"lake {action} of table {spec.name} failed at {lake.url}: {first}", hint)


def _is_missing(exc: Exception) -> bool:
    from deltalake.exceptions import TableNotFoundError

    return isinstance(exc, TableNotFoundError) or "no files in log segment" in str(exc).lower()


def check_schema_version(spec: TableSpec, table: DeltaTable) -> None:
    """Refuse a table whose recorded schema version is newer than this code's."""
    description = table.metadata().description or ""
    try:
        found = int(json.loads(description).get("schema_version", 0))
    except (ValueError, AttributeError):
        found = 0
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"table {spec.name} has schema version {found}, this tickcast knows up to {SCHEMA_VERSION}",
            "upgrade tickcast to the version that wrote the lake",
        )


def open_table(lake: Lake, spec: TableSpec, as_of: AsOf = None) -> DeltaTable | None:
    """The table as of a version or time (latest by default); None when it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        table = DeltaTable(lake.table_uri(spec.name), storage_options=lake.storage_options)
    except (DeltaError, OSError) as exc:
        if _is_missing(exc):
            return None
        raise _store_error(lake, spec, "open", exc) from None
    check_schema_version(spec, table)
    if as_of is not None:
        try:
            table.load_as_version(_version_at(table, as_of) if isinstance(as_of, datetime) else as_of)
        except (DeltaError, OSError, ValueError) as exc:
            raise TickcastError(
                f"table {spec.name} has no version as of {as_of}: {str(exc).splitlines()[0]}",
                "pick a version or time within the table's history (tickcast lake history)",
            ) from None
    return table


def _version_at(table: DeltaTable, when: datetime) -> int:
    """The newest version committed at or before ``when``, by each commit's own timestamp.

    delta-rs resolves a time by the log files' modification times in the store, which come a
    moment after the commit timestamps ``history`` shows; a time copied from ``history`` could
    then land on the version before. Resolving by the commit timestamps keeps the two in step.
    """
    wanted_ms = (when - _EPOCH) // timedelta(milliseconds=1)
    for entry in table.history():  # newest first
        stamp, version = entry.get("timestamp"), entry.get("version")
        if stamp is not None and version is not None and stamp <= wanted_ms:
            return int(version)
    raise ValueError(f"the first commit is after {when.isoformat()}")


def ensure_table(lake: Lake, spec: TableSpec) -> DeltaTable:
    """Open the table, creating it empty (schema, partitions, description) when missing."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    table = open_table(lake, spec)
    if table is not None:
        return evolve(lake, spec, table)
    try:
        DeltaTable.create(
            lake.table_uri(spec.name),
            spec.schema,
            mode="ignore",  # another writer may create it at the same moment
            partition_by=list(spec.partition_by),
            name=spec.name,
            description=spec.description,
            configuration={
                # keep 7 days of time travel by default (vacuum honours the same window)
                "delta.deletedFileRetentionDuration": "interval 7 days",
                # the log as long as time travel reaches: a live sink commits every few seconds,
                # and opening a table lists the log
                "delta.logRetentionDuration": "interval 7 days",
                # a checkpoint every 10 commits: opening a table replays at most 9 JSON commits
                "delta.checkpointInterval": "10",
            },
            storage_options=lake.storage_options,
        )
    except (DeltaError, OSError) as exc:
        raise _store_error(lake, spec, "create", exc) from None
    created = open_table(lake, spec)
    assert created is not None
    return created


def missing_columns(spec: TableSpec, table: DeltaTable) -> list[pa.Field]:
    """The spec's columns the table's schema lacks (a table written before they were added)."""
    have = {f.name for f in table.schema().fields}
    return [f for f in spec.schema if f.name not in have]


def evolve(lake: Lake, spec: TableSpec, table: DeltaTable) -> DeltaTable:
    """Add the spec's new columns to a table written before they existed (one metadata commit).

    Only nullable columns can be added: the rows already written read them as nulls (every
    reader goes through :func:`dataset`, whose schema is the spec's). A column the spec
    dropped or retyped is not this function's business: that needs a new ``SCHEMA_VERSION``.
    Two writers may evolve the same table at once; the loser finds the columns there.
    """
    from deltalake import Schema
    from deltalake.exceptions import DeltaError

    missing = missing_columns(spec, table)
    if not missing:
        return table
    required = [f.name for f in missing if not f.nullable]
    if required:
        raise TickcastError(
            f"table {spec.name} lacks the required columns {', '.join(required)}",
            "rewrite the table with this tickcast (tickcast lake migrate) or use the version that wrote it",
        )
    try:
        table.alter.add_columns(list(Schema.from_arrow(pa.schema(missing)).fields))
        log.info("table %s: added columns %s", spec.name, ", ".join(f.name for f in missing))
    except (DeltaError, OSError) as exc:
        table.update_incremental()
        if missing_columns(spec, table):
            raise _store_error(lake, spec, "schema evolution", exc) from None
    table.update_incremental()
    return table


def conform(spec: TableSpec, data: pa.Table) -> pa.Table:
    """``data`` with exactly the spec's columns, in order and types (missing nullable columns as nulls)."""
    columns = []
    for field in spec.schema:
        if field.name in data.column_names:
            columns.append(data[field.name].cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(data.num_rows, field.type))
        else:
            raise ValueError(f"table {spec.name}: column {field.name!r} is missing")
    return pa.Table.from_arrays(columns, schema=spec.schema)


def _commit_properties(txns: Sequence[tuple[str, int]], metadata: dict[str, Any] | None) -> Any:
    from deltalake import CommitProperties, Transaction

    now = int(time.time() * 1000)
    return CommitProperties(
        custom_metadata={k: str(v) for k, v in (metadata or {}).items()} or None,
        app_transactions=[Transaction(app_id, int(version), now) for app_id, version in txns] or None,
        max_commit_retries=_CONFLICT_RETRIES,
    )


def _check_txns(spec: TableSpec, table: DeltaTable, txns: Sequence[tuple[str, int]], firsts: dict[str, int]) -> None:
    """Refuse a write whose Kafka positions the table already holds (a zombie or a replay)."""
    for app_id, _ in txns:
        done = table.transaction_version(app_id)
        first = firsts.get(app_id)
        if done is not None and first is not None and done >= first:
            raise AlreadyCommitted(
                f"table {spec.name} already holds {app_id} up to {done}, this write starts at {first}",
                "re-read the partition from the table's recorded position",
            )


def append(
    lake: Lake,
    spec: TableSpec,
    data: pa.Table,
    *,
    txns: Sequence[tuple[str, int]] = (),
    firsts: dict[str, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Append rows in one commit (with ``txns``); returns the new table version.

    ``firsts`` maps an app id to the first position this write covers: the write is refused
    with :class:`AlreadyCommitted` if the table already recorded that position.
    """
    from deltalake import write_deltalake
    from deltalake.exceptions import DeltaError

    table = ensure_table(lake, spec)
    if firsts:
        _check_txns(spec, table, txns, firsts)
    try:
        write_deltalake(
            table,
            conform(spec, data),
            mode="append",
            partition_by=list(spec.partition_by),
            writer_properties=writer_properties(),
            commit_properties=_commit_properties(txns, metadata),
        )
        table.update_incremental()
    except (DeltaError, OSError) as exc:
        raise _store_error(lake, spec, "append", exc) from None
    return int(table.version())


def upsert(
    lake: Lake,
    spec: TableSpec,
    data: pa.Table,
    *,
    txns: Sequence[tuple[str, int]] = (),
    firsts: dict[str, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    """MERGE rows on the spec's key in one commit: a key present is replaced (latest wins),
    a new key is inserted. Returns the new table version.

    The merge only reads the partitions the rows fall in. A commit that lost a race with a
    conflicting writer (an optimize, another sink on the same partition) is retried.
    """
    from deltalake.exceptions import CommitFailedError, DeltaError

    assert spec.key, f"table {spec.name} has no key to merge on"
    rows = dedupe(spec, conform(spec, data), keep="last")
    on = " AND ".join(f't."{c}" = s."{c}"' for c in dict.fromkeys((*spec.partition_by, *spec.key)))
    prune = []
    for column in spec.partition_by:
        values = sorted(set(rows[column].to_pylist()))
        quoted = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
        prune.append(f't."{column}" IN ({quoted})')
    predicate = " AND ".join([*prune, on])
    for attempt in range(_CONFLICT_RETRIES + 1):
        table = ensure_table(lake, spec)
        if firsts:
            _check_txns(spec, table, txns, firsts)
        try:
            (
                table.merge(
                    rows,
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    writer_properties=writer_properties(),
                    commit_properties=_commit_properties(txns, metadata),
                )
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
            table.update_incremental()
            return int(table.version())
        except CommitFailedError as exc:
            if attempt == _CONFLICT_RETRIES:
                raise _store_error(lake, spec, "merge", exc) from None
            log.info("merge into %s conflicted with another commit (%s); retrying", spec.name, exc)
            time.sleep(min(0.05 * 2**attempt, 2.0))
        except (DeltaError, OSError) as exc:
            raise _store_error(lake, spec, "merge", exc) from None
    raise AssertionError("unreachable")


#: Row groups of appended files (rows in arrival order: statistics cannot skip a ticker's rows).
APPEND_ROW_GROUP_ROWS = 128 * 1024
#: Row groups of files sorted by ticker (``optimize``): one holds about 40 tickers' minute bars
#: of a day, so a reader of one ticker decodes 16k rows of a file, not all of it (one ticker's
#: 20 days of minute bars in a lake of 500 tickers: 630 ms with 128k-row groups, 90 ms with
#: 16k; the files grow by 0.2 %; see bench/lake.py).
SORTED_ROW_GROUP_ROWS = 16 * 1024


def writer_properties(row_group_rows: int = APPEND_ROW_GROUP_ROWS) -> Any:
    """zstd, row groups of at most ``row_group_rows`` rows (each with min/max statistics)."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD", compression_level=3, max_row_group_size=row_group_rows)


def scan(
    lake: Lake,
    spec: TableSpec,
    *,
    where: ds.Expression | None = None,
    files: list[tuple[str, str, Any]] | None = None,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
    unique: bool = True,
) -> pa.Table:
    """Rows of a table matching ``where`` (a row filter), reading only the files that
    ``files`` (tuple filters on partition and statistics) cannot rule out.

    With ``unique`` (the default) a table with a key returns each key once, the latest
    revision: the table may briefly hold a key twice (a corrected bar re-sent by another
    writer, a forecaster replay) until ``optimize`` folds it, and no reader sees that.
    """
    table = open_table(lake, spec, as_of)
    if table is None:
        return empty(spec, list(dict.fromkeys(columns or spec.schema.names)))
    return read(lake, spec, table, where=where, files=files, columns=columns, unique=unique)


def read(
    lake: Lake,
    spec: TableSpec,
    table: DeltaTable,
    *,
    where: ds.Expression | None = None,
    files: list[tuple[str, str, Any]] | None = None,
    columns: Sequence[str] | None = None,
    unique: bool = True,
    actions: pa.Table | None = None,
) -> pa.Table:
    """:func:`scan` of a table version the caller has open (and, optionally, its
    :func:`add_actions`): several reads of one version then replay its log only once."""
    from deltalake.exceptions import DeltaError

    wanted = list(dict.fromkeys([*(columns or spec.schema.names)]))
    if unique and spec.key:
        wanted = list(dict.fromkeys([*wanted, *spec.key, *([spec.revision] if spec.revision else [])]))
    try:
        result = dataset(lake, spec, table, files, actions=actions).to_table(filter=where, columns=wanted)
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise _store_error(lake, spec, "read", exc) from exc
    if unique and spec.key:
        result = dedupe(spec, result)
    return result.select(list(dict.fromkeys(columns or spec.schema.names)))


_COMPARE = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def _may_match(low: Any, high: Any, op: str, value: pa.Scalar) -> Any:
    """Whether a file with column statistics [low, high] may hold a row with ``column op value``."""
    if op == "=":
        return pc.and_(pc.less_equal(low, value), pc.greater_equal(high, value))
    if op in (">=", ">"):
        return _COMPARE[op](high, value)
    if op in ("<=", "<"):
        return _COMPARE[op](low, value)
    return pa.array([True] * len(low))  # "!=" cannot rule a file out by its range


def _keep_files(spec: TableSpec, actions: pa.Table, files: Sequence[tuple[str, str, Any]]) -> pa.Array:
    """Which add actions may hold rows matching the tuple filters (partition values exactly,
    other columns by their min/max statistics; a file without statistics is kept)."""
    keep = pa.array([True] * actions.num_rows)
    for column, op, value in files:
        if column in spec.partition_by:
            part = actions[f"partition.{column}"]
            if op == "in":
                cond = pc.is_in(part, value_set=pa.array([str(v) for v in value]))
            else:
                cond = _COMPARE[op](part, pa.scalar(str(value)))
        else:
            low, high = f"min.{column}", f"max.{column}"
            if low not in actions.column_names or high not in actions.column_names:
                continue
            typ = spec.schema.field(column).type
            lo, hi = actions[low].cast(typ), actions[high].cast(typ)
            if op == "in":
                lows = [pc.less_equal(lo, pa.scalar(v, typ)) for v in value]
                highs = [pc.greater_equal(hi, pa.scalar(v, typ)) for v in value]
                cond = pa.array([False] * actions.num_rows)
                for a, b in zip(lows, highs, strict=True):
                    cond = pc.or_(cond, pc.and_(a, b))
            else:
                cond = _may_match(lo, hi, op, pa.scalar(value, typ))
        keep = pc.and_(keep, pc.fill_null(cond, True))
    return keep


def add_actions(table: DeltaTable) -> pa.Table:
    """The version's add actions (path, size, records, ``partition.*``, ``min.*``/``max.*``),
    with delta-rs' view types as plain Arrow types."""
    actions = pa.table(table.get_add_actions(flatten=True))
    fields = []
    for field in actions.schema:
        if field.type == pa.string_view():
            field = field.with_type(pa.string())
        elif field.type == pa.binary_view():
            field = field.with_type(pa.binary())
        fields.append(field)
    return actions.cast(pa.schema(fields))


def dataset(
    lake: Lake,
    spec: TableSpec,
    table: DeltaTable,
    files: Sequence[tuple[str, str, Any]] | None = None,
    *,
    actions: pa.Table | None = None,
) -> ds.Dataset:
    """A pyarrow dataset of the table version's data files that ``files`` cannot rule out.

    Built from the Delta log's add actions (partition values and statistics; ``actions``
    when the caller already has them), so the files a version does not reference are never
    read, whatever else the folder holds.
    """
    if actions is None:
        actions = add_actions(table)
    if files and actions.num_rows:
        actions = actions.filter(_keep_files(spec, actions, files))
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True))
    filesystem = lake.delta_filesystem(spec.name)
    fragments = []
    columns = [f"partition.{c}" for c in spec.partition_by]
    for row in actions.select(["path", *columns]).to_pylist():
        expr = None
        for column in spec.partition_by:
            cond = ds.field(column) == pa.scalar(row[f"partition.{column}"], spec.schema.field(column).type)
            expr = cond if expr is None else expr & cond
        fragments.append(fmt.make_fragment(unquote(row["path"]), filesystem=filesystem, partition_expression=expr))
    return ds.FileSystemDataset(fragments, spec.schema, fmt, filesystem)


def empty(spec: TableSpec, columns: Sequence[str] | None = None) -> pa.Table:
    """An empty table of the spec's schema (or of some of its columns)."""
    table = spec.schema.empty_table()
    return table.select(list(columns)) if columns is not None else table


def dedupe(spec: TableSpec, table: pa.Table, keep: str = "revision") -> pa.Table:
    """One row per key: the greatest revision (``keep="revision"``) or the last row (``"last"``)."""
    if not spec.key or table.num_rows < 2:
        return table
    ordered = table
    if keep == "revision" and spec.revision and spec.revision in table.column_names:
        revision = table[spec.revision]  # a row without a revision is the oldest
        revision = pc.fill_null(revision, pa.scalar(0, pa.int64()).cast(revision.type))
        ordered = table.take(pc.sort_indices(revision))
    indexed = ordered.append_column("__row", pa.array(np.arange(ordered.num_rows, dtype=np.int64)))
    last = indexed.group_by(list(spec.key), use_threads=False).aggregate([("__row", "max")])["__row_max"]
    if len(last) == ordered.num_rows:
        return table
    # the surviving rows' positions, ascending (sort_indices alone would give ranks, not rows)
    return ordered.take(pc.take(last, pc.sort_indices(last)))


def partition_values(
    lake: Lake,
    spec: TableSpec,
    column: str,
    files: Sequence[tuple[str, str, Any]] | None = None,
    as_of: AsOf = None,
) -> list[str]:
    """The values (sorted) of a partition column over the data files that ``files`` (tuple
    filters, as in :func:`scan`) cannot rule out. Reads the Delta log only, no data file."""
    assert column in spec.partition_by, f"{column} is not a partition column of table {spec.name}"
    table = open_table(lake, spec, as_of)
    if table is None:
        return []
    actions = add_actions(table)
    if files and actions.num_rows:
        actions = actions.filter(_keep_files(spec, actions, files))
    return sorted(set(actions[f"partition.{column}"].to_pylist())) if actions.num_rows else []


def table_version(lake: Lake, spec: TableSpec) -> int | None:
    """The table's latest version, None when it does not exist."""
    table = open_table(lake, spec)
    return None if table is None else int(table.version())


def transaction_version(lake: Lake, spec: TableSpec, app_id: str) -> int | None:
    """The last version of an application transaction the table recorded (a Kafka offset)."""
    table = open_table(lake, spec)
    return None if table is None else table.transaction_version(app_id)


def history(lake: Lake, spec: TableSpec, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commits, newest first: version, timestamp, operation, metrics."""
    table = open_table(lake, spec)
    if table is None:
        return []
    out = []
    for entry in table.history(limit):
        stamp = entry.get("timestamp")
        out.append(
            {
                "version": entry.get("version"),
                "timestamp": datetime.fromtimestamp(stamp / 1000, tz=UTC).isoformat() if stamp else None,
                "operation": entry.get("operation"),
                "metrics": entry.get("operationMetrics", {}),
            }
        )
    return out
