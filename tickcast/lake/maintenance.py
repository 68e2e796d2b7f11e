"""Table maintenance: optimize (compact, dedupe, sort) and vacuum.

``optimize`` rewrites each partition that has more than one data file (or ``min_files``)
as few files of about ``target_size`` bytes, sorted by the table's sort columns (ticker,
then time: per-file and per-row-group statistics then skip other tickers), keeping one
row per key (the latest revision). The rewrite is one Delta commit per partition that
removes the old files and adds the new ones, so a reader sees the partition before or
after, never both: no row twice, none missing. A writer that committed to the partition
meanwhile makes the rewrite's commit fail (delta-rs detects the concurrent append), and the
partition is re-read and rewritten again.

``compact_small_files`` is the cheap variant the sink runs as it goes: delta-rs bin-packing
of small files, a ``dataChange=false`` commit that never conflicts with appends.

``vacuum`` deletes files no version younger than the retention (7 days by default)
references: time travel keeps working within the retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tickcast.errors import TickcastError
from tickcast.lake import tables
from tickcast.lake.specs import TABLES, TableSpec

if TYPE_CHECKING:
    from tickcast.lake.store import Lake

log = logging.getLogger(__name__)

#: Files ``optimize`` aims for; a partition of a year of daily bars for 10,000 tickers is about one.
DEFAULT_TARGET_SIZE = 256 * 1024 * 1024
#: The sink's running compaction stops merging files once they reach this size.
SMALL_FILE_SIZE = 32 * 1024 * 1024
#: Time travel kept by ``vacuum`` unless told otherwise.
DEFAULT_RETENTION_HOURS = 7 * 24
_ATTEMPTS = 5


@dataclass(slots=True)
class TableReport:
    """What maintenance did to one table."""

    table: str
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rows_before: int = 0
    rows_after: int = 0
    partitions_rewritten: int = 0
    partitions_skipped: list[str] = field(default_factory=list)
    deleted_files: int = 0
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return asdict(self)


def _partition_files(table: Any) -> pa.Table:
    actions = tables.add_actions(table)
    return actions


def _partition_key(spec: TableSpec, row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[f"partition.{c}"]) for c in spec.partition_by)


def file_stats(lake: Lake, spec: TableSpec) -> tuple[int, int, int]:
    """(data files, bytes, rows) of the table's current version; zeros when it does not exist."""
    table = tables.open_table(lake, spec)
    if table is None:
        return 0, 0, 0
    actions = _partition_files(table)
    if not actions.num_rows:
        return 0, 0, 0
    return actions.num_rows, int(pc.sum(actions["size_bytes"]).as_py()), int(pc.sum(actions["num_records"]).as_py())


def _predicate(spec: TableSpec, values: tuple[str, ...]) -> str:
    return " AND ".join(f"\"{c}\" = '{v}'" for c, v in zip(spec.partition_by, values, strict=True))


def _rewrite_partition(lake: Lake, spec: TableSpec, values: tuple[str, ...], target_size: int) -> bool:
    """Dedupe, sort and rewrite one partition in one commit; False if it kept conflicting."""
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    filters = [(c, "=", v) for c, v in zip(spec.partition_by, values, strict=True)]
    for attempt in range(_ATTEMPTS):
        table = tables.open_table(lake, spec)
        assert table is not None
        rows = tables.dataset(lake, spec, table, filters).to_table()
        rows = tables.dedupe(spec, tables.conform(spec, rows))
        rows = rows.sort_by([(c, "ascending") for c in spec.sort_by])
        try:
            write_deltalake(
                table,
                rows,
                mode="overwrite",
                predicate=_predicate(spec, values),
                target_file_size=target_size,
                writer_properties=tables.writer_properties(tables.SORTED_ROW_GROUP_ROWS),
                commit_properties=tables._commit_properties((), {"tickcast.operation": "optimize"}),
            )
            return True
        except CommitFailedError as exc:
            log.info("optimize of %s %s conflicted (%s); retrying", spec.name, values, str(exc).splitlines()[0])
            time.sleep(min(0.2 * 2**attempt, 3.0))
    return False


def optimize(
    lake: Lake,
    spec: TableSpec,
    *,
    target_size: int = DEFAULT_TARGET_SIZE,
    min_files: int = 2,
    partitions: Iterable[tuple[str, ...]] | None = None,
) -> TableReport:
    """Compact, dedupe and sort every partition with at least ``min_files`` files (or those given)."""
    report = TableReport(spec.name)
    report.files_before, report.bytes_before, report.rows_before = file_stats(lake, spec)
    table = tables.open_table(lake, spec)
    if table is None:
        return report
    actions = _partition_files(table)
    counts: dict[tuple[str, ...], int] = {}
    for row in actions.select([f"partition.{c}" for c in spec.partition_by]).to_pylist():
        key = _partition_key(spec, row)
        counts[key] = counts.get(key, 0) + 1
    wanted = set(partitions) if partitions is not None else None
    for values, n in sorted(counts.items()):
        if (wanted is not None and values not in wanted) or n < min_files:
            continue
        if _rewrite_partition(lake, spec, values, target_size):
            report.partitions_rewritten += 1
        else:
            report.partitions_skipped.append("/".join(values))
            log.warning("optimize skipped %s %s: writers kept committing to it", spec.name, values)
    report.files_after, report.bytes_after, report.rows_after = file_stats(lake, spec)
    report.version = tables.table_version(lake, spec)
    return report


def compact_small_files(lake: Lake, spec: TableSpec, values: tuple[str, ...]) -> int:
    """Bin-pack a partition's small files (no data change, no conflict with appends); files removed."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    table = tables.open_table(lake, spec)
    if table is None:
        return 0
    filters = [(c, "=", v) for c, v in zip(spec.partition_by, values, strict=True)]
    try:
        metrics = table.optimize.compact(
            partition_filters=filters,
            target_size=SMALL_FILE_SIZE,
            writer_properties=tables.writer_properties(),
        )
    except CommitFailedError as exc:  # another compaction won: nothing lost, try next time
        log.info("compaction of %s %s lost a race: %s", spec.name, values, str(exc).splitlines()[0])
        return 0
    except (DeltaError, OSError) as exc:
        raise tables._store_error(lake, spec, "compaction", exc) from None
    return int(metrics.get("numFilesRemoved", 0))


def vacuum(
    lake: Lake, spec: TableSpec, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False
) -> TableReport:
    """Delete files unreferenced for ``retention_hours`` (at least 7 days keeps time travel safe)."""
    from deltalake.exceptions import DeltaError

    report = TableReport(spec.name)
    table = tables.open_table(lake, spec)
    if table is None:
        return report
    if retention_hours < DEFAULT_RETENTION_HOURS:
        log.warning(
            "vacuum of %s with %d h retention: time travel and slow readers older than that break",
            spec.name,
            retention_hours,
        )
    try:
        deleted = table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)
    except (DeltaError, OSError) as exc:
        raise tables._store_error(lake, spec, "vacuum", exc) from None
    report.deleted_files = len(deleted)
    report.files_after, report.bytes_after, report.rows_after = file_stats(lake, spec)
    report.version = tables.table_version(lake, spec)
    return report


def resolve_tables(names: Iterable[str] | None) -> list[TableSpec]:
    """Specs for table names (all tables when None); an unknown name is a clear error."""
    if not names:
        return list(TABLES.values())
    out = []
    for name in names:
        if name not in TABLES:
            raise TickcastError(f"unknown lake table {name!r}", f"use one of {', '.join(TABLES)}")
        out.append(TABLES[name])
    return out
