"""The local Polygon server speaks the real API's shapes: REST bodies, statuses, and the
WebSocket protocol (connected, auth, subscribe, A/AM events, max_connections)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pyarrow as pa
import pytest

from producer.local_polygon import DEFAULT_API_KEY, LocalPolygonServer, MarketData, corrupt, is_malformed

JAN2 = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000)
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
WS_FIELDS = {"ev", "sym", "v", "av", "op", "vw", "o", "c", "h", "l", "a", "z", "s", "e"}


@pytest.fixture
def server() -> Iterator[LocalPolygonServer]:
    with LocalPolygonServer(market=MarketData(("AAPL", "MSFT")), max_page=100, ws_max_connections=1) as srv:
        yield srv


def get(server: LocalPolygonServer, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(server.url + path, headers=AUTH if headers is None else headers, timeout=10)


def test_aggregates_body_has_polygon_shape_and_pagination(server: LocalPolygonServer) -> None:
    r = get(server, "/v2/aggs/ticker/AAPL/range/1/minute/2024-01-02/2024-01-02?adjusted=true&sort=asc&limit=50000")
    assert r.status_code == 200
    body = r.json()
    assert {
        "ticker",
        "queryCount",
        "resultsCount",
        "adjusted",
        "results",
        "status",
        "request_id",
        "count",
        "next_url",
    } <= set(body)
    assert body["status"] == "OK" and body["resultsCount"] == 100 and len(body["results"]) == 100
    assert set(body["results"][0]) == {"v", "vw", "o", "c", "h", "l", "t", "n"}
    assert body["results"][0]["t"] == JAN2
    nxt = httpx.get(body["next_url"], headers=AUTH, timeout=10).json()
    assert nxt["results"][0]["t"] == JAN2 + 100 * 60_000
    assert "apiKey" not in body["next_url"]


def test_query_key_and_401_bodies(server: LocalPolygonServer) -> None:
    ok = get(server, f"/v3/reference/tickers/AAPL?apiKey={DEFAULT_API_KEY}", headers={})
    assert ok.status_code == 200 and ok.json()["results"]["ticker"] == "AAPL"
    missing = get(server, "/v3/reference/tickers/AAPL", headers={})
    assert missing.status_code == 401 and missing.json()["error"] == "API Key was not provided"
    wrong = get(server, "/v3/reference/tickers/AAPL", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() | {"request_id": ""} == {
        "status": "ERROR",
        "request_id": "",
        "error": "Unknown API Key",
    }


def test_unknown_ticker_shapes(server: LocalPolygonServer) -> None:
    body = get(server, "/v2/aggs/ticker/ZZZZ/range/1/day/2024-01-02/2024-01-05").json()
    assert body["status"] == "OK" and body["resultsCount"] == 0 and "results" not in body
    ref = get(server, "/v3/reference/tickers/ZZZZ")
    assert ref.status_code == 404 and ref.json()["status"] == "NOT_FOUND"
    oc = get(server, "/v1/open-close/ZZZZ/2024-01-02")
    assert oc.status_code == 404 and oc.json()["message"] == "Data not found."


def test_bad_request_and_rate_limit_headers(server: LocalPolygonServer) -> None:
    assert get(server, "/v2/aggs/ticker/AAPL/range/1/fortnight/2024-01-02/2024-01-05").status_code == 400
    server.set_faults(rate_limit_burst=1, retry_after_s=2)
    r = get(server, "/v3/reference/tickers/AAPL")
    assert r.status_code == 429 and r.headers["Retry-After"] == "2" and r.json()["status"] == "ERROR"
    assert get(server, "/v3/reference/tickers/AAPL").status_code == 200


def test_bars_exist_only_once_ended_and_are_deterministic() -> None:
    market = MarketData(("AAPL",))
    now = int(time.time() * 1000)
    bars = market.aggregates("AAPL", 1000, now - 10_000, now + 10_000, now)
    assert bars and all(b["t"] + 1000 <= now for b in bars)
    assert market.aggregates("AAPL", 60_000, JAN2, JAN2 + 3_600_000, now) == market.aggregates(
        "AAPL", 60_000, JAN2, JAN2 + 3_600_000, now
    )
    for b in market.aggregates("AAPL", 60_000, JAN2, JAN2 + 86_400_000, now):
        assert b["l"] <= min(b["o"], b["c"]) <= max(b["o"], b["c"]) <= b["h"] and b["l"] <= b["vw"] <= b["h"]


def test_day_bars_skip_weekends_and_open_close_has_extended_hours() -> None:
    market = MarketData(("AAPL",))
    now = int(time.time() * 1000)
    days = market.aggregates("AAPL", 86_400_000, JAN2, JAN2 + 7 * 86_400_000 - 1, now)
    assert [datetime.fromtimestamp(d["t"] / 1000, UTC).weekday() for d in days] == [1, 2, 3, 4, 0]
    summary = market.open_close("AAPL", date(2024, 1, 2), now)
    assert summary is not None and summary["preMarket"] > 0 and summary["afterHours"] > 0
    assert market.open_close("AAPL", date(2024, 1, 6), now) is None


def test_malformed_records_are_deterministic_and_broken() -> None:
    flagged = [t for t in range(JAN2, JAN2 + 1000 * 60_000, 60_000) if is_malformed("AAPL", t, 50)]
    assert 5 <= len(flagged) <= 40
    assert flagged == [t for t in range(JAN2, JAN2 + 1000 * 60_000, 60_000) if is_malformed("AAPL", t, 50)]
    good = {"v": 1.0, "vw": 1.0, "o": 1.0, "c": 1.0, "h": 1.0, "l": 1.0, "t": JAN2, "n": 1}
    variants = [corrupt(good, seed) for seed in range(4)]
    assert "c" not in variants[0] and isinstance(variants[1]["v"], str)
    assert variants[2]["o"] is None and variants[3]["h"] < variants[3]["l"]


def test_loaded_bars_are_served_and_aggregated() -> None:
    starts = [datetime(2024, 1, 2, 14, 30 + i, tzinfo=UTC) for i in range(3)]
    table = pa.table(
        {
            "ticker": ["XYZ"] * 3,
            "interval": ["minute"] * 3,
            "start": pa.array(starts, pa.timestamp("us", tz="UTC")),
            "open": [10.0, 11.0, 12.0],
            "high": [11.0, 12.5, 13.0],
            "low": [9.5, 10.5, 11.5],
            "close": [11.0, 12.0, 12.5],
            "volume": [100.0, 200.0, 300.0],
            "vwap": [10.5, 11.5, 12.2],
            "trades": [5, 6, 7],
        }
    )
    market = MarketData((), table)
    assert market.knows("XYZ") and not market.knows("AAPL")
    minutes = market.aggregates("XYZ", 60_000, JAN2, JAN2 + 86_400_000, 0)
    assert [m["o"] for m in minutes] == [10.0, 11.0, 12.0]
    (day,) = market.aggregates("XYZ", 86_400_000, JAN2, JAN2, 0)
    assert (day["o"], day["h"], day["l"], day["c"], day["v"], day["n"]) == (10.0, 13.0, 9.5, 12.5, 600.0, 18)


async def _ws_session(url: str, key: str, subscribe: str | None, frames: int) -> list[Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    received: list[Any] = []
    async with connect(url) as ws:
        received.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"action": "auth", "params": key}))
        received.append(json.loads(await ws.recv()))
        if subscribe:
            await ws.send(json.dumps({"action": "subscribe", "params": subscribe}))
        try:
            while len(received) < frames:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=5)))
        except ConnectionClosed:
            pass
    return received


def test_websocket_protocol_auth_subscribe_and_events(server: LocalPolygonServer) -> None:
    frames = asyncio.run(_ws_session(server.ws_url, DEFAULT_API_KEY, "A.AAPL,A.MSFT", 5))
    assert frames[0] == [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
    assert frames[1] == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
    assert [m["message"] for m in frames[2]] == ["subscribed to: A.AAPL", "subscribed to: A.MSFT"]
    events = [e for frame in frames[3:] for e in frame]
    assert {e["sym"] for e in events} == {"AAPL", "MSFT"}
    for event in events:
        assert set(event) == WS_FIELDS and event["ev"] == "A" and event["e"] - event["s"] == 1000


def test_websocket_auth_failed(server: LocalPolygonServer) -> None:
    frames = asyncio.run(_ws_session(server.ws_url, "wrong", None, 3))
    assert frames[1] == [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]
    assert server.stats.ws_auth_failures == 1


def test_websocket_max_connections(server: LocalPolygonServer) -> None:
    async def two() -> list[Any]:
        first = asyncio.ensure_future(_ws_session(server.ws_url, DEFAULT_API_KEY, "AM.AAPL", 4))
        await asyncio.sleep(0.5)
        second = await _ws_session(server.ws_url, DEFAULT_API_KEY, None, 3)
        first.cancel()
        return second

    frames = asyncio.run(two())
    assert frames[1][0]["status"] == "max_connections"
