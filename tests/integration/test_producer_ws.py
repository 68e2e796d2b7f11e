"""The polygon-ws source against the real broker and the local Polygon WebSocket: a reconnect
gap-fills over REST, malformed events go to the DLQ, auth_failed and max_connections are
clear errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from producer_testkit import Topics, by_ticker, headers, make_topics, producer_settings, read_topic

from producer.local_polygon import DEFAULT_API_KEY, Faults, LocalPolygonServer, MarketData
from producer.runner import ProduceOptions, produce
from tickcast.errors import SourceError
from tickcast.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(unique_topic: Callable[..., str]) -> Topics:
    return make_topics(unique_topic)


def live(settings: Settings, seconds: float, tickers: tuple[str, ...] = ("AAPL", "MSFT")) -> dict:
    opts = ProduceOptions(source="polygon-ws", tickers=tickers, interval="second", duration=seconds)
    return produce(settings, opts)


def test_reconnect_gap_fills_over_rest_without_gaps_or_duplicates(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    # cut the first connection after 2 seconds of bars, then refuse reconnects for 2.5 s
    faults = Faults(ws_disconnect_after=4, ws_disconnects=1, ws_outage_s=2.5)
    with LocalPolygonServer(market=MarketData(("AAPL", "MSFT")), faults=faults) as server:
        settings = producer_settings(make_settings, topics, server)
        summary = live(settings, 9.0)
    assert server.stats.ws_cut == 1 and summary["reconnects"] >= 1
    assert summary["gapfilled"] >= 2  # at least one missed second per ticker came over REST
    got = by_ticker(read_topic(settings, topics.bars, expect=summary["sent"]))
    assert set(got) == {"AAPL", "MSFT"}
    for ticker, values in got.items():
        starts = [datetime.fromisoformat(v["start"]) for v in values]
        assert len(starts) >= 6
        steps = {b - a for a, b in itertools.pairwise(starts)}
        assert steps == {timedelta(seconds=1)}, f"{ticker}: gap or duplicate in {starts}"
        sources = {v["source"] for v in values}
        assert sources == {"polygon-ws", "polygon-gapfill"}


def test_malformed_events_go_to_the_dlq(make_settings: Callable[..., Settings], topics: Topics) -> None:
    with LocalPolygonServer(market=MarketData(("AAPL", "MSFT", "NVDA")), faults=Faults(ws_malformed_every=3)) as server:
        settings = producer_settings(make_settings, topics, server)
        summary = live(settings, 4.0, ("AAPL", "MSFT", "NVDA"))
    assert summary["dlq"] >= 1 and summary["sent"] >= 3
    dlq = read_topic(settings, topics.dlq, expect=summary["dlq"])
    assert len(dlq) == summary["dlq"]
    for record in dlq:
        h = headers(record)
        assert h["source"] == "polygon-ws" and h["reason"] and h["kind"] in ("malformed", "invalid")
        assert json.loads(record.value)["ev"] == "A"
    bars = read_topic(settings, topics.bars, expect=summary["sent"])
    assert len(bars) == summary["sent"]


@pytest.fixture
def server() -> Iterator[LocalPolygonServer]:
    with LocalPolygonServer(market=MarketData(("AAPL",)), ws_max_connections=1) as srv:
        yield srv


def test_auth_failed_is_a_clear_error(
    make_settings: Callable[..., Settings], topics: Topics, server: LocalPolygonServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs every frame at DEBUG, the auth frame included
    settings = producer_settings(make_settings, topics, server, api_key="wrong-key-123")
    with pytest.raises(SourceError, match="auth_failed") as info:
        live(settings, 5.0, ("AAPL",))
    assert "wrong-key-123" not in str(info.value) and "TICKCAST_POLYGON__API_KEY" in str(info.value)
    assert "auth" in caplog.text and "wrong-key-123" not in caplog.text


def test_max_connections_is_a_clear_error(
    make_settings: Callable[..., Settings], topics: Topics, server: LocalPolygonServer
) -> None:
    release = threading.Event()
    ready = threading.Event()

    async def hold() -> None:
        from websockets.asyncio.client import connect

        async with connect(server.ws_url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "params": DEFAULT_API_KEY}))
            await ws.recv()
            ready.set()
            while not release.is_set():
                await asyncio.sleep(0.05)

    holder = threading.Thread(target=lambda: asyncio.run(hold()), daemon=True)
    holder.start()
    try:
        assert ready.wait(10)
        settings = producer_settings(make_settings, topics, server)
        with pytest.raises(SourceError, match="max_connections"):
            live(settings, 5.0, ("AAPL",))
    finally:
        release.set()
        holder.join(10)
