"""Writing flushes into a file:// lake, recovering from uncommitted ones, and compaction."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from consumer.buffer import Batch, PartitionBuffer
from consumer.compact import compact
from consumer.decode import OFFSET_COLUMN, PARTITION_COLUMN, decode_batch
from consumer.layout import META_FIRST, META_LAST, file_name, marker_path, parse_file_name
from consumer.writer import LakeWriter
from tickcast.contracts import Bar
from tickcast.errors import ConfigError
from tickcast.lake import Lake
from tickcast.settings import LakeSettings

T0 = datetime(2024, 1, 2, 23, 58, tzinfo=UTC)
TICKERS = ("AAPL", "MSFT", "NVDA")


def values_for(offsets: range, late: set[int] = frozenset()) -> list[bytes]:  # type: ignore[assignment]
    out = []
    for i in offsets:
        minute = i // len(TICKERS) - (3 * 24 * 60 if i in late else 0)
        start = T0 + timedelta(minutes=minute)
        bar = Bar(TICKERS[i % 3], "minute", start, start + timedelta(minutes=1), 10, 11, 9, 10.5, i, None, i, "t")
        out.append(bar.to_json())
    return out


def make_batch(partition: int, offsets: range, late: set[int] = frozenset()) -> Batch:  # type: ignore[assignment]
    values = values_for(offsets, late)
    buffer = PartitionBuffer(partition, 10**9, 10**12, 10**12)
    decoded = decode_batch(values, list(offsets), partition)
    buffer.add(list(offsets), [len(v) for v in values], [0] * len(values), decoded)
    return buffer.seal("stop")


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(url=f"file://{tmp_path / 'lake'}"))


def lake_rows(lake: Lake) -> list[tuple[str, datetime, int, int]]:
    if not lake.list_files("bars", suffix=".parquet"):
        return []
    sql = (
        f"select ticker, start, _partition, _offset from read_parquet('{lake.root}/bars/**/*.parquet', "
        "hive_partitioning=true) order by _partition, _offset"
    )
    return [tuple(r) for r in duckdb.sql(sql).fetchall()]  # type: ignore[misc]


def test_write_lays_out_files_by_interval_ticker_date_with_deterministic_names(lake: Lake) -> None:
    writer = LakeWriter(lake, "bars")
    batch = make_batch(2, range(0, 12), late={5})
    result = writer.write(batch)
    name = file_name("bars", 2, 0)
    assert parse_file_name(name) is not None and parse_file_name(name).partition == 2  # type: ignore[union-attr]
    assert all(path.endswith("/" + name) for path in result.files)
    assert sorted(p.split("/")[2:4] for p in result.files) == sorted(
        [["ticker=AAPL", "date=2024-01-02"], ["ticker=AAPL", "date=2024-01-03"], ["ticker=MSFT", "date=2024-01-02"],
         ["ticker=MSFT", "date=2024-01-03"], ["ticker=NVDA", "date=2024-01-02"], ["ticker=NVDA", "date=2023-12-30"],
         ["ticker=NVDA", "date=2024-01-03"]]
    )  # fmt: skip
    assert lake.exists(marker_path("bars", 2, 0))  # pending until confirmed
    rows = lake_rows(lake)
    assert [r[3] for r in rows] == list(range(12)) and {r[2] for r in rows} == {2}
    # The late bar (offset 5, three days early) sits in its own day's folder.
    late = lake.read_bars("NVDA", start=T0 - timedelta(days=4), end=T0 - timedelta(days=2))
    assert late[OFFSET_COLUMN].to_pylist() == [5]
    # Files are self-describing and readable by the lake's own reader.
    meta = pq.read_schema(lake.path(result.files[0])).metadata
    assert meta[META_FIRST] == b"0" and meta[META_LAST] == b"11"
    aapl = lake.read_bars("AAPL")
    assert aapl.num_rows == 4 and PARTITION_COLUMN in aapl.column_names
    assert aapl["start"].to_pylist() == sorted(aapl["start"].to_pylist())
    writer.confirm([batch])
    assert not lake.exists(marker_path("bars", 2, 0))
    writer.close()


def test_replay_of_the_same_flush_overwrites(lake: Lake) -> None:
    writer = LakeWriter(lake, "bars")
    batch = make_batch(0, range(0, 30))
    first = writer.write(batch)
    second = writer.write(make_batch(0, range(0, 30)))
    assert first.files == second.files
    assert len(lake_rows(lake)) == 30
    writer.close()


def test_recover_deletes_uncommitted_flushes_whatever_their_boundaries(lake: Lake) -> None:
    writer = LakeWriter(lake, "bars")
    committed = make_batch(0, range(0, 30))
    writer.write(committed)  # committed, but the crash lost the marker's deletion
    writer.write(make_batch(0, range(30, 45)))  # uncommitted
    writer.write(make_batch(0, range(45, 50)))  # uncommitted
    other = make_batch(1, range(0, 9))
    writer.write(other)  # another partition: untouched
    result = writer.recover(0, committed=30)
    assert (result.committed_markers, result.uncommitted_markers) == (1, 2)
    assert [r[3] for r in lake_rows(lake) if r[2] == 0] == list(range(30))
    assert len([r for r in lake_rows(lake) if r[2] == 1]) == 9
    assert writer.pending(0) == []
    # Re-consuming with other boundaries now yields each record once.
    writer.write(make_batch(0, range(30, 50)))
    assert [r[3] for r in lake_rows(lake) if r[2] == 0] == list(range(50))
    writer.close()


def test_recover_without_any_commit_removes_everything_pending(lake: Lake) -> None:
    writer = LakeWriter(lake, "bars")
    writer.write(make_batch(0, range(0, 10)))
    assert writer.recover(0, committed=None).uncommitted_markers == 1
    assert lake_rows(lake) == []
    writer.close()


def test_recover_trims_a_flush_the_committed_offset_falls_into(lake: Lake) -> None:
    writer = LakeWriter(lake, "bars")
    writer.write(make_batch(0, range(0, 30)))
    result = writer.recover(0, committed=10)  # offsets moved by hand
    assert result.trimmed_files == 6  # 3 tickers x 2 days
    assert [r[3] for r in lake_rows(lake)] == list(range(10))
    writer.close()


def test_compaction_keeps_content_skips_pending_and_finishes_interrupted_runs(lake: Lake) -> None:
    writer = LakeWriter(lake, "bars")
    for first in range(0, 60, 10):
        batch = make_batch(0, range(first, first + 10))
        writer.write(batch)
        writer.confirm([batch])
    pending = make_batch(0, range(60, 66))
    writer.write(pending)  # in flight: must not be merged
    before = Counter(lake_rows(lake))

    dry = compact(lake, dry_run=True)
    assert dry.folders_compacted == 3 and Counter(lake_rows(lake)) == before

    result = compact(lake)
    assert (result.folders_compacted, result.files_merged, result.skipped_pending) == (3, 18, 3)
    assert Counter(lake_rows(lake)) == before
    for ticker in TICKERS:
        folder = f"bars/interval=minute/ticker={ticker}/date=2024-01-03"
        names = sorted(p.rsplit("/", 1)[-1] for p in lake.list_files(folder))
        assert names[0].startswith("bars-") and names[1].startswith("compact-p0-o")  # the pending one survives
        merged = lake.read_bars(ticker)
        assert merged["start"].to_pylist() == sorted(merged["start"].to_pylist())

    # The sink's recovery of the pending flush removes only its own files.
    writer.recover(0, committed=60)
    assert Counter(lake_rows(lake)) == Counter(r for r in before if r[3] < 60)

    # An interrupted run (merged file written, sources not yet deleted) is finished, not merged twice.
    writer.write(late := make_batch(0, range(60, 70)))
    writer.confirm([late])
    folder = "bars/interval=minute/ticker=AAPL/date=2024-01-03"
    sources = lake.list_files(folder)
    saved = {p: lake.read_bytes(p) for p in sources}
    compact(lake, tickers=["AAPL"])
    for path, data in saved.items():  # put the sources back, as if the deletes never ran
        lake.write_bytes(path, data)
    again = compact(lake, tickers=["AAPL"])
    assert again.leftovers_deleted == len(sources) == 2
    offsets = [r[3] for r in lake_rows(lake)]
    assert sorted(offsets) == list(range(70))
    writer.close()


def test_compaction_rejects_other_tables(lake: Lake) -> None:
    with pytest.raises(ConfigError):
        compact(lake, table="forecasts")
