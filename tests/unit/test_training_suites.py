"""The evaluation suites: seeded, held out from training, shaped like what they claim to be."""

from __future__ import annotations

import numpy as np
import pytest

from training import suites
from training.evaluation import make_windows
from training.synthetic import level_shift

SYNTHETIC = ("intraday_volume", "seasonal", "prices", "trend", "level_shift")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_suites_are_seeded_finite_and_fill_their_windows(name: str) -> None:
    a, config = suites.SUITES[name]()
    b, _ = suites.SUITES[name]()
    assert list(a) == list(b) and len(a) >= 6
    for key, y in a.items():
        np.testing.assert_array_equal(y, b[key])
        assert np.all(np.isfinite(y)), key
    windows = make_windows(a, config)
    assert len(windows) == len(a) * config.n_origins  # no origin lost to a short series
    assert all(len(w.context) == config.context_length for w in windows)


def test_suite_seeds_are_distinct_and_outside_the_training_seeds() -> None:
    seeds = [
        suites.VOLUME_SEED,
        suites.SEASONAL_SEED,
        suites.PRICES_SEED,
        suites.TREND_SEED,
        suites.LEVEL_SHIFT_SEED,
    ]
    assert len(set(seeds)) == len(seeds)
    # the training corpus is SyntheticSeries(seed=<bundle seed>, ...), bundle seeds are small
    assert min(seeds) > 1_000_000


def test_trend_suite_has_rising_and_falling_lines_that_stay_positive() -> None:
    series, _ = suites.trend_set()
    slopes = [np.polyfit(np.arange(len(y)), y, 1)[0] for y in series.values()]
    assert sum(s > 0 for s in slopes) == sum(s < 0 for s in slopes) == len(series) // 2
    for y, slope in zip(series.values(), slopes, strict=True):
        assert y.min() > 0
        # the line explains most of the variance: a trend, not noise
        resid = y - np.polyval(np.polyfit(np.arange(len(y)), y, 1), np.arange(len(y)))
        assert resid.std() < 0.5 * y.std(), slope


def test_prices_suite_is_random_walks_and_positive_gbm() -> None:
    series, _ = suites.prices_set()
    assert {k[:2] for k in series} == {"RW", "GB"}
    assert all(series[k].min() > 0 for k in series if k.startswith("GBM"))


def _largest_step(y: np.ndarray) -> float:
    """The largest step of ``y`` after a 31-point median filter, in units of the noise's step
    size (estimated from the median absolute one-step change): a level shift survives the
    filter at full height, noise does not."""
    from scipy.signal import medfilt

    noise_step = np.median(np.abs(np.diff(y))) / 0.6745
    return float(np.abs(np.diff(medfilt(y, 31)[15:-15])).max() / noise_step)


def test_level_shift_jumps_stand_out_of_the_noise() -> None:
    from training.synthetic import ar_noise

    for seed in range(10):
        # jumps are 3 to 12 noise scales; a noise step is at most sqrt(2) noise scales
        assert _largest_step(level_shift(np.random.default_rng(seed), 600)) > 2.0, seed
        # the same measure on noise alone stays far below: the check can fail
        noise = ar_noise(np.random.default_rng(seed), 600, phi=0.7)
        assert _largest_step(noise) < 1.5, seed
