"""Live band calibration: adaptive conformal inference (ACI, Gibbs and Candès, 2021).

The model's raw band (its ``(1-c)/2`` and ``(1+c)/2`` quantiles, c = the target coverage,
0.8 by default) is corrected online from the forecaster's own live scores. Per key (a
ticker or the whole model, a model version and a horizon step) the calibrator holds a
miscoverage level ``alpha_t`` and, every time a calibrated band of that key is scored,
moves it by

    alpha_{t+1} = alpha_t + gamma * (alpha - err_t),    err_t = 1 if the actual fell outside,

where ``alpha = 1 - c``. Too many misses lower ``alpha_t`` (a wider band), too few raise it.
Whatever the data do, the telescoping sum of these updates gives the finite-sample
guarantee over any T consecutive updates of one key (Gibbs and Candès, Proposition 4.1):

    |mean(1 - err) - c| <= (max(alpha_1, 1 - alpha_1) + gamma) / (gamma * T)

when the band is all of the line for ``alpha_t <= 0`` and empty for ``alpha_t >= 1``
(which keeps ``alpha_t`` in ``[-gamma, 1 + gamma]``). With the default ``gamma = 0.05`` and
``alpha_1 = 0.2`` that bound is 17 / T: within 0.05 of the target after 340 updates.

From ``alpha_t`` to a band (the model only emits fixed quantile levels): the band at
``alpha_t`` is the central ``1 - alpha_t`` interval of the forecast distribution, read
between and beyond the raw quantiles by interpolating **linearly in normal scores**: a
level ``p`` maps to ``z = Phi^-1(p)``, the raw quantiles are the points ``(z_i, q_i)``,
and ``q(z)`` is the piecewise-linear curve through them, extended past the outermost
level with the slope of the outermost segment on that side. With the levels
(0.1, 0.5, 0.9) this is a two-piece Gaussian: ``upper = q50 + (q90 - q50) * z / 1.2816``,
so the band keeps the model's skew, equals the raw band exactly at ``alpha_t = alpha``,
and scales with the series (no additive correction in a unit that differs per ticker).
ACI needs nothing more than nested bands that grow as ``alpha_t`` falls, so a wrong tail
shape costs speed, not the guarantee. ``alpha_t`` is clamped to ``[ALPHA_MIN, 1]`` for the
band only: a band at ``alpha_t <= 0`` is the ``ALPHA_MIN`` band (z = 3.9, finite so it can
be stored, covering all but a Gaussian's 1-in-10,000), and at ``alpha_t >= 1`` the band
collapses onto the median. Because that widest band is finite, a (rare) miss at
``alpha_t <= 0`` can push ``alpha_t`` one more step down, so the bound's ``gamma`` becomes
the distance ``alpha_t`` actually strays from ``[0, 1]`` (the unit tests check it stays
within ``2 * gamma``: 18 / T, within 0.05 after 360 updates).

Scores arrive ``step`` bars after their forecast, so updates lag by the horizon step: a key
of step ``h`` learns of a miss ``h`` bars late. The guarantee's identity still holds over
the scored bands; the lag only lets ``alpha_t`` overshoot by up to about ``gamma * h``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Final, Literal

from tickcast.contracts import Forecast, Score

#: The smallest miscoverage a band is drawn at (``alpha_t`` below it, even negative, gives this band).
ALPHA_MIN: Final = 1e-4
#: ``alpha_t`` is kept in ``[-STATE_BOUND, 1 + STATE_BOUND]``: ACI keeps it within ``gamma`` (plus the
#: feedback lag's overshoot) of ``[0, 1]`` anyway; this rail only stops a runaway after a long gap.
STATE_BOUND: Final = 0.5

_NORMAL = NormalDist()

Scope = Literal["ticker", "model"]


def _z(level: float) -> float:
    return _NORMAL.inv_cdf(level)


def band_at(levels: Sequence[float], values: Sequence[float], alpha: float) -> tuple[float, float]:
    """The central ``1 - alpha`` band of a forecast step given as quantiles at fixed levels.

    Interpolates (and extrapolates past the outermost levels) linearly in normal scores;
    see the module docstring. ``alpha`` is clamped to ``[ALPHA_MIN, 1]``.

    Args:
        levels: the raw quantile levels, in (0, 1), at least two of them.
        values: the raw quantile values at those levels.
        alpha: the miscoverage level.

    Raises:
        ValueError: fewer than two distinct levels.
    """
    if len(levels) != len(values):
        raise ValueError(f"{len(levels)} quantile levels but {len(values)} values")
    zs = _scores(tuple(sorted(float(lv) for lv in levels)))
    qs = sorted(values)  # monotone rearrangement: crossed quantiles are sorted
    return _band(zs, qs, alpha)


@functools.lru_cache(maxsize=64)
def _scores(levels: tuple[float, ...]) -> tuple[float, ...]:
    """The normal scores of sorted quantile levels (a forecaster uses one level set: cached)."""
    if len(set(levels)) != len(levels) or len(levels) < 2:
        raise ValueError(f"a band needs at least two distinct quantile levels, got {list(levels)}")
    return tuple(_z(lv) for lv in levels)


def _band(zs: Sequence[float], qs: Sequence[float], alpha: float) -> tuple[float, float]:
    a = min(max(alpha, ALPHA_MIN), 1.0)
    if a >= 1.0:
        # the empty band of ACI; drawn as a point at the curve's centre
        centre = _curve(zs, qs, 0.0)
        return centre, centre
    z = _z(1.0 - a / 2.0)
    return _curve(zs, qs, -z), _curve(zs, qs, z)


def _curve(zs: Sequence[float], qs: Sequence[float], z: float) -> float:
    """The piecewise-linear curve through ``(zs, qs)`` at ``z``, extended by its end segments."""
    n = len(zs)
    if z <= zs[0]:
        i = 0
    elif z >= zs[-1]:
        i = n - 2
    else:
        i = next(k for k in range(n - 1) if zs[k] <= z <= zs[k + 1])
    z0, z1, q0, q1 = zs[i], zs[i + 1], qs[i], qs[i + 1]
    return q0 + (q1 - q0) * (z - z0) / (z1 - z0)


@dataclass(frozen=True, slots=True)
class CalibratorState:
    """One key's state: its current ``alpha_t`` and how many updates it has had."""

    alpha: float
    updates: int


class AdaptiveCalibrator:
    """Per-key ACI state, turning raw forecasts into calibrated ones and learning from scores.

    Args:
        target_coverage: the band's nominal coverage ``c`` (0.8: the 80% band).
        gamma: the ACI step size; larger adapts faster and jitters more (see the module docstring
            for the bound it gives).
        scope: ``"ticker"``: one ``alpha_t`` per ticker, model version and step; ``"model"``: one per
            model version and step, pooled over tickers (more updates per key, so it converges in
            fewer bars, but one ticker's misses widen every ticker's band).
    """

    def __init__(self, target_coverage: float = 0.8, gamma: float = 0.05, scope: Scope = "ticker") -> None:
        if not 0.0 < target_coverage < 1.0:
            raise ValueError(f"target coverage {target_coverage} is not in (0, 1)")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma {gamma} is not in (0, 1]")
        if scope not in ("ticker", "model"):
            raise ValueError(f"calibration scope {scope!r} is not 'ticker' or 'model'")
        self.coverage = float(target_coverage)
        self.alpha_target = 1.0 - self.coverage
        self.gamma = float(gamma)
        self.scope: Scope = scope
        self._alpha: dict[tuple[str, str, str, int], float] = {}
        self._updates: dict[tuple[str, str, str, int], int] = {}
        # the raw levels the target band sits at (e.g. 0.1 and 0.9): their loss is recomputed
        self.lower_level = round(self.alpha_target / 2.0, 12)
        self.upper_level = round(1.0 - self.alpha_target / 2.0, 12)

    # -- keys --------------------------------------------------------------------------------
    def key(self, ticker: str, model_id: str, model_version: str, step: int) -> tuple[str, str, str, int]:
        """The state key of a ticker's forecast step (the ticker is dropped in ``model`` scope)."""
        return ("*" if self.scope == "model" else ticker, model_id, model_version, int(step))

    def alpha(self, ticker: str, model_id: str, model_version: str, step: int) -> float:
        """The current ``alpha_t`` of a key (the target until it has been scored)."""
        return self._alpha.get(self.key(ticker, model_id, model_version, step), self.alpha_target)

    def state(self, ticker: str, model_id: str, model_version: str, step: int) -> CalibratorState:
        """A key's ``alpha_t`` and update count."""
        key = self.key(ticker, model_id, model_version, step)
        return CalibratorState(self._alpha.get(key, self.alpha_target), self._updates.get(key, 0))

    def __len__(self) -> int:
        return len(self._alpha)

    # -- forecasts ---------------------------------------------------------------------------
    def calibrate(self, forecast: Forecast) -> Forecast:
        """``forecast`` with its calibrated band (raw quantiles unchanged).

        A forecast with fewer than two distinct quantile levels has no band to calibrate and
        comes back as it is (its scores then leave the calibrator unchanged).
        """
        levels = [float(k) for k in forecast.quantiles]
        if len(set(levels)) < 2 or len(set(levels)) != len(levels):
            return forecast  # nothing to draw a band from (or the same level twice, as "0.1" and "0.10")
        zs = _scores(tuple(sorted(levels)))
        columns = list(forecast.quantiles.values())
        lower, upper, alphas = [], [], []
        for i in range(forecast.horizon):
            a = self.alpha(forecast.ticker, forecast.model_id, forecast.model_version, i + 1)
            lo, hi = _band(zs, sorted(c[i] for c in columns), a)
            lower.append(lo)
            upper.append(hi)
            alphas.append(a)
        return replace(
            forecast,
            calibrated_coverage=self.coverage,
            calibrated_lower=lower,
            calibrated_upper=upper,
            calibration_alpha=alphas,
        )

    def restore(self, forecasts: Iterable[Forecast]) -> int:
        """Warm start: take each key's ``alpha_t`` from the newest forecast that carries it.

        The newest forecast of a ticker was calibrated after every score before it, so its
        ``calibration_alpha`` is the state then. Forecasts must come oldest first; those
        calibrated for another target coverage are skipped. Returns the keys restored.
        """
        restored = set()
        for f in forecasts:
            if f.calibration_alpha is None or f.calibrated_coverage is None:
                continue
            if not math.isclose(f.calibrated_coverage, self.coverage):
                continue
            for i, a in enumerate(f.calibration_alpha):
                key = self.key(f.ticker, f.model_id, f.model_version, i + 1)
                self._alpha[key] = a
                self._updates.setdefault(key, 0)
                restored.add(key)
        return len(restored)

    # -- scores ------------------------------------------------------------------------------
    def update(self, score: Score) -> float | None:
        """Learn from one scored step of a calibrated band; returns the key's new ``alpha_t``.

        A score without a calibrated band (its forecast was issued uncalibrated, or for another
        target coverage) changes nothing and returns None.
        """
        if score.calibrated_covered is None or score.calibrated_coverage is None:
            return None
        if not math.isclose(score.calibrated_coverage, self.coverage):
            return None
        key = self.key(score.ticker, score.model_id, score.model_version, score.step)
        err = 0.0 if score.calibrated_covered else 1.0
        a = self._alpha.get(key, self.alpha_target) + self.gamma * (self.alpha_target - err)
        a = min(max(a, -STATE_BOUND), 1.0 + STATE_BOUND)
        self._alpha[key] = a
        self._updates[key] = self._updates.get(key, 0) + 1
        return a

    def drop_ticker(self, ticker: str) -> None:
        """Forget a ticker's keys (it was evicted from the context store; ticker scope only)."""
        for key in [k for k in self._alpha if k[0] == ticker]:
            del self._alpha[key]
            self._updates.pop(key, None)

    def mean_alpha(self) -> dict[tuple[str, str], float]:
        """The mean ``alpha_t`` per (model, version) over its keys (for a gauge)."""
        pooled: dict[tuple[str, str], list[float]] = {}
        for (_, model_id, version, _), a in self._alpha.items():
            pooled.setdefault((model_id, version), []).append(a)
        return {k: sum(v) / len(v) for k, v in pooled.items()}
