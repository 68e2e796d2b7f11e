"""Flush cuts depend only on the records, never on how poll() chunked them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.buffer import Batch, PartitionBuffer
from consumer.decode import OFFSET_COLUMN, decode_batch
from tickcast.contracts import Bar

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def value(i: int, valid: bool = True) -> bytes:
    start = T0 + timedelta(minutes=i)
    bar = Bar("MSFT", "minute", start, start + timedelta(minutes=1), 10.0, 11.0, 9.5, 10.5, 100.0, None, None, "t")
    return bar.to_json() if valid else b"broken"


def feed(
    buffer: PartitionBuffer, values: list[bytes], offsets: list[int], stamps: list[int], chunks: list[int]
) -> list[Batch]:
    out: list[Batch] = []
    i = 0
    for size in [*chunks, len(values)]:
        j = min(len(values), i + size)
        if j > i:
            decoded = decode_batch(values[i:j], offsets[i:j], 0)
            out += buffer.add(offsets[i:j], [len(v) for v in values[i:j]], stamps[i:j], decoded, now=0.0)
        i = j
    return out


def cuts(batches: list[Batch]) -> list[tuple[int, int, str]]:
    return [(b.first, b.last, b.reason) for b in batches]


def test_count_cut() -> None:
    buffer = PartitionBuffer(0, flush_records=4, flush_bytes=10**9, window_ms=10**9)
    values = [value(i) for i in range(10)]
    batches = feed(buffer, values, list(range(10)), [0] * 10, [3, 3])
    assert cuts(batches) == [(0, 3, "records"), (4, 7, "records")]
    assert len(buffer) == 2 and buffer.first_offset == 8
    assert [b.rows for b in batches] == [4, 4]
    assert batches[1].table[OFFSET_COLUMN].to_pylist() == [4, 5, 6, 7]


def test_bytes_cut_includes_the_record_that_crosses() -> None:
    values = [value(i) for i in range(10)]
    size = len(values[0])
    buffer = PartitionBuffer(0, flush_records=100, flush_bytes=size * 3 - 1, window_ms=10**9)
    batches = feed(buffer, values, list(range(10)), [0] * 10, [10])
    assert cuts(batches) == [(0, 2, "bytes"), (3, 5, "bytes"), (6, 8, "bytes")]


def test_record_time_cut_opens_the_next_batch_with_the_late_record() -> None:
    values = [value(i) for i in range(6)]
    stamps = [1000, 1500, 900, 2000, 2100, 3500]  # 900 is out of order: it stays
    buffer = PartitionBuffer(0, flush_records=100, flush_bytes=10**9, window_ms=1000)
    batches = feed(buffer, values, list(range(6)), stamps, [6])
    assert cuts(batches) == [(0, 2, "time"), (3, 4, "time")]
    assert buffer.first_offset == 5


def test_rejects_count_in_batches_and_gaps_in_offsets_are_fine() -> None:
    values = [value(0), value(1, valid=False), value(2), value(3)]
    offsets = [10, 11, 15, 16]  # gaps: compaction or transaction markers
    buffer = PartitionBuffer(0, flush_records=2, flush_bytes=10**9, window_ms=10**9)
    batches = feed(buffer, values, offsets, [0] * 4, [4])
    assert cuts(batches) == [(10, 11, "records"), (15, 16, "records")]
    assert [(b.records, b.rejected, b.rows) for b in batches] == [(2, 1, 1), (2, 0, 2)]


def test_idle_and_stop_seal() -> None:
    buffer = PartitionBuffer(0, flush_records=100, flush_bytes=10**9, window_ms=10**9)
    values = [value(i) for i in range(3)]
    decoded = decode_batch(values, [0, 1, 2], 0)
    assert buffer.add([0, 1, 2], [len(v) for v in values], [0, 0, 0], decoded, now=100.0) == []
    assert buffer.seal_if_idle(5.0, now=104.0) is None
    batch = buffer.seal_if_idle(5.0, now=105.0)
    assert batch is not None and (batch.first, batch.last, batch.reason) == (0, 2, "idle")
    assert len(buffer) == 0 and buffer.seal_if_idle(5.0, now=1000.0) is None


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    flush_records=st.integers(1, 20),
    flush_bytes=st.integers(200, 3000),
    window_ms=st.integers(1, 50),
    chunks_a=st.lists(st.integers(1, 25), max_size=10),
    chunks_b=st.lists(st.integers(1, 25), max_size=10),
    jitter=st.lists(st.integers(-5, 10), min_size=60, max_size=60),
    bad=st.sets(st.integers(0, 59), max_size=5),
)
def test_cuts_do_not_depend_on_chunking(
    n: int,
    flush_records: int,
    flush_bytes: int,
    window_ms: int,
    chunks_a: list[int],
    chunks_b: list[int],
    jitter: list[int],
    bad: set[int],
) -> None:
    values = [value(i, valid=i not in bad) for i in range(n)]
    offsets = [100 + 2 * i for i in range(n)]
    stamps = [1000 + 3 * i + jitter[i] for i in range(n)]

    def run(chunks: list[int]) -> tuple[list[tuple[int, int, str]], list[list[int]], int | None]:
        buffer = PartitionBuffer(0, flush_records, flush_bytes, window_ms)
        batches = feed(buffer, values, offsets, stamps, chunks)
        return cuts(batches), [b.table[OFFSET_COLUMN].to_pylist() for b in batches], buffer.first_offset

    first = run(chunks_a)
    assert first == run(chunks_b)
    # Batches tile the offsets without gaps or overlaps.
    spans, _, open_first = first
    expected_first = offsets[0]
    for start, last, _ in spans:
        assert start == expected_first
        expected_first = offsets[offsets.index(last) + 1] if last != offsets[-1] else None  # type: ignore[assignment]
    assert open_first == expected_first
