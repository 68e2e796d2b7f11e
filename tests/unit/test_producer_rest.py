"""The Polygon REST client against the local Polygon server (in-process, real HTTP):
pagination, retries honouring Retry-After, clear errors, and the key never showing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest

from producer.local_polygon import DEFAULT_API_KEY, Faults, LocalPolygonServer, MarketData
from producer.polygon_rest import (
    PolygonRest,
    RateLimiter,
    agg_to_bar,
    backoff_delay,
    retry_after_seconds,
)
from tickcast.errors import ConfigError, InvalidRecord, SourceError
from tickcast.settings import PolygonSettings

SECRET = "sk-test-Zq81VerySecret"
DAY_MS = 86_400_000
JAN2 = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000)


class RecordingStop:
    """A stop flag that never stops and records the back-off waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        time.sleep(min(seconds, 0.05))  # the waits are recorded; the test need not sit through them
        return False

    def is_set(self) -> bool:
        return False


@pytest.fixture
def server() -> Iterator[LocalPolygonServer]:
    with LocalPolygonServer(
        market=MarketData(("AAPL", "MSFT")), api_keys=[DEFAULT_API_KEY, SECRET], max_page=200
    ) as srv:
        yield srv


def client(server: LocalPolygonServer, key: str = DEFAULT_API_KEY, stop: Any = None, **overrides: Any) -> PolygonRest:
    values: dict[str, Any] = {
        "api_key": key,
        "rest_base_url": server.url,
        "requests_per_minute": 60_000,
        "backoff_max_s": 2.0,
        "max_retries": 5,
        **overrides,
    }
    return PolygonRest(PolygonSettings(**values), stop=stop or RecordingStop())


def test_pages_follow_next_url_and_carry_polygon_fields(server: LocalPolygonServer) -> None:
    with client(server) as rest:
        pages = list(rest.aggregate_pages("AAPL", "minute", JAN2, JAN2 + DAY_MS - 1))
    assert len(pages) == 8  # 1440 minute bars, 200 a page
    assert all(p.next_url for p in pages[:-1]) and pages[-1].next_url is None
    results = [r for p in pages for r in p.results]
    expected = server.market.aggregates("AAPL", 60_000, JAN2, JAN2 + DAY_MS - 1, int(time.time() * 1000))
    assert results == expected
    assert set(results[0]) == {"v", "vw", "o", "c", "h", "l", "t", "n"}
    assert [r["t"] for r in results] == sorted(r["t"] for r in results)


def test_429_storm_is_ridden_out_honouring_retry_after(server: LocalPolygonServer) -> None:
    server.set_faults(rate_limit_burst=3, retry_after_s=0.7)
    stop = RecordingStop()
    with client(server, stop=stop) as rest:
        pages = list(rest.aggregate_pages("MSFT", "hour", JAN2, JAN2 + DAY_MS - 1))
    assert sum(len(p.results) for p in pages) == 24
    assert server.stats.rest_by_status["429"] == 3
    backoffs = [w for w in stop.waits if w >= 0.1]
    assert len(backoffs) == 3 and all(w >= 0.7 for w in backoffs), stop.waits


def test_5xx_and_dropped_connections_are_retried(server: LocalPolygonServer) -> None:
    server.set_faults(error_every=3, drop_every=5)
    with client(server) as rest:
        results = [r for p in rest.aggregate_pages("AAPL", "minute", JAN2, JAN2 + DAY_MS - 1) for r in p.results]
    assert len(results) == 1440
    assert server.stats.rest_by_status.get("dropped", 0) >= 1
    assert sum(server.stats.rest_by_status.get(s, 0) for s in ("500", "502", "503")) >= 1


def test_retries_exhausted_raise_a_source_error_that_says_what_to_do(server: LocalPolygonServer) -> None:
    server.set_faults(error_burst=100)
    with client(server, max_retries=2) as rest, pytest.raises(SourceError) as info:
        list(rest.aggregate_pages("AAPL", "day", JAN2, JAN2 + DAY_MS - 1))
    assert "after 2 retries" in str(info.value) and "503" in str(info.value)
    assert "TICKCAST_POLYGON__MAX_RETRIES" in str(info.value)


def test_bad_key_is_a_clear_error_and_never_shown(server: LocalPolygonServer, caplog: pytest.LogCaptureFixture) -> None:
    bad = "sk-wrong-Zq81AlsoSecret"
    caplog.set_level(logging.DEBUG)
    with client(server, key=bad) as rest, pytest.raises(SourceError) as info:
        list(rest.aggregate_pages("AAPL", "day", JAN2, JAN2 + DAY_MS - 1))
    text = str(info.value)
    assert "rejected the API key" in text and "TICKCAST_POLYGON__API_KEY" in text
    assert bad not in text and bad not in caplog.text
    assert bad not in repr(info.value.__cause__) and bad not in repr(info.value.__context__)


def test_key_never_in_logs_or_errors_even_when_the_server_echoes_it(
    server: LocalPolygonServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Some servers put apiKey into next_url; every log line (httpx logs URLs) and error is scrubbed."""
    caplog.set_level(logging.DEBUG)
    server.set_faults(key_in_next_url=True, rate_limit_every=3, retry_after_s=0.01)
    with client(server, key=SECRET) as rest:
        pages = list(rest.aggregate_pages("AAPL", "minute", JAN2, JAN2 + DAY_MS - 1))
        assert any(SECRET in (p.next_url or "") for p in pages)  # the server did echo it
        server.set_faults(error_burst=100, rate_limit_every=0)
        with pytest.raises(SourceError) as info:
            rest.get("aggs", pages[0].next_url or "")
    assert "apiKey=***" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert "HTTP Request" in caplog.text or "retry" in caplog.text  # logs were captured at all
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()


def test_next_url_to_another_host_is_refused_and_the_key_never_goes_there(server: LocalPolygonServer) -> None:
    """A next_url naming another host (a compromised or misconfigured server, a rewriting
    proxy) is not followed: the client would send that host the API key."""
    with LocalPolygonServer(market=MarketData(("AAPL",)), api_keys=[SECRET]) as elsewhere:
        # same address, another port: only scheme + host + port equality lets it through
        server.set_faults(next_url_base=elsewhere.url)
        with client(server, key=SECRET) as rest, pytest.raises(SourceError) as info:
            list(rest.aggregate_pages("AAPL", "minute", JAN2, JAN2 + DAY_MS - 1))
        assert elsewhere.stats.rest_requests == 0  # nothing, so no key, ever reached it
    text = str(info.value)
    assert f"pointing to http://127.0.0.1:{elsewhere.port}" in text and "TICKCAST_POLYGON__REST_BASE_URL" in text
    assert SECRET not in text
    assert server.stats.rest_requests == 1  # the first page came, the second was never asked for


@pytest.mark.parametrize(
    "url",
    [
        "http://elsewhere.test/v2/aggs",
        "https://127.0.0.1:{port}/v2/aggs",  # another scheme
        "http://127.0.0.1:{port}@elsewhere.test/v2/aggs",  # our host as user info
        "http://localhost:{port}/v2/aggs",  # another name, even for the same machine
        "//elsewhere.test/v2/aggs",  # scheme-relative
        "ftp://127.0.0.1:{port}/v2/aggs",
    ],
)
def test_only_urls_on_the_configured_origin_are_requested(server: LocalPolygonServer, url: str) -> None:
    with client(server) as rest:
        with pytest.raises(SourceError, match="not following it"):
            rest.get("aggs", url.format(port=server.port))
        status, _ = rest.get("ticker", f"HTTP://127.0.0.1:{server.port}/v3/reference/tickers/AAPL")  # same origin
    assert status == 200 and server.stats.rest_requests == 1


def test_network_errors_retry_then_fail_clearly() -> None:
    settings = PolygonSettings(
        api_key=SECRET, rest_base_url="http://127.0.0.1:9", max_retries=1, backoff_max_s=0.1, request_timeout_s=2
    )
    with PolygonRest(settings, stop=RecordingStop()) as rest, pytest.raises(SourceError) as info:
        rest.ticker_exists("AAPL")
    assert "ConnectError" in str(info.value) and SECRET not in str(info.value)


def test_unknown_ticker_is_empty_aggregates_and_404_reference(server: LocalPolygonServer) -> None:
    with client(server) as rest:
        pages = list(rest.aggregate_pages("ZZZZ", "minute", JAN2, JAN2 + DAY_MS - 1))
        assert [p.results for p in pages] == [[]]
        assert rest.ticker_exists("ZZZZ") is False
        assert rest.ticker_exists("AAPL") is True


def test_open_close_summary_and_holidays(server: LocalPolygonServer) -> None:
    with client(server) as rest:
        body = rest.open_close("AAPL", date(2024, 1, 2))
        assert body is not None
        assert {"status", "from", "symbol", "open", "high", "low", "close", "volume", "preMarket", "afterHours"} <= set(
            body
        )
        assert body["symbol"] == "AAPL" and body["from"] == "2024-01-02"
        assert rest.open_close("AAPL", date(2024, 1, 6)) is None  # a Saturday: 404 NOT_FOUND


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TICKCAST_POLYGON__API_KEY"):
        PolygonRest(PolygonSettings())


def test_rate_limiter_spaces_requests_evenly() -> None:
    waits: list[float] = []
    limiter = RateLimiter(per_minute=600, sleep=waits.append)  # one every 0.1 s
    for _ in range(4):
        limiter.acquire()
    assert waits[0] == pytest.approx(0.1, abs=0.02)
    assert waits[-1] == pytest.approx(0.3, abs=0.02)  # the fake sleep does not advance the clock


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_backoff_is_bounded_and_floors_at_retry_after() -> None:
    for attempt in range(1, 30):
        assert 0 < backoff_delay(attempt, cap=5.0) <= 5.0
    assert backoff_delay(1, cap=5.0, retry_after=3.0) >= 3.0
    assert backoff_delay(1, cap=5.0, retry_after=300.0) == 5.0


def test_aggregate_to_bar() -> None:
    bar = agg_to_bar({"v": 10, "vw": 1.5, "o": 1, "c": 2, "h": 2, "l": 1, "t": JAN2, "n": 3.0}, "AAPL", "minute", "x")
    assert bar.start == datetime(2024, 1, 2, tzinfo=UTC) and (bar.end - bar.start).total_seconds() == 60
    assert bar.trades == 3 and isinstance(bar.trades, int)
    bar.validate()
    with pytest.raises(InvalidRecord, match="misses field"):
        agg_to_bar({"v": 1, "o": 1, "h": 1, "l": 1, "t": JAN2}, "AAPL", "minute", "x")
    with pytest.raises(InvalidRecord, match="epoch"):
        agg_to_bar({"v": 1, "o": 1, "h": 1, "l": 1, "c": 1, "t": "2024"}, "AAPL", "minute", "x")


def test_faults_update_validates_names() -> None:
    faults = Faults()
    faults.update({"rate_limit_every": "4", "key_in_next_url": "true"})
    assert faults.rate_limit_every == 4 and faults.key_in_next_url is True
    with pytest.raises(ValueError, match="unknown fault"):
        faults.update({"nope": 1})
