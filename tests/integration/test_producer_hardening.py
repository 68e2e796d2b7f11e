"""The producer against hostile or failing surroundings, through the real broker: junk in
Polygon pages lands in the DLQ with reasons, oversized DLQ payloads are truncated to fit,
a DLQ that cannot be written backs off and turns /healthz unhealthy (and recovers), a slow
REST gap-fill does not stall the live feed, and a server that drops us right after we
subscribe sees growing reconnect delays."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from producer_testkit import Topics, by_ticker, headers, make_topics, producer_settings, read_topic

from producer.local_polygon import Faults, LocalPolygonServer, MarketData
from producer.polygon_ws import PolygonStream
from producer.runner import ProduceOptions, health_check, produce
from producer.sink import BarPublisher
from tickcast.contracts import Bar
from tickcast.service import ObservabilityServer, StopFlag
from tickcast.settings import Settings

pytestmark = pytest.mark.integration

JAN2 = datetime(2024, 1, 2, tzinfo=UTC)
LAST_MINUTE_MS = int((JAN2 + timedelta(hours=23, minutes=59)).timestamp() * 1000)


@pytest.fixture
def topics(unique_topic: Callable[..., str]) -> Topics:
    return make_topics(unique_topic)


def _ok(t: int, **changes: Any) -> dict[str, Any]:
    return {"t": t, "o": 10.0, "h": 11.0, "l": 9.0, "c": 10.5, "v": 100.0, "vw": 10.2, "n": 5, **changes}


# after the day's last good bar (t must grow: an invalid bar still moves the backfill's cursor)
JUNK: list[Any] = [
    _ok(math.nan),
    _ok(math.inf),
    _ok(1e300),
    _ok(10**400),
    _ok(-5),
    _ok("2024-01-02"),
    _ok(LAST_MINUTE_MS + 1, o=math.nan),
    _ok(LAST_MINUTE_MS + 2, h=math.inf),
    _ok(LAST_MINUTE_MS + 3, v=10**400),
    _ok(LAST_MINUTE_MS + 4, o={"nested": [1, [2, {"x": None}]]}),
    _ok(LAST_MINUTE_MS + 5, n=10**30),
    {"o": 1},
    "junk",
    [1, [2, [3]]],
    None,
]


def test_rest_page_with_junk_records_lands_them_in_the_dlq_with_reasons(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    with LocalPolygonServer(market=MarketData(("AAPL",))) as server:
        server.set_faults(junk_results=json.dumps(JUNK))  # Python's json writes NaN/Infinity, as a broken feed might
        settings = producer_settings(make_settings, topics, server)
        opts = ProduceOptions(source="polygon-rest", tickers=("AAPL",), start=JAN2.date(), end=JAN2.date())
        summary = produce(settings, opts)
    # every good bar of the day went through; every junk record went to the DLQ, none crashed the run
    assert summary["sent"] == 1440 and summary["dlq"] == len(JUNK)
    bars = read_topic(settings, topics.bars, expect=1440)
    assert len(bars) == 1440
    dead = read_topic(settings, topics.dlq, expect=len(JUNK))
    assert len(dead) == len(JUNK)
    reasons = [headers(r)["reason"] for r in dead]
    assert all(reasons) and all(headers(r)["source"] == "polygon-rest" for r in dead)
    text = "\n".join(reasons)
    for words in ("not epoch milliseconds", "integer of", "not finite", "too large for a number", "64-bit", "misses"):
        assert words in text, f"no reject says {words!r}: {reasons}"
    assert {headers(r)["kind"] for r in dead} == {"malformed", "invalid"}


def test_dlq_payload_over_the_broker_limit_is_truncated_and_says_so(
    make_settings: Callable[..., Settings], topics: Topics, unique_topic: Callable[..., str]
) -> None:
    settings = producer_settings(make_settings, topics)
    big = os.urandom(3_000_000)  # incompressible; the topic takes at most Kafka's default 1048588 bytes
    # a topic whose limit is below producer.dlq_max_bytes: the broker's "too large" shrinks the budget
    small = unique_topic("dlqsmall", partitions=1, config={"max.message.bytes": "65536"})
    with BarPublisher(settings.kafka, settings.producer, "test") as publisher:
        publisher.reject(big, "a very large broken record", key="AAPL", kind="malformed")
        publisher.reject(b'{"ok": true}', "small", key="AAPL")
    with BarPublisher(settings.kafka, settings.producer, "test", dlq_topic=small) as publisher:
        publisher.reject(big, "a very large broken record", key="AAPL", kind="malformed")
    records = read_topic(settings, topics.dlq, expect=2)
    assert len(records) == 2
    huge, tiny = sorted(records, key=lambda r: -len(r.value))
    h = headers(huge)
    assert h["truncated"] == "true" and h["original.size"] == "3000000" and h["reason"] == "a very large broken record"
    assert len(huge.value) <= settings.producer.dlq_max_bytes and huge.value == big[: len(huge.value)]
    assert tiny.value == b'{"ok": true}' and "truncated" not in headers(tiny)
    (shrunk,) = read_topic(settings, small, expect=1)
    assert headers(shrunk)["original.size"] == "3000000" and len(shrunk.value) <= 65536
    assert shrunk.value == big[: len(shrunk.value)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_status(url: str, status: int, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(url, timeout=5)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_failing_dlq_backs_off_turns_healthz_unhealthy_and_recovers(
    make_settings: Callable[..., Settings], topics: Topics, kafka_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka.admin import NewTopic

    # the broker does not create topics on demand: writes to this one fail until it exists
    missing = f"dlq-missing.{uuid.uuid4().hex[:8]}"
    base = producer_settings(make_settings, topics)
    settings = base.model_copy(
        update={
            # each failed write blocks request_timeout_s waiting for the topic's metadata
            "kafka": base.kafka.model_copy(update={"request_timeout_s": 1.0, "topic_dlq": missing}),
            "producer": base.producer.model_copy(update={"dlq_unhealthy_after_s": 3.0}),
        }
    )
    caplog.set_level(logging.WARNING, logger="producer.sink")
    stop = StopFlag()
    publisher = BarPublisher(settings.kafka, settings.producer, "test")
    server = ObservabilityServer(_free_port(), health_check(publisher, stop, "test"), host="127.0.0.1").start()
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        started = time.monotonic()
        for i in range(3):
            publisher.reject({"i": i}, f"bad record {i}", key="AAPL")  # returns at once, never raises
        assert time.monotonic() - started < 0.5
        assert httpx.get(url, timeout=5).status_code == 200  # failing, but not for long yet
        # the bars do not wait for the broken DLQ
        s = JAN2 + timedelta(hours=15)
        bar = Bar("AAPL", "minute", s, s + timedelta(minutes=1), 10.0, 11.0, 9.0, 10.5, 100.0)
        publisher.send_encoded("AAPL", bar.to_json(), bar.end.timestamp())
        publisher.flush(timeout=30)
        assert len(read_topic(settings, topics.bars, expect=1)) == 1

        response = _wait_status(url, 503, timeout_s=20)
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["ok"] is False and body["dlq_waiting"] == 3 and body["dlq_failing_s"] >= 3.0
        assert "KafkaTimeoutError" in body["dlq_error"]

        # bounded exponential back-off, really waited: wait for four failed rounds
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            failures = [r for r in caplog.records if "to the DLQ" in r.getMessage() and "failed" in r.getMessage()]
            if len(failures) >= 4:
                break
            time.sleep(0.2)
        gaps = [b.created - a.created for a, b in itertools.pairwise(failures)]
        assert len(gaps) >= 3, gaps
        # round k waits 0.5 * 2**(k-1) s with jitter in [half, full] (+ ~1 s blocked on metadata):
        # the third gap (1-2 s wait) always exceeds the first (0.25-0.5 s) by at least 0.5 s;
        # without back-off every gap would be the 1 s metadata wait
        assert gaps[2] > gaps[0] + 0.4, gaps

        kafka_admin.create_topics([NewTopic(missing, num_partitions=1, replication_factor=1)])
        response = _wait_status(url, 200, timeout_s=30)  # the next retry (at most 8 s away) succeeds
        assert response.status_code == 200, response.text
        assert response.json()["dlq_waiting"] == 0
        dead = read_topic(settings, missing, expect=3)
        assert sorted(json.loads(r.value)["i"] for r in dead) == [0, 1, 2]
        assert {headers(r)["reason"] for r in dead} == {"bad record 0", "bad record 1", "bad record 2"}
    finally:
        server.stop()
        publisher.close(timeout=10)
        kafka_admin.delete_topics([missing])


def test_slow_gap_fill_runs_beside_the_live_feed(make_settings: Callable[..., Settings], topics: Topics) -> None:
    # cut the feed after 2 s; every REST answer then takes 3 s, so gap-filling two tickers takes 6 s
    faults = Faults(ws_disconnect_after=4, ws_disconnects=1, ws_outage_s=1.0, latency_s=3.0)
    with LocalPolygonServer(market=MarketData(("AAPL", "MSFT")), faults=faults) as server:
        settings = producer_settings(make_settings, topics, server)
        opts = ProduceOptions(source="polygon-ws", tickers=("AAPL", "MSFT"), interval="second", duration=15.0)
        summary = produce(settings, opts)
    assert server.stats.ws_cut == 1 and summary["gapfilled"] >= 2
    records = read_topic(settings, topics.bars, expect=summary["sent"])
    got = by_ticker(records)
    assert set(got) == {"AAPL", "MSFT"}
    for ticker, values in got.items():  # still gap-free and in order per ticker
        starts = [datetime.fromisoformat(v["start"]) for v in values]
        assert {b - a for a, b in itertools.pairwise(starts)} == {timedelta(seconds=1)}, f"{ticker}: {starts}"
    stamped = [(r.key.decode(), json.loads(r.value), r.timestamp) for r in records]
    fill_done_ms = max(ts for _, v, ts in stamped if v["source"] == "polygon-gapfill")
    first_live_after: dict[str, int] = {}
    for ticker in ("AAPL", "MSFT"):
        last_filled = max(v["start"] for k, v, _ in stamped if k == ticker and v["source"] == "polygon-gapfill")
        first_live_after[ticker] = min(
            ts for k, v, ts in stamped if k == ticker and v["source"] == "polygon-ws" and v["start"] > last_filled
        )
    # AAPL's gap was filled first; its live bars flowed while MSFT's gap-fill still waited on REST.
    # A gap-fill that blocks reading publishes no live bar before the whole gap-fill is done.
    assert min(first_live_after.values()) < fill_done_ms - 1000, (first_live_after, fill_done_ms)


def test_reconnect_backoff_grows_until_a_connection_stays_healthy(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    # three connections dropped right after subscribing, then one that streams 3 s, then a normal one
    faults = Faults(ws_drop_after_subscribe=3, ws_disconnect_after=3, ws_disconnects=1)
    with LocalPolygonServer(market=MarketData(("AAPL",)), faults=faults) as server:
        settings = producer_settings(make_settings, topics, server, backoff_max_s=8.0)
        with BarPublisher(settings.kafka, settings.producer, "polygon-ws") as publisher:
            stream = PolygonStream(settings.polygon, publisher, ("AAPL",), ("A",), healthy_after_s=1.0)
            result = stream.run(duration=9.0)
    sessions = server.stats.ws_sessions
    assert len(sessions) >= 5 and result.reconnects >= 4 and result.bars >= 3
    waits = [later[0] - earlier[1] for earlier, later in itertools.pairwise(sessions)]
    # back-off rounds wait 0.25-0.5, 0.5-1, 1-2 s (full jitter on 0.5 * 2**(k-1)); resetting on
    # every successful connect would keep each wait at 0.25-0.5 s. 0.3 s covers the reconnect itself.
    assert waits[0] < 0.8 and waits[2] >= 1.0, waits
    # the fourth connection stayed up past healthy_after_s: its drop starts over at 0.25-0.5 s
    assert waits[3] < 0.8, waits
