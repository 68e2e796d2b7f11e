"""Write sealed batches into the lake, and clean up after flushes that were never committed.

The protocol for one batch covering offsets ``[first, last]`` of a partition:

1. write the pending marker ``_sink/{topic}/p{partition}/pending-o{first}.json``
   listing every file the batch will write;
2. write each file atomically (temporary name + rename on a disk; a single PUT on S3,
   which only becomes visible once complete) under its deterministic name;
3. (the sink) commit offset ``last + 1`` for the partition;
4. delete the marker.

:meth:`LakeWriter.recover` runs before a partition is consumed again (on every
assignment, and after a failed commit) with the group's committed offset ``C``:
markers with ``first >= C`` name uncommitted files, which are deleted; markers with
``last < C`` were committed and are just removed.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consumer.buffer import Batch
from consumer.decode import OFFSET_COLUMN
from consumer.layout import (
    META_FIRST,
    META_LAST,
    META_PARTITION,
    META_TOPIC,
    PendingMarker,
    file_name,
    is_marker_name,
    marker_dir,
    marker_path,
)
from tickcast.lake import BAR_PARTITIONS, Lake, partition_path

log = logging.getLogger(__name__)

#: Columns stored in the file's path rather than in the file.
_PATH_COLUMNS = list(BAR_PARTITIONS)


def parquet_bytes(table: pa.Table) -> bytes:
    """Encode a bar file.

    zstd; delta encoding for the monotone columns (times, offsets); byte-stream-split for
    the prices and volumes, which zstd then compresses far better than plain doubles;
    dictionaries for the repetitive ones; statistics only where readers prune (times,
    offsets), since every statistic costs footer bytes in small files.
    """
    names = set(table.column_names)
    delta = [c for c in ("start", "end", OFFSET_COLUMN) if c in names]
    split = [c for c in ("open", "high", "low", "close", "volume", "vwap") if c in names]
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        compression="zstd",
        write_statistics=delta,
        use_dictionary=[c for c in table.column_names if c not in delta and c not in split],
        column_encoding={**dict.fromkeys(delta, "DELTA_BINARY_PACKED"), **dict.fromkeys(split, "BYTE_STREAM_SPLIT")},
    )
    return buffer.getvalue()


def split_by_partition(table: pa.Table) -> list[tuple[tuple[str, str, str], pa.Table]]:
    """Split a sink table into ((interval, ticker, date), rows in offset order) groups.

    ``date`` is the UTC day of each bar's ``start``, so a late bar lands in its own day.
    """
    if table.num_rows == 0:
        return []
    if "date" not in table.column_names:
        table = table.append_column("date", pc.strftime(table["start"], format="%Y-%m-%d"))
    keys = [*_PATH_COLUMNS, OFFSET_COLUMN]
    order = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in keys])
    table = table.take(order)
    n = table.num_rows
    change = None
    for col in _PATH_COLUMNS:
        values = table[col].combine_chunks()
        diff = pc.not_equal(values.slice(1), values.slice(0, n - 1))
        change = diff if change is None else pc.or_(change, diff)
    starts = [0] + ([int(i) + 1 for i in pc.indices_nonzero(change).to_pylist()] if change is not None else [])
    bounds = [*starts, n]
    out = []
    for a, b in itertools.pairwise(bounds):
        key = tuple(str(table[c][a].as_py()) for c in _PATH_COLUMNS)
        out.append((key, table.slice(a, b - a).drop_columns([*_PATH_COLUMNS])))
    return out  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch put in the lake."""

    files: list[str]
    bytes_written: int


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What :meth:`LakeWriter.recover` found and did for one partition."""

    deleted_files: int
    trimmed_files: int
    committed_markers: int
    uncommitted_markers: int


class LakeWriter:
    """Writes one topic's batches into the lake with pending markers.

    Args:
        lake: the lake.
        topic: the Kafka topic the batches come from (part of every name).
        threads: parallel object writes within one batch.
    """

    def __init__(self, lake: Lake, topic: str, threads: int = 8) -> None:
        self.lake = lake
        self.topic = topic
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lake-write")

    def close(self) -> None:
        """Stop the write threads."""
        self._pool.shutdown(wait=True)

    def write(self, batch: Batch, before_each: Callable[[], None] | None = None) -> WriteResult:
        """Write a batch's marker and files (steps 1 and 2 of the protocol).

        Args:
            batch: the sealed batch.
            before_each: called before the marker and before the files; it raises to abandon the
                batch (the sink uses it to stop writing once it may have lost the partition).

        Raises:
            StoreUnavailable: when the store fails; nothing was committed, and the
                batch can be written again (same names, same content).
        """
        groups = split_by_partition(batch.table)
        if not groups:
            return WriteResult([], 0)
        name = file_name(self.topic, batch.partition, batch.first)
        paths = [f"{partition_path('bars', list(zip(_PATH_COLUMNS, key, strict=True)))}/{name}" for key, _ in groups]
        marker = PendingMarker(self.topic, batch.partition, batch.first, batch.last, tuple(paths), self.owner)
        if before_each:
            before_each()
        self.lake.write_bytes(marker_path(self.topic, batch.partition, batch.first), marker.to_json())
        metadata = {
            META_TOPIC: self.topic.encode(),
            META_PARTITION: str(batch.partition).encode(),
            META_FIRST: str(batch.first).encode(),
            META_LAST: str(batch.last).encode(),
        }

        def put(path: str, part: pa.Table) -> int:
            data = parquet_bytes(part.replace_schema_metadata(metadata))
            self.lake.write_bytes(path, data)
            return len(data)

        if before_each:
            before_each()
        if len(groups) == 1:
            return WriteResult(paths, put(paths[0], groups[0][1]))
        # Encoding and uploads release the GIL: a few threads hide S3 round trips and fsyncs.
        futures = [self._pool.submit(put, path, part) for path, (_, part) in zip(paths, groups, strict=True)]
        wait(futures)  # all of them, even after a failure: no write may outlive this call
        return WriteResult(paths, sum(f.result() for f in futures))

    def confirm(self, batches: list[Batch]) -> None:
        """Delete committed batches' markers (step 4), in parallel; failures are harmless.

        A marker left behind has ``last`` below the committed offset, so the next
        :meth:`recover` of its partition removes it.
        """

        def delete(batch: Batch) -> None:
            self.lake.delete(marker_path(self.topic, batch.partition, batch.first))

        futures = [self._pool.submit(delete, batch) for batch in batches]
        wait(futures)
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            log.warning("could not delete %d committed marker(s), recovery will: %s", len(failed), failed[0])

    def pending(self, partition: int) -> list[tuple[str, PendingMarker]]:
        """The pending markers of a partition, as (path, marker)."""
        out = []
        for path in self.lake.list_files(marker_dir(self.topic, partition), suffix=".json"):
            if not is_marker_name(path.rsplit("/", 1)[-1]):
                continue
            try:
                out.append((path, PendingMarker.from_json(self.lake.read_bytes(path))))
            except FileNotFoundError:
                continue  # confirmed meanwhile
            except (ValueError, KeyError) as exc:
                # A marker is written atomically, so a torn one means someone else's file.
                log.warning("ignoring unreadable marker %s: %s", path, exc)
        return out

    def recover(self, partition: int, committed: int | None) -> RecoveryResult:
        """Make the lake hold exactly the committed flushes of ``partition``.

        Args:
            partition: the Kafka partition.
            committed: the group's committed offset (the next offset to consume), or
                None when the group never committed this partition.

        Raises:
            StoreUnavailable: when the store fails (nothing is consumed until it succeeds).
        """
        threshold = committed if committed is not None else -1
        deleted = trimmed = done = undone = 0
        for path, marker in self.pending(partition):
            if marker.last < threshold:
                done += 1  # committed; only the marker's deletion was lost
            elif marker.first >= threshold:
                undone += 1
                for file in marker.files:
                    self.lake.delete(file)
                    deleted += 1
            else:
                # The committed offset falls inside the flush: only when offsets were moved
                # by hand. Keep exactly the committed rows.
                undone += 1
                for file in marker.files:
                    trimmed += self._trim(file, threshold)
            self.lake.delete(path)
        if undone:
            log.info(
                "partition %d: removed %d uncommitted flush(es) (%d files deleted, %d trimmed), consuming from %s",
                partition,
                undone,
                deleted,
                trimmed,
                committed,
            )
        return RecoveryResult(deleted, trimmed, done, undone)

    def _trim(self, path: str, committed: int) -> int:
        try:
            data = self.lake.read_bytes(path)
        except FileNotFoundError:
            return 0
        table = pq.read_table(pa.BufferReader(data))
        kept = table.filter(pc.less(table[OFFSET_COLUMN], committed))
        if kept.num_rows == 0:
            self.lake.delete(path)
        else:
            self.lake.write_bytes(path, parquet_bytes(kept))
        return 1
