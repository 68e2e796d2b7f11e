"""Convert a lake in the earlier layout (Hive-partitioned Parquet files) into Delta tables.

The earlier layout kept each table as folders ``<table>/interval=I/ticker=T/date=D/*.parquet``
(``open_close/ticker=T/date=D/``, ``score_aggregates/interval=I/date=D/``) with the partition
values in the path, plus the sink's ``_sink/`` pending markers. :func:`migrate` reads every
committed file of each table (hidden and ``_``-prefixed files are skipped, as every Parquet
reader does), restores the partition columns from the path, and writes the rows into the
Delta table of the same name at the destination, deduplicated by the table's key. Blobs
(``models/``, ``reports/``, ``_state/``) are copied as they are.

Source and destination may be the same root: the Delta table of a name is written next to
the old folders (Delta only reads files its log names), and the old files are left for the
user to delete once satisfied (``--delete-source``). A table already in Delta format at the
source is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tickcast.lake import tables
from tickcast.lake.specs import BLOB_PREFIXES, TABLES, TIMESTAMP, TableSpec, period_column
from tickcast.lake.store import Lake

log = logging.getLogger(__name__)

#: The earlier layout's partition folders per table.
LEGACY_PARTITIONS: dict[str, tuple[str, ...]] = {
    "bars": ("interval", "ticker", "date"),
    "forecasts": ("interval", "ticker", "date"),
    "scores": ("interval", "ticker", "date"),
    "open_close": ("ticker", "date"),
    "score_aggregates": ("interval", "date"),
}


@dataclass(slots=True)
class MigrationReport:
    """What :func:`migrate` found and wrote, per table (rows read, distinct keys written)."""

    source: str
    destination: str
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    blobs_copied: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return asdict(self)


def is_delta_table(lake: Lake, name: str) -> bool:
    """Whether ``name`` at this lake root has a Delta log."""
    return lake.exists(f"{name}/_delta_log")


def legacy_files(lake: Lake, name: str) -> list[str]:
    """Committed Parquet files of a table in the earlier layout (none when it is a Delta table)."""
    if is_delta_table(lake, name) and not lake.list_dirs(name):
        return []
    partition_keys = LEGACY_PARTITIONS[name]
    files = []
    for path in lake.list_files(name, suffix=".parquet"):
        folders = path.split("/")[1:-1]
        # only files under key=value folders of the old layout (not a Delta table's own files)
        if len(folders) == len(partition_keys) and all(
            f.startswith(f"{k}=") for f, k in zip(folders, partition_keys, strict=True)
        ):
            files.append(path)
    return files


def needs_migration(lake: Lake) -> list[str]:
    """Tables that still have files in the earlier layout at this root (empty: nothing to do)."""
    return [name for name in LEGACY_PARTITIONS if legacy_files(lake, name)]


def _read_legacy(lake: Lake, name: str, files: list[str]) -> pa.Table:
    partitioning = ds.partitioning(pa.schema([(k, pa.string()) for k in LEGACY_PARTITIONS[name]]), flavor="hive")
    dataset = ds.dataset(
        [lake.path(f) for f in files],
        filesystem=lake.fs,
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=lake.path(name),
    )
    return dataset.to_table()


def _to_spec(spec: TableSpec, data: pa.Table, migrated_at: datetime) -> pa.Table:
    """Old rows in the new schema: partition columns restored, revisions filled, period derived."""
    if spec.name == "bars" and "ingested_at" not in data.column_names:
        data = data.append_column("ingested_at", pa.array([migrated_at] * data.num_rows, TIMESTAMP))
    if spec.name == "scores" and "scored_at" not in data.column_names:
        data = data.append_column("scored_at", data["issued_at"])
    if "period" in spec.schema.names:
        if spec.name == "open_close":
            period = pc.utf8_slice_codeunits(data["date"], 0, 4)
        else:
            assert spec.time_column is not None
            anchor = {"forecasts": "last_bar_start", "scores": "target_start"}.get(spec.name, spec.time_column)
            period = period_column(data["interval"], data[anchor])
        data = data.append_column("period", period)
    return tables.conform(spec, data)


def migrate(
    source: Lake,
    destination: Lake,
    *,
    delete_source: bool = False,
    progress: Callable[[str], None] | None = None,
) -> MigrationReport:
    """Convert every table of ``source`` in the earlier layout into Delta tables at ``destination``.

    Rows are deduplicated by each table's key (the latest revision wins). Returns per table
    the rows read and the distinct keys in the destination table afterwards.
    """
    say = progress or (lambda line: None)
    report = MigrationReport(source.url, destination.url)
    migrated_at = datetime.now(UTC)
    for name, spec in TABLES.items():
        files = legacy_files(source, name)
        if not files:
            report.skipped.append(name)
            continue
        say(f"{name}: reading {len(files)} files of the earlier layout")
        data = _read_legacy(source, name, files)
        rows = _to_spec(spec, data, migrated_at)
        if spec.key:
            rows = tables.dedupe(spec, rows)
        if rows.num_rows:
            tables.upsert(destination, spec, rows) if spec.key else tables.append(destination, spec, rows)
        written = tables.scan(destination, spec, columns=list(spec.key) or None).num_rows
        report.tables[name] = {"files": len(files), "rows_read": data.num_rows, "rows_in_table": written}
        say(f"{name}: {data.num_rows} rows -> {written} rows in the Delta table")
        if delete_source:
            for path in files:
                source.delete(path)
    if source.url != destination.url:
        for prefix in BLOB_PREFIXES:
            for path in source.list_files(prefix):
                destination.write_bytes(path, source.read_bytes(path))
                report.blobs_copied += 1
    if delete_source:
        for path in source.list_files("_sink"):
            source.delete(path)
    return report
