"""Synthetic time series for training and testing, all seedable.

Every generator takes a :class:`numpy.random.Generator` and a length and returns a float64
array. Together they cover what market bars look like and what a forecaster must learn:

* prices: random walks with heavy-tailed steps, geometric Brownian motion with volatility
  and drift regimes (the model must learn that the best median is the last value and that
  the spread grows like the square root of the horizon);
* returns: zero-mean noise with volatility clustering (GARCH(1,1));
* structure: trends with change points, daily/weekly seasonalities, stationary AR
  processes, intraday volume-like U-shaped profiles, and mixtures of these.

:class:`SyntheticSeries` is a lazy, indexable collection (series ``i`` is always the same
for the same seed) that the Chronos-2 trainer samples from without holding a corpus in
memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Generator = Callable[[np.random.Generator, int], np.ndarray]

#: Seasonal periods seen in bars: 5 and 7 (weekly on business / calendar days), 12, 24 and
#: 168 (hourly), 13, 26, 39 and 78 (30-, 15-, 10- and 5-minute bars in a 6.5 h session).
PERIODS: tuple[int, ...] = (5, 7, 12, 13, 24, 26, 39, 48, 52, 78, 96)


def _level(rng: np.random.Generator) -> float:
    """A positive starting level spanning penny stocks to index points."""
    return float(np.exp(rng.uniform(0.0, 9.0)))


def _heavy_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance noise: Gaussian or Student-t with 3 to 10 degrees of freedom."""
    if rng.random() < 0.4:
        return rng.standard_normal(n)
    df = rng.uniform(3.0, 10.0)
    return rng.standard_t(df, n) / np.sqrt(df / (df - 2.0))


def random_walk(rng: np.random.Generator, n: int) -> np.ndarray:
    """An arithmetic random walk with heavy-tailed steps and a small drift."""
    level = _level(rng)
    sigma = level * rng.uniform(0.002, 0.03)
    drift = sigma * rng.normal(0.0, 0.05)
    steps = drift + sigma * _heavy_noise(rng, n)
    return level + np.cumsum(steps)


def garch_returns(rng: np.random.Generator, n: int) -> np.ndarray:
    """Log-returns with GARCH(1,1) volatility clustering and fat tails (mean about zero)."""
    alpha = rng.uniform(0.02, 0.15)
    beta = rng.uniform(0.75, 0.97 - alpha)
    base = rng.uniform(0.004, 0.03)
    omega = base**2 * (1.0 - alpha - beta)
    z = _heavy_noise(rng, n)
    out = np.empty(n)
    var = base**2
    for t in range(n):
        out[t] = np.sqrt(var) * z[t]
        var = omega + alpha * out[t] ** 2 + beta * var
    return out + rng.normal(0.0, 0.0003)


def gbm_regimes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Geometric Brownian motion whose drift and volatility switch between Markov regimes."""
    n_regimes = int(rng.integers(1, 4))
    vols = rng.uniform(0.004, 0.035, n_regimes)
    drifts = rng.normal(0.0, 0.0008, n_regimes)
    stay = rng.uniform(0.97, 0.999)
    regime = np.empty(n, dtype=int)
    state = int(rng.integers(n_regimes))
    switches = rng.random(n)
    for t in range(n):
        if switches[t] > stay:
            state = int(rng.integers(n_regimes))
        regime[t] = state
    if rng.random() < 0.5:
        log_ret = drifts[regime] + vols[regime] * _heavy_noise(rng, n)
    else:
        log_ret = garch_returns(rng, n) + drifts[regime]
    return _level(rng) * np.exp(np.cumsum(log_ret))


def trend(rng: np.random.Generator, n: int) -> np.ndarray:
    """A piecewise-linear trend with a few change points, plus AR(1) noise."""
    n_changes = int(rng.integers(0, 4))
    points = np.sort(rng.integers(0, n, n_changes))
    slopes = rng.normal(0.0, 1.0, n_changes + 1)
    slope = np.empty(n)
    edges = [0, *points.tolist(), n]
    for i in range(len(edges) - 1):
        slope[edges[i] : edges[i + 1]] = slopes[i]
    path = np.cumsum(slope)
    noise = ar_noise(rng, n, phi=rng.uniform(0.0, 0.9)) * rng.uniform(0.5, 10.0)
    return rng.uniform(-50, 200) + path + noise


def level_shift(rng: np.random.Generator, n: int) -> np.ndarray:
    """A flat level that jumps to new levels a few times (a step function), plus AR(1) noise.

    After a shift the best forecast is the new level, not a mean over the whole context: a
    forecaster has to notice the break and forget what came before it.
    """
    noise_scale = rng.uniform(0.5, 5.0)
    n_shifts = int(rng.integers(1, 5))
    points = np.sort(rng.integers(n // 10, n - n // 10, n_shifts))
    jumps = noise_scale * rng.uniform(3.0, 12.0, n_shifts) * rng.choice([-1.0, 1.0], n_shifts)
    steps = np.zeros(n)
    steps[points] = jumps
    noise = noise_scale * ar_noise(rng, n, phi=rng.uniform(0.0, 0.7))
    return rng.uniform(50.0, 500.0) + np.cumsum(steps) + noise


def ar_noise(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) noise."""
    from scipy.signal import lfilter

    e = rng.standard_normal(n) * np.sqrt(1.0 - phi**2)
    e[0] = rng.standard_normal()  # start in the stationary distribution
    return np.asarray(lfilter([1.0], [1.0, -phi], e))


def ar_process(rng: np.random.Generator, n: int) -> np.ndarray:
    """A stationary AR(1)-AR(3) process around a level."""
    p = int(rng.integers(1, 4))
    while True:
        phis = rng.uniform(-0.6, 0.95, p)
        roots = np.roots(np.r_[1.0, -phis])
        if np.all(np.abs(roots) < 0.98):
            break
    from scipy.signal import lfilter

    burn = 100
    x = np.asarray(lfilter([1.0], np.r_[1.0, -phis], _heavy_noise(rng, n + burn)))
    return rng.uniform(-10, 100) + rng.uniform(0.1, 10.0) * x[burn:]


def seasonal_profile(rng: np.random.Generator, period: int) -> np.ndarray:
    """One period of a smooth random seasonal shape with unit amplitude."""
    t = np.arange(period) / period
    shape = np.zeros(period)
    for k in range(1, int(rng.integers(1, 5)) + 1):
        shape += rng.normal(0.0, 1.0 / k) * np.sin(2 * np.pi * k * t + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.3:  # a sharp, non-sinusoidal shape (peaks at fixed slots)
        shape += rng.normal(0.0, 1.0, period) * 0.7
    return shape / (np.abs(shape).max() + 1e-9)


def seasonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """One or two seasonalities (e.g. daily and weekly) with noise and an optional trend."""
    period = int(rng.choice(PERIODS))
    t = np.arange(n)
    amp = rng.uniform(1.0, 20.0)
    y = amp * np.tile(seasonal_profile(rng, period), n // period + 1)[:n]
    if rng.random() < 0.35:  # a second, longer season (daily x weekly)
        period2 = period * int(rng.choice([5, 7]))
        y += rng.uniform(0.2, 0.8) * amp * np.tile(seasonal_profile(rng, period2), n // period2 + 1)[:n]
    if rng.random() < 0.5:
        y += rng.normal(0.0, amp / n * 2) * t
    noise_scale = amp * rng.uniform(0.02, 0.5)
    y += noise_scale * ar_noise(rng, n, phi=rng.uniform(0.0, 0.8))
    y += rng.uniform(-amp, 5 * amp)
    if rng.random() < 0.3:  # multiplicative season on a positive level
        y = np.exp(y / (np.abs(y).max() + 1e-9))
    return y


def intraday_volume(rng: np.random.Generator, n: int, bars_per_day: int | None = None) -> np.ndarray:
    """Intraday volume-like bars: a U-shaped daily profile (busy open and close, quiet lunch).

    Daily activity wanders as a log-AR(1), each bar has lognormal noise and a few bars spike.
    Values are non-negative and strongly periodic, which is where a forecaster should clearly
    beat the random-walk (naive) forecast.
    """
    if bars_per_day is None:
        bars_per_day = int(rng.choice((13, 26, 39, 78)))
    x = np.linspace(0.0, 1.0, bars_per_day)
    depth = rng.uniform(0.5, 0.85)
    open_weight = rng.uniform(1.0, 2.0)
    profile = 1.0 - depth * np.sin(np.pi * x) ** rng.uniform(0.5, 2.0)
    profile[0] *= open_weight
    profile[-1] *= rng.uniform(1.0, 2.5)  # closing auction
    n_days = n // bars_per_day + 2
    day_level = np.exp(ar_noise(rng, n_days, phi=rng.uniform(0.3, 0.9)) * rng.uniform(0.05, 0.4))
    base = np.exp(rng.uniform(6.0, 14.0))
    y = base * np.repeat(day_level, bars_per_day) * np.tile(profile, n_days)
    y *= np.exp(rng.normal(0.0, rng.uniform(0.05, 0.35), len(y)))
    spikes = rng.random(len(y)) < rng.uniform(0.0, 0.01)
    y[spikes] *= rng.uniform(2.0, 6.0, int(spikes.sum()))
    start = int(rng.integers(0, bars_per_day))
    return y[start : start + n]


def mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    """A sum of two standardized components from the other generators."""
    a, b = rng.choice(len(_BASE), 2, replace=False)
    ya = _BASE[a](rng, n)
    yb = _BASE[b](rng, n)
    wa, wb = rng.dirichlet([1.0, 1.0])
    za = (ya - ya.mean()) / (ya.std() + 1e-9)
    zb = (yb - yb.mean()) / (yb.std() + 1e-9)
    return rng.uniform(1, 10) * (wa * za + wb * zb) + rng.uniform(-5, 50)


_BASE: tuple[Generator, ...] = (random_walk, gbm_regimes, trend, ar_process, seasonal, intraday_volume)

#: Generators by name, for configuration and the CLI.
GENERATORS: dict[str, Generator] = {
    "random_walk": random_walk,
    "gbm_regimes": gbm_regimes,
    "garch_returns": garch_returns,
    "trend": trend,
    "ar": ar_process,
    "seasonal": seasonal,
    "intraday_volume": intraday_volume,
    "mixture": mixture,
    "level_shift": level_shift,
}

#: The mix used for the bundled checkpoint: prices first (what the platform forecasts
#: most), then the structure a forecaster must pick up: trends it must continue and level
#: shifts after which it must forget the old level.
DEFAULT_WEIGHTS: dict[str, float] = {
    "random_walk": 0.18,
    "gbm_regimes": 0.22,
    "garch_returns": 0.06,
    "trend": 0.10,
    "ar": 0.07,
    "seasonal": 0.12,
    "intraday_volume": 0.12,
    "mixture": 0.07,
    "level_shift": 0.06,
}


def generate(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """One series of ``kind`` (a key of :data:`GENERATORS`) and length ``n``."""
    try:
        fn = GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {', '.join(GENERATORS)}") from None
    y = np.asarray(fn(rng, n), dtype=np.float64)
    if not np.all(np.isfinite(y)):  # an exploding GBM path: fall back to a plain walk
        y = random_walk(rng, n)
    return y


def sample_corpus(
    n_series: int,
    length: int,
    seed: int,
    weights: Mapping[str, float] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """A fixed list of ``(kind, series)`` pairs, for tests and evaluation sets."""
    series = SyntheticSeries(n_series, seed=seed, weights=weights, min_length=length, max_length=length)
    return [(series.kind(i), series.values(i)) for i in range(n_series)]


class SyntheticSeries(Sequence[Any]):
    """A lazy collection of synthetic series, usable as Chronos-2 training inputs.

    Item ``i`` is a Chronos-2 ``PreparedInput`` dict built from a generator chosen by the
    weights and a generator seeded with ``(seed, i)``, so the collection is reproducible and
    needs no memory for a corpus. A small cache avoids generating one series twice in a row
    (the Chronos-2 dataset looks an item up once to check its length and once to slice it).

    Args:
        size: how many distinct series the collection has.
        seed: the seed; equal seeds give equal series.
        weights: generator name -> sampling weight (default :data:`DEFAULT_WEIGHTS`).
        min_length, max_length: bounds of the series lengths.
        prediction_length: horizon the training inputs are prepared for.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        weights: Mapping[str, float] | None = None,
        min_length: int = 256,
        max_length: int = 1024,
        prediction_length: int = 16,
    ) -> None:
        weights = dict(weights or DEFAULT_WEIGHTS)
        unknown = set(weights) - set(GENERATORS)
        if unknown:
            raise ValueError(f"unknown synthetic kinds {sorted(unknown)}; choose from {', '.join(GENERATORS)}")
        self.size = size
        self.seed = seed
        self.kinds = list(weights)
        total = sum(weights.values())
        self.probs = np.array([weights[k] / total for k in self.kinds])
        self.min_length = min_length
        self.max_length = max_length
        self.prediction_length = prediction_length
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return self.size

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def kind(self, i: int) -> str:
        """The generator name of item ``i``."""
        return str(self.kinds[int(self._rng(i).choice(len(self.kinds), p=self.probs))])

    def values(self, i: int) -> np.ndarray:
        """The raw float64 values of item ``i``."""
        if not 0 <= i < self.size:
            raise IndexError(i)
        rng = self._rng(i)
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.probs))]
        n = int(rng.integers(self.min_length, self.max_length + 1))
        return generate(kind, rng, n)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        import torch

        if i in self._cache:
            return self._cache[i]
        context = torch.from_numpy(self.values(i).astype(np.float32)).view(1, -1)
        item = {
            "context": context,
            "future_covariates": torch.full((1, self.prediction_length), torch.nan),
            "n_targets": 1,
            "n_covariates": 0,
            "n_future_covariates": 0,
        }
        self._cache[i] = item
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return item
