"""Data contracts: Bar, Forecast, Score, with validation and versioned JSON.

These are plain slotted dataclasses rather than pydantic models because the producer and
consumer handle tens of thousands of bars a second; validation is explicit and cheap.
Every timestamp is timezone-aware UTC. On the wire a bar is one JSON object with a
``schema_version`` field; timestamps are ISO-8601 strings with a ``Z`` suffix.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tickcast.errors import InvalidBar, InvalidRecord

SCHEMA_VERSION: Final = 1

INTERVALS: Final[dict[str, timedelta]] = {
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}

# Exchange symbols: an upper-case letter, then letters, digits, '.' or '-' (BRK.B, BF-B).
# \Z, not $: "$" also matches before a trailing newline, and a ticker names a lake folder.
TICKER_RE: Final = re.compile(r"^[A-Z][A-Z0-9.\-]{0,11}\Z")


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive datetimes are rejected."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} (timestamps must be timezone-aware UTC)")
    return value.astimezone(UTC)


def to_iso(value: datetime) -> str:
    """ISO-8601 with a ``Z`` suffix, the wire form of every timestamp."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """Parse an ISO-8601 timestamp; it must carry an offset or ``Z``."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return parsed.astimezone(UTC)


def from_epoch_ms(ms: int | float) -> datetime:
    """A UTC datetime from Unix epoch milliseconds (Polygon's ``t``, ``s`` and ``e``)."""
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def _finite(name: str, value: Any, where: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidBar(f"{name} is {type(value).__name__}, not a number", where)
    if not math.isfinite(value):
        raise InvalidBar(f"{name} is {value}, not finite", where)
    return float(value)


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar of a ticker over ``[start, end)``."""

    ticker: str
    interval: str
    start: datetime
    end: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None = None
    trades: int | None = None
    source: str = "unknown"

    def validate(self, where: str | None = None) -> Bar:
        """Check the contract; return self or raise :class:`InvalidBar` saying what and where."""
        where = where or f"{self.ticker}@{self.start.isoformat() if isinstance(self.start, datetime) else self.start}"
        if not isinstance(self.ticker, str) or not TICKER_RE.match(self.ticker):
            raise InvalidBar(f"ticker {self.ticker!r} is not a plausible symbol", where)
        if self.interval not in INTERVALS:
            raise InvalidBar(f"interval {self.interval!r} is not one of {', '.join(INTERVALS)}", where)
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidBar(f"{name} must be a timezone-aware datetime", where)
        if self.end <= self.start:
            raise InvalidBar("end is not after start", where)
        o = _finite("open", self.open, where)
        h = _finite("high", self.high, where)
        lo = _finite("low", self.low, where)
        c = _finite("close", self.close, where)
        v = _finite("volume", self.volume, where)
        if lo <= 0:
            raise InvalidBar(f"low is {lo}, prices must be positive", where)
        if not (lo <= o <= h and lo <= c <= h):
            raise InvalidBar(f"prices out of order: need low <= open, close <= high (o={o} h={h} l={lo} c={c})", where)
        if v < 0:
            raise InvalidBar(f"volume is {v}, must be >= 0", where)
        if self.vwap is not None and _finite("vwap", self.vwap, where) <= 0:
            raise InvalidBar(f"vwap is {self.vwap}, must be positive", where)
        if self.trades is not None and (
            isinstance(self.trades, bool) or not isinstance(self.trades, int) or self.trades < 0
        ):
            raise InvalidBar(f"trades is {self.trades!r}, must be a non-negative integer", where)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a dict (timestamps as ISO strings)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "ticker": self.ticker,
            "interval": self.interval,
            "start": to_iso(self.start),
            "end": to_iso(self.end),
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "vwap": self.vwap,
            "trades": self.trades,
            "source": self.source,
        }

    def to_json(self) -> bytes:
        """Serialize to the Kafka record value."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any], validate: bool = True) -> Bar:
        """Build from the wire dict; raises :class:`InvalidRecord` or :class:`InvalidBar`."""
        if not isinstance(data, dict):
            raise InvalidRecord(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidRecord(f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        try:
            bar = cls(
                ticker=data["ticker"],
                interval=data["interval"],
                start=from_iso(data["start"]),
                end=from_iso(data["end"]),
                open=data["open"],
                high=data["high"],
                low=data["low"],
                close=data["close"],
                volume=data["volume"],
                vwap=data.get("vwap"),
                trades=data.get("trades"),
                source=data.get("source", "unknown"),
            )
        except KeyError as exc:
            raise InvalidRecord(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"bad field value: {exc}") from None
        return bar.validate() if validate else bar

    @classmethod
    def from_json(cls, payload: bytes | str, validate: bool = True) -> Bar:
        """Parse a Kafka record value; raises :class:`InvalidRecord` or :class:`InvalidBar`."""
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRecord(f"not JSON: {exc}") from None
        return cls.from_dict(data, validate=validate)


def forecast_id(ticker: str, interval: str, model_id: str, model_version: str, target: str, last_bar: datetime) -> str:
    """Deterministic id: the same ticker, model, target and last bar always give the same id,
    so a restarted forecaster overwrites instead of duplicating."""
    key = f"{ticker}|{interval}|{model_id}|{model_version}|{target}|{to_iso(last_bar)}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Forecast:
    """A probabilistic forecast of ``target`` for the ``horizon`` bars after ``last_bar_start``.

    ``quantiles`` maps a level such as ``"0.1"`` to one value per step. The raw quantiles are
    the model's; a forecaster that calibrates its bands live (``serving.streaming.calibration``)
    adds the calibrated band for the nominal coverage ``calibrated_coverage`` (0.8: the 80%
    band) as ``calibrated_lower``/``calibrated_upper``, and the miscoverage level each step's
    band was drawn at as ``calibration_alpha``. All four are absent (None) on uncalibrated
    forecasts and on records written before calibration existed.
    """

    ticker: str
    interval: str
    model_id: str
    model_version: str
    issued_at: datetime
    last_bar_start: datetime
    horizon: int
    target: str
    mean: list[float]
    quantiles: dict[str, list[float]]
    bar_event_time: datetime | None = None
    id: str = field(default="")
    calibrated_coverage: float | None = None
    calibrated_lower: list[float] | None = None
    calibrated_upper: list[float] | None = None
    calibration_alpha: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(
                self,
                "id",
                forecast_id(
                    self.ticker, self.interval, self.model_id, self.model_version, self.target, self.last_bar_start
                ),
            )
        self.validate()

    def validate(self) -> Forecast:
        """Check shapes and finiteness; raise :class:`InvalidRecord` otherwise."""
        if self.horizon < 1 or len(self.mean) != self.horizon:
            raise InvalidRecord(f"mean has {len(self.mean)} steps, horizon is {self.horizon}")
        for level, values in self.quantiles.items():
            if not 0.0 < float(level) < 1.0:
                raise InvalidRecord(f"quantile level {level} outside (0, 1)")
            if len(values) != self.horizon:
                raise InvalidRecord(f"quantile {level} has {len(values)} steps, horizon is {self.horizon}")
        if not all(math.isfinite(v) for v in self.mean):
            raise InvalidRecord("mean has non-finite values")
        if self.interval not in INTERVALS:
            raise InvalidRecord(f"interval {self.interval!r} unknown")
        band = (self.calibrated_lower, self.calibrated_upper, self.calibration_alpha)
        if any(v is not None for v in (self.calibrated_coverage, *band)):
            if self.calibrated_coverage is None or not 0.0 < self.calibrated_coverage < 1.0:
                raise InvalidRecord(f"calibrated_coverage {self.calibrated_coverage!r} is not in (0, 1)")
            for name, steps in zip(("calibrated_lower", "calibrated_upper", "calibration_alpha"), band, strict=True):
                if steps is None or len(steps) != self.horizon:
                    raise InvalidRecord(f"{name} needs {self.horizon} steps with calibrated_coverage set")
                if not all(math.isfinite(v) for v in steps):
                    raise InvalidRecord(f"{name} has non-finite values")
        return self

    @property
    def calibrated(self) -> bool:
        """Whether the forecast carries a calibrated band."""
        return self.calibrated_coverage is not None

    def step_starts(self) -> list[datetime]:
        """Start time of each forecast step's bar."""
        delta = INTERVALS[self.interval]
        return [self.last_bar_start + delta * (i + 1) for i in range(self.horizon)]

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a dict."""
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "ticker": self.ticker,
            "interval": self.interval,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "issued_at": to_iso(self.issued_at),
            "last_bar_start": to_iso(self.last_bar_start),
            "bar_event_time": to_iso(self.bar_event_time) if self.bar_event_time else None,
            "horizon": self.horizon,
            "target": self.target,
            "mean": list(self.mean),
            "quantiles": {k: list(v) for k, v in self.quantiles.items()},
            # only when calibrated: an uncalibrated forecast's wire form is what it always was
            **(
                {
                    "calibrated_coverage": self.calibrated_coverage,
                    "calibrated_lower": list(self.calibrated_lower or ()),
                    "calibrated_upper": list(self.calibrated_upper or ()),
                    "calibration_alpha": list(self.calibration_alpha or ()),
                }
                if self.calibrated
                else {}
            ),
        }

    def to_json(self) -> bytes:
        """Serialize to the Kafka record value."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Forecast:
        """Build from the wire dict; raises :class:`InvalidRecord`."""
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise InvalidRecord("not a forecast record of a supported schema_version")
        try:
            return cls(
                id=data.get("id", ""),
                ticker=data["ticker"],
                interval=data["interval"],
                model_id=data["model_id"],
                model_version=data["model_version"],
                issued_at=from_iso(data["issued_at"]),
                last_bar_start=from_iso(data["last_bar_start"]),
                bar_event_time=from_iso(data["bar_event_time"]) if data.get("bar_event_time") else None,
                horizon=int(data["horizon"]),
                target=data["target"],
                mean=[float(v) for v in data["mean"]],
                quantiles={str(k): [float(x) for x in v] for k, v in data["quantiles"].items()},
                calibrated_coverage=_opt_float(data.get("calibrated_coverage")),
                calibrated_lower=_opt_floats(data.get("calibrated_lower")),
                calibrated_upper=_opt_floats(data.get("calibrated_upper")),
                calibration_alpha=_opt_floats(data.get("calibration_alpha")),
            )
        except KeyError as exc:
            raise InvalidRecord(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidRecord(f"bad field value: {exc}") from None

    @classmethod
    def from_json(cls, payload: bytes | str) -> Forecast:
        """Parse a Kafka record value."""
        try:
            return cls.from_dict(json.loads(payload))
        except ValueError as exc:
            if isinstance(exc, InvalidRecord):
                raise
            raise InvalidRecord(f"not JSON: {exc}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def quantile_loss(actual: float, level: float, predicted: float) -> float:
    """Pinball loss of one quantile prediction: ``2 * max(q*(y-p), (q-1)*(y-p))``.

    The factor 2 makes the 0.5 quantile's loss equal the absolute error, as in WQL.
    """
    diff = actual - predicted
    return 2.0 * max(level * diff, (level - 1.0) * diff)


@dataclass(frozen=True, slots=True)
class Score:
    """How one forecast step did once its actual bar arrived."""

    forecast_id: str
    ticker: str
    interval: str
    model_id: str
    model_version: str
    target: str
    step: int
    target_start: datetime
    issued_at: datetime
    actual: float
    median: float
    mean: float
    abs_error: float
    quantile_loss: float
    lower_80: float | None
    upper_80: float | None
    covered_80: bool | None
    naive_abs_error: float
    # the forecast's calibrated band at this step (None when it had none; records written
    # before calibration existed read back with these as None)
    calibrated_coverage: float | None = None
    calibrated_lower: float | None = None
    calibrated_upper: float | None = None
    calibrated_covered: bool | None = None
    calibrated_quantile_loss: float | None = None

    @classmethod
    def compute(cls, forecast: Forecast, step: int, actual: float, last_actual: float) -> Score:
        """Score step ``step`` (1-based) of ``forecast`` against ``actual``.

        ``last_actual`` is the target at the forecast's last seen bar; the naive error
        ``|actual - last_actual|`` is kept so MASE can be computed over any window.

        A calibrated forecast's step also gets ``calibrated_covered`` and
        ``calibrated_quantile_loss``: the quantile loss with the raw quantiles at the band's
        levels (0.1 and 0.9 for the 80% band) replaced by the calibrated bounds, the other
        levels as they are (None when the forecast lacks either of those levels).
        """
        i = step - 1
        levels = {float(k): v[i] for k, v in forecast.quantiles.items()}
        median = levels.get(0.5, forecast.mean[i])
        losses = [quantile_loss(actual, q, p) for q, p in levels.items()]
        lower, upper = levels.get(0.1), levels.get(0.9)
        covered = None if lower is None or upper is None else bool(lower <= actual <= upper)
        cal: dict[str, Any] = {}
        if forecast.calibrated:
            assert forecast.calibrated_lower is not None and forecast.calibrated_upper is not None
            c = float(forecast.calibrated_coverage)  # type: ignore[arg-type]
            lo, hi = forecast.calibrated_lower[i], forecast.calibrated_upper[i]
            low_level = next((q for q in levels if math.isclose(q, (1.0 - c) / 2.0)), None)
            high_level = next((q for q in levels if math.isclose(q, (1.0 + c) / 2.0)), None)
            cal_loss = None
            if low_level is not None and high_level is not None:
                swapped = {**levels, low_level: lo, high_level: hi}
                cal_loss = sum(quantile_loss(actual, q, p) for q, p in swapped.items()) / len(swapped)
            cal = {
                "calibrated_coverage": c,
                "calibrated_lower": float(lo),
                "calibrated_upper": float(hi),
                "calibrated_covered": bool(lo <= actual <= hi),
                "calibrated_quantile_loss": cal_loss,
            }
        return cls(
            forecast_id=forecast.id,
            ticker=forecast.ticker,
            interval=forecast.interval,
            model_id=forecast.model_id,
            model_version=forecast.model_version,
            target=forecast.target,
            step=step,
            target_start=forecast.step_starts()[i],
            issued_at=forecast.issued_at,
            actual=float(actual),
            median=float(median),
            mean=float(forecast.mean[i]),
            abs_error=abs(float(actual) - float(median)),
            quantile_loss=sum(losses) / len(losses) if losses else abs(float(actual) - float(median)),
            lower_80=lower,
            upper_80=upper,
            covered_80=covered,
            naive_abs_error=abs(float(actual) - float(last_actual)),
            **cal,
        )

    def to_dict(self) -> dict[str, Any]:
        """A flat dict, for Parquet rows and JSON."""
        return {
            "forecast_id": self.forecast_id,
            "ticker": self.ticker,
            "interval": self.interval,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "target": self.target,
            "step": self.step,
            "target_start": self.target_start,
            "issued_at": self.issued_at,
            "actual": self.actual,
            "median": self.median,
            "mean": self.mean,
            "abs_error": self.abs_error,
            "quantile_loss": self.quantile_loss,
            "lower_80": self.lower_80,
            "upper_80": self.upper_80,
            "covered_80": self.covered_80,
            "naive_abs_error": self.naive_abs_error,
            "calibrated_coverage": self.calibrated_coverage,
            "calibrated_lower": self.calibrated_lower,
            "calibrated_upper": self.calibrated_upper,
            "calibrated_covered": self.calibrated_covered,
            "calibrated_quantile_loss": self.calibrated_quantile_loss,
        }


def now_utc() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)
