"""A thin HTTP client for the Serve endpoint: timeouts, retries with back-off, a circuit breaker.

The forecaster calls :meth:`ServeClient.forecast` from worker threads with a micro-batch
of series. Transient failures (connection errors, timeouts, 5xx, 429, and 404/401/403,
which mean "not deployed yet" or "misconfigured", never "bad series") are retried with
jittered exponential back-off; after ``breaker_failures`` consecutive failed calls the
circuit opens and calls fail at once with :class:`ServeUnavailable` until a pause has passed
(doubling, up to 8 times the first), when one trial call is let through. A success closes
the circuit. The forecaster checks :meth:`CircuitBreaker.allow` before dispatching, so a
Serve outage costs no threads and no busy loops, and the service recovers by itself.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tickcast.errors import TickcastError

if TYPE_CHECKING:
    import numpy as np

    from tickcast.settings import Settings

# 404: the route is missing while the app is (re)deployed behind Serve's proxy or an ingress;
# 401/403: a token mismatch the operator must fix -- waiting is safe, dropping bars is not.
_TRANSIENT = frozenset({401, 403, 404, 408, 425, 429})

_FIX = "check that Serve is running (`tickcast serve`) and TICKCAST_SERVING__URL points at it"


class ServeUnavailable(TickcastError):
    """Serve could not be reached, timed out, or answered 5xx, 429, 404 or 401/403 (worth retrying later)."""


class CircuitOpen(ServeUnavailable):
    """The circuit breaker is open: the call was not even attempted."""


class ServeRejected(TickcastError):
    """Serve refused the request (400, 413, 422, ...): retrying the same request will not help."""


@dataclass(frozen=True, slots=True)
class SeriesForecast:
    """Serve's answer for one series."""

    id: str
    mean: list[float]
    quantiles: dict[str, list[float]]


@dataclass(frozen=True, slots=True)
class ForecastBatch:
    """Serve's answer for one request: the model that answered and one forecast per series
    (None for a series Serve rejected, see :meth:`ServeClient.forecast_each`)."""

    model_id: str
    model_version: str
    forecasts: list[SeriesForecast | None]


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after a pause.

    The pause starts at ``reset_s`` and doubles on each failed trial, up to ``8 * reset_s``.
    Thread-safe.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.max_reset_s = reset_s * 8
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until: float | None = None
        self._pause = reset_s
        self._trial = False
        self.opened = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._trial or self._clock() >= self._open_until else "open"

    def available(self) -> bool:
        """Whether :meth:`allow` would let a call through now (does not take the trial slot)."""
        with self._lock:
            if self._open_until is None:
                return True
            return not self._trial and self._clock() >= self._open_until

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open state: one trial at a time)."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._trial or self._clock() < self._open_until:
                return False
            self._trial = True
            return True

    def retry_in(self) -> float:
        """Seconds until a trial call is allowed (0 when closed)."""
        with self._lock:
            if self._open_until is None:
                return 0.0
            return max(0.0, self._open_until - self._clock())

    def success(self) -> None:
        """Record a successful call: close the circuit."""
        with self._lock:
            self._consecutive = 0
            self._open_until = None
            self._pause = self.reset_s
            self._trial = False

    def failure(self) -> None:
        """Record a failed call; opens (or re-opens, with a longer pause) the circuit."""
        with self._lock:
            self._consecutive += 1
            if self._trial:
                self._trial = False
                self._pause = min(self._pause * 2, self.max_reset_s)
                self._open_until = self._clock() + self._pause
                self.opened += 1
            elif self._open_until is None and self._consecutive >= self.failures:
                self._open_until = self._clock() + self._pause
                self.opened += 1


class ServeClient:
    """Calls Serve's ``POST /v1/forecast``, ``GET /v1/models`` and ``GET /healthz``.

    Args:
        url: base URL of Serve, e.g. ``http://127.0.0.1:8000``.
        timeout_s: timeout of one HTTP attempt.
        max_retries: retries of a transient failure within one call.
        breaker: the circuit breaker shared by every call.
        auth_token: bearer token when Serve requires one.
        backoff_s: first retry pause (doubles, jittered, capped at 2 s).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        max_retries: int = 2,
        breaker: CircuitBreaker | None = None,
        auth_token: str | None = None,
        backoff_s: float = 0.1,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.breaker = breaker or CircuitBreaker(3, 2.0)
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)),
            headers=headers,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ServeClient:
        """A client configured from ``settings.serving`` and ``settings.forecaster``."""
        f = settings.forecaster
        token = settings.serving.auth_token.get_secret_value() if settings.serving.auth_token else None
        return cls(
            settings.serving.url,
            timeout_s=f.request_timeout_s,
            max_retries=f.max_retries,
            breaker=CircuitBreaker(f.breaker_failures, f.breaker_reset_s),
            auth_token=token,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, json_body: Any = None) -> Any:
        """One call with retries; raises ServeUnavailable or ServeRejected."""
        import httpx

        if not self.breaker.allow():
            raise CircuitOpen(
                f"Serve at {self.url} is failing; circuit open for another {self.breaker.retry_in():.1f} s", _FIX
            )
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                pause = min(2.0, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(pause * (0.5 + random.random() / 2))
            try:
                response = self._http.request(method, path, json=json_body)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as exc:
                last = f"unreachable ({type(exc).__name__})"
                continue
            if response.status_code in _TRANSIENT or response.status_code >= 500:
                last = f"answered {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                # our request is wrong, Serve is fine: do not count it against the circuit
                self.breaker.success()
                raise ServeRejected(
                    f"Serve refused {method} {path} with {response.status_code}: {response.text[:300]}",
                    "check the forecaster's settings against Serve's limits (GET /v1/models)",
                )
            self.breaker.success()
            return response.json()
        self.breaker.failure()
        raise ServeUnavailable(f"Serve at {self.url} {last} after {self.max_retries + 1} attempts", _FIX)

    def forecast(
        self, series: Sequence[tuple[str, np.ndarray]], horizon: int, quantiles: Sequence[float]
    ) -> ForecastBatch:
        """Forecast many series in one request.

        Args:
            series: (id, context values oldest first) per series.
            horizon: steps to forecast.
            quantiles: quantile levels wanted.
        """
        body = build_request(series, horizon, quantiles)
        return parse_response(self._call("POST", "/v1/forecast", body), [sid for sid, _ in series])

    def forecast_each(
        self, series: Sequence[tuple[str, np.ndarray]], horizon: int, quantiles: Sequence[float]
    ) -> ForecastBatch:
        """Like :meth:`forecast`, but a rejected batch is split in halves until the series
        Serve refuses are isolated; those get None, so one bad series cannot sink its batch.

        Raises:
            ServeUnavailable: when Serve fails (the whole batch should be retried later).
            ServeRejected: when every series was rejected.
        """
        try:
            return self.forecast(series, horizon, quantiles)
        except ServeRejected:
            if len(series) == 1:
                raise
        mid = len(series) // 2
        out: list[SeriesForecast | None] = []
        model: tuple[str, str] | None = None
        first_error: ServeRejected | None = None
        for half in (series[:mid], series[mid:]):
            try:
                part = self.forecast_each(half, horizon, quantiles)
            except ServeRejected as exc:
                first_error = first_error or exc
                out.extend([None] * len(half))
                continue
            model = model or (part.model_id, part.model_version)
            out.extend(part.forecasts)
        if model is None:
            assert first_error is not None
            raise first_error
        return ForecastBatch(model[0], model[1], out)

    def models(self) -> Any:
        """``GET /v1/models``: what Serve is serving."""
        return self._call("GET", "/v1/models")

    def healthy(self) -> bool:
        """Whether ``GET /healthz`` answers 200 (no retries, does not touch the breaker)."""
        import httpx

        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False


def build_request(series: Sequence[tuple[str, np.ndarray]], horizon: int, quantiles: Sequence[float]) -> dict[str, Any]:
    """The JSON body of ``POST /v1/forecast`` (see ``serving.validation.ForecastRequest``)."""
    import numpy as np

    return {
        "series": [np.asarray(values, dtype=float).tolist() for _, values in series],
        "ids": [sid for sid, _ in series],
        "horizon": int(horizon),
        "quantile_levels": [float(q) for q in quantiles],
    }


def parse_response(data: Any, ids: Sequence[str]) -> ForecastBatch:
    """Serve's JSON answer (``serving.validation.ForecastResponse``) as a :class:`ForecastBatch`.

    Forecasts come back in request order; ``ids`` echo the request's ids. Raises
    ServeRejected when the answer is malformed.
    """
    try:
        model = data["model"]
        out: list[SeriesForecast | None] = [
            SeriesForecast(
                id=str(item.get("id") or (ids[i] if i < len(ids) else "")),
                mean=[float(v) for v in item["mean"]],
                quantiles={str(k): [float(x) for x in v] for k, v in item["quantiles"].items()},
            )
            for i, item in enumerate(data["forecasts"])
        ]
        if len(out) != len(ids):
            raise ValueError(f"{len(out)} forecasts for {len(ids)} series")
        return ForecastBatch(model_id=str(model["id"]), model_version=str(model["version"]), forecasts=out)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServeRejected(f"Serve's answer is not a forecast response: {exc!r}", "check the Serve version") from None
