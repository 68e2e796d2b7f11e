"""Live scoring: every forecast is scored step by step as its actual bars arrive.

Per step (via :meth:`tickcast.contracts.Score.compute`): absolute error of the median,
quantile loss (mean over the forecast's levels of twice the pinball loss), whether the
actual fell in the 80% interval [q0.1, q0.9], and the naive error ``|actual - last
actual|`` of the no-change forecast from the same origin.

Rolling aggregates over the last ``window`` scored steps of each (ticker, model, version):

- MASE = mean absolute error / mean naive absolute error (the naive forecast repeats the
  last value the forecast saw, so MASE < 1 beats "no change");
- WQL = sum of quantile losses / sum of |actual| (the standard weighted quantile loss;
  ``Score.quantile_loss`` already averages the levels and carries the factor 2);
- coverage of the 80% interval = covered steps / steps with both bounds;
- the same coverage and WQL of the calibrated band (:mod:`.calibration`) over the steps that
  had one: ``calibrated_coverage`` and ``calibrated_wql`` (the WQL with the band's two raw
  quantiles replaced by the calibrated bounds), so raw and calibrated compare side by side.

Per model the aggregates pool the windows of all its tickers (sums, then ratios), so a
model's MASE is the ratio of its summed errors, not an average of ratios.

Memory is bounded: a ticker holds at most ``max_pending`` unscored forecasts and one
fixed-size window per model it was scored under.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from tickcast.contracts import Forecast, Score

from .calibration import AdaptiveCalibrator

# Columns of a score window: abs error, naive abs error, quantile loss, |actual|, covered (nan =
# unknown), then for calibrated steps: covered by the calibrated band, its quantile loss, |actual|.
_ABS, _NAIVE, _QL, _ACT, _COV, _CCOV, _CQL, _CACT = range(8)
_COLUMNS = 8


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Rolling accuracy of one ticker (or a whole model) over its recent scored steps."""

    ticker: str | None
    model_id: str
    model_version: str
    steps: int
    mae: float
    mase: float | None
    wql: float | None
    coverage_80: float | None
    coverage_steps: int
    calibrated_coverage: float | None = None
    calibrated_wql: float | None = None
    calibrated_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A flat dict for Parquet rows and JSON."""
        return {
            "scope": "ticker" if self.ticker is not None else "model",
            "ticker": self.ticker,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "steps": self.steps,
            "mae": self.mae,
            "mase": self.mase,
            "wql": self.wql,
            "coverage_80": self.coverage_80,
            "coverage_steps": self.coverage_steps,
            "calibrated_coverage": self.calibrated_coverage,
            "calibrated_wql": self.calibrated_wql,
            "calibrated_steps": self.calibrated_steps,
        }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 and math.isfinite(num) else None


def aggregate_sums(
    sums: np.ndarray, steps: int, cov_steps: int, ticker: str | None, model: tuple[str, str], cal_steps: int = 0
) -> Aggregate:
    """Turn window sums (abs, naive, ql, |actual|, covered, calibrated covered, ql, |actual|)
    into an :class:`Aggregate`."""
    return Aggregate(
        ticker=ticker,
        model_id=model[0],
        model_version=model[1],
        steps=steps,
        mae=float(sums[_ABS] / steps) if steps else math.nan,
        mase=_ratio(float(sums[_ABS]), float(sums[_NAIVE])),
        wql=_ratio(float(sums[_QL]), float(sums[_ACT])),
        coverage_80=float(sums[_COV] / cov_steps) if cov_steps else None,
        coverage_steps=cov_steps,
        calibrated_coverage=float(sums[_CCOV] / cal_steps) if cal_steps else None,
        calibrated_wql=_ratio(float(sums[_CQL]), float(sums[_CACT])) if cal_steps else None,
        calibrated_steps=cal_steps,
    )


class ScoreWindow:
    """The last ``size`` scored steps of one (ticker, model) as a numpy ring buffer."""

    __slots__ = ("_data", "_head", "count", "total")

    def __init__(self, size: int) -> None:
        self._data = np.full((size, _COLUMNS), np.nan)
        self._head = 0
        self.count = 0
        self.total = 0

    def add(self, score: Score) -> None:
        """Push one score, dropping the oldest when full."""
        covered = math.nan if score.covered_80 is None else float(score.covered_80)
        ccov = math.nan if score.calibrated_covered is None else float(score.calibrated_covered)
        cql = math.nan if score.calibrated_quantile_loss is None else score.calibrated_quantile_loss
        cact = math.nan if score.calibrated_quantile_loss is None else abs(score.actual)
        row = (score.abs_error, score.naive_abs_error, score.quantile_loss, abs(score.actual), covered, ccov, cql, cact)
        self._data[self._head] = row
        self._head = (self._head + 1) % len(self._data)
        self.count = min(self.count + 1, len(self._data))
        self.total += 1

    def sums(self) -> tuple[np.ndarray, int, int, int]:
        """Column sums over the window, the step count, the steps with a known coverage and
        the steps with a calibrated band."""
        rows = self._data[: self.count] if self.count < len(self._data) else self._data
        known = int(np.count_nonzero(~np.isnan(rows[:, _COV])))
        calibrated = int(np.count_nonzero(~np.isnan(rows[:, _CCOV])))
        sums = np.nansum(rows, axis=0) if self.count else np.zeros(_COLUMNS)
        return sums, self.count, known, calibrated


@dataclass(slots=True)
class PendingForecast:
    """A forecast waiting for its actual bars."""

    forecast: Forecast
    last_actual: float
    steps: dict[datetime, int]  # step start -> step number (1-based), not yet scored
    last_step_start: datetime


class Scorer:
    """Pending forecasts per ticker, scored as bars arrive, plus rolling aggregates.

    Args:
        window: scored steps per (ticker, model) in the rolling aggregates.
        max_pending: unscored forecasts kept per ticker; the oldest is dropped beyond it.
        calibrator: live band calibration; every step scored as a bar arrives updates it
            (scores read back from the lake do not: its state comes back with the forecasts).
    """

    def __init__(self, window: int, max_pending: int, calibrator: AdaptiveCalibrator | None = None) -> None:
        self.window = window
        self.max_pending = max_pending
        self.calibrator = calibrator
        self._pending: dict[str, deque[PendingForecast]] = {}
        self._windows: dict[tuple[str, str, str], ScoreWindow] = {}
        self._dirty: set[tuple[str, str, str]] = set()
        self.steps_missed = 0
        self.forecasts_dropped = 0

    # -- pending forecasts -------------------------------------------------------------------
    def add_forecast(self, forecast: Forecast, last_actual: float, skip_until: datetime | None = None) -> None:
        """Start waiting for the actuals of ``forecast``.

        Args:
            forecast: the forecast.
            last_actual: the target value of the last bar the forecast saw (for the naive error).
            skip_until: steps starting at or before this were already scored (warm start).
        """
        starts = forecast.step_starts()
        steps = {s: i + 1 for i, s in enumerate(starts) if skip_until is None or s > skip_until}
        if not steps:
            return
        queue = self._pending.setdefault(forecast.ticker, deque())
        queue.append(PendingForecast(forecast, float(last_actual), steps, starts[-1]))
        while len(queue) > self.max_pending:
            dropped = queue.popleft()
            self.forecasts_dropped += 1
            self.steps_missed += len(dropped.steps)

    def on_bar(self, ticker: str, start: datetime, actual: float) -> list[Score]:
        """Score every pending step of ``ticker`` whose bar starts at ``start``.

        Bars must come in time order per ticker (the context store guarantees it); steps
        earlier than ``start`` that are still unscored had no bar (a gap in trading) and are
        counted as missed, and forecasts with no step left are dropped.
        """
        queue = self._pending.get(ticker)
        if not queue:
            return []
        scores: list[Score] = []
        keep: deque[PendingForecast] = deque()
        for item in queue:
            step = item.steps.pop(start, None)
            if step is not None:
                score = Score.compute(item.forecast, step, actual, item.last_actual)
                scores.append(score)
                self._record(score)
                if self.calibrator is not None:
                    self.calibrator.update(score)
            stale = [s for s in item.steps if s < start]
            for s in stale:
                del item.steps[s]
            self.steps_missed += len(stale)
            if item.steps:
                keep.append(item)
        if keep:
            self._pending[ticker] = keep
        else:
            del self._pending[ticker]
        return scores

    def drop_ticker(self, ticker: str) -> None:
        """Forget a ticker's pending forecasts (it was evicted from the context store)."""
        queue = self._pending.pop(ticker, None)
        if queue:
            self.forecasts_dropped += len(queue)
            self.steps_missed += sum(len(p.steps) for p in queue)

    def pending_forecasts(self) -> int:
        """Forecasts waiting for at least one actual."""
        return sum(len(q) for q in self._pending.values())

    def pending_for(self, ticker: str) -> list[PendingForecast]:
        """The pending forecasts of one ticker, oldest first."""
        return list(self._pending.get(ticker, ()))

    # -- aggregates --------------------------------------------------------------------------
    def _record(self, score: Score) -> None:
        key = (score.ticker, score.model_id, score.model_version)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = ScoreWindow(self.window)
        window.add(score)
        self._dirty.add(key)

    def load_scores(self, scores: Iterable[Score]) -> None:
        """Fill the rolling windows with scores read back from the lake (oldest first)."""
        for score in scores:
            self._record(score)
        self._dirty.clear()

    def drop_windows(self, ticker: str) -> None:
        """Forget a ticker's rolling windows."""
        for key in [k for k in self._windows if k[0] == ticker]:
            del self._windows[key]
            self._dirty.discard(key)

    def ticker_aggregates(self, only_changed: bool = False) -> list[Aggregate]:
        """Per (ticker, model, version) aggregates; with ``only_changed`` only those scored
        since the last call with ``only_changed`` (which resets the change set)."""
        keys = sorted(self._dirty) if only_changed else sorted(self._windows)
        if only_changed:
            self._dirty.clear()
        out = []
        for key in keys:
            window = self._windows.get(key)
            if window is None or window.count == 0:
                continue
            sums, steps, known, calibrated = window.sums()
            out.append(aggregate_sums(sums, steps, known, key[0], (key[1], key[2]), calibrated))
        return out

    def model_aggregates(self) -> list[Aggregate]:
        """Per (model, version) aggregates pooling every ticker's window."""
        pooled: dict[tuple[str, str], list[Any]] = {}
        for (_, model_id, version), window in self._windows.items():
            if window.count == 0:
                continue
            sums, steps, known, calibrated = window.sums()
            acc = pooled.setdefault((model_id, version), [np.zeros(_COLUMNS), 0, 0, 0])
            acc[0] += sums
            acc[1] += steps
            acc[2] += known
            acc[3] += calibrated
        return [aggregate_sums(s, n, k, None, model, c) for model, (s, n, k, c) in sorted(pooled.items())]

    def window_count(self) -> int:
        """Rolling windows held (one per ticker and model)."""
        return len(self._windows)
