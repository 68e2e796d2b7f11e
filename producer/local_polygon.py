"""A local server that speaks Polygon's REST and WebSocket protocols, with fault injection.

Tests and the offline platform point ``TICKCAST_POLYGON__REST_BASE_URL`` and
``TICKCAST_POLYGON__WS_URL`` here instead of Polygon. Payloads use the real API's field
names and shapes:

REST (key in ``Authorization: Bearer`` or ``?apiKey=``; 401 for a missing or unknown key)
    ``GET /v2/aggs/ticker/{T}/range/{mult}/{timespan}/{from}/{to}`` with ``adjusted``,
    ``sort``, ``limit``: ``{"ticker", "queryCount", "resultsCount", "adjusted", "results":
    [{"v","vw","o","c","h","l","t","n"}], "status", "request_id", "count", "next_url"}``;
    an unknown ticker answers 200 with no ``results``, as Polygon does.
    ``GET /v1/open-close/{T}/{date}``: ``{"status","from","symbol","open","high","low",
    "close","volume","afterHours","preMarket"}``, 404 ``NOT_FOUND`` without data.
    ``GET /v3/reference/tickers/{T}``: ticker details, 404 for an unknown ticker.

WebSocket (``/stocks``)
    ``connected`` on connect; ``{"action":"auth","params":KEY}`` -> ``auth_success`` or
    ``auth_failed``; ``max_connections`` past the connection limit; ``{"action":
    "subscribe","params":"AM.AAPL,A.*"}`` -> ``success``; then per completed second (``A``)
    or minute (``AM``) a JSON array of ``{"ev","sym","v","av","op","vw","o","c","h","l",
    "a","z","s","e"}``.

Market data
    Generated tickers have deterministic bars for any time (a smooth random-looking walk,
    the same on every request, so a restarted backfill sees the same data); a bar exists
    once it has ended, so the live feed and REST agree. Bars from a file (``--data``, the
    columns of the lake's bar tables plus ``ticker``) are served as they are, and coarser
    timespans are aggregated from them.

Faults (:class:`Faults`, settable at runtime with ``POST /_local/faults``)
    429 storms with ``Retry-After``, 5xx, connections dropped mid-body, malformed records,
    junk records appended to pages, WebSocket disconnects (also right after subscribing),
    an ``apiKey`` echoed into ``next_url`` (as some clients expect), to prove the producer
    never logs it, and a ``next_url`` pointing at another host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

#: Polygon timespans and their length in milliseconds (month and longer are not served).
TIMESPAN_MS: dict[str, int] = {
    "second": 1_000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 7 * 86_400_000,
}
DEFAULT_TICKERS: tuple[str, ...] = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "SPY")
DEFAULT_API_KEY = "tickcast-local-key"
_MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit for your "
    "account. Please contact support at https://polygon.io/contact to increase your limit."
)


@dataclass
class Faults:
    """What to break. Counters are per server; ``*_every`` = every Nth event (0 = never)."""

    rate_limit_every: int = 0  # every Nth REST request answers 429
    rate_limit_burst: int = 0  # the next N REST requests answer 429 (a storm), then it stops
    retry_after_s: float = 1.0  # Retry-After sent with 429s (fractions allowed here)
    error_every: int = 0  # every Nth REST request answers 500/502/503
    error_burst: int = 0  # the next N REST requests answer 503
    drop_every: int = 0  # every Nth REST request: the connection closes mid-body
    malformed_every: int = 0  # ~1 in N aggregates is malformed (deterministic per ticker and t)
    key_in_next_url: bool = False  # append apiKey=KEY to next_url
    ws_disconnect_after: int = 0  # cut a WebSocket connection after N bar messages
    ws_disconnects: int = 0  # how many connections get cut (-1: all)
    ws_malformed_every: int = 0  # ~1 in N WebSocket bars is malformed
    ws_outage_s: float = 0.0  # after a cut, refuse WebSocket upgrades (503) this long
    latency_s: float = 0.0  # added to every REST answer
    next_url_base: str = ""  # scheme://host:port that next_url points to instead of this server
    junk_results: str = ""  # a JSON array of raw records appended to every aggregates page
    ws_drop_after_subscribe: int = 0  # the next N WebSocket connections close right after subscribing

    def update(self, values: dict[str, Any]) -> None:
        """Set the named faults (unknown names raise ValueError)."""
        names = {f.name: f for f in dataclasses.fields(self)}
        for name, value in values.items():
            if name not in names:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(names)}")
            kind = type(getattr(self, name))
            setattr(self, name, (str(value).lower() in ("1", "true", "yes")) if kind is bool else kind(value))


# -- deterministic market -------------------------------------------------------------------


def _seed(ticker: str) -> int:
    return int.from_bytes(hashlib.blake2b(ticker.encode(), digest_size=8).digest(), "big")


def _uniform(seed: int, k: int, salt: int) -> float:
    """A stable pseudo-random number in [0, 1) for (seed, k, salt)."""
    digest = hashlib.blake2b(struct.pack(">QqI", seed & 0xFFFFFFFFFFFFFFFF, k, salt), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _intraday_u(t_ms: int) -> float:
    """U-shaped activity over the US session (13:30-20:00 UTC): high at open and close."""
    minute = (t_ms // 60_000) % 1440
    x = (minute - 810) / 390  # 0 at the open, 1 at the close
    if 0 <= x <= 1:
        return 0.6 + 2.4 * (2 * x - 1) ** 2
    return 0.25


class MarketData:
    """Bars the server serves: generated tickers plus bars loaded from a table.

    Args:
        generated: tickers whose bars are generated for any time.
        table: optional pyarrow table of bars (``ticker``, ``interval``, ``start`` and the
            OHLCV columns of the lake's bar files); served as they are.
    """

    def __init__(self, generated: Iterable[str] = DEFAULT_TICKERS, table: Any = None) -> None:
        self.generated = tuple(dict.fromkeys(generated))
        self._seeds = {t: _seed(t) for t in self.generated}
        self.loaded: dict[tuple[str, int], list[dict[str, Any]]] = {}
        if table is not None:
            self._load(table)

    def _load(self, table: Any) -> None:
        import pyarrow.compute as pc

        interval_ms = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
        if "interval" not in table.column_names:
            raise ValueError("the bars table needs an interval column (second, minute, hour or day)")
        start = pc.cast(table["start"], "int64").to_pylist()  # microseconds since the epoch
        rows = table.to_pylist()
        for row, us in zip(rows, start, strict=True):
            key = (str(row["ticker"]), interval_ms[row["interval"]])
            self.loaded.setdefault(key, []).append(
                {
                    "v": row["volume"],
                    "vw": row.get("vwap"),
                    "o": row["open"],
                    "c": row["close"],
                    "h": row["high"],
                    "l": row["low"],
                    "t": us // 1000,
                    "n": row.get("trades"),
                }
            )
        for bars in self.loaded.values():
            bars.sort(key=lambda r: r["t"])

    @property
    def tickers(self) -> list[str]:
        """Every ticker the server knows."""
        return sorted({*self.generated, *(t for t, _ in self.loaded)})

    def knows(self, ticker: str) -> bool:
        """Whether ``ticker`` exists for the reference endpoint."""
        return ticker in self._seeds or any(t == ticker for t, _ in self.loaded)

    # generated bars ---------------------------------------------------------------------
    def _price(self, seed: int, t_ms: int) -> float:
        t = t_ms / 1000.0
        base = 20.0 + (seed % 4800) / 10.0
        p1, p2, p3 = (seed >> 8) % 628 / 100, (seed >> 20) % 628 / 100, (seed >> 32) % 628 / 100
        drift = 0.08 * math.sin(2 * math.pi * t / (5 * 86400) + p1) + 0.02 * math.sin(2 * math.pi * t / 7200 + p2)
        return base * math.exp(drift + 0.004 * math.sin(2 * math.pi * t / 300 + p3))

    def generated_bar(self, ticker: str, t_ms: int, span_ms: int) -> dict[str, Any]:
        """The generated aggregate of ``ticker`` over ``[t_ms, t_ms + span_ms)``."""
        seed = self._seeds[ticker]
        k = t_ms // 1000
        noise = 0.0002 * (1 + span_ms / 60_000) ** 0.5
        o = round(self._price(seed, t_ms) * (1 + noise * (_uniform(seed, k, 1) - 0.5)), 4)
        c = round(self._price(seed, t_ms + span_ms) * (1 + noise * (_uniform(seed, k, 2) - 0.5)), 4)
        mid = self._price(seed, t_ms + span_ms // 2)
        h = round(max(o, c, mid) * (1 + noise * _uniform(seed, k, 3)), 4)
        lo = round(min(o, c, mid) * (1 - noise * _uniform(seed, k, 4)), 4)
        h, lo = max(h, o, c), min(lo, o, c)
        scale = span_ms / 60_000
        v = float(round((200 + 9800 * _uniform(seed, k, 5)) * _intraday_u(t_ms) * scale) + 1)
        vw = round(min(h, max(lo, (h + lo + c) / 3)), 4)
        return {"v": v, "vw": vw, "o": o, "c": c, "h": h, "l": lo, "t": t_ms, "n": max(1, int(v // 90))}

    # queries ------------------------------------------------------------------------------
    def aggregates(
        self, ticker: str, span_ms: int, from_ms: int, to_ms: int, now_ms: int, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Bars with ``from_ms <= t <= to_ms`` that have ended by ``now_ms``, oldest first."""
        if ticker in self._seeds:
            if span_ms >= 86_400_000:
                first = -(-from_ms // 86_400_000) * 86_400_000
                out = []
                for t in range(first, to_ms + 1, span_ms):
                    if t + span_ms > now_ms:
                        break
                    if datetime.fromtimestamp(t / 1000, UTC).weekday() < 5 or span_ms > 86_400_000:
                        out.append(self.generated_bar(ticker, t, span_ms))
                    if limit is not None and len(out) >= limit:
                        break
                return out
            first = -(-from_ms // span_ms) * span_ms
            last = min(to_ms, now_ms - span_ms)
            if limit is not None:
                last = min(last, first + (limit - 1) * span_ms)
            return [self.generated_bar(ticker, t, span_ms) for t in range(first, last + 1, span_ms)]
        return self._loaded_aggregates(ticker, span_ms, from_ms, to_ms, limit)

    def _loaded_aggregates(
        self, ticker: str, span_ms: int, from_ms: int, to_ms: int, limit: int | None
    ) -> list[dict[str, Any]]:
        exact = self.loaded.get((ticker, span_ms))
        if exact is not None:
            out = [r for r in exact if from_ms <= r["t"] <= to_ms]
            return out[:limit] if limit is not None else out
        finer = sorted((s, bars) for (t, s), bars in self.loaded.items() if t == ticker and s < span_ms)
        if not finer:
            return []
        _, bars = finer[-1]
        groups: dict[int, list[dict[str, Any]]] = {}
        for r in bars:
            bucket = r["t"] // span_ms * span_ms
            if from_ms <= bucket <= to_ms:
                groups.setdefault(bucket, []).append(r)
        out = []
        for bucket in sorted(groups):
            rs = groups[bucket]
            volume = sum(r["v"] for r in rs)
            vw = sum((r["vw"] or r["c"]) * r["v"] for r in rs) / volume if volume else rs[-1]["c"]
            trades = [r["n"] for r in rs if r["n"] is not None]
            out.append(
                {
                    "v": volume,
                    "vw": round(vw, 4),
                    "o": rs[0]["o"],
                    "c": rs[-1]["c"],
                    "h": max(r["h"] for r in rs),
                    "l": min(r["l"] for r in rs),
                    "t": bucket,
                    "n": sum(trades) if trades else None,
                }
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def open_close(self, ticker: str, day: date, now_ms: int) -> dict[str, Any] | None:
        """The daily summary of ``ticker`` on ``day``; None at weekends or without data."""
        if day.weekday() >= 5:
            return None
        start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        minutes = self.aggregates(ticker, 60_000, start, start + 86_400_000 - 1, now_ms)
        if not minutes:
            daily = self.aggregates(ticker, 86_400_000, start, start, now_ms)
            if not daily:
                return None
            d = daily[0]
            return _summary(ticker, day, d["o"], d["h"], d["l"], d["c"], d["v"], None, None)
        open_ms, close_ms = start + 810 * 60_000, start + 1200 * 60_000  # 13:30 and 20:00 UTC
        session = [r for r in minutes if open_ms <= r["t"] < close_ms]
        pre = [r for r in minutes if r["t"] < open_ms]
        after = [r for r in minutes if r["t"] >= close_ms]
        if not session:
            return None
        return _summary(
            ticker,
            day,
            session[0]["o"],
            max(r["h"] for r in session),
            min(r["l"] for r in session),
            session[-1]["c"],
            sum(r["v"] for r in session),
            pre[-1]["c"] if pre else None,
            after[-1]["c"] if after else None,
        )


def _summary(
    ticker: str, day: date, o: float, h: float, lo: float, c: float, v: float, pre: float | None, after: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "OK",
        "from": day.isoformat(),
        "symbol": ticker,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
    }
    if after is not None:
        body["afterHours"] = after
    if pre is not None:
        body["preMarket"] = pre
    return body


def corrupt(record: dict[str, Any], seed: int) -> dict[str, Any]:
    """One of the ways real feeds go wrong: a missing field, a string number, a null, high < low."""
    record = dict(record)
    way = seed % 4
    if way == 0:
        record.pop("c", None)
    elif way == 1:
        record["v"] = "12O0"  # a letter O for a zero
    elif way == 2:
        record["o"] = None
    else:
        record["h"], record["l"] = record["l"] * 0.5, record["h"]
    return record


def is_malformed(ticker: str, t_ms: int, every: int) -> bool:
    """Whether the fault plan corrupts ``ticker``'s bar at ``t_ms`` (stable across requests)."""
    return every > 0 and _uniform(_seed(ticker), t_ms, 99) < 1.0 / every


def _parse_when(text: str, end: bool = False) -> int:
    """Polygon's ``from``/``to``: epoch milliseconds, or a ``YYYY-MM-DD`` date (UTC here) that
    covers the whole day (``to`` means through the end of that day)."""
    if text.isdigit():
        return int(text)
    day = date.fromisoformat(text)
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return start + 86_400_000 - 1 if end else start


def _cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _uncursor(text: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


# -- the server -----------------------------------------------------------------------------


@dataclass
class ServerStats:
    """What the server saw, for tests (``GET /_local/stats``)."""

    rest_requests: int = 0
    rest_by_status: dict[str, int] = field(default_factory=dict)
    ws_connections: int = 0
    ws_active: int = 0
    ws_auth_failures: int = 0
    ws_messages_sent: int = 0
    ws_cut: int = 0
    ws_sessions: list[list[float]] = field(default_factory=list)  # [opened, closed] Unix times per connection


class LocalPolygonServer:
    """The local Polygon: REST and WebSocket on one port, in a background thread.

    Args:
        host, port: where to listen (port 0 picks a free one).
        market: the data served.
        api_keys: accepted keys.
        faults: initial faults.
        max_page: the most results one page carries (Polygon's is 50000).
        ws_max_connections: concurrent authenticated WebSocket connections allowed (0: no limit).
        rpm_limit: answer 429 beyond this many REST requests a minute (0: no limit).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        market: MarketData | None = None,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        faults: Faults | None = None,
        max_page: int = 50_000,
        ws_max_connections: int = 0,
        rpm_limit: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.market = market or MarketData()
        self.api_keys = set(api_keys)
        self.faults = faults or Faults()
        self.max_page = max_page
        self.ws_max_connections = ws_max_connections
        self.rpm_limit = rpm_limit
        self.stats = ServerStats()
        self._recent: list[float] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._ws: dict[Any, Any] = {}  # open, authenticated WebSocket -> its request
        self._started = threading.Event()
        self._ws_refuse_until = 0.0
        self._error: BaseException | None = None

    # lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The REST base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The stocks WebSocket URL."""
        return f"ws://{self.host}:{self.port}/stocks"

    def start(self) -> LocalPolygonServer:
        """Start serving in a daemon thread; returns once the port is bound."""
        self._thread = threading.Thread(target=self._run, name="local-polygon", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        log.info("local Polygon on %s (WebSocket %s)", self.url, self.ws_url)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self._shutdown())
        loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/v2/aggs/ticker/{ticker}/range/{mult}/{timespan}/{start}/{end}", self._aggs)
        app.router.add_get("/v1/open-close/{ticker}/{day}", self._open_close)
        app.router.add_get("/v3/reference/tickers/{ticker}", self._ticker)
        app.router.add_get("/stocks", self._websocket)
        app.router.add_get("/_local/stats", self._stats)
        app.router.add_post("/_local/faults", self._set_faults)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for ws in list(self._ws):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> LocalPolygonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, **values: Any) -> None:
        """Change faults while running (thread-safe enough: plain attribute writes)."""
        with self._lock:
            self.faults.update(values)

    def cut_websockets(self) -> int:
        """Drop every WebSocket connection abruptly (no close frame); returns how many."""
        cut = 0
        for request in list(self._ws.values()):
            transport = request.transport
            if transport is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(transport.abort)
                cut += 1
        return cut

    # helpers ------------------------------------------------------------------------------
    def _request_id(self) -> str:
        return uuid.uuid4().hex

    def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
        from aiohttp import web

        with self._lock:
            key = str(status)
            self.stats.rest_by_status[key] = self.stats.rest_by_status.get(key, 0) + 1
        return web.json_response(body, status=status, headers=headers, dumps=lambda o: json.dumps(o))

    def _key_of(self, request: Any) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query.get("apiKey")

    async def _gate(self, request: Any) -> Any:
        """Auth, then faults, for every REST request; returns a response to send instead, or None."""
        from aiohttp import web

        with self._lock:
            self.stats.rest_requests += 1
            n = self.stats.rest_requests
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        key = self._key_of(request)
        if not key:
            return self._json(
                {"status": "ERROR", "request_id": self._request_id(), "error": "API Key was not provided"}, 401
            )
        if key not in self.api_keys:
            return self._json({"status": "ERROR", "request_id": self._request_id(), "error": "Unknown API Key"}, 401)
        f = self.faults
        limited = False
        with self._lock:
            if f.rate_limit_burst > 0:
                f.rate_limit_burst -= 1
                limited = True
            if self.rpm_limit:
                now = time.monotonic()
                self._recent = [t for t in self._recent if now - t < 60]
                if len(self._recent) >= self.rpm_limit:
                    limited = True
                else:
                    self._recent.append(now)
        if limited or (f.rate_limit_every and n % f.rate_limit_every == 0):
            return self._json(
                {
                    "status": "ERROR",
                    "request_id": self._request_id(),
                    "error": "You've exceeded the maximum requests per minute, please wait or upgrade your "
                    "subscription to continue. https://polygon.io/pricing",
                },
                429,
                {"Retry-After": f"{f.retry_after_s:g}"},
            )
        burst = False
        with self._lock:
            if f.error_burst > 0:
                f.error_burst -= 1
                burst = True
        if burst or (f.error_every and n % f.error_every == 0):
            status = 503 if burst else (500, 502, 503)[(n // max(1, f.error_every)) % 3]
            return self._json({"status": "ERROR", "request_id": self._request_id(), "error": "Internal error"}, status)
        if f.drop_every and n % f.drop_every == 0:
            with self._lock:
                self.stats.rest_by_status["dropped"] = self.stats.rest_by_status.get("dropped", 0) + 1
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = 4096
            await response.prepare(request)
            await response.write(b'{"ticker":"')
            if request.transport is not None:
                request.transport.close()
            return response
        return None

    # REST ---------------------------------------------------------------------------------
    async def _aggs(self, request: Any) -> Any:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        info = request.match_info
        ticker, timespan = info["ticker"], info["timespan"]
        try:
            mult = int(info["mult"])
            if mult < 1 or timespan not in TIMESPAN_MS:
                raise ValueError
            start, end = _parse_when(info["start"]), _parse_when(info["end"], end=True)
        except ValueError:
            return self._json(
                {
                    "status": "ERROR",
                    "request_id": self._request_id(),
                    "error": "Could not parse the request: multiplier, timespan (second, minute, hour, day, "
                    "week) or from/to (YYYY-MM-DD or a millisecond timestamp) is invalid",
                },
                400,
            )
        query = request.query
        cursor = _uncursor(query["cursor"]) if "cursor" in query else {}
        limit = min(int(cursor.get("limit", query.get("limit", 5000))), 50_000, self.max_page)
        adjusted = str(cursor.get("adjusted", query.get("adjusted", "true"))).lower() != "false"
        sort = cursor.get("sort", query.get("sort", "asc"))
        span = TIMESPAN_MS[timespan] * mult
        now_ms = int(time.time() * 1000)
        if sort == "desc":
            rows = self.market.aggregates(ticker, span, start, end, now_ms)[::-1][: limit + 1]
        else:
            rows = self.market.aggregates(ticker, span, start, end, now_ms, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        body: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": len(rows),
            "resultsCount": len(rows),
            "adjusted": adjusted,
        }
        every = self.faults.malformed_every
        if rows:
            body["results"] = [
                corrupt(r, r["t"] // 1000) if is_malformed(ticker, r["t"], every) else _drop_none(r) for r in rows
            ]
        if self.faults.junk_results:
            body.setdefault("results", []).extend(json.loads(self.faults.junk_results))
        body["status"] = "OK"
        body["request_id"] = self._request_id()
        body["count"] = len(rows)
        if more:
            nxt = rows[-1]["t"] + 1 if sort != "desc" else start
            nxt_end = end if sort != "desc" else rows[-1]["t"] - 1
            token = _cursor({"limit": limit, "sort": sort, "adjusted": adjusted})
            base = self.faults.next_url_base or self.url
            url = (
                f"{base}/v2/aggs/ticker/{quote(ticker, safe='')}/range/{mult}/{timespan}/{nxt}/{nxt_end}?cursor={token}"
            )
            if self.faults.key_in_next_url:
                url += f"&apiKey={self._key_of(request)}"
            body["next_url"] = url
        return self._json(body)

    async def _open_close(self, request: Any) -> Any:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        ticker = request.match_info["ticker"]
        try:
            day = date.fromisoformat(request.match_info["day"])
        except ValueError:
            return self._json({"status": "ERROR", "request_id": self._request_id(), "error": "Invalid date"}, 400)
        body = self.market.open_close(ticker, day, int(time.time() * 1000))
        if body is None:
            return self._json(
                {"status": "NOT_FOUND", "request_id": self._request_id(), "message": "Data not found."}, 404
            )
        if is_malformed(ticker, int(day.toordinal()), self.faults.malformed_every):
            body = dict(body)
            body["open"] = None
        return self._json(body)

    async def _ticker(self, request: Any) -> Any:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        ticker = request.match_info["ticker"]
        if not self.market.knows(ticker):
            return self._json(
                {"request_id": self._request_id(), "status": "NOT_FOUND", "message": "Ticker not found."}, 404
            )
        return self._json(
            {
                "request_id": self._request_id(),
                "results": {
                    "ticker": ticker,
                    "name": f"{ticker} (local test data)",
                    "market": "stocks",
                    "locale": "us",
                    "primary_exchange": "XNAS",
                    "type": "CS",
                    "active": True,
                    "currency_name": "usd",
                },
                "status": "OK",
            }
        )

    async def _stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(dataclasses.asdict(self.stats))

    async def _set_faults(self, request: Any) -> Any:
        from aiohttp import web

        try:
            self.set_faults(**(await request.json()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(dataclasses.asdict(self.faults))

    # WebSocket ----------------------------------------------------------------------------
    async def _websocket(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        if time.time() < self._ws_refuse_until:
            return web.Response(status=503, text="service unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        session = [time.time(), 0.0]
        with self._lock:
            self.stats.ws_connections += 1
            self.stats.ws_sessions.append(session)
        await ws.send_str(json.dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]))
        subs: set[str] = set()
        authed = False
        sender: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    action = json.loads(msg.data)
                    name, params = action.get("action"), str(action.get("params", ""))
                except (ValueError, AttributeError):
                    await ws.send_str(json.dumps([{"ev": "status", "status": "error", "message": "invalid JSON"}]))
                    continue
                if name == "auth":
                    if params not in self.api_keys:
                        with self._lock:
                            self.stats.ws_auth_failures += 1
                        await ws.send_str(
                            json.dumps([{"ev": "status", "status": "auth_failed", "message": "authentication failed"}])
                        )
                        await ws.close()
                        break
                    if self.ws_max_connections and len(self._ws) >= self.ws_max_connections:
                        await ws.send_str(
                            json.dumps(
                                [{"ev": "status", "status": "max_connections", "message": _MAX_CONNECTIONS_MESSAGE}]
                            )
                        )
                        await ws.close()
                        break
                    authed = True
                    self._ws[ws] = request
                    with self._lock:
                        self.stats.ws_active = len(self._ws)
                    await ws.send_str(
                        json.dumps([{"ev": "status", "status": "auth_success", "message": "authenticated"}])
                    )
                elif not authed:
                    await ws.send_str(json.dumps([{"ev": "status", "status": "error", "message": "not authorized"}]))
                elif name in ("subscribe", "unsubscribe"):
                    channels = [c.strip() for c in params.split(",") if c.strip()]
                    replies = []
                    for channel in channels:
                        if name == "subscribe":
                            subs.add(channel)
                        else:
                            subs.discard(channel)
                        verb = "subscribed to" if name == "subscribe" else "unsubscribed to"
                        replies.append({"ev": "status", "status": "success", "message": f"{verb}: {channel}"})
                    await ws.send_str(json.dumps(replies))
                    with self._lock:
                        drop = self.faults.ws_drop_after_subscribe > 0
                        if drop:
                            self.faults.ws_drop_after_subscribe -= 1
                    if drop:  # accept, then drop at once: the client's back-off must grow
                        await ws.close()
                        break
                    if sender is None:
                        sender = asyncio.ensure_future(self._stream(ws, request, subs))
                else:
                    await ws.send_str(json.dumps([{"ev": "status", "status": "error", "message": "unknown action"}]))
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            self._ws.pop(ws, None)
            with self._lock:
                self.stats.ws_active = len(self._ws)
                session[1] = time.time()
        return ws

    def _channel_tickers(self, subs: set[str], ev: str) -> list[str]:
        wanted = {s.split(".", 1)[1] for s in subs if s.startswith(ev + ".") and "." in s}
        if "*" in wanted:
            return list(self.market.generated)
        return [t for t in self.market.generated if t in wanted]

    async def _stream(self, ws: Any, request: Any, subs: set[str]) -> None:
        """Send each second's A bars and each minute's AM bars once they have ended."""
        sent = 0
        cut_this = False
        with self._lock:
            f = self.faults
            if f.ws_disconnect_after and f.ws_disconnects != 0:
                cut_this = True
                if f.ws_disconnects > 0:
                    f.ws_disconnects -= 1
        boundary = int(time.time()) + 1
        day_open: dict[tuple[str, int], float] = {}
        while not ws.closed:
            await asyncio.sleep(max(0.0, boundary - time.time()))
            end_ms = boundary * 1000
            events = []
            for ev, span in (("A", 1_000), ("AM", 60_000)):
                if end_ms % span:
                    continue
                for ticker in self._channel_tickers(subs, ev):
                    events.append(self._ws_bar(ev, ticker, end_ms - span, span, day_open))
            boundary += 1
            if not events:
                continue
            await ws.send_str(json.dumps(events))
            sent += len(events)
            with self._lock:
                self.stats.ws_messages_sent += len(events)
            if cut_this and sent >= self.faults.ws_disconnect_after:
                with self._lock:
                    self.stats.ws_cut += 1
                    self._ws_refuse_until = time.time() + self.faults.ws_outage_s
                if request.transport is not None:
                    request.transport.abort()
                return

    def _ws_bar(self, ev: str, ticker: str, s_ms: int, span: int, day_open: dict[tuple[str, int], float]) -> Any:
        bar = self.market.generated_bar(ticker, s_ms, span)
        day = s_ms // 86_400_000
        op = day_open.setdefault((ticker, day), bar["o"])
        message: dict[str, Any] = {
            "ev": ev,
            "sym": ticker,
            "v": int(bar["v"]),
            "av": int(bar["v"] * (1 + (s_ms % 86_400_000) / span)),
            "op": op,
            "vw": bar["vw"],
            "o": bar["o"],
            "c": bar["c"],
            "h": bar["h"],
            "l": bar["l"],
            "a": round((op + bar["vw"]) / 2, 4),
            "z": max(1, int(bar["v"] // bar["n"])),
            "s": s_ms,
            "e": s_ms + span,
        }
        if is_malformed(ticker, s_ms, self.faults.ws_malformed_every):
            message = corrupt(message, s_ms // 1000)
        return message


def _drop_none(record: dict[str, Any]) -> dict[str, Any]:
    """Polygon leaves out fields it has no value for (e.g. ``n`` on old bars)."""
    return {k: v for k, v in record.items() if v is not None}


def main_serve(
    host: str,
    port: int,
    market: MarketData,
    api_keys: list[str],
    faults: Faults,
    max_page: int,
    ws_max_connections: int,
    rpm_limit: int,
    stop: Any,
) -> None:
    """Run the server until ``stop`` is set (the ``tickcast polygon-server`` command)."""
    server = LocalPolygonServer(host, port, market, api_keys, faults, max_page, ws_max_connections, rpm_limit)
    server.start()
    print(f"local Polygon REST on {server.url}", flush=True)
    print(f"local Polygon WebSocket on {server.ws_url}", flush=True)
    print(f"tickers: {', '.join(market.tickers)}", flush=True)
    print(
        f"use it with TICKCAST_POLYGON__REST_BASE_URL={server.url} TICKCAST_POLYGON__WS_URL={server.ws_url}",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
