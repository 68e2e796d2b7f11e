"""The numbers behind the pages, as plain pandas: display resampling, returns, correlations,
volume spikes, data quality (gaps and missing bars) and forecast-score aggregates.

Nothing here imports Streamlit, so tests and the benchmark call it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from tickcast.contracts import INTERVALS

PRICE_COLUMNS = ("open", "high", "low", "close", "vwap")
CORRELATION_COLUMNS = ("open", "high", "low", "close", "vwap", "volume")
# A normal distribution's MAD is 0.6745 sigma: scaling by 1.4826 makes the robust z comparable to a z-score.
MAD_TO_SIGMA = 1.4826


# -- bars for display ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    """A display resolution: a fixed width in seconds, or a calendar period (week, month, ...)."""

    label: str
    seconds: int | None = None
    period: str | None = None

    @property
    def is_daily_or_coarser(self) -> bool:
        """Whether one bucket spans at least a day (the chart then labels dates only)."""
        return self.period is not None or (self.seconds or 0) >= 86_400


_FIXED_BUCKETS = (
    Bucket("1s", 1),
    Bucket("5s", 5),
    Bucket("15s", 15),
    Bucket("30s", 30),
    Bucket("1min", 60),
    Bucket("2min", 120),
    Bucket("5min", 300),
    Bucket("10min", 600),
    Bucket("15min", 900),
    Bucket("30min", 1800),
    Bucket("1h", 3600),
    Bucket("2h", 7200),
    Bucket("4h", 14_400),
    Bucket("1D", 86_400),
)
_CALENDAR_BUCKETS = (
    Bucket("1W", period="W"),
    Bucket("1M", period="M"),
    Bucket("1Q", period="Q"),
    Bucket("1Y", period="Y"),
)


def interval_seconds(interval: str) -> int:
    """Length of one bar of ``interval`` in seconds."""
    return int(INTERVALS[interval].total_seconds())


def native_bucket(interval: str) -> Bucket:
    """The bucket of one bar of ``interval`` (no resampling)."""
    seconds = interval_seconds(interval)
    return next(b for b in _FIXED_BUCKETS if b.seconds == seconds)


def bucket_candidates(interval: str) -> list[Bucket]:
    """Display buckets not finer than ``interval``, finest first."""
    seconds = interval_seconds(interval)
    return [b for b in _FIXED_BUCKETS if (b.seconds or 0) >= seconds] + list(_CALENDAR_BUCKETS)


def bucket_keys(starts: pd.Series, bucket: Bucket) -> pd.Series:
    """The start of the bucket each timestamp falls in (UTC)."""
    if bucket.seconds is not None:
        return starts.dt.floor(f"{bucket.seconds}s")
    naive = starts.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.dt.to_period(bucket.period).dt.start_time.dt.tz_localize("UTC")


def choose_bucket(starts: pd.Series, interval: str, max_bars: int) -> Bucket:
    """The finest bucket that shows ``starts`` in at most ``max_bars`` candles."""
    candidates = bucket_candidates(interval)
    if len(starts) <= max_bars:
        return candidates[0]
    for bucket in candidates[1:]:
        if bucket_keys(starts, bucket).nunique() <= max_bars:
            return bucket
    return candidates[-1]


def bars_frame(table: pa.Table) -> pd.DataFrame:
    """A bars table from the lake as a DataFrame sorted by start (timestamps tz-aware UTC)."""
    df = table.to_pandas()
    if df.empty:
        return pd.DataFrame(columns=["start", "end", "open", "high", "low", "close", "volume", "vwap"])
    for col in ("start", "end"):
        if col in df and df[col].dt.tz is None:
            df[col] = df[col].dt.tz_localize("UTC")
    return df.sort_values("start", kind="stable").reset_index(drop=True)


def resample_bars(df: pd.DataFrame, bucket: Bucket) -> pd.DataFrame:
    """OHLCV bars merged into ``bucket``-wide candles (empty buckets are left out, not filled).

    ``df`` must be sorted by start. VWAP is volume-weighted over the merged bars (their
    close where a bar has none); ``bars`` counts the bars merged into each candle.
    """
    keys = bucket_keys(df["start"], bucket)
    key_values = keys.dt.tz_localize(None).to_numpy()  # tz-aware to_numpy() would box Timestamps
    # sorted input: each candle is one run of equal keys, so numpy's reduceat does the work
    first = np.concatenate([[0], np.flatnonzero(key_values[1:] != key_values[:-1]) + 1])
    last = np.concatenate([first[1:] - 1, [len(df) - 1]])
    close = df["close"].to_numpy(dtype=float)
    volume = df["volume"].to_numpy(dtype=float)
    price = df["vwap"].fillna(df["close"]).to_numpy(dtype=float) if "vwap" in df else close
    volume_sum = np.add.reduceat(volume, first)
    pv_sum = np.add.reduceat(price * volume, first)
    counts = last - first + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(volume_sum > 0, pv_sum / volume_sum, np.add.reduceat(price, first) / counts)
    return pd.DataFrame(
        {
            "start": keys.iloc[first].reset_index(drop=True),
            "open": df["open"].to_numpy(dtype=float)[first],
            "high": np.maximum.reduceat(df["high"].to_numpy(dtype=float), first),
            "low": np.minimum.reduceat(df["low"].to_numpy(dtype=float), first),
            "close": close[last],
            "volume": volume_sum,
            "vwap": vwap,
            "bars": counts,
        }
    )


def display_bars(df: pd.DataFrame, interval: str, max_bars: int) -> tuple[pd.DataFrame, Bucket]:
    """The bars to draw: as they are when they fit ``max_bars``, else resampled to the finest bucket that fits."""
    if df.empty:
        return df, native_bucket(interval)
    bucket = choose_bucket(df["start"], interval, max_bars)
    if bucket == native_bucket(interval):
        out = df[["start", "open", "high", "low", "close", "volume"]].copy()
        out["vwap"] = df.get("vwap", np.nan)
        out["bars"] = 1
        return out, bucket
    return resample_bars(df, bucket), bucket


# -- exploratory analysis -----------------------------------------------------------------------
def log_returns(df: pd.DataFrame, interval: str, within_day: bool = True) -> pd.Series:
    """Log returns of the close. For intraday bars, ``within_day`` drops the first bar of each
    day, whose return spans the overnight gap and would dominate the distribution's tails."""
    close = df["close"].astype(float)
    returns = np.log(close).diff()
    if within_day and interval != "day":
        dates = df["start"].dt.date
        returns = returns.where(dates == dates.shift())
    returns.index = df["start"]
    return returns.dropna().rename("log_return")


def correlations(df: pd.DataFrame, changes: bool = False) -> pd.DataFrame:
    """Pearson correlations of open, high, low, close, vwap and volume.

    Price levels of one ticker are nearly collinear; ``changes`` correlates log changes
    instead (bar to bar), which shows how volume moves with price moves.
    """
    cols = [c for c in CORRELATION_COLUMNS if c in df and df[c].notna().any()]
    data = df[cols].astype(float)
    if changes:
        data = np.log(data.where(data > 0)).diff()
    return data.corr()


def volume_spikes(df: pd.DataFrame, window: int = 20, threshold: float = 3.0) -> pd.DataFrame:
    """Volume against its rolling median over the ``window`` previous bars.

    The z-score is robust: ``(volume - median) / (1.4826 * MAD)``, with the MAD (median
    absolute deviation) over the same previous bars, so one spike does not hide the next.
    Where the MAD is 0 (constant volume) the rolling standard deviation stands in.
    """
    volume = df["volume"].astype(float).reset_index(drop=True)
    min_periods = max(3, window // 4)
    median = volume.rolling(window, min_periods=min_periods).median().shift(1)
    deviation = (volume - median).abs()
    mad = deviation.rolling(window, min_periods=min_periods).median().shift(1) * MAD_TO_SIGMA
    std = volume.rolling(window, min_periods=min_periods).std().shift(1)
    scale = mad.where(mad > 0, std)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (volume - median) / scale.where(scale > 0)
    return pd.DataFrame(
        {
            "start": df["start"].reset_index(drop=True),
            "close": df["close"].reset_index(drop=True),
            "volume": volume,
            "rolling_median": median,
            "zscore": z,
            "spike": z > threshold,
        }
    )


@dataclass
class QualityReport:
    """Data quality of one ticker's bars over a window."""

    bars: int
    expected: int
    missing: int
    duplicates: int
    invalid: int
    zero_volume: int
    gaps: pd.DataFrame
    missing_days: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def completeness(self) -> float:
        """Share of the expected bars that are there (1.0 when nothing is expected)."""
        return self.bars / self.expected if self.expected else 1.0


def _weekdays(first: pd.Timestamp, last: pd.Timestamp) -> pd.DatetimeIndex:
    return pd.bdate_range(first.tz_localize(None).normalize(), last.tz_localize(None).normalize())


def data_quality(df: pd.DataFrame, interval: str) -> QualityReport:
    """Missing bars, gaps, duplicates and invalid rows of bars of ``interval``.

    Day bars: every weekday between the first and last bar is expected (exchange holidays
    therefore show as missing days). Intraday bars: bars are expected every ``interval``
    within each trading day, between that day's first and last bar; the time between
    sessions is not a gap, and weekdays without any bar are listed as missing days.
    """
    empty_gaps = pd.DataFrame(columns=["after", "before", "missing_bars"])
    if df.empty:
        return QualityReport(0, 0, 0, 0, 0, 0, empty_gaps)
    starts = df["start"]
    duplicates = int(starts.duplicated().sum())
    ok = (
        (df["low"] <= df["open"])
        & (df["open"] <= df["high"])
        & (df["low"] <= df["close"])
        & (df["close"] <= df["high"])
        & (df["volume"] >= 0)
    )
    invalid = int((~ok).sum())
    zero_volume = int((df["volume"] == 0).sum())
    unique = starts.drop_duplicates().reset_index(drop=True)
    days = pd.DatetimeIndex(unique.dt.tz_localize(None).dt.normalize().unique())
    weekdays = _weekdays(unique.iloc[0], unique.iloc[-1])
    missing_days = [d.date().isoformat() for d in weekdays.difference(days)]
    if interval == "day":
        dates = unique.dt.tz_localize(None).dt.normalize().to_numpy().astype("datetime64[D]")
        between = np.busday_count(dates[:-1] + 1, dates[1:]) if len(dates) > 1 else np.array([], dtype=int)
        idx = np.flatnonzero(between > 0)
        gaps = pd.DataFrame(
            {
                "after": unique.iloc[idx].to_numpy(),
                "before": unique.iloc[idx + 1].to_numpy(),
                "missing_bars": between[idx],
            }
        )
        missing = int(between.sum())
        note = "Every weekday is expected, so exchange holidays show up as missing days."
        return QualityReport(
            len(df), len(unique) + missing, missing, duplicates, invalid, zero_volume, gaps, missing_days, note
        )
    step = pd.Timedelta(seconds=interval_seconds(interval))
    diffs = unique.diff()
    dates = unique.dt.date
    same_day = dates == dates.shift()
    missing_bars = ((diffs / step).round() - 1).where(same_day & (diffs > step), 0).fillna(0).astype(int)
    idx = np.flatnonzero(missing_bars.to_numpy() > 0)
    gaps = pd.DataFrame(
        {
            "after": unique.iloc[idx - 1].to_numpy() if len(idx) else [],
            "before": unique.iloc[idx].to_numpy() if len(idx) else [],
            "missing_bars": missing_bars.iloc[idx].to_numpy() if len(idx) else [],
        }
    )
    within = int(missing_bars.sum())
    # a day's expected bars span its first to last bar, so a gap inside it does not shrink the estimate
    spans = unique.groupby(dates).agg(["min", "max"])
    per_day = int(((spans["max"] - spans["min"]) / step + 1).median())
    whole_days = len(missing_days) * per_day
    note = (
        "Bars are expected every interval within each day's first and last bar; weekdays without "
        f"any bar count as {per_day} missing bars each (a median day's span)."
    )
    return QualityReport(
        len(df),
        len(unique) + within + whole_days,
        within + whole_days,
        duplicates,
        invalid,
        zero_volume,
        gaps if not gaps.empty else empty_gaps,
        missing_days,
        note,
    )


# -- forecast scores ----------------------------------------------------------------------------
SCORE_SUMS = (
    "abs_error",
    "naive_abs_error",
    "quantile_loss",
    "abs_actual",
    "covered",
    "has_coverage",
    # the live-calibrated band (serving.streaming.calibration): zero where a step had none
    "cal_covered",
    "has_cal",
    "cal_quantile_loss",
    "cal_abs_actual",
)
#: The score metrics, raw and calibrated (NaN where no step of a group had a calibrated band).
SCORE_METRICS = ("MASE", "WQL", "coverage_80", "coverage_calibrated", "WQL_calibrated")


def scores_frame(table: pa.Table) -> pd.DataFrame:
    """Score rows from the lake with a ``model`` label (``id/version``) and the sums metrics need."""
    df = table.to_pandas()
    if df.empty:
        return df.assign(model=pd.Series(dtype=str))
    df["model"] = df["model_id"].astype(str) + "/" + df["model_version"].astype(str)
    df["abs_actual"] = df["actual"].abs()
    df["has_coverage"] = df["covered_80"].notna().astype(float)
    df["covered"] = df["covered_80"].fillna(False).astype(float)
    # scores written before calibration existed have no such columns (or nulls)
    cal = df["calibrated_covered"] if "calibrated_covered" in df else pd.Series(None, index=df.index, dtype=object)
    cal_ql = (
        df["calibrated_quantile_loss"]
        if "calibrated_quantile_loss" in df
        else pd.Series(np.nan, index=df.index, dtype=float)
    )
    df["has_cal"] = cal.notna().astype(float)
    df["cal_covered"] = cal.eq(True).astype(float)  # nulls (no band) count as not covered, not as steps
    df["cal_quantile_loss"] = cal_ql.astype(float).fillna(0.0)
    df["cal_abs_actual"] = df["abs_actual"].where(cal_ql.notna(), 0.0)
    return df.sort_values(["target_start", "step"], kind="stable").reset_index(drop=True)


def _metrics(sums: pd.DataFrame) -> pd.DataFrame:
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "MASE": sums["abs_error"] / sums["naive_abs_error"].where(sums["naive_abs_error"] > 0),
                "WQL": sums["quantile_loss"] / sums["abs_actual"].where(sums["abs_actual"] > 0),
                "coverage_80": sums["covered"] / sums["has_coverage"].where(sums["has_coverage"] > 0),
                "coverage_calibrated": sums["cal_covered"] / sums["has_cal"].where(sums["has_cal"] > 0),
                "WQL_calibrated": sums["cal_quantile_loss"] / sums["cal_abs_actual"].where(sums["cal_abs_actual"] > 0),
            },
            index=sums.index,
        )


def score_summary(df: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """MASE, WQL, 80% coverage, MAE and scored steps per group.

    MASE is the summed absolute error over the summed error of the naive (last value)
    forecast; WQL the summed quantile loss over the summed absolute actuals; coverage the
    share of actuals inside the 80% interval (0.8 is calibrated); ``coverage_calibrated`` and
    ``WQL_calibrated`` the same for the live-calibrated band, over the steps that had one.
    """
    if df.empty:
        return pd.DataFrame(columns=[*by, *SCORE_METRICS, "MAE", "steps"])
    grouped = df.groupby(list(by), sort=True)
    sums = grouped[list(SCORE_SUMS)].sum()
    out = _metrics(sums)
    out["MAE"] = grouped["abs_error"].mean()
    out["steps"] = grouped.size()
    return out.reset_index()


def rolling_scores(df: pd.DataFrame, window: int = 256, max_points: int = 2000) -> pd.DataFrame:
    """MASE, WQL and coverage (raw and calibrated) over the last ``window`` scored steps, per
    model, over time.

    Returns one row per model and target time (thinned to ``max_points`` per model).
    """
    if df.empty:
        return pd.DataFrame(columns=["model", "target_start", *SCORE_METRICS, "steps"])
    frames = []
    for model, group in df.groupby("model", sort=True):
        sums = group[list(SCORE_SUMS)].rolling(window, min_periods=1).sum()
        metrics = _metrics(sums)
        metrics["steps"] = np.minimum(np.arange(1, len(group) + 1), window)
        metrics["target_start"] = group["target_start"].to_numpy()
        metrics["model"] = model
        # several steps share a target time: keep the state after the last of them
        metrics = metrics.drop_duplicates("target_start", keep="last")
        if len(metrics) > max_points:
            keep = np.unique(np.linspace(0, len(metrics) - 1, max_points).round().astype(int))
            metrics = metrics.iloc[keep]
        frames.append(metrics)
    return pd.concat(frames, ignore_index=True)[["model", "target_start", *SCORE_METRICS, "steps"]]


# -- forecasts ----------------------------------------------------------------------------------
def forecasts_frame(table: pa.Table) -> pd.DataFrame:
    """Forecast rows from the lake with a ``model`` label and the median and 80% bounds filled.

    ``p50``/``p10``/``p90`` are taken from the list columns when a forecast used other
    levels (nearest level; the mean stands in for a missing median).
    """
    df = table.to_pandas()
    if df.empty:
        return df.assign(model=pd.Series(dtype=str))
    df["model"] = df["model_id"].astype(str) + "/" + df["model_version"].astype(str)
    for col, level in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        missing = df[col].isna()
        if missing.any():
            df.loc[missing, col] = [
                _nearest_level(levels, values, level)
                for levels, values in zip(
                    df.loc[missing, "quantile_levels"], df.loc[missing, "quantile_values"], strict=True
                )
            ]
    df["p50"] = df["p50"].fillna(df["mean"])
    return df


def _nearest_level(levels: Sequence[float] | None, values: Sequence[float] | None, level: float) -> float:
    if levels is None or values is None or len(levels) == 0:
        return float("nan")
    i = int(np.argmin([abs(q - level) for q in levels]))
    # only a level on the right side of the median bounds the band honestly
    if level != 0.5 and abs(levels[i] - level) > 0.15:
        return float("nan")
    return float(values[i])


def latest_forecast(df: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The steps of the newest forecast (by last bar, then issue time), of ``model`` if given."""
    if df.empty:
        return df
    if model is not None:
        df = df[df["model"] == model]
        if df.empty:
            return df
    newest = df.sort_values(["last_bar_start", "issued_at"], kind="stable").iloc[-1]["forecast_id"]
    return df[df["forecast_id"] == newest].sort_values("step").reset_index(drop=True)


def one_step_history(df: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Step-1 forecasts over time (one per last bar): how the band followed the price."""
    if df.empty:
        return df
    if model is not None:
        df = df[df["model"] == model]
    first = df[df["step"] == 1].sort_values(["step_start", "issued_at"], kind="stable")
    return first.drop_duplicates("step_start", keep="last").reset_index(drop=True)
