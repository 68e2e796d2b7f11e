"""The synthetic source: realistic bars for load tests and benchmarks.

Each ticker follows a geometric Brownian motion with its own price level, drift and
volatility. Within the US regular session (09:30-16:00 New York) volatility and volume
follow the familiar U shape: busiest at the open and the close, quiet at midday. Every
bar is simulated from a few sub-steps, so open, high, low and close are consistent, and
carries a VWAP inside its range and a trade count. Time steps through the sessions of
weekdays; all tickers advance together, one bar each per step.

Generation is vectorized with numpy across tickers; serialization builds the JSON
directly (see :mod:`producer.encode`), so the generator is not what limits throughput.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from producer.encode import prefix, times
from producer.metrics import get_metrics
from producer.sink import BarPublisher
from tickcast.contracts import INTERVALS
from tickcast.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "synthetic"
SESSION_MINUTES = 390
_SUBSTEPS = 4
_YEAR_SECONDS = 252 * SESSION_MINUTES * 60  # trading seconds a year


def ticker_names(count: int) -> tuple[str, ...]:
    """``count`` plausible, distinct symbols: SYA, SYB, ... then SYAA..., all valid tickers."""
    names: list[str] = []
    i = 0
    while len(names) < count:
        n, s = i, ""
        while True:
            s = chr(ord("A") + n % 26) + s
            n = n // 26 - 1
            if n < 0:
                break
        names.append(f"SY{s}")
        i += 1
    return tuple(names)


def session_open_utc(day: date) -> datetime:
    """09:30 in New York on ``day``, in UTC (14:30 or 13:30 depending on DST)."""
    try:
        from zoneinfo import ZoneInfo

        local = datetime(day.year, day.month, day.day, 9, 30, tzinfo=ZoneInfo("America/New_York"))
        return local.astimezone(UTC)
    except Exception:  # no tz database: standard time is close enough for synthetic data
        return datetime(day.year, day.month, day.day, 14, 30, tzinfo=UTC)


def u_shape(fraction: float) -> float:
    """1 at the session's ends, 0 in its middle (``fraction`` 0..1 through the session)."""
    return (2.0 * fraction - 1.0) ** 2


@dataclass
class Step:
    """One time step: a bar per ticker, as arrays."""

    start: datetime
    end: datetime
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray
    trades: np.ndarray


class SyntheticMarket:
    """A GBM market with intraday seasonality.

    Args:
        tickers: the symbols.
        interval: ``second``, ``minute`` or ``hour`` (bars inside the session) or ``day``.
        start: the first session day (default: today).
        seed: random seed; the same seed gives the same bars.
    """

    def __init__(
        self, tickers: tuple[str, ...], interval: str = "minute", start: date | None = None, seed: int = 7
    ) -> None:
        if interval not in INTERVALS:
            raise ConfigError("--interval", f"{interval!r} is not one of {', '.join(INTERVALS)}")
        if not tickers:
            raise ConfigError(
                "--tickers", "the synthetic source needs at least one ticker", "pass --tickers or --num-tickers"
            )
        self.tickers = tickers
        self.interval = interval
        self.step_s = INTERVALS[interval].total_seconds()
        self.rng = np.random.default_rng(seed)
        n = len(tickers)
        self.price = np.round(self.rng.uniform(10, 500, n), 2)
        self.sigma = self.rng.uniform(0.15, 0.65, n)  # annualised volatility
        self.mu = self.rng.normal(0.05, 0.1, n)
        self.base_volume = np.exp(self.rng.normal(np.log(2_000), 1.0, n)) * (self.step_s / 60.0)
        self.trade_size = self.rng.uniform(50, 250, n)
        self.day = start or datetime.now(UTC).date()
        while self.day.weekday() >= 5:
            self.day += timedelta(days=1)
        self.index = 0  # bar index within the session

    def _steps_per_session(self) -> int:
        if self.interval == "day":
            return 1
        return max(1, int(SESSION_MINUTES * 60 // self.step_s))

    def _next_day(self) -> None:
        self.day += timedelta(days=1)
        while self.day.weekday() >= 5:
            self.day += timedelta(days=1)
        self.index = 0

    def step(self) -> Step:
        """Advance every ticker by one bar."""
        per_session = self._steps_per_session()
        if self.index >= per_session:
            self._next_day()
        if self.interval == "day":
            start = datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)
            fraction = 0.5
            dt_years = 1 / 252
        else:
            start = session_open_utc(self.day) + timedelta(seconds=self.step_s * self.index)
            fraction = (self.index + 0.5) / per_session
            dt_years = self.step_s / _YEAR_SECONDS
        end = start + INTERVALS[self.interval]
        self.index += 1
        shape = u_shape(fraction)
        vol = self.sigma * (0.7 + 1.2 * shape)
        n = len(self.tickers)
        sub_dt = dt_years / _SUBSTEPS
        shocks = self.rng.standard_normal((_SUBSTEPS, n))
        increments = (self.mu - 0.5 * vol**2) * sub_dt + vol * np.sqrt(sub_dt) * shocks
        path = self.price * np.exp(np.cumsum(increments, axis=0))
        o = self.price
        c = path[-1]
        hi = np.maximum(np.maximum(path.max(axis=0), o), c)
        lo = np.minimum(np.minimum(path.min(axis=0), o), c)
        wiggle = np.abs(self.rng.standard_normal((2, n))) * vol * np.sqrt(sub_dt) * 0.5
        hi = hi * (1 + wiggle[0])
        lo = lo * (1 - wiggle[1])
        o, c, hi, lo = np.round(o, 4), np.round(c, 4), np.round(hi, 4), np.round(lo, 4)
        hi = np.maximum(hi, np.maximum(o, c))
        lo = np.maximum(np.minimum(lo, np.minimum(o, c)), 0.0001)
        vwap = np.round(np.clip((path.mean(axis=0) + hi + lo + c) / 4, lo, hi), 4)
        volume = np.round(self.base_volume * (0.5 + 2.0 * shape) * self.rng.lognormal(0, 0.4, n))
        trades = np.maximum(1, (volume / self.trade_size).astype(np.int64))
        self.price = c
        return Step(start, end, o, hi, lo, c, volume, vwap, trades)

    def encoded(self) -> Iterator[tuple[list[str], list[bytes], float]]:
        """Endless steps as (tickers, JSON values, end as Unix seconds)."""
        heads = [prefix(t, self.interval) for t in self.tickers]
        tail = f',"source":"{SOURCE}"}}'
        tickers = list(self.tickers)
        while True:
            s = self.step()
            middle = times(s.start, s.end)
            values = [
                f'{h}{middle}{o!r},"high":{hi!r},"low":{lo!r},"close":{c!r},"volume":{v!r},'
                f'"vwap":{vw!r},"trades":{n}{tail}'.encode()
                for h, o, hi, lo, c, v, vw, n in zip(
                    heads,
                    s.open.tolist(),
                    s.high.tolist(),
                    s.low.tolist(),
                    s.close.tolist(),
                    s.volume.tolist(),
                    s.vwap.tolist(),
                    s.trades.tolist(),
                    strict=True,
                )
            ]
            yield tickers, values, s.end.timestamp()


@dataclass
class SyntheticResult:
    """What a synthetic run did."""

    bars: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Bars a second achieved."""
        return self.bars / self.seconds if self.seconds > 0 else 0.0


def run_synthetic(
    market: SyntheticMarket,
    publisher: BarPublisher,
    rate: float | None = None,
    max_bars: int | None = None,
    duration: float | None = None,
    stop: Any = None,
    flush: bool = True,
) -> SyntheticResult:
    """Publish synthetic bars at ``rate`` bars a second (None: as fast as possible).

    Bars are valid by construction (the generator keeps low <= open, close <= high and
    positive prices), so they take the publisher's pre-validated fast path.
    """
    metrics = get_metrics().source(SOURCE)
    send = publisher.send_encoded
    started = time.perf_counter()
    deadline = None if duration is None else started + duration
    sent = 0
    for tickers, values, end_ts in market.encoded():
        if max_bars is not None and sent + len(values) > max_bars:
            keep = max_bars - sent
            tickers, values = tickers[:keep], values[:keep]
        for ticker, value in zip(tickers, values, strict=True):
            send(ticker, value, end_ts)
        sent += len(values)
        metrics.bars_in.inc(len(values))
        if max_bars is not None and sent >= max_bars:
            break
        if stop is not None and stop.is_set():
            break
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            break
        if rate:
            ahead = sent / rate - (now - started)
            if ahead > 0:
                if stop is not None:
                    if stop.wait(ahead):
                        break
                else:
                    time.sleep(ahead)
    if flush:
        publisher.flush()
    return SyntheticResult(sent, time.perf_counter() - started)
