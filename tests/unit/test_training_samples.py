"""The shipped real daily sample: present, small, valid bars, and loadable into a lake."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np

from tickcast.lake import Lake
from tickcast.settings import load_settings
from training.samples import DAILY_SAMPLE, load_real_daily, sample_bars, write_sample_to_lake
from training.targets import bars_version, derive, normalize_target, series_from_frame, series_from_lake


def test_sample_is_small_and_complete() -> None:
    assert DAILY_SAMPLE.stat().st_size < 2_000_000
    df = load_real_daily()
    assert sorted(df["ticker"].unique()) == ["IXIC", "SPX"]
    assert (df.groupby("ticker").size() == 5031).all()
    assert df["start"].min() == datetime(1999, 1, 4, 5, tzinfo=UTC)  # midnight New York


def test_every_bar_validates() -> None:
    bars = sample_bars(["SPX"])
    assert len(bars) == 5031
    assert bars[0].interval == "day" and bars[0].source == "sample:arch"


def test_write_sample_to_lake_is_idempotent(tmp_path) -> None:
    lake = Lake(load_settings(lake={"url": f"file://{tmp_path}/lake"}).lake)
    since = datetime(2018, 11, 1, tzinfo=UTC)
    assert write_sample_to_lake(lake, ["SPX"], start=since) == 40
    write_sample_to_lake(lake, ["SPX"], start=since)
    assert lake.bar_tickers("day") == ["SPX"]
    # December 2018: 21 weekdays less Christmas and the national day of mourning on the 5th
    table = lake.read_bars("SPX", "day", start=datetime(2018, 12, 1, tzinfo=UTC))
    assert table.num_rows == 19
    series = series_from_lake(lake, "close", "day", ["SPX"])
    assert len(series["SPX"]) == 40


def test_series_from_lake_as_of_an_old_version_reads_the_same_bars(tmp_path) -> None:
    lake = Lake(load_settings(lake={"url": f"file://{tmp_path}/lake"}).lake)
    assert bars_version(lake) is None
    write_sample_to_lake(lake, ["SPX"], start=datetime(2018, 11, 1, tzinfo=UTC))
    version = bars_version(lake)
    assert version is not None
    before = series_from_lake(lake, "close", "day", as_of=version)
    assert list(before) == ["SPX"] and len(before["SPX"]) == 40
    # more history, another ticker and a corrected bar arrive
    write_sample_to_lake(lake, start=datetime(2018, 10, 1, tzinfo=UTC), end=datetime(2018, 11, 1, tzinfo=UTC))
    write_sample_to_lake(lake, ["IXIC"], start=datetime(2018, 11, 1, tzinfo=UTC))
    last = sample_bars(["SPX"])[-1]
    lake.write_bars([dataclasses.replace(last, close=last.close * 1.01, high=last.high * 1.01)])
    now = series_from_lake(lake, "close", "day")
    assert sorted(now) == ["IXIC", "SPX"] and len(now["SPX"]) == 40 + 23
    assert now["SPX"][-1] != before["SPX"][-1]
    again = series_from_lake(lake, "close", "day", as_of=version)
    assert list(again) == ["SPX"] and np.array_equal(again["SPX"], before["SPX"])
    assert bars_version(lake, version) == version and bars_version(lake) == version + 3


def test_targets() -> None:
    df = load_real_daily(["SPX"]).head(4)
    closes = df["close"].to_numpy()
    series = series_from_frame(df, "log-returns")["SPX"]
    np.testing.assert_allclose(series, np.diff(np.log(closes)))
    cols = {"volume": np.array([0.0, 9.0]), "high": np.array([3.0, 4.0]), "low": np.array([1.0, 1.5])}
    np.testing.assert_allclose(derive(cols, "log_volume"), np.log1p([0.0, 9.0]))
    np.testing.assert_allclose(derive(cols, "range"), [2.0, 2.5])
    assert normalize_target("log_returns") == "log_return"
