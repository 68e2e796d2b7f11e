"""The dashboard's numbers: resampling, spikes, data quality, score aggregates, forecasts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from dashboard_lake import make_bars, make_forecasts, score_forecasts, session_starts

from dashboard import analysis
from tickcast.lake import forecasts_to_table, scores_to_table


def frame(bars: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "start": pd.to_datetime([b.start for b in bars], utc=True),
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
            "vwap": [b.vwap for b in bars],
        }
    )


@pytest.fixture
def minute_bars() -> pd.DataFrame:
    starts = session_starts("minute", 3, 120, datetime(2024, 3, 4, tzinfo=UTC))
    return frame(make_bars("AAA", "minute", starts, seed=1))


def test_resample_matches_pandas_groupby(minute_bars: pd.DataFrame) -> None:
    bucket = analysis.Bucket("15min", 900)
    out = analysis.resample_bars(minute_bars, bucket)
    keys = minute_bars["start"].dt.floor("15min")
    expected = minute_bars.groupby(keys).agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
    )
    assert len(out) == len(expected) == 3 * 8
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(out[col].to_numpy(), expected[col].to_numpy())
    assert (out["bars"] == 15).all()
    weights = minute_bars["vwap"] * minute_bars["volume"]
    np.testing.assert_allclose(
        out["vwap"].to_numpy(), (weights.groupby(keys).sum() / minute_bars["volume"].groupby(keys).sum()).to_numpy()
    )


def test_display_bars_keeps_small_ranges_and_resamples_large_ones(minute_bars: pd.DataFrame) -> None:
    same, bucket = analysis.display_bars(minute_bars, "minute", 1000)
    assert bucket.label == "1min" and len(same) == len(minute_bars)
    small, bucket = analysis.display_bars(minute_bars, "minute", 50)
    # 360 minute bars over three sessions: 10-minute candles give 36, the finest that fit in 50
    assert bucket.label == "10min" and len(small) == 36
    assert small["volume"].sum() == pytest.approx(minute_bars["volume"].sum())


def test_calendar_buckets_for_day_bars() -> None:
    starts = session_starts("day", 300, 1, datetime(2023, 1, 2, tzinfo=UTC))
    bars = frame(make_bars("SPX", "day", starts, seed=2))
    shown, bucket = analysis.display_bars(bars, "day", 100)
    assert bucket.label == "1W"
    assert shown["start"].dt.dayofweek.eq(0).all()  # weeks start on Monday
    assert shown["bars"].sum() == 300


def test_volume_spike_found(minute_bars: pd.DataFrame) -> None:
    spikes = analysis.volume_spikes(minute_bars, window=20, threshold=4.0)
    hits = spikes[spikes["spike"].fillna(False)]
    # make_bars multiplies the middle bar's volume by 25
    assert len(minute_bars) // 2 in hits.index
    assert hits["zscore"].max() > 10


def test_log_returns_skip_the_night(minute_bars: pd.DataFrame) -> None:
    within = analysis.log_returns(minute_bars, "minute", within_day=True)
    every = analysis.log_returns(minute_bars, "minute", within_day=False)
    assert len(every) == len(minute_bars) - 1
    assert len(within) == len(minute_bars) - 3  # the first bar of each of the three days has none


def test_correlations_of_changes(minute_bars: pd.DataFrame) -> None:
    levels = analysis.correlations(minute_bars)
    changes = analysis.correlations(minute_bars, changes=True)
    assert list(levels.columns) == ["open", "high", "low", "close", "vwap", "volume"]
    assert levels.loc["close", "vwap"] > 0.9
    assert np.allclose(np.diag(changes.to_numpy()), 1.0)


def test_quality_minute_gaps_and_missing_days(minute_bars: pd.DataFrame) -> None:
    holed = minute_bars.drop(index=range(10, 15))  # five missing bars on day one
    holed = holed[holed["start"].dt.day != 5]  # and the whole second day
    holed = pd.concat([holed, holed.iloc[[0]]])  # one duplicate
    report = analysis.data_quality(holed.sort_values("start").reset_index(drop=True), "minute")
    assert report.duplicates == 1
    assert report.gaps["missing_bars"].tolist() == [5]
    assert report.missing_days == ["2024-03-05"]
    assert report.missing == 5 + 120
    assert report.bars == len(holed)
    assert report.completeness < 1


def test_quality_day_bars_skip_weekends() -> None:
    starts = session_starts("day", 10, 1, datetime(2024, 3, 4, tzinfo=UTC))  # two weeks of weekdays
    bars = frame(make_bars("SPX", "day", starts, seed=3))
    full = analysis.data_quality(bars, "day")
    assert full.missing == 0 and full.gaps.empty and full.expected == 10
    holed = bars.drop(index=[6]).reset_index(drop=True)  # Tuesday of week two
    report = analysis.data_quality(holed, "day")
    assert report.missing == 1 and report.missing_days == ["2024-03-12"]
    assert report.gaps["missing_bars"].tolist() == [1]


def test_quality_flags_invalid_rows(minute_bars: pd.DataFrame) -> None:
    broken = minute_bars.copy()
    broken.loc[3, "low"] = broken.loc[3, "high"] + 1
    assert analysis.data_quality(broken, "minute").invalid == 1


def scores_df(every: int = 3) -> pd.DataFrame:
    starts = session_starts("minute", 1, 120, datetime(2024, 3, 4, tzinfo=UTC))
    bars = make_bars("AAA", "minute", starts, seed=4)
    forecasts = make_forecasts(bars, every, 4)
    table = scores_to_table(score_forecasts(forecasts, bars)).drop_columns(["interval", "ticker", "period"])
    return analysis.scores_frame(table)


def test_score_summary_matches_definitions() -> None:
    df = scores_df()
    summary = analysis.score_summary(df).iloc[0]
    assert summary["model"] == "tickcast-bundled/1"
    assert summary["MASE"] == pytest.approx(df["abs_error"].sum() / df["naive_abs_error"].sum())
    assert summary["WQL"] == pytest.approx(df["quantile_loss"].sum() / df["actual"].abs().sum())
    assert summary["coverage_80"] == pytest.approx(df["covered_80"].mean())
    assert summary["steps"] == len(df)
    by_step = analysis.score_summary(df, by=("model", "step"))
    assert by_step["step"].tolist() == [1, 2, 3, 4]


def test_rolling_scores_end_at_the_window_value() -> None:
    df = scores_df()
    rolling = analysis.rolling_scores(df, window=20)
    last = rolling.iloc[-1]
    tail = df.tail(20)
    assert last["MASE"] == pytest.approx(tail["abs_error"].sum() / tail["naive_abs_error"].sum())
    assert rolling["target_start"].is_monotonic_increasing
    assert analysis.rolling_scores(df.iloc[0:0], 20).empty


def test_latest_forecast_and_levels() -> None:
    starts = session_starts("minute", 1, 30, datetime(2024, 3, 4, tzinfo=UTC))
    bars = make_bars("AAA", "minute", starts, seed=5)
    forecasts = make_forecasts(bars, 10, 5)
    table = forecasts_to_table(forecasts).drop_columns(["interval", "ticker", "period"])
    df = analysis.forecasts_frame(table)
    latest = analysis.latest_forecast(df)
    assert latest["last_bar_start"].iloc[0] == pd.Timestamp(bars[29].start)
    assert latest["step"].tolist() == [1, 2, 3, 4, 5]
    assert (latest["p10"] < latest["p50"]).all() and (latest["p50"] < latest["p90"]).all()
    assert analysis.latest_forecast(df, "other/1").empty
    history = analysis.one_step_history(df)
    assert len(history) == 3
    assert history["step_start"].iloc[0] == pd.Timestamp(bars[9].start + timedelta(minutes=1))


def test_forecast_without_p10_uses_the_nearest_level() -> None:
    starts = session_starts("minute", 1, 10, datetime(2024, 3, 4, tzinfo=UTC))
    forecast = make_forecasts(make_bars("AAA", "minute", starts, seed=6), 10, 2)[0]
    table = forecasts_to_table([forecast]).drop_columns(["interval", "ticker", "period"])
    df = table.to_pandas()
    df["p10"] = np.nan
    df["p50"] = np.nan
    import pyarrow as pa

    out = analysis.forecasts_frame(pa.Table.from_pandas(df, preserve_index=False))
    np.testing.assert_allclose(out["p10"], forecast.quantiles["0.1"])
    np.testing.assert_allclose(out["p50"], forecast.quantiles["0.5"])
