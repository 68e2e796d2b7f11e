"""The lake on file://: partition layout, atomic writes, pruned reads, bad URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tickcast.contracts import Bar
from tickcast.errors import ConfigError
from tickcast.lake import Lake, parse_lake_url, table_to_bars
from tickcast.settings import LakeSettings, load_settings

T0 = datetime(2024, 1, 2, 23, 58, tzinfo=UTC)


def make_bars(ticker: str, n: int, start: datetime = T0) -> list[Bar]:
    out = []
    for i in range(n):
        s = start + timedelta(minutes=i)
        p = 100.0 + i
        out.append(Bar(ticker, "minute", s, s + timedelta(minutes=1), p, p + 1, p - 1, p + 0.5, 1000 + i, p, 7, "test"))
    return out


def test_write_read_round_trip_with_partitions(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    bars = make_bars("AAPL", 5) + make_bars("MSFT", 3)
    written = lake.write_bars(bars, "part-0.parquet")
    assert sorted(written) == [
        "bars/interval=minute/ticker=AAPL/date=2024-01-02/part-0.parquet",
        "bars/interval=minute/ticker=AAPL/date=2024-01-03/part-0.parquet",
        "bars/interval=minute/ticker=MSFT/date=2024-01-02/part-0.parquet",
        "bars/interval=minute/ticker=MSFT/date=2024-01-03/part-0.parquet",
    ]
    table = lake.read_bars("AAPL")
    assert table_to_bars(table, "AAPL", "minute") == [
        Bar(**{**{n: getattr(b, n) for n in Bar.__slots__}}) for b in bars[:5]
    ]
    # partition columns live in the path, not in the file
    assert "ticker" not in pq.read_schema(tmp_path / written[0]).names
    assert lake.bar_tickers() == ["AAPL", "MSFT"]
    # a replay of the same file name overwrites instead of duplicating
    lake.write_bars(bars, "part-0.parquet")
    assert lake.read_bars("AAPL").num_rows == 5
    # readable without tickcast
    n = duckdb.sql(
        f"select count(*) from read_parquet('{tmp_path}/bars/**/*.parquet', hive_partitioning=true) where ticker='MSFT'"
    ).fetchall()
    assert n == [(3,)]


def test_time_range_read_prunes_dates(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    lake.write_bars(make_bars("AAPL", 5), "a.parquet")
    # a corrupt file in a pruned partition proves the pruned date is never opened
    (tmp_path / "bars/interval=minute/ticker=AAPL/date=2024-01-02/zzz.parquet").write_bytes(b"garbage")
    table = lake.read_bars("AAPL", start=datetime(2024, 1, 3, tzinfo=UTC), end=datetime(2024, 1, 3, 0, 2, tzinfo=UTC))
    assert table.num_rows == 2
    assert lake.read_bars("NOPE").num_rows == 0


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    lake.write_bytes("reports/x/a.bin", b"1" * 1000)
    assert [p.name for p in (tmp_path / "reports/x").iterdir()] == ["a.bin"]
    assert lake.list_files("reports") == ["reports/x/a.bin"]


def test_relative_file_url_resolves_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_lake_url("file://.tickcast/lake").root == str(tmp_path / ".tickcast/lake")
    assert parse_lake_url("file:///abs/lake").root == "/abs/lake"


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


def test_forecast_and_score_tables_round_trip(tmp_path: Path) -> None:
    from tickcast.contracts import Forecast, Score
    from tickcast.lake import forecasts_to_table, read_forecasts, read_scores, scores_to_table

    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    f = Forecast(
        ticker="AAPL",
        interval="minute",
        model_id="m",
        model_version="1",
        issued_at=T0,
        last_bar_start=T0,
        horizon=2,
        target="close",
        mean=[1.0, 2.0],
        quantiles={"0.1": [0.5, 1.0], "0.5": [1.0, 2.0], "0.9": [1.5, 3.0]},
    )
    lake.write_partitioned("forecasts", forecasts_to_table([f]), ("interval", "ticker", "date"), "f.parquet")
    rows = read_forecasts(lake, "AAPL").to_pylist()
    assert [(r["step"], r["p10"], r["p90"], r["quantile_values"]) for r in rows] == [
        (1, 0.5, 1.5, [0.5, 1.0, 1.5]),
        (2, 1.0, 3.0, [1.0, 2.0, 3.0]),
    ]
    s = Score.compute(f, 1, actual=1.2, last_actual=1.0)
    lake.write_partitioned("scores", scores_to_table([s]), ("interval", "ticker", "date"), "s.parquet")
    (row,) = read_scores(lake, "AAPL").to_pylist()
    assert row["forecast_id"] == f.id and row["covered_80"] is True
