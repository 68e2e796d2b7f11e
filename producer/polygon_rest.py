"""Polygon/Massive REST: aggregates with next_url pagination, daily open/close, ticker lookups.

Plain HTTP (httpx) rather than the official ``massive`` client, because the client falls
short where this producer needs control: it hides ``next_url`` inside an iterator (so a
backfill cannot checkpoint between pages), has no request-rate budget, retries 429s with
a fixed 0.1 s factor invisible to metrics, returns ``[]`` when a body does not decode
(silently dropping a page), and puts the server's whole answer into its exceptions. The
wire format is the same one the client reads.

Behaviour:

- the key goes in an ``Authorization: Bearer`` header, never in a URL; every error text is
  passed through :func:`producer.redaction.redact` anyway;
- requests are spaced to ``polygon.requests_per_minute`` (5 a minute is the free tier);
- 429, 5xx, dropped connections and unreadable bodies are retried with bounded exponential
  back-off with jitter, honouring ``Retry-After``; each retry is counted by cause;
- 401/403 and unknown tickers become :class:`~tickcast.errors.SourceError` saying what to fix;
- a ``next_url`` (or any full URL) is followed only when its scheme, host and port are the
  configured base URL's: the key is never sent to another host;
- :func:`agg_to_bar` turns any record, however broken (NaN, infinite or huge numbers, wrong
  types, nested junk), into a Bar or an :class:`~tickcast.errors.InvalidRecord`, never a crash.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from producer.metrics import ProducerMetrics, get_metrics
from producer.redaction import install_log_scrubber, redact
from tickcast.contracts import INTERVALS, Bar, from_epoch_ms
from tickcast.errors import ConfigError, InvalidRecord, SourceError
from tickcast.settings import PolygonSettings

log = logging.getLogger(__name__)

#: Polygon timespans for tickcast intervals (multiplier 1).
TIMESPANS = {"second": "second", "minute": "minute", "hour": "hour", "day": "day"}

_RETRY_STATUSES = {429, 500, 502, 503, 504}
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Epoch milliseconds a Polygon timestamp may hold: Polygon's history starts after 1970, and
#: 2200 is far past any real bar while every later step (datetime, Arrow, Parquet, Delta)
#: still represents it. Anything else (NaN, infinities, 1e300) is a broken record.
EPOCH_MS_MIN = 0
EPOCH_MS_MAX = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()) * 1000
#: The largest trade count a bar may carry: the lake stores it as a 64-bit integer.
_TRADES_MAX = 2**63 - 1
_BASE_DELAY_S = 0.5
_KEY_FIX = "set TICKCAST_POLYGON__API_KEY to a valid Polygon/Massive API key"


class RateLimiter:
    """Spaces request starts evenly: at most ``per_minute`` a minute, no bursts.

    Polygon counts requests per minute; evenly spaced requests never trip it, whatever
    the window's alignment.
    """

    def __init__(self, per_minute: float, sleep: Any = time.sleep) -> None:
        self.interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()
        self._sleep = sleep

    def acquire(self) -> float:
        """Block until the next request may start; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return wait


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse ``Retry-After``: delta seconds (fractions accepted) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def backoff_delay(attempt: int, cap: float, retry_after: float | None = None) -> float:
    """Delay before retry ``attempt`` (1-based): exponential with full jitter, at most ``cap``.

    A server's ``Retry-After`` is a floor (waiting less only earns another 429), but is
    still bounded by ``cap`` so one bad header cannot stall a backfill for hours.
    """
    exp = min(cap, _BASE_DELAY_S * 2 ** (attempt - 1))
    delay = random.uniform(exp / 2, exp)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


@dataclass(frozen=True, slots=True)
class AggPage:
    """One page of aggregates: the raw result objects and the next page's URL."""

    ticker: str
    results: list[Any]
    next_url: str | None


class PolygonRest:
    """A small, strict Polygon REST client.

    Args:
        settings: base URL, key, rate budget and retry policy.
        metrics: where calls and retries are counted (default: the process-wide metrics).
        stop: optional object with ``wait(seconds) -> bool`` (a StopFlag) so back-offs end
            early on shutdown.
        transport: an httpx transport (tests use it to point at an in-process app).
    """

    def __init__(
        self,
        settings: PolygonSettings,
        metrics: ProducerMetrics | None = None,
        stop: Any = None,
        transport: Any = None,
    ) -> None:
        import httpx

        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ConfigError("TICKCAST_POLYGON__API_KEY", "is not set; the Polygon sources need an API key", _KEY_FIX)
        self.settings = settings
        self._key = settings.api_key.get_secret_value()
        install_log_scrubber(self._key)
        self.base = settings.rest_base_url.rstrip("/")
        found = origin(self.base)
        if found is None:
            raise ConfigError(
                "TICKCAST_POLYGON__REST_BASE_URL",
                f"{redact(self.base, self._key)!r} is not an http:// or https:// URL",
                "set it to the API's base URL, e.g. https://api.polygon.io",
            )
        self._origin: tuple[str, str, int] = found
        self.metrics = metrics or get_metrics()
        self.stop = stop
        self.limiter = RateLimiter(settings.requests_per_minute, sleep=self._sleep)
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {self._key}", "Accept-Encoding": "gzip", "User-Agent": "tickcast"},
            timeout=settings.request_timeout_s,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> PolygonRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if self.stop is not None:
            if self.stop.wait(seconds):
                raise SourceError("stopped while waiting to call Polygon")
        else:
            time.sleep(seconds)

    def _redact(self, text: str) -> str:
        return redact(text, self._key)

    def _url(self, path_or_url: str, params: dict[str, Any] | None) -> str:
        if path_or_url.startswith("/") and not path_or_url.startswith("//"):
            url = f"{self.base}{path_or_url}"
        else:
            # anything else is a full URL (a next_url from the server): it must name our host
            self._check_origin(path_or_url)
            url = path_or_url
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        return url

    def _check_origin(self, url: str) -> None:
        """Refuse a URL whose scheme, host or port differ from the base URL's (or that carries
        user info): the client would send it the API key."""
        theirs = origin(url)
        if theirs != self._origin:
            shown = "a URL that is not plain http(s)" if theirs is None else "{}://{}:{}".format(*theirs)
            raise SourceError(
                f"Polygon sent a next_url pointing to {self._redact(shown)}, not to the configured "
                "TICKCAST_POLYGON__REST_BASE_URL ({}://{}:{}); not following it, so the API key is not "
                "sent to another host".format(*self._origin),
                "if the API really moved, set TICKCAST_POLYGON__REST_BASE_URL to its new base URL; "
                "otherwise something between tickcast and Polygon rewrites answers",
            )

    def _shown(self, url: str) -> str:
        """A URL fit for logs: redacted, without the host's scheme noise."""
        parts = urlsplit(self._redact(url))
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def get(
        self, endpoint: str, path_or_url: str, params: dict[str, Any] | None = None, allow: tuple[int, ...] = ()
    ) -> tuple[int, Any]:
        """GET with rate limiting and retries; returns ``(status, json)``.

        Args:
            endpoint: a short name for metrics (``aggs``, ``open_close``, ``ticker``).
            path_or_url: a path under the base URL, or a full ``next_url``.
            params: query parameters.
            allow: non-200 statuses returned to the caller instead of raising (e.g. 404).

        Raises:
            SourceError: bad key, not entitled, other client errors, or retries exhausted.
        """
        import httpx

        url = self._url(path_or_url, params)
        attempt = 0
        while True:
            self.limiter.acquire()
            cause: str
            retry_after: float | None = None
            try:
                response = self._client.get(url)
            except httpx.TransportError as exc:
                self.metrics.api_calls.labels(endpoint, "error").inc()
                cause, detail = "network", f"{type(exc).__name__}: {self._redact(str(exc))}"
            else:
                status = response.status_code
                self.metrics.api_calls.labels(endpoint, str(status)).inc()
                if status == 200 or status in allow:
                    try:
                        return status, response.json()
                    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                        cause, detail = "bad_body", f"status {status} with a body that is not JSON"
                elif status in _RETRY_STATUSES:
                    cause = "429" if status == 429 else "5xx"
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    detail = f"status {status}: {self._message(response)}"
                else:
                    raise self._client_error(endpoint, status, response, url)
            attempt += 1
            if attempt > self.settings.max_retries:
                raise SourceError(
                    f"Polygon {endpoint} request {self._shown(url)} failed after "
                    f"{self.settings.max_retries} retries; last: {detail}",
                    "check TICKCAST_POLYGON__REST_BASE_URL and the service status, lower "
                    "TICKCAST_POLYGON__REQUESTS_PER_MINUTE, or raise TICKCAST_POLYGON__MAX_RETRIES",
                )
            delay = backoff_delay(attempt, self.settings.backoff_max_s, retry_after)
            self.metrics.api_retries.labels(cause).inc()
            log.warning(
                "polygon %s: %s; retry %d/%d in %.2f s", endpoint, detail, attempt, self.settings.max_retries, delay
            )
            self._sleep(delay)

    def _message(self, response: Any) -> str:
        try:
            body = response.json()
            text = str(body.get("error") or body.get("message") or body.get("status") or "")
        except (ValueError, AttributeError):
            text = response.text[:200]
        return self._redact(text)

    def _client_error(self, endpoint: str, status: int, response: Any, url: str) -> SourceError:
        message = self._message(response)
        if status == 401:
            return SourceError(f"Polygon rejected the API key (401: {message or 'unauthorized'})", _KEY_FIX)
        if status == 403:
            return SourceError(
                f"Polygon says the key is not entitled to {self._shown(url)} (403: {message})",
                "upgrade the Polygon/Massive plan or ask for data the plan covers (timespan, history, delay)",
            )
        return SourceError(
            f"Polygon {endpoint} request {self._shown(url)} answered {status}: {message}",
            "check the tickers, dates and interval asked for",
        )

    # -- endpoints ------------------------------------------------------------------
    def aggregate_pages(self, ticker: str, interval: str, start_ms: int, end_ms: int) -> Iterator[AggPage]:
        """Pages of ``ticker``'s aggregates with ``start_ms <= t <= end_ms``, oldest first.

        Follows ``next_url`` until the server stops sending one.
        """
        timespan = TIMESPANS[interval]
        path = f"/v2/aggs/ticker/{quote(ticker, safe='')}/range/1/{timespan}/{start_ms}/{end_ms}"
        params: dict[str, Any] | None = {
            "adjusted": "true" if self.settings.adjusted else "false",
            "sort": "asc",
            "limit": self.settings.page_limit,
        }
        url: str | None = path
        while url is not None:
            _, body = self.get("aggs", url, params)
            if not isinstance(body, dict):
                raise SourceError(f"Polygon aggs for {ticker} answered a {type(body).__name__}, not an object")
            results = body.get("results") or []
            if not isinstance(results, list):
                raise SourceError(f"Polygon aggs for {ticker}: results is a {type(results).__name__}, not a list")
            next_url = body.get("next_url") or None
            if next_url is not None and not isinstance(next_url, str):
                raise SourceError(f"Polygon aggs for {ticker}: next_url is a {type(next_url).__name__}, not a URL")
            yield AggPage(ticker, results, next_url)
            url, params = next_url, None  # next_url carries every parameter but the key

    def ticker_exists(self, ticker: str) -> bool:
        """Whether Polygon knows ``ticker`` (``/v3/reference/tickers/{ticker}``)."""
        status, _ = self.get("ticker", f"/v3/reference/tickers/{quote(ticker, safe='')}", allow=(404,))
        return status == 200

    def open_close(self, ticker: str, day: date) -> dict[str, Any] | None:
        """The daily open/close summary (``/v1/open-close/{ticker}/{date}``); None when there is
        none (a holiday or weekend: Polygon answers 404)."""
        status, body = self.get(
            "open_close",
            f"/v1/open-close/{quote(ticker, safe='')}/{day.isoformat()}",
            {"adjusted": "true" if self.settings.adjusted else "false"},
            allow=(404,),
        )
        return body if status == 200 and isinstance(body, dict) else None


def origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL as httpx (the client that sends it) reads it;
    None for anything else, including URLs with user info (``http://ours@theirs/``)."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host or parsed.userinfo:
        return None
    return parsed.scheme, parsed.host, parsed.port or _DEFAULT_PORTS[parsed.scheme]


def brief(value: Any, limit: int = 40) -> str:
    """A short, never-raising text for a value in a reject reason (huge ints, deep nesting)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # RecursionError on deep nesting, ValueError on a 5000-digit int
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def epoch_ms(value: Any, name: str) -> datetime:
    """A Polygon timestamp (epoch milliseconds) as an aware UTC datetime.

    Raises:
        InvalidRecord: for a non-number, NaN, an infinity, or a time outside 1970-2200 (where
            ``datetime.fromtimestamp`` would overflow or produce nonsense).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"{name} is {brief(value)}, not epoch milliseconds")
    if not EPOCH_MS_MIN <= value < EPOCH_MS_MAX:  # False for NaN too
        raise InvalidRecord(f"{name}={brief(value)} is not epoch milliseconds between 1970 and 2200")
    return from_epoch_ms(value)


def check_numbers(record: dict[str, Any], names: tuple[str, ...]) -> None:
    """Reject integers too large for a float (``Bar.validate`` would overflow on them).

    Other wrong values (strings, None, NaN, nested junk) are left to ``Bar.validate``, which
    names them.
    """
    for name in names:
        value = record.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                raise InvalidRecord(f"{name} is {brief(value)}, too large for a number") from None


def agg_to_bar(result: Any, ticker: str, interval: str, source: str) -> Bar:
    """A Polygon aggregate (``v vw o c h l t n``) as a Bar, not yet validated.

    Never raises anything but :class:`InvalidRecord` (a property-based test holds it to that),
    and the Bar it returns is safe to :meth:`~tickcast.contracts.Bar.validate`.

    Raises:
        InvalidRecord: when the record is not an object, misses ``t``, ``o``, ``h``, ``l``,
            ``c`` or ``v``, ``t`` is not epoch milliseconds between 1970 and 2200, a number
            does not fit a float, or ``n`` does not fit a 64-bit integer.
    """
    if not isinstance(result, dict):
        raise InvalidRecord(f"aggregate is a {type(result).__name__}, not an object")
    missing = [k for k in ("t", "o", "h", "l", "c", "v") if k not in result]
    if missing:
        raise InvalidRecord(f"aggregate misses field(s) {', '.join(missing)}")
    start = epoch_ms(result["t"], "aggregate t")
    check_numbers(result, ("o", "h", "l", "c", "v", "vw"))
    trades = result.get("n")
    if isinstance(trades, float) and trades.is_integer():
        trades = int(trades)
    if isinstance(trades, int) and not isinstance(trades, bool) and trades > _TRADES_MAX:
        raise InvalidRecord(f"n is {brief(trades)}, more trades than a 64-bit integer holds")
    return Bar(
        ticker=ticker,
        interval=interval,
        start=start,
        end=start + INTERVALS[interval],
        open=result["o"],
        high=result["h"],
        low=result["l"],
        close=result["c"],
        volume=result["v"],
        vwap=result.get("vw"),
        trades=trades,
        source=source,
    )


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(value.timestamp() * 1000)
