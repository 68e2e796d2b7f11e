"""The polygon-ws source: live per-minute (``AM``) and per-second (``A``) aggregates.

Written on the ``websockets`` library (the one the official ``massive`` client uses) rather
than that client, because the client cannot run code between reconnecting and reading,
which gap-filling needs, and only logs ``max_connections`` as a warning.

The loop: connect, read ``connected``, authenticate (``auth_failed`` and
``max_connections`` become :class:`~tickcast.errors.SourceError`), subscribe, then publish
bars. When the connection drops it reconnects with bounded exponential back-off,
resubscribes, and fetches over REST every complete bar missed since the last one it
published (per ticker), so the topic has no hole. That gap-fill runs alongside reading the
socket, so a slow REST API never stalls the feed (Polygon drops consumers that fall
behind): live bars of a ticker whose gap is still being filled are held and published
right after its gap, which keeps per-ticker order; other tickers flow on. Bars at or before
a ticker's last published start are dropped, which makes the overlap between REST and the
socket harmless. The back-off starts afresh only after a connection stayed up for
:data:`HEALTHY_AFTER_S`: a server that accepts and drops at once sees growing delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from producer.metrics import get_metrics
from producer.polygon_rest import PolygonRest, agg_to_bar, backoff_delay, check_numbers, epoch_ms
from producer.redaction import install_log_scrubber, redact
from producer.sink import BarPublisher
from tickcast.contracts import Bar
from tickcast.errors import ConfigError, InvalidBar, InvalidRecord, SourceError
from tickcast.settings import PolygonSettings

log = logging.getLogger(__name__)

SOURCE = "polygon-ws"
GAPFILL_SOURCE = "polygon-gapfill"
#: WebSocket event type -> bar interval.
CHANNELS = {"AM": "minute", "A": "second"}
_SPAN_MS = {"minute": 60_000, "second": 1_000}
_KEY_FIX = "set TICKCAST_POLYGON__API_KEY to a valid Polygon/Massive API key"
#: A connection that stayed subscribed this long worked: the next drop starts the back-off
#: afresh. Resetting on every successful connect would let a server that accepts and then
#: drops at once be hammered at the shortest delay forever.
HEALTHY_AFTER_S = 30.0
#: Live bars held per ticker while its gap-fill runs (an hour of second bars). Past it the
#: gap-fill for that ticker is given up (logged) so memory stays bounded on a slow REST API.
MAX_HELD_BARS = 3600


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

    Never raises anything but :class:`InvalidBar` (held to it by a property-based test).

    Raises:
        InvalidBar: when fields are missing, ``sym`` is not a string, ``s``/``e`` are not
            epoch milliseconds between 1970 and 2200, or a number does not fit a float.
    """
    ev = message.get("ev")
    interval = CHANNELS.get(ev) if isinstance(ev, str) else None
    if interval is None:
        raise InvalidBar(f"event type {ev!r} is not A or AM")
    missing = [k for k in ("sym", "o", "h", "l", "c", "v", "s", "e") if k not in message]
    if missing:
        raise InvalidBar(f"{ev} event misses field(s) {', '.join(missing)}")
    if not isinstance(message["sym"], str):
        raise InvalidBar(f"{ev} event sym is a {type(message['sym']).__name__}, not a symbol")
    try:
        start, end = epoch_ms(message["s"], f"{ev} event s"), epoch_ms(message["e"], f"{ev} event e")
        check_numbers(message, ("o", "h", "l", "c", "v", "vw"))
    except InvalidRecord as exc:
        raise InvalidBar(exc.reason) from None
    return Bar(
        ticker=message["sym"],
        interval=interval,
        start=start,
        end=end,
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
        healthy_after_s: how long a connection must stay subscribed before its drop resets
            the reconnect back-off.
    """

    def __init__(
        self,
        polygon: PolygonSettings,
        publisher: BarPublisher,
        tickers: tuple[str, ...] = (),
        channels: tuple[str, ...] = ("AM",),
        rest: PolygonRest | None = None,
        stop: Any = None,
        healthy_after_s: float = HEALTHY_AFTER_S,
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
        self.healthy_after_s = healthy_after_s
        self._subscribed_at: float | None = None  # monotonic time the current connection subscribed
        self._filling: set[tuple[str, str]] = set()  # (ticker, interval) whose gap-fill is running
        self._held: dict[tuple[str, str], list[tuple[Bar, Any]]] = {}  # their live bars, in order

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
            self._subscribed_at = None
            try:
                await self._session(first, max_bars, deadline)
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
                first = False
            if self._subscribed_at is not None and time.monotonic() - self._subscribed_at >= self.healthy_after_s:
                attempt = 0  # that connection worked for a while: this drop starts the back-off afresh
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
                self._subscribed_at = time.monotonic()
                if self._since_ms is None:
                    self._since_ms = int(time.time() * 1000)
                log.info("subscribed to %s on %s", self._subscriptions()[:200], self._shown_url())
                # planned here, before the first read, so every live bar of a ticker with a gap is held
                gapfill = None if first or self.rest is None else asyncio.create_task(self._gapfill(self._gap_plan()))
                try:
                    while not self._done(max_bars, deadline):
                        if gapfill is not None and gapfill.done():
                            gapfill.result()  # a failed gap-fill (e.g. a bad key) fails the run
                            gapfill = None
                        try:
                            raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                        except TimeoutError:
                            continue
                        self._handle(raw, max_bars)
                finally:
                    if gapfill is not None:
                        # unfinished: its held live bars are dropped with it; the next
                        # connection's gap-fill fetches them again, since nothing after the
                        # last published bar was published
                        gapfill.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await gapfill
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
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
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
                # as JSON, so a string event stays recognisable ("" would be an empty payload)
                payload = json.dumps(event) if isinstance(event, str) else event
                self.publisher.reject(payload, "WebSocket event is not an object", kind="malformed")
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
            self._publish(bar, event, live=True)

    def _publish(self, bar: Bar, raw: Any, live: bool = False) -> bool:
        """Publish one bar unless it is a duplicate or invalid; a live bar of a ticker whose
        gap-fill is running is held until its gap is filled. Returns whether it was sent."""
        key = (bar.ticker, bar.interval)
        if live and key in self._filling:
            held = self._held.setdefault(key, [])
            held.append((bar, raw))
            if len(held) > MAX_HELD_BARS:
                log.warning(
                    "%s: gap-fill too slow (%d live bars waiting); giving it up, the gap stays", key[0], len(held)
                )
                self._release(key)
            return False
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

    def _release(self, key: tuple[str, str]) -> None:
        """End the hold on ``key``'s live bars and publish them (after its gap-fill)."""
        self._filling.discard(key)
        for bar, raw in self._held.pop(key, []):
            self._publish(bar, raw)

    def _gap_plan(self) -> tuple[int, list[tuple[str, str, int]]]:
        """``(now_ms, [(ticker, interval, first missed start)])``; holds those tickers' live bars."""
        now_ms = int(time.time() * 1000)
        tickers = self.tickers or tuple(sorted({t for t, _ in self.last_start}))
        todo: list[tuple[str, str, int]] = []
        for channel in self.channels:
            interval = CHANNELS[channel]
            span = _SPAN_MS[interval]
            for ticker in tickers:
                last = self.last_start.get((ticker, interval))
                start = last + span if last is not None else (self._since_ms or now_ms) // span * span
                if start + span <= now_ms:
                    todo.append((ticker, interval, start))
        self._filling = {(t, i) for t, i, _ in todo}
        return now_ms, todo

    async def _gapfill(self, plan: tuple[int, list[tuple[str, str, int]]]) -> None:
        """Fetch over REST every complete bar missed since the last one published (per ticker).

        Runs as a task beside the socket reader: REST calls run in a thread, bars are
        published here on the event loop (the publisher is not shared across threads).
        """
        now_ms, todo = plan
        filled = 0
        try:
            for ticker, interval, start in todo:
                if (ticker, interval) in self._filling:  # not given up on while waiting
                    filled += await self._gapfill_one(ticker, interval, start, now_ms)
                self._release((ticker, interval))
        finally:
            self._filling = set()
            self._held.clear()
        if filled:
            log.info("gap-filled %d bars over REST after the reconnect", filled)
        self.metrics.gapfill_bars.inc(filled)
        self.result.gapfilled += filled
        self.publisher.flush()

    async def _gapfill_one(self, ticker: str, interval: str, start: int, now_ms: int) -> int:
        assert self.rest is not None
        pages = self.rest.aggregate_pages(ticker, interval, start, now_ms)
        filled = 0
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            for raw in page.results:
                try:
                    bar = agg_to_bar(raw, ticker, interval, GAPFILL_SOURCE)
                except InvalidRecord as exc:
                    self.publisher.reject(raw, exc.reason, key=ticker, kind="malformed")
                    self.result.rejected += 1
                    continue
                if bar.end.timestamp() * 1000 > now_ms:
                    continue  # still forming: the socket will deliver the final bar
                if self._publish(bar, raw):
                    filled += 1
        return filled


class _Disconnected(Exception):
    """The connection ended or misbehaved; reconnect."""


class _MaxConnections(Exception):
    """The server refused another connection for this key."""


def _ticker_of(event: Any) -> str | None:
    sym = event.get("sym") if isinstance(event, dict) else None
    return sym if isinstance(sym, str) and sym else None
