"""A small lake for the dashboard's tests: bars, forecasts and scores written with tickcast.lake.

Bars follow a seeded random walk inside the US session (14:30-21:00 UTC for intraday
intervals) on weekdays; a forecast is issued every few bars with steps 1..horizon, and each
step that has its actual bar is scored with :meth:`Score.compute`, as the forecaster does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from tickcast.contracts import INTERVALS, Bar, Forecast, Score
from tickcast.lake import Lake, write_forecasts, write_scores

MODEL_ID = "tickcast-bundled"
MODEL_VERSION = "1"


@dataclass
class SampleLake:
    """What :func:`write_sample` wrote."""

    bars: dict[str, list[Bar]]
    forecasts: dict[str, list[Forecast]]
    scores: dict[str, list[Score]]


def session_starts(interval: str, days: int, bars_per_day: int, first_day: datetime) -> list[datetime]:
    """Bar starts: ``bars_per_day`` per weekday from 14:30 UTC (one per day for day bars)."""
    step = INTERVALS[interval]
    out: list[datetime] = []
    day = first_day
    while len({s.date() for s in out}) < days:
        if day.weekday() < 5:
            if interval == "day":
                out.append(day)
            else:
                open_ = day.replace(hour=14, minute=30)
                out.extend(open_ + step * i for i in range(bars_per_day))
        day += timedelta(days=1)
    return out


def make_bars(
    ticker: str, interval: str, starts: Sequence[datetime], seed: int, price: float = 100.0, spike: bool = True
) -> list[Bar]:
    """A random walk of valid bars at ``starts`` (with one volume spike in the middle)."""
    rng = np.random.default_rng(seed)
    step = INTERVALS[interval]
    closes = price * np.exp(np.cumsum(rng.normal(0, 0.002, len(starts))))
    opens = np.concatenate([[price], closes[:-1]])
    volume = rng.lognormal(8, 0.3, len(starts))
    if spike:
        volume[len(starts) // 2] *= 25
    bars = []
    for i, start in enumerate(starts):
        o, c = float(opens[i]), float(closes[i])
        hi = max(o, c) * (1 + abs(rng.normal(0, 0.0005)))
        lo = min(o, c) * (1 - abs(rng.normal(0, 0.0005)))
        bars.append(
            Bar(ticker, interval, start, start + step, o, hi, lo, c, float(volume[i]), (o + c) / 2, 100, "test")
        )
    return bars


def make_forecasts(bars: Sequence[Bar], every: int, horizon: int, model_version: str = MODEL_VERSION) -> list[Forecast]:
    """A forecast after every ``every``-th bar, around the last close, widening with the step."""
    out = []
    for i in range(every - 1, len(bars), every):
        last = bars[i]
        mean = [last.close * (1 + 0.0005 * s) for s in range(1, horizon + 1)]
        width = [last.close * 0.003 * np.sqrt(s) for s in range(1, horizon + 1)]
        out.append(
            Forecast(
                ticker=last.ticker,
                interval=last.interval,
                model_id=MODEL_ID,
                model_version=model_version,
                issued_at=last.end + timedelta(seconds=1),
                last_bar_start=last.start,
                horizon=horizon,
                target="close",
                mean=mean,
                quantiles={
                    "0.1": [m - w for m, w in zip(mean, width, strict=True)],
                    "0.5": mean,
                    "0.9": [m + w for m, w in zip(mean, width, strict=True)],
                },
            )
        )
    return out


def calibrate(forecasts: Sequence[Forecast], bars: Sequence[Bar]) -> list[Forecast]:
    """The forecasts with live-calibrated bands, as the forecaster would draw them (a lag aside)."""
    from serving.streaming.calibration import AdaptiveCalibrator

    cal = AdaptiveCalibrator(0.8, 0.05)
    out = []
    for f in forecasts:
        f = cal.calibrate(f)
        out.append(f)
        for score in score_forecasts([f], bars):
            cal.update(score)
    return out


def score_forecasts(forecasts: Sequence[Forecast], bars: Sequence[Bar]) -> list[Score]:
    """Score every step whose bar exists (as the streaming scorer does)."""
    by_start = {b.start: b for b in bars}
    scores = []
    for f in forecasts:
        last = by_start[f.last_bar_start]
        for step, start in enumerate(f.step_starts(), start=1):
            actual = by_start.get(start)
            if actual is not None:
                scores.append(Score.compute(f, step, actual.close, last.close))
    return scores


def write_sample(
    lake: Lake,
    tickers: Sequence[str] = ("AAA", "BBB"),
    interval: str = "minute",
    days: int = 3,
    bars_per_day: int = 60,
    horizon: int = 8,
    every: int = 5,
    first_day: datetime = datetime(2024, 3, 4, tzinfo=UTC),
    forecasts: bool = True,
    scores: bool = True,
    spike: bool = True,
    calibrated: bool = False,
) -> SampleLake:
    """Write bars (and forecasts and scores) of ``tickers`` into ``lake``: one commit per table.

    With ``calibrated`` the forecasts carry the live-calibrated band (an ACI calibrator per
    ticker, fed each forecast's scores before the next forecast is calibrated).
    """
    starts = session_starts(interval, days, bars_per_day, first_day)
    out = SampleLake({}, {}, {})
    for k, ticker in enumerate(tickers):
        bars = make_bars(ticker, interval, starts, seed=k, price=100.0 * (k + 1), spike=spike)
        out.bars[ticker] = bars
        if forecasts:
            out.forecasts[ticker] = make_forecasts(bars, every, horizon)
            if calibrated:
                out.forecasts[ticker] = calibrate(out.forecasts[ticker], bars)
            if scores:
                out.scores[ticker] = score_forecasts(out.forecasts[ticker], bars)
    lake.write_bars([b for bars in out.bars.values() for b in bars])
    write_forecasts(lake, [f for fc in out.forecasts.values() for f in fc])
    write_scores(lake, [s for sc in out.scores.values() for s in sc])
    return out


_REPORT_FILES: dict[str, bytes] = {}


def _report_files() -> dict[str, bytes]:
    """The files of one real backtest report (training.evaluation), computed once per session."""
    if _REPORT_FILES:
        return _REPORT_FILES
    import tempfile

    from tickcast.settings import load_settings
    from training.evaluation import (
        BacktestConfig,
        BacktestResult,
        aggregate,
        baseline_forecaster,
        evaluate_windows,
        make_windows,
        summarize,
        write_report,
    )

    rng = np.random.default_rng(7)
    series = {f"S{i}": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200))) for i in range(3)}
    config = BacktestConfig(horizon=4, context_length=64, n_origins=3, baselines=("naive", "seasonal_naive"))
    naive = baseline_forecaster("naive", config)
    forecasters = {MODEL_ID: naive, **{b: baseline_forecaster(b, config) for b in config.baselines}}
    rows = evaluate_windows(make_windows(series, config), forecasters, config)
    result = BacktestResult(rows, aggregate(rows), summarize(rows), config, {MODEL_ID: "models/bundled"})
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Lake(load_settings(lake={"url": f"file://{tmp}"}).lake)
        for path in write_report(scratch, "r", result, series):
            _REPORT_FILES[path.removeprefix("reports/r/")] = scratch.read_bytes(path)
    return _REPORT_FILES


def write_backtest_report(lake: Lake, name: str = "backtest-test", created_at: str | None = None) -> None:
    """A real backtest report (training.evaluation) of the baselines and a stand-in model on random walks."""
    import json

    for file_name, content in _report_files().items():
        if file_name == "report.json" and created_at is not None:
            content = json.dumps({**json.loads(content), "created_at": created_at}).encode()
        lake.write_bytes(f"reports/{name}/{file_name}", content)
