"""The dashboard's lake reads: windows ending at the newest bar, partition pruning, reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from dashboard_lake import write_backtest_report, write_sample

from dashboard import data
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
    assert window.periods == ["2024-03-06"]  # minute bars: one period per UTC day
    everything = data.read_window(lake, "AAA", "minute", None)
    assert len(everything.bars) == 180
    assert everything.bars["start"].is_monotonic_increasing
    two_days = data.read_window(lake, "AAA", "minute", timedelta(days=1, minutes=1))
    assert len(two_days.bars) == 60 + 1  # the newest session and the last bar of the one before
    assert two_days.periods == ["2024-03-05", "2024-03-06"]


def test_window_reads_only_the_periods_it_needs(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sample(lake, tickers=("AAA",), days=3, forecasts=False)
    read: list[tuple[str, str]] = []
    real = data.read_bar_periods

    def spy(lake_: Lake, ticker: str, interval: str, first: str, last: str) -> pd.DataFrame:
        read.append((first, last))
        return real(lake_, ticker, interval, first, last)

    monkeypatch.setattr(data, "read_bar_periods", spy)
    window = data.read_window(lake, "AAA", "minute", timedelta(days=1))
    assert not window.empty
    assert read == [("2024-03-06", "2024-03-06"), ("2024-03-05", "2024-03-05")]
    read.clear()
    data.read_window(lake, "AAA", "minute", None)
    assert read == [("2024-03-06", "2024-03-06"), ("2024-03-04", "2024-03-05")]


def test_periods_come_from_the_delta_log_per_ticker(lake: Lake) -> None:
    # Day bars: a period is a year. BBB's bars are written in their own commit (own files),
    # so the log's ticker statistics rule its files out for AAA.
    write_sample(lake, tickers=("AAA",), interval="day", days=5, forecasts=False)
    write_sample(lake, tickers=("ZZZ",), interval="day", days=3, first_day=datetime(2023, 6, 1, tzinfo=UTC))
    assert data.periods(lake, "bars", "AAA", "day") == ["2024"]
    assert data.periods(lake, "bars", "ZZZ", "day") == ["2023"]
    assert data.periods(lake, "forecasts", "AAA", "day") == []
    assert data.periods(lake, "scores", "NOPE", "day") == []
    with pytest.raises(ValueError, match="unknown table"):
        data.periods(lake, "open_close", "AAA", "day")


def test_empty_and_unknown(lake: Lake) -> None:
    assert data.bar_intervals(lake) == []
    window = data.read_window(lake, "NOPE", "minute", timedelta(days=1))
    assert window.empty and window.last is None
    write_sample(lake, tickers=("AAA",), interval="day", days=5, forecasts=False)
    assert data.bar_intervals(lake) == ["day"]
    window = data.read_window(lake, "AAA", "day", None)
    assert len(window.bars) == 5 and window.periods == ["2024"]


def test_a_period_that_only_may_hold_the_ticker_is_skipped() -> None:
    newest_reads: list[str] = []

    def newest(first: str, last: str) -> pd.DataFrame:
        newest_reads.append(first)
        if first == "2024-03-06":  # statistics said maybe; the files hold other tickers only
            return data.bars_frame_empty()
        return pd.DataFrame({"start": [pd.Timestamp(f"{first} 15:00", tz="UTC")], "close": [1.0]})

    window = data.assemble_window(["2024-03-05", "2024-03-06"], None, "minute", newest, newest)
    assert newest_reads == ["2024-03-06", "2024-03-05"]
    assert window.last == pd.Timestamp("2024-03-05 15:00", tz="UTC") and window.periods == ["2024-03-05"]


def test_periods_since() -> None:
    found = ["2024-03-04", "2024-03-05", "2024-03-06"]
    assert data.periods_since(found, "minute", None) == found
    assert data.periods_since(found, "minute", pd.Timestamp("2024-03-05 15:00", tz="UTC")) == found[1:]
    assert data.periods_since(["2023", "2024"], "day", pd.Timestamp("2024-03-05", tz="UTC")) == ["2024"]


def test_forecast_and_score_periods(lake: Lake) -> None:
    write_sample(lake, tickers=("AAA", "BBB"), days=2)
    assert data.periods(lake, "forecasts", "AAA", "minute") == ["2024-03-04", "2024-03-05"]
    table = data.read_row_periods(lake, "forecasts", "AAA", "minute", "2024-03-05", "2024-03-05")
    assert table.num_rows > 0 and set(table["ticker"].to_pylist()) == {"AAA"}
    assert {t.date().isoformat() for t in table["last_bar_start"].to_pylist()} == {"2024-03-05"}
    scores = data.read_row_periods(lake, "scores", "AAA", "minute", "2024-03-04", "2024-03-05")
    assert scores.num_rows > 0 and set(scores["ticker"].to_pylist()) == {"AAA"}


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
    from serving.streaming.scoring import Aggregate
    from tickcast.lake import write_aggregates

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
    assert "period" not in latest.columns and set(latest["scope"]) == {"model", "ticker"}
