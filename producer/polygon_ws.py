"""The polygon-ws source: live per-minute (``AM``) and per-second (``A``) aggregates.

Written on the ``websockets`` library (the one the official ``massive`` client uses) rather
than that client, because the client cannot run code between reconnecting and reading,
which gap-filling needs, and only logs ``max_connections`` as a warning.

The loop: connect, read ``connected``, authenticate (``auth_failed`` and
``max_connections`` become :class:`~tickcast.errors.SourceError`), subscribe, then publish
bars. When the connection drops it reconnects with bounded exponential back-off,
resubscribes, and before reading anything new fetches over REST every complete bar
missed since the last one it published (per ticker), so the topic has no hole. Bars at
or before a ticker's last published start are dropped, which keeps per-ticker order and
makes the overlap between REST and the socket harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from producer.metrics import get_metrics
from producer.polygon_rest import PolygonRest, agg_to_bar, backoff_delay
from producer.redaction import install_log_scrubber, redact
from producer.sink import BarPublisher
from tickcast.contracts import Bar, from_epoch_ms
from tickcast.errors import ConfigError, InvalidBar, SourceError
from tickcast.settings import PolygonSettings

log = logging.getLogger(__name__)

SOURCE = "polygon-ws"
GAPFILL_SOURCE = "polygon-gapfill"
#: WebSocket event type -> bar interval.
CHANNELS = {"AM": "minute", "A": "second"}
_SPAN_MS = {"minute": 60_000, "second": 1_000}
_KEY_FIX = "set TICKCAST_POLYGON__API_KEY to a valid Polygon/Massive API key"


@dataclass
class StreamResult:
    """What a live run did."""

    bars: int = 0
    rejected: int = 0
    duplicates: int = 0
    gapfilled: int = 0
    reconnects: int = 0


def ws_to_bar(message: dict[str, Any], source: str = SOURCE) -> Bar:
    """An ``A``/``AM`` event (``sym o h l c v vw s e``) as a Bar (not validated).

    Raises:
        InvalidBar: when fields are missing or have the wrong type.
    """
    ev = message.get("ev")
    interval = CHANNELS.get(ev) if isinstance(ev, str) else None
    if interval is None:
        raise InvalidBar(f"event type {ev!r} is not A or AM")
    missing = [k for k in ("sym", "o", "h", "l", "c", "v", "s", "e") if k not in message]
    if missing:
        raise InvalidBar(f"{ev} event misses field(s) {', '.join(missing)}")
    s, e = message["s"], message["e"]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (s, e)):
        raise InvalidBar(f"{ev} event s/e are not epoch milliseconds ({s!r}, {e!r})")
    return Bar(
        ticker=message["sym"],
        interval=interval,
        start=from_epoch_ms(s),
        end=from_epoch_ms(e),
        open=message["o"],
        high=message["h"],
        low=message["l"],
        close=message["c"],
        volume=message["v"],
        vwap=message.get("vw"),
        trades=None,
        source=source,
    )


class PolygonStream:
    """Live aggregates into Kafka, with reconnects and REST gap-fill.

    Args:
        polygon: feed URL, key, retry policy.
        publisher: where bars go.
        tickers: symbols to subscribe to; empty means every symbol (``AM.*``).
        channels: ``("AM",)`` for minute bars, ``("A",)`` for second bars, or both.
        rest: REST client for gap-fills (None disables gap-filling).
        stop: a StopFlag-like object.
    """

    def __init__(
        self,
        polygon: PolygonSettings,
        publisher: BarPublisher,
        tickers: tuple[str, ...] = (),
        channels: tuple[str, ...] = ("AM",),
        rest: PolygonRest | None = None,
        stop: Any = None,
    ) -> None:
        if polygon.api_key is None or not polygon.api_key.get_secret_value():
            raise ConfigError("TICKCAST_POLYGON__API_KEY", "is not set; the Polygon sources need an API key", _KEY_FIX)
        for channel in channels:
            if channel not in CHANNELS:
                raise ConfigError("channels", f"{channel!r} is not one of {', '.join(CHANNELS)}")
        self.settings = polygon
        self._key = polygon.api_key.get_secret_value()
        install_log_scrubber(self._key)
        self.publisher = publisher
        self.tickers = tuple(tickers)
        self.channels = tuple(channels)
        self.rest = rest
        self.stop = stop
        self.metrics = get_metrics()
        self.last_start: dict[tuple[str, str], int] = {}  # (ticker, interval) -> newest start published, ms
        self.result = StreamResult()
        self._since_ms: int | None = None  # first subscription time, the gap-fill floor for unseen tickers
        self._subscribed = False  # whether the current connection got as far as subscribing

    # -- public -----------------------------------------------------------------------
    def run(self, max_bars: int | None = None, duration: float | None = None) -> StreamResult:
        """Stream until stopped, ``max_bars`` bars were published, or ``duration`` seconds passed."""
        return asyncio.run(self.arun(max_bars, duration))

    async def arun(self, max_bars: int | None = None, duration: float | None = None) -> StreamResult:
        """The coroutine behind :meth:`run`."""
        deadline = None if duration is None else time.monotonic() + duration
        attempt = 0
        first = True
        while not self._done(max_bars, deadline):
            self._subscribed = False
            try:
                await self._session(first, max_bars, deadline)
                attempt = 0
                if self._done(max_bars, deadline):
                    break
                reason = "the server closed the connection"
            except (TimeoutError, OSError, _Disconnected) as exc:
                reason = f"{type(exc).__name__}: {redact(str(exc), self._key)}"
            except _MaxConnections as exc:
                if first or attempt >= self.settings.max_retries:
                    raise SourceError(
                        f"Polygon refused the WebSocket connection (max_connections): {exc}",
                        "close other connections that use this key (a plan allows a fixed number per "
                        "feed), or ask Polygon/Massive to raise the limit",
                    ) from None
                reason = "max_connections (the old connection may still be counted)"
            if self._subscribed:
                attempt = 0  # that connection worked: a later drop starts the back-off afresh
                first = False
            attempt += 1
            if attempt > max(1, self.settings.max_retries) * 4:
                raise SourceError(
                    f"the Polygon WebSocket at {self._shown_url()} kept failing: {reason}",
                    "check TICKCAST_POLYGON__WS_URL and the network",
                )
            delay = backoff_delay(attempt, self.settings.backoff_max_s)
            log.warning("WebSocket disconnected (%s); reconnecting in %.2f s", reason, delay)
            self.metrics.ws_reconnects.inc()
            self.result.reconnects += 1
            if await self._sleep(delay):
                break
        self.publisher.flush()
        return self.result

    # -- internals --------------------------------------------------------------------
    def _shown_url(self) -> str:
        return redact(self.settings.ws_url, self._key)

    def _done(self, max_bars: int | None, deadline: float | None) -> bool:
        if self.stop is not None and self.stop.is_set():
            return True
        if max_bars is not None and self.result.bars >= max_bars:
            return True
        return deadline is not None and time.monotonic() >= deadline

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; returns whether to stop."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stop is not None and self.stop.is_set():
                return True
            await asyncio.sleep(min(0.1, end - time.monotonic()))
        return self.stop is not None and self.stop.is_set()

    def _subscriptions(self) -> str:
        names = self.tickers or ("*",)
        return ",".join(f"{ch}.{t}" for ch in self.channels for t in names)

    async def _session(self, first: bool, max_bars: int | None, deadline: float | None) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        timeout = self.settings.request_timeout_s
        try:
            async with connect(
                self.settings.ws_url, open_timeout=timeout, close_timeout=2, ping_interval=20, max_size=2**24
            ) as ws:
                statuses = await self._recv_json(ws, timeout)
                if not any(s.get("status") == "connected" for s in statuses if isinstance(s, dict)):
                    raise _Disconnected(f"expected a connected status, got {statuses!r:.200}")
                await ws.send(json.dumps({"action": "auth", "params": self._key}))
                self._check_auth(await self._recv_json(ws, timeout))
                await ws.send(json.dumps({"action": "subscribe", "params": self._subscriptions()}))
                self._subscribed = True
                if self._since_ms is None:
                    self._since_ms = int(time.time() * 1000)
                log.info("subscribed to %s on %s", self._subscriptions()[:200], self._shown_url())
                if not first:
                    await asyncio.to_thread(self._gapfill)
                while not self._done(max_bars, deadline):
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                    except TimeoutError:
                        continue
                    self._handle(raw, max_bars)
                self.publisher.flush()
        except ConnectionClosed as exc:
            raise _Disconnected(str(exc)) from None
        except InvalidURI:
            raise ConfigError(
                "TICKCAST_POLYGON__WS_URL", f"{self._shown_url()!r} is not a ws:// or wss:// URL"
            ) from None
        except InvalidHandshake as exc:  # e.g. a 503 while the feed restarts: transient
            raise _Disconnected(f"handshake failed: {exc}") from None

    async def _recv_json(self, ws: Any, timeout: float) -> list[Any]:
        raw = await asyncio.wait_for(ws.recv(), timeout=timeout)
        try:
            data = json.loads(raw)
        except ValueError:
            raise _Disconnected(f"the server sent non-JSON: {str(raw)[:100]!r}") from None
        return data if isinstance(data, list) else [data]

    def _check_auth(self, statuses: list[Any]) -> None:
        for status in statuses:
            if not isinstance(status, dict):
                continue
            kind = status.get("status")
            message = redact(str(status.get("message", "")), self._key)
            if kind == "auth_failed":
                raise SourceError(f"the Polygon WebSocket rejected the API key (auth_failed: {message})", _KEY_FIX)
            if kind == "max_connections":
                raise _MaxConnections(message)
            if kind == "auth_success":
                return
        raise _Disconnected(f"no auth_success after auth: {statuses!r:.200}")

    def _handle(self, raw: str | bytes, max_bars: int | None) -> None:
        try:
            events = json.loads(raw)
        except ValueError:
            self.publisher.reject(
                raw if isinstance(raw, bytes) else raw.encode(), "WebSocket frame is not JSON", kind="malformed"
            )
            self.result.rejected += 1
            return
        if not isinstance(events, list):
            events = [events]
        for event in events:
            if max_bars is not None and self.result.bars >= max_bars:
                return
            if not isinstance(event, dict):
                self.publisher.reject(json.dumps(event), "WebSocket event is not an object", kind="malformed")
                self.result.rejected += 1
                continue
            ev = event.get("ev")
            if ev == "status":
                self._on_status(event)
                continue
            if ev not in self.channels:
                continue
            self.metrics.source(SOURCE).bars_in.inc()
            try:
                bar = ws_to_bar(event)
            except InvalidBar as exc:
                self.publisher.reject(event, exc.reason, key=_ticker_of(event), kind="malformed")
                self.result.rejected += 1
                continue
            self._publish(bar, event)

    def _publish(self, bar: Bar, raw: Any) -> bool:
        key = (bar.ticker, bar.interval)
        start_ms = int(bar.start.timestamp() * 1000)
        last = self.last_start.get(key)
        if last is not None and start_ms <= last:
            self.result.duplicates += 1
            return False
        try:
            bar.validate()
        except InvalidBar as exc:
            self.publisher.reject(raw, exc.reason, key=_ticker_of(raw), kind="invalid")
            self.result.rejected += 1
            return False
        self.publisher.send_encoded(bar.ticker, bar.to_json(), bar.end.timestamp())
        self.last_start[key] = start_ms
        self.result.bars += 1
        return True

    def _on_status(self, event: dict[str, Any]) -> None:
        kind, message = event.get("status"), redact(str(event.get("message", "")), self._key)
        if kind in ("success", "connected", "auth_success"):
            log.debug("status %s: %s", kind, message)
        elif kind == "max_connections":
            raise _MaxConnections(message)
        else:
            log.warning("Polygon WebSocket status %s: %s", kind, message)

    def _gapfill(self) -> None:
        """Fetch over REST every complete bar missed since the last one published (per ticker)."""
        if self.rest is None:
            return
        now_ms = int(time.time() * 1000)
        tickers = self.tickers or tuple(sorted({t for t, _ in self.last_start}))
        filled = 0
        for channel in self.channels:
            interval = CHANNELS[channel]
            span = _SPAN_MS[interval]
            for ticker in tickers:
                last = self.last_start.get((ticker, interval))
                start = last + span if last is not None else (self._since_ms or now_ms) // span * span
                if start + span > now_ms:
                    continue
                for page in self.rest.aggregate_pages(ticker, interval, start, now_ms):
                    for raw in page.results:
                        try:
                            bar = agg_to_bar(raw, ticker, interval, GAPFILL_SOURCE)
                        except Exception as exc:
                            self.publisher.reject(raw, str(getattr(exc, "reason", exc)), key=ticker, kind="malformed")
                            self.result.rejected += 1
                            continue
                        if bar.end.timestamp() * 1000 > now_ms:
                            continue  # still forming: the socket will deliver the final bar
                        if self._publish(bar, raw):
                            filled += 1
        if filled:
            log.info("gap-filled %d bars over REST after the reconnect", filled)
        self.metrics.gapfill_bars.inc(filled)
        self.result.gapfilled += filled
        self.publisher.flush()


class _Disconnected(Exception):
    """The connection ended or misbehaved; reconnect."""


class _MaxConnections(Exception):
    """The server refused another connection for this key."""


def _ticker_of(event: Any) -> str | None:
    sym = event.get("sym") if isinstance(event, dict) else None
    return sym if isinstance(sym, str) and sym else None
