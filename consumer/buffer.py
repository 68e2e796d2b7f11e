"""Per-partition buffers that cut flushes at deterministic offsets.

A buffer collects one Kafka partition's records in offset order and seals a
:class:`Batch` (one flush) when one of these is reached, checked record by record:

* **records** – the batch holds ``flush_records`` records (valid and invalid alike);
* **bytes** – the record values add up to ``flush_bytes``;
* **record time** – a record's Kafka timestamp is ``flush_interval_s`` or more after the
  timestamp of the batch's first record; that record opens the next batch.

Each rule looks only at the records themselves (offset, value size, Kafka timestamp),
never at the wall clock or at how ``poll()`` happened to chunk them, so the same records
read from the same starting offset always give the same batches, with the same first
offsets and so the same file names. Two more cuts use the wall clock and are therefore
*not* reproducible: **idle** (a partition got no record for ``flush_interval_s``, so a
quiet partition still lands) and **stop** (shutdown). Exactly-once does not depend on
reproducible cuts — uncommitted files are deleted before a partition is consumed again —
but reproducible cuts make a replay overwrite the very same objects, which also covers
a writer that keeps writing after it lost its partition.

The record-time rule uses the Kafka record timestamp (CreateTime, set when the bar was
produced) rather than the bar's own ``start``: for live data they advance together, but
a backfill of a year of bars produced in a minute would otherwise cut a file every
``flush_interval_s`` of *market* time and write millions of tiny files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from consumer.decode import OFFSET_COLUMN, SINK_SCHEMA, Decoded


@dataclass(slots=True)
class Batch:
    """One sealed flush of a partition: offsets ``[first, last]`` and their valid bars."""

    partition: int
    first: int
    last: int
    records: int
    nbytes: int
    tables: list[pa.Table]
    rejected: int
    opened_at: float
    reason: str = ""
    sealed_at: float = 0.0

    @property
    def table(self) -> pa.Table:
        """The valid bars, in offset order."""
        if not self.tables:
            return SINK_SCHEMA.empty_table()
        return self.tables[0] if len(self.tables) == 1 else pa.concat_tables(self.tables)

    @property
    def rows(self) -> int:
        """Number of valid bars."""
        return sum(t.num_rows for t in self.tables)


@dataclass(slots=True)
class PartitionBuffer:
    """The open batch of one partition.

    Args:
        partition: the Kafka partition.
        flush_records: records per batch.
        flush_bytes: value bytes per batch.
        window_ms: record-time span of a batch, in milliseconds.
    """

    partition: int
    flush_records: int
    flush_bytes: int
    window_ms: int
    _first: int = -1
    _last: int = -1
    _count: int = 0
    _nbytes: int = 0
    _t0: int = 0
    _rejected: int = 0
    _opened_at: float = 0.0
    _last_add: float = 0.0
    _tables: list[pa.Table] = field(default_factory=list)

    def __len__(self) -> int:
        return self._count

    @property
    def first_offset(self) -> int | None:
        """The first offset of the open batch, None when empty."""
        return self._first if self._count else None

    @property
    def opened_at(self) -> float:
        """Monotonic time the open batch got its first record (0 when empty)."""
        return self._opened_at if self._count else 0.0

    def add(
        self,
        offsets: Sequence[int],
        sizes: Sequence[int],
        timestamps: Sequence[int],
        decoded: Decoded,
        now: float | None = None,
    ) -> list[Batch]:
        """Add consecutive records (in offset order); returns the batches this sealed.

        Args:
            offsets: the records' offsets.
            sizes: their value sizes in bytes.
            timestamps: their Kafka timestamps in epoch milliseconds.
            decoded: :func:`consumer.decode.decode_batch` of the same records.
            now: monotonic time (for idle detection), default now.
        """
        now = time.monotonic() if now is None else now
        k = len(offsets)
        if k == 0:
            return []
        off = np.asarray(offsets, dtype=np.int64)
        size = np.asarray(sizes, dtype=np.int64)
        ts = np.asarray(timestamps, dtype=np.int64)
        table = decoded.table
        row_offsets = table[OFFSET_COLUMN].to_numpy() if table.num_rows else np.empty(0, np.int64)
        reject_offsets = np.sort(np.asarray([r.offset for r in decoded.rejects], dtype=np.int64))
        sealed: list[Batch] = []
        row, i = 0, 0
        while i < k:
            if self._count == 0:
                self._first, self._t0, self._opened_at = int(off[i]), int(ts[i]), now
            end, reason = k, ""
            by_count = i + (self.flush_records - self._count)
            if by_count <= end:
                end, reason = by_count, "records"
            cum = self._nbytes + np.cumsum(size[i:end])
            over = np.flatnonzero(cum >= self.flush_bytes)
            if over.size:
                end, reason = i + int(over[0]) + 1, "bytes"
            late = np.flatnonzero(ts[i:end] >= self._t0 + self.window_ms)
            if late.size:
                end, reason = i + int(late[0]), "time"  # that record opens the next batch
            if end > i:
                last = int(off[end - 1])
                row_end = int(np.searchsorted(row_offsets, last, side="right"))
                if row_end > row:
                    self._tables.append(table.slice(row, row_end - row))
                row = row_end
                self._rejected += int(
                    np.searchsorted(reject_offsets, last, side="right")
                    - np.searchsorted(reject_offsets, int(off[i]), side="left")
                )
                self._count += end - i
                self._nbytes += int(size[i:end].sum())
                self._last = last
                self._last_add = now
            if reason:
                sealed.append(self.seal(reason, now))
            i = end
        return sealed

    def seal(self, reason: str, now: float | None = None) -> Batch:
        """Close the open batch (it must not be empty) and start a new one."""
        if self._count == 0:
            raise ValueError("cannot seal an empty buffer")
        batch = Batch(
            partition=self.partition,
            first=self._first,
            last=self._last,
            records=self._count,
            nbytes=self._nbytes,
            tables=self._tables,
            rejected=self._rejected,
            opened_at=self._opened_at,
            reason=reason,
            sealed_at=time.monotonic() if now is None else now,
        )
        self._tables = []
        self._count = self._nbytes = self._rejected = 0
        self._first = self._last = -1
        return batch

    def seal_if_idle(self, idle_s: float, now: float | None = None) -> Batch | None:
        """Seal when no record arrived for ``idle_s`` seconds (wall clock): a quiet partition still lands."""
        now = time.monotonic() if now is None else now
        if self._count and now - self._last_add >= idle_s:
            return self.seal("idle", now)
        return None
