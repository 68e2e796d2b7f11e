"""The standard evaluation sets: real daily prices (held out) and structured synthetic series.

* ``real_daily``: the shipped SPX and IXIC daily closes (:mod:`training.samples`), which the
  bundled model never sees in training. For prices the random walk is close to optimal,
  so parity with ``naive`` is the physical limit; seasonal naive and AutoETS are what a
  model must beat.
* ``intraday_volume``: volume-like 15-minute bars (26 per session) with the U-shaped
  intraday profile, drawn with a seed the training corpus never uses. Here the structure
  is strong and a forecaster should clearly beat ``naive``.
* ``seasonal``: hourly-like series with a daily season of 24 and noise.
* ``prices``: synthetic price paths (random walks with heavy-tailed steps, GBM with volatility
  regimes) from held-out seeds: parity with ``naive`` is the limit, as on real prices.
* ``trend``: linear trends (rising and falling) with AR(1) noise; a forecaster must continue
  the line, where ``naive`` stays flat.
* ``level_shift``: flat levels that jump a few times, with noise; after a jump the new level
  is the forecast, not the mean of the context.

Each suite is ``(series, BacktestConfig)``; :func:`run_suite` runs it for a set of models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from training.evaluation import BacktestConfig, BacktestResult, backtest
from training.synthetic import ar_noise, gbm_regimes, intraday_volume, level_shift, random_walk, seasonal_profile

#: Seeds of the synthetic test sets; the training corpus is seeded with small integers and
#: draws series ``(seed, i)``, so these streams never overlap with it.
VOLUME_SEED = 7_000_001
SEASONAL_SEED = 7_000_002
PRICES_SEED = 7_000_003
TREND_SEED = 7_000_004
LEVEL_SHIFT_SEED = 7_000_005


def real_daily(
    target: str = "close", horizon: int = 8, n_origins: int = 25, stride: int = 40, context_length: int = 512
) -> tuple[dict[str, np.ndarray], BacktestConfig]:
    """The shipped real daily series and a backtest config for them (business-day season 5)."""
    from training.samples import load_real_daily
    from training.targets import series_from_frame

    series = series_from_frame(load_real_daily(), target)
    config = BacktestConfig(
        horizon=horizon, context_length=context_length, n_origins=n_origins, stride=stride, season_length=5
    )
    return series, config


def intraday_volume_set(
    n_series: int = 6, horizon: int = 13, n_origins: int = 4, bars_per_day: int = 26, context_length: int = 512
) -> tuple[dict[str, np.ndarray], BacktestConfig]:
    """Volume-like intraday series (``bars_per_day`` bars a session) and a config with that season."""
    length = context_length + n_origins * horizon + bars_per_day
    series = {
        f"VOL{i:02d}": intraday_volume(np.random.default_rng([VOLUME_SEED, i]), length, bars_per_day=bars_per_day)
        for i in range(n_series)
    }
    config = BacktestConfig(
        horizon=horizon, context_length=context_length, n_origins=n_origins, season_length=bars_per_day
    )
    return series, config


def seasonal_set(
    n_series: int = 6, horizon: int = 12, n_origins: int = 4, period: int = 24, context_length: int = 512
) -> tuple[dict[str, np.ndarray], BacktestConfig]:
    """Series with one season of ``period`` steps, AR(1) noise and a level."""
    length = context_length + n_origins * horizon + period
    series = {}
    for i in range(n_series):
        rng = np.random.default_rng([SEASONAL_SEED, i])
        amp = rng.uniform(2.0, 20.0)
        y = amp * np.tile(seasonal_profile(rng, period), length // period + 1)[:length]
        y += amp * rng.uniform(0.05, 0.3) * ar_noise(rng, length, phi=rng.uniform(0.0, 0.7))
        series[f"SEAS{i:02d}"] = y + rng.uniform(0.0, 5.0 * amp)
    config = BacktestConfig(horizon=horizon, context_length=context_length, n_origins=n_origins, season_length=period)
    return series, config


def prices_set(
    n_series: int = 8, horizon: int = 8, n_origins: int = 6, stride: int = 24, context_length: int = 512
) -> tuple[dict[str, np.ndarray], BacktestConfig]:
    """Random-walk and regime-switching GBM price paths (half each) from held-out seeds."""
    length = context_length + (n_origins - 1) * stride + horizon
    series = {}
    for i in range(n_series):
        rng = np.random.default_rng([PRICES_SEED, i])
        kind, gen = ("RW", random_walk) if i % 2 == 0 else ("GBM", gbm_regimes)
        series[f"{kind}{i:02d}"] = gen(rng, length)
    config = BacktestConfig(
        horizon=horizon, context_length=context_length, n_origins=n_origins, stride=stride, season_length=5
    )
    return series, config


def trend_set(
    n_series: int = 8, horizon: int = 12, n_origins: int = 4, context_length: int = 512
) -> tuple[dict[str, np.ndarray], BacktestConfig]:
    """Straight lines, half rising and half falling, with AR(1) noise of 0.5 to 5 slopes."""
    length = context_length + n_origins * horizon
    series = {}
    for i in range(n_series):
        rng = np.random.default_rng([TREND_SEED, i])
        slope = rng.uniform(0.05, 2.0) * (1.0 if i % 2 == 0 else -1.0)
        noise = abs(slope) * rng.uniform(0.5, 5.0) * ar_noise(rng, length, phi=rng.uniform(0.0, 0.7))
        # a level that keeps a falling line positive over the whole series
        level = rng.uniform(10.0, 100.0) + (abs(slope) * length if slope < 0 else 0.0)
        series[f"TREND{i:02d}"] = level + slope * np.arange(length) + noise
    config = BacktestConfig(horizon=horizon, context_length=context_length, n_origins=n_origins, season_length=5)
    return series, config


def level_shift_set(
    n_series: int = 8, horizon: int = 8, n_origins: int = 6, stride: int = 16, context_length: int = 512
) -> tuple[dict[str, np.ndarray], BacktestConfig]:
    """Levels with a few jumps (:func:`training.synthetic.level_shift`) from held-out seeds."""
    length = context_length + (n_origins - 1) * stride + horizon
    series = {
        f"SHIFT{i:02d}": level_shift(np.random.default_rng([LEVEL_SHIFT_SEED, i]), length) for i in range(n_series)
    }
    config = BacktestConfig(
        horizon=horizon, context_length=context_length, n_origins=n_origins, stride=stride, season_length=5
    )
    return series, config


SuiteFactory = Callable[..., tuple[dict[str, np.ndarray], BacktestConfig]]
SUITES: dict[str, SuiteFactory] = {
    "real_daily": real_daily,
    "intraday_volume": intraday_volume_set,
    "seasonal": seasonal_set,
    "prices": prices_set,
    "trend": trend_set,
    "level_shift": level_shift_set,
}


def run_suite(
    name: str, models: Mapping[str, Any], baselines: tuple[str, ...] | None = None, **kwargs: Any
) -> BacktestResult:
    """Backtest ``models`` (name -> pipeline or reference) on the suite ``name``.

    ``baselines`` narrows the baselines (default: all); other keyword arguments go to the
    suite's factory (e.g. ``target="volume"`` for ``real_daily``).
    """
    series, config = SUITES[name](**kwargs)
    if baselines is not None:
        config = replace(config, baselines=baselines)
    return backtest(series, models, config, use_ray=False)
