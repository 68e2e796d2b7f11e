"""The standard evaluation sets: real daily prices (held out) and structured synthetic series.

* ``real_daily``: the shipped SPX and IXIC daily closes (:mod:`training.samples`), which the
  bundled model never sees in training. For prices the random walk is close to optimal,
  so parity with ``naive`` is the physical limit; seasonal naive and AutoETS are what a
  model must beat.
* ``intraday_volume``: volume-like 15-minute bars (26 per session) with the U-shaped
  intraday profile, drawn with a seed the training corpus never uses. Here the structure
  is strong and a forecaster should clearly beat ``naive``.
* ``seasonal``: hourly-like series with a daily season of 24 and noise.

Each suite is ``(series, BacktestConfig)``; :func:`run_suite` runs it for a set of models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from training.evaluation import BacktestConfig, BacktestResult, backtest
from training.synthetic import ar_noise, intraday_volume, seasonal_profile

#: Seeds of the synthetic test sets; the training corpus is seeded with small integers and
#: draws series ``(seed, i)``, so these streams never overlap with it.
VOLUME_SEED = 7_000_001
SEASONAL_SEED = 7_000_002


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


SuiteFactory = Callable[..., tuple[dict[str, np.ndarray], BacktestConfig]]
SUITES: dict[str, SuiteFactory] = {
    "real_daily": real_daily,
    "intraday_volume": intraday_volume_set,
    "seasonal": seasonal_set,
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
