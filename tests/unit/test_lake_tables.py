"""The lake's Delta tables on file://: one row per bar, exactly-once positions, partitions
sized to the data, time travel, optimize without a duplicate window, vacuum, bad input."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import deltalake
import duckdb
import polars as pl
import pyarrow as pa
import pytest

from tickcast.contracts import Bar, Forecast, Score
from tickcast.errors import ConfigError
from tickcast.lake import (
    BARS,
    FORECASTS,
    AlreadyCommitted,
    BarWriter,
    Lake,
    SchemaVersionError,
    bar_periods,
    bars_to_table,
    maintenance,
    parse_lake_url,
    read_bars,
    read_forecasts,
    read_scores,
    recent_bars,
    table_to_bars,
    tables,
    write_forecasts,
    write_scores,
)
from tickcast.settings import LakeSettings, load_settings

T0 = datetime(2024, 1, 2, 23, 58, tzinfo=UTC)


def make_bars(ticker: str, n: int, start: datetime = T0, interval: str = "minute", close: float = 0.5) -> list[Bar]:
    step = {"minute": timedelta(minutes=1), "day": timedelta(days=1)}[interval]
    out = []
    for i in range(n):
        s = start + i * step
        p = 100.0 + i
        out.append(Bar(ticker, interval, s, s + step, p, p + 1, p - 1, p + close, 1000 + i, p, 7, "test"))
    return out


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(url=f"file://{tmp_path / 'lake'}"))


def external_count(lake: Lake, name: str = "bars") -> tuple[int, int]:
    """(rows, distinct bar keys) by delta-rs + DuckDB: no tickcast code reads the table."""
    con = duckdb.connect()
    con.register("t", deltalake.DeltaTable(lake.table_uri(name)).to_pyarrow_table())
    return con.execute("select count(*), count(distinct (ticker, interval, start)) from t").fetchone()  # type: ignore[return-value]


def test_bars_round_trip_in_range_and_across_partitions(lake: Lake) -> None:
    bars = make_bars("AAPL", 5) + make_bars("MSFT", 3)
    BarWriter(lake).write(bars_to_table(bars))
    table = read_bars(lake, "AAPL", "minute")
    assert table.num_rows == 5 and table_to_bars(table) == bars[:5]  # 23:58 .. 00:02: two day partitions
    assert bar_periods(lake, "minute", "AAPL") == ["2024-01-02", "2024-01-03"]
    part = read_bars(lake, "AAPL", "minute", start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=3))
    assert [b.start for b in table_to_bars(part)] == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert recent_bars(lake, "AAPL", "minute", 3)["start"].to_pylist() == [b.start for b in bars[2:5]]
    assert recent_bars(lake, "AAPL", "minute", 2, end=T0 + timedelta(minutes=2)).num_rows == 2
    assert lake.bar_tickers("minute") == ["AAPL", "MSFT"] and read_bars(lake, "NOPE").num_rows == 0


def test_partitions_are_sized_to_the_data(lake: Lake) -> None:
    """Daily bars share a partition per year, minute bars per day; one file per partition per commit."""
    daily = make_bars("AAPL", 800, datetime(2020, 1, 1, 5, tzinfo=UTC), "day")
    daily += make_bars("MSFT", 800, datetime(2020, 1, 1, 5, tzinfo=UTC), "day")
    BarWriter(lake).write(bars_to_table(daily))
    assert bar_periods(lake, "day") == ["2020", "2021", "2022"]
    files, _, rows = maintenance.file_stats(lake, BARS)
    assert (files, rows) == (3, 1600)


def test_a_bar_sent_again_is_merged_latest_wins(lake: Lake) -> None:
    writer = BarWriter(lake)
    first = writer.write(bars_to_table(make_bars("AAPL", 10)))
    again = writer.write(bars_to_table(make_bars("AAPL", 4, close=0.75)))  # corrected revisions
    assert (first.merged, again.merged) == (False, True)
    closes = read_bars(lake, "AAPL")["close"].to_pylist()
    assert closes[:4] == [100.75 + i for i in range(4)] and closes[4:] == [100.5 + i for i in range(4, 10)]
    assert external_count(lake) == (10, 10)
    # a writer that never saw the table (another process) merges as well
    assert BarWriter(lake).write(bars_to_table(make_bars("AAPL", 2))).merged
    assert external_count(lake) == (10, 10)


def test_a_key_twice_in_one_batch_lands_once_the_last_wins(lake: Lake) -> None:
    bars = make_bars("AAPL", 3) + make_bars("AAPL", 2, close=0.25)  # two revisions of the first two bars
    assert BarWriter(lake).write(bars_to_table(bars)).merged
    assert read_bars(lake, "AAPL")["close"].to_pylist() == [100.25, 101.25, 102.5]
    assert external_count(lake) == (3, 3)


def test_positions_live_in_the_table_and_a_replay_is_refused(lake: Lake) -> None:
    writer = BarWriter(lake)
    writer.write(bars_to_table(make_bars("AAPL", 5)), txns=[("g:t:0", 4)], firsts={"g:t:0": 0})
    assert tables.transaction_version(lake, BARS, "g:t:0") == 4
    with pytest.raises(AlreadyCommitted, match="already holds g:t:0 up to 4"):
        writer.write(bars_to_table(make_bars("AAPL", 5)), txns=[("g:t:0", 4)], firsts={"g:t:0": 3})
    writer.write(bars_to_table(make_bars("AAPL", 3, T0 + timedelta(hours=1))), txns=[("g:t:0", 7)], firsts={"g:t:0": 5})
    assert tables.transaction_version(lake, BARS, "g:t:0") == 7 and external_count(lake) == (8, 8)


def test_time_travel_by_version_and_timestamp(lake: Lake) -> None:
    writer = BarWriter(lake)
    v1 = writer.write(bars_to_table(make_bars("AAPL", 5))).version
    stamp = datetime.now(UTC)
    writer.write(bars_to_table(make_bars("AAPL", 5, T0 + timedelta(hours=1))))
    assert read_bars(lake, "AAPL").num_rows == 10
    assert read_bars(lake, "AAPL", as_of=v1).num_rows == 5
    assert read_bars(lake, "AAPL", as_of=stamp).num_rows == 5
    with pytest.raises(Exception, match="no version as of 99"):
        read_bars(lake, "AAPL", as_of=99)


def test_a_time_from_history_reads_that_commit_though_the_log_file_landed_later(lake: Lake) -> None:
    """A commit's log file is written a moment after its timestamp; the store's modification
    time is later still on a slow disk or S3. A time copied from ``history`` must still read the
    version it names (it once read the version before, 1 run in 20 under load)."""
    import os

    writer = BarWriter(lake)
    writer.write(bars_to_table(make_bars("AAPL", 5)))
    writer.write(bars_to_table(make_bars("AAPL", 5, T0 + timedelta(hours=1))))
    for log_file in (Path(lake.table_uri("bars").removeprefix("file://")) / "_delta_log").glob("*.json"):
        late = log_file.stat().st_mtime + 5  # five seconds after the commit timestamp
        os.utime(log_file, (late, late))
    for entry in tables.history(lake, BARS):
        stamp = datetime.fromisoformat(entry["timestamp"])
        expected = 5 * entry["version"]  # version 0 creates the table empty
        assert read_bars(lake, "AAPL", as_of=stamp).num_rows == expected, entry
    with pytest.raises(Exception, match="no version as of"):
        read_bars(lake, "AAPL", as_of=datetime(2000, 1, 1, tzinfo=UTC))


def test_optimize_dedupes_sorts_and_a_reader_never_sees_a_row_twice(lake: Lake) -> None:
    forecasts = [
        Forecast("AAPL", "minute", "m", "1", T0, T0 + timedelta(minutes=i), 2, "close", [1.0, 2.0],
                 {"0.1": [0.5, 1.0], "0.5": [1.0, 2.0], "0.9": [1.5, 3.0]})
        for i in range(40)
    ]  # fmt: skip
    for chunk in range(0, 40, 4):  # ten commits, and a replay of the first ones (a forecaster restart)
        write_forecasts(lake, forecasts[chunk : chunk + 4])
    write_forecasts(lake, forecasts[:8])
    assert tables.scan(lake, FORECASTS, unique=False).num_rows == 96
    seen: list[tuple[int, int]] = []
    deduped: list[int] = []
    stop = threading.Event()

    def reader() -> None:  # the raw table (no dedupe on read) and what tickcast readers return
        while not stop.is_set():
            raw = tables.scan(lake, FORECASTS, columns=["forecast_id", "step"], unique=False)
            seen.append((raw.num_rows, len(set(zip(*raw.to_pydict().values(), strict=True)))))
            deduped.append(read_forecasts(lake, "AAPL").num_rows)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = maintenance.optimize(lake, FORECASTS)
    finally:
        stop.set()
        thread.join()
    # every key at every moment, never more rows than before: no window with a partition twice
    assert seen and all(keys == 80 and rows <= 96 for rows, keys in seen), seen
    assert set(deduped) == {80}
    assert (report.files_before, report.files_after, report.rows_after) == (13, 2, 80)  # two day partitions
    assert tables.scan(lake, FORECASTS, unique=False).num_rows == 80
    rows = read_forecasts(lake, "AAPL").to_pylist()
    assert [(r["step"], r["p10"], r["quantile_values"]) for r in rows[:2]] == [
        (1, 0.5, [0.5, 1.0, 1.5]),
        (2, 1.0, [1.0, 2.0, 3.0]),
    ]


def test_vacuum_keeps_time_travel_within_the_retention(lake: Lake) -> None:
    writer = BarWriter(lake)
    v1 = writer.write(bars_to_table(make_bars("AAPL", 5))).version
    writer.write(bars_to_table(make_bars("AAPL", 5, T0 + timedelta(minutes=1))))  # a merge rewrites files
    assert maintenance.vacuum(lake, BARS).deleted_files == 0  # 7 days by default
    assert read_bars(lake, "AAPL", as_of=v1).num_rows == 5
    assert maintenance.vacuum(lake, BARS, retention_hours=0).deleted_files >= 1
    assert read_bars(lake, "AAPL").num_rows == 6


def test_forecast_and_score_tables_round_trip(lake: Lake) -> None:
    f = Forecast("AAPL", "minute", "m", "1", T0, T0, 2, "close", [1.0, 2.0],
                 {"0.1": [0.5, 1.0], "0.5": [1.0, 2.0], "0.9": [1.5, 3.0]})  # fmt: skip
    write_forecasts(lake, [f])
    rows = read_forecasts(lake, "AAPL").to_pylist()
    assert [(r["step"], r["p10"], r["p90"], r["quantile_values"]) for r in rows] == [
        (1, 0.5, 1.5, [0.5, 1.0, 1.5]),
        (2, 1.0, 3.0, [1.0, 2.0, 3.0]),
    ]
    s = Score.compute(f, 1, actual=1.2, last_actual=1.0)
    write_scores(lake, [s])
    (row,) = read_scores(lake, "AAPL").to_pylist()
    assert row["forecast_id"] == f.id and row["covered_80"] is True and row["ticker"] == "AAPL"


def test_a_table_from_a_newer_schema_is_refused(lake: Lake) -> None:
    BarWriter(lake).write(bars_to_table(make_bars("AAPL", 2)))
    table = deltalake.DeltaTable(lake.table_uri("bars"))
    table.alter.set_table_description('{"tickcast_table": "bars", "schema_version": 9}')
    with pytest.raises(SchemaVersionError) as info:
        read_bars(lake, "AAPL")
    assert "schema version 9" in info.value.one_line() and "knows up to 1" in info.value.one_line()


def test_readers_that_are_not_tickcast_count_the_bars(lake: Lake) -> None:
    BarWriter(lake).write(bars_to_table(make_bars("AAPL", 7) + make_bars("MSFT", 5)))
    assert pl.read_delta(lake.table_uri("bars")).height == 12
    assert external_count(lake) == (12, 12)


def test_bad_input_is_a_clear_error(lake: Lake) -> None:
    with pytest.raises(ValueError, match="column 'close' is missing"):
        BarWriter(lake).write(bars_to_table(make_bars("AAPL", 2)).drop_columns(["close"]))
    assert external_count(lake) == (0, 0) if (Path(lake.root) / "bars").exists() else True


def test_relative_file_url_resolves_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_lake_url("file://.tickcast/lake").root == str(tmp_path / ".tickcast/lake")
    assert parse_lake_url("file:///abs/lake").root == "/abs/lake"


def test_blobs_are_written_atomically(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    lake.write_bytes("reports/x/a.bin", b"1" * 1000)
    assert [p.name for p in (tmp_path / "reports/x").iterdir()] == ["a.bin"]
    assert lake.list_files("reports") == ["reports/x/a.bin"]


@pytest.mark.parametrize("url", ["http://x/y", "lake", "s3://", "gs://bucket"])
def test_malformed_lake_url_names_the_setting(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_LAKE__URL", url)
    with pytest.raises(ConfigError, match="TICKCAST_LAKE__URL"):
        load_settings()


def test_missing_s3_credentials_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="TICKCAST_LAKE__S3_ACCESS_KEY_ID"):
        Lake(LakeSettings(url="s3://bucket/prefix", s3_endpoint_url="http://127.0.0.1:1"))


def test_s3_storage_options_use_conditional_put() -> None:
    from tickcast.lake import delta_storage_options

    options = delta_storage_options(
        LakeSettings(
            url="s3://b/p", s3_endpoint_url="http://127.0.0.1:9000", s3_access_key_id="k", s3_secret_access_key="s"
        )
    )
    assert options["aws_conditional_put"] == "etag" and options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and pa is not None
