"""Compaction: merge the small files of each bars folder into one, without changing content.

The sink writes one file per (interval, ticker, date) folder per flush, so a folder can
collect many small files. ``tickcast compact`` merges the *committed* files of a folder
into one file holding exactly the same rows (sorted by ``start``, then Kafka partition
and offset), then deletes the small ones.

How it stays correct next to a running sink:

* It never merges an uncommitted file. The folders are listed first and the sink's
  pending markers are read afterwards; a file listed in a marker is skipped. The sink
  writes a marker before its files and removes it only after the commit (or after
  deleting the files, when it recovers), so a listed file without a marker is committed.
* The merged file is written first (atomically), then the sources are deleted. Its
  Parquet metadata lists its sources, so a compaction that dies in between is finished
  by the next run (the leftover sources are deleted, not merged twice). Readers that
  scan the folder in that short window can see rows twice; run compaction when that
  does not matter, or read with ``_partition``/``_offset`` de-duplication.
* The merged name is deterministic (``compact-p{partition}-o{min offset}-{max offset}``),
  so re-running the same merge overwrites. The sink's recovery only ever deletes files
  named in its markers, so it never touches a compacted file.
* Run one compaction at a time (a Kubernetes CronJob with ``concurrencyPolicy: Forbid``).
* Resetting the sink's committed offsets backwards after a compaction re-imports the
  compacted range as new small files: that is a deliberate replay and duplicates rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consumer.decode import OFFSET_COLUMN, PARTITION_COLUMN
from consumer.layout import MARKER_ROOT, META_COMPACTED_FROM, PendingMarker, is_marker_name
from consumer.writer import parquet_bytes
from tickcast.errors import ConfigError, StoreUnavailable
from tickcast.lake import Lake

log = logging.getLogger(__name__)

COMPACT_PREFIX = "compact-"


@dataclass(slots=True)
class CompactionResult:
    """What a compaction run found and did."""

    folders_scanned: int = 0
    folders_compacted: int = 0
    files_merged: int = 0
    files_written: int = 0
    rows: int = 0
    skipped_pending: int = 0
    leftovers_deleted: int = 0
    dry_run: bool = False
    merges: list[dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly dict."""
        return asdict(self)


def _leaf_folders(
    lake: Lake, intervals: Sequence[str] | None, tickers: Sequence[str] | None, dates: Sequence[str] | None
) -> list[str]:
    folders = []
    for interval_dir in lake.list_dirs("bars"):
        if intervals and interval_dir.removeprefix("interval=") not in intervals:
            continue
        for ticker_dir in lake.list_dirs(f"bars/{interval_dir}"):
            if tickers and ticker_dir.removeprefix("ticker=") not in tickers:
                continue
            for date_dir in lake.list_dirs(f"bars/{interval_dir}/{ticker_dir}"):
                if dates and date_dir.removeprefix("date=") not in dates:
                    continue
                folders.append(f"bars/{interval_dir}/{ticker_dir}/{date_dir}")
    return folders


def pending_files(lake: Lake) -> set[str]:
    """Every file named in a sink's pending marker (uncommitted or being written)."""
    out: set[str] = set()
    for path in lake.list_files(MARKER_ROOT, suffix=".json"):
        if not is_marker_name(path.rsplit("/", 1)[-1]):
            continue
        try:
            out.update(PendingMarker.from_json(lake.read_bytes(path)).files)
        except FileNotFoundError:
            continue
    return out


def _compacted_from(lake: Lake, path: str) -> list[str]:
    """The sources a compacted file lists; FileNotFoundError when it is gone."""
    try:
        with lake.fs.open_input_file(lake.path(path)) as handle:
            meta = pq.ParquetFile(handle).schema_arrow.metadata or {}
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise FileNotFoundError(path) from None
        # Guessing here could merge a compacted file's sources twice: fail instead.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreUnavailable(f"reading {path} failed: {first}", "rerun when the store is up") from None
    raw = meta.get(META_COMPACTED_FROM)
    return [str(x) for x in json.loads(raw)] if raw else []


def _merged_name(table: pa.Table, sources: list[str]) -> str:
    names = table.column_names
    if PARTITION_COLUMN in names and OFFSET_COLUMN in names and table.num_rows:
        parts, offsets = table[PARTITION_COLUMN], table[OFFSET_COLUMN]
        if parts.null_count == 0 and offsets.null_count == 0:
            unique = pc.unique(parts).to_pylist()
            if len(unique) == 1:
                low, high = pc.min(offsets).as_py(), pc.max(offsets).as_py()
                return f"{COMPACT_PREFIX}p{unique[0]}-o{low:020d}-{high:020d}.parquet"
    digest = hashlib.sha1("\n".join(sorted(sources)).encode()).hexdigest()[:16]
    return f"{COMPACT_PREFIX}{digest}.parquet"


def _sort_keys(table: pa.Table) -> list[tuple[str, str]]:
    keys = [("start", "ascending")]
    keys += [(c, "ascending") for c in (PARTITION_COLUMN, OFFSET_COLUMN) if c in table.column_names]
    return keys


def compact(
    lake: Lake,
    *,
    table: str = "bars",
    tickers: Sequence[str] | None = None,
    intervals: Sequence[str] | None = None,
    dates: Sequence[str] | None = None,
    min_files: int = 2,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CompactionResult:
    """Merge the committed small files of each matching folder into one file.

    Args:
        lake: the lake.
        table: the table to compact (only ``bars`` is written by the sink).
        tickers, intervals, dates: restrict to these folders (default all).
        min_files: merge a folder only when it has at least this many files.
        dry_run: report what would be merged, change nothing.
        progress: called with one line per merged folder.

    Raises:
        ConfigError: for a table other than ``bars``.
        StoreUnavailable: when the store fails (a rerun finishes the work).
    """
    if table != "bars":
        raise ConfigError("--table", f"cannot compact {table!r}", "use --table bars")
    if min_files < 2:
        raise ConfigError("--min-files", f"{min_files} is below 2", "merge at least two files")
    result = CompactionResult(dry_run=dry_run)
    # Files first, markers second: see the module docstring.
    folders = _leaf_folders(lake, intervals, tickers, dates)
    listing = {folder: lake.list_files(folder, suffix=".parquet") for folder in folders}
    pending = pending_files(lake)
    for folder, files in listing.items():
        result.folders_scanned += 1
        present = set(files)
        leftovers: set[str] = set()
        for path in files:
            if path.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX):
                try:
                    sources = _compacted_from(lake, path)
                except FileNotFoundError:
                    continue
                leftovers |= {f"{folder}/{s}" for s in sources} & present
        if leftovers and not dry_run:
            for path in sorted(leftovers):
                lake.delete(path)  # already inside a compacted file: finish the earlier run
        result.leftovers_deleted += len(leftovers)
        skipped = {p for p in files if p in pending}
        result.skipped_pending += len(skipped)
        candidates = [p for p in files if p not in leftovers and p not in skipped]
        if len(candidates) < min_files:
            continue
        tables = []
        for path in candidates:
            try:
                tables.append(pq.read_table(pa.BufferReader(lake.read_bytes(path))))
            except FileNotFoundError:
                tables.append(None)
        kept = [(p, t) for p, t in zip(candidates, tables, strict=True) if t is not None]
        if len(kept) < min_files:
            continue
        merged = pa.concat_tables([t.replace_schema_metadata(None) for _, t in kept], promote_options="permissive")
        merged = merged.sort_by(_sort_keys(merged))
        source_names = [p.rsplit("/", 1)[-1] for p, _ in kept]
        name = _merged_name(merged, source_names)
        target = f"{folder}/{name}"
        sources = [p for p, _ in kept if p != target]
        result.folders_compacted += 1
        result.files_merged += len(kept)
        result.files_written += 1
        result.rows += merged.num_rows
        result.merges.append({"folder": folder, "files": len(kept), "rows": merged.num_rows, "into": name})
        if dry_run:
            continue
        metadata = {META_COMPACTED_FROM: json.dumps([p.rsplit("/", 1)[-1] for p in sources]).encode()}
        lake.write_bytes(target, parquet_bytes(merged.replace_schema_metadata(metadata)))
        for path in sources:
            lake.delete(path)
        if progress:
            progress(f"{folder}: {len(kept)} files, {merged.num_rows} rows -> {name}")
    return result
