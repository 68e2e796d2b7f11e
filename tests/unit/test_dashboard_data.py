"""The dashboard's lake reads: windows ending at the newest bar, partition pruning, reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from dashboard_lake import write_backtest_report, write_sample

from dashboard import data
from tickcast.errors import StoreUnavailable
from tickcast.lake import Lake
from tickcast.settings import Settings


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake(settings.lake)


def test_window_ends_at_the_newest_bar(lake: Lake) -> None:
    sample = write_sample(lake, tickers=("AAA",), days=3, bars_per_day=60, forecasts=False)
    bars = sample.bars["AAA"]
    window = data.read_window(lake, "AAA", "minute", timedelta(hours=1))
    assert window.last == pd.Timestamp(bars[-1].start)
    assert len(window.bars) == 60  # one session of 60 bars fits in the last hour
    assert window.days == ["2024-03-06"]
    everything = data.read_window(lake, "AAA", "minute", None)
    assert len(everything.bars) == 180
    assert everything.bars["start"].is_monotonic_increasing
    two_days = data.read_window(lake, "AAA", "minute", timedelta(days=1, minutes=1))
    assert len(two_days.bars) == 60 + 1  # the newest session and the last bar of the one before
    assert two_days.days == ["2024-03-05", "2024-03-06"]


def test_window_reads_only_the_partitions_it_needs(lake: Lake) -> None:
    write_sample(lake, tickers=("AAA", "BBB"), days=3, forecasts=False)
    # Poison the oldest day of AAA and every day of BBB: a read that opened them would fail.
    lake.write_bytes("bars/interval=minute/ticker=AAA/date=2024-03-04/zz-corrupt.parquet", b"not parquet")
    for day in ("2024-03-04", "2024-03-05", "2024-03-06"):
        lake.write_bytes(f"bars/interval=minute/ticker=BBB/date={day}/zz-corrupt.parquet", b"not parquet")
    window = data.read_window(lake, "AAA", "minute", timedelta(days=1))
    assert not window.empty
    with pytest.raises(StoreUnavailable, match=r"zz-corrupt|Parquet|magic"):
        data.read_window(lake, "AAA", "minute", None)


def test_empty_and_unknown(lake: Lake) -> None:
    assert data.bar_intervals(lake) == []
    window = data.read_window(lake, "NOPE", "minute", timedelta(days=1))
    assert window.empty and window.last is None
    write_sample(lake, tickers=("AAA",), interval="day", days=5, forecasts=False)
    assert data.bar_intervals(lake) == ["day"]
    assert data.partition_dates(lake, "bars", "AAA", "day")[0] == "2024-03-04"


def test_days_since() -> None:
    dates = ["2024-03-04", "2024-03-05", "2024-03-06"]
    assert data.days_since(dates, None) == dates
    assert data.days_since(dates, pd.Timestamp("2024-03-05 15:00", tz="UTC")) == dates[1:]


def test_forecast_and_score_partitions(lake: Lake) -> None:
    write_sample(lake, tickers=("AAA",), days=2)
    table = data.read_table_days(lake, "forecasts", "AAA", "minute", "2024-03-05", "2024-03-05")
    assert table is not None and table.num_rows > 0
    assert set(table["date"].to_pylist()) == {"2024-03-05"}
    scores = data.read_table_days(lake, "scores", "AAA", "minute", "2024-03-04", "2024-03-05")
    assert scores is not None and scores.num_rows > 0


def test_reports(lake: Lake) -> None:
    assert data.list_reports(lake) == []
    write_backtest_report(lake, "older", created_at="2024-03-01T00:00:00+00:00")
    write_backtest_report(lake, "newer", created_at="2024-03-02T00:00:00+00:00")
    reports = data.list_reports(lake)
    assert [r.name for r in reports] == ["newer", "older"]
    report = data.read_report(lake, "newer")
    assert set(report.summary["model"]) == {"naive", "seasonal_naive", "tickcast-bundled"}
    assert {"MASE", "WQL", "coverage_80"} <= set(report.summary.columns)
    assert set(report.per_step["step"]) == {1, 2, 3, 4}
    assert "example_forecast.png" in report.images
    assert report.info.meta["config"]["horizon"] == 4


def test_latest_aggregates(lake: Lake, make_settings: Callable[..., Settings]) -> None:
    from serving.streaming.lakeio import write_aggregates
    from serving.streaming.scoring import Aggregate

    assert data.latest_aggregates(lake, "minute").empty
    first = datetime(2024, 3, 4, 15, tzinfo=UTC)
    old = [Aggregate(None, "m", "1", 10, 1.0, 1.1, 0.01, 0.7, 10)]
    new = [
        Aggregate(None, "m", "1", 20, 1.0, 0.9, 0.02, 0.8, 20),
        Aggregate("AAA", "m", "1", 20, 1.0, 0.8, 0.02, 0.8, 20),
    ]
    write_aggregates(lake, old, first, "minute", 256)
    write_aggregates(lake, new, first + timedelta(minutes=1), "minute", 256)
    latest = data.latest_aggregates(lake, "minute")
    assert len(latest) == 2 and set(latest["steps"]) == {20}
