"""Property-based fuzzing of what Polygon sends: REST aggregate records and pages, WebSocket
frames. Whatever arrives (NaN, infinities, 400-digit integers, wrong types, missing fields,
nested junk, undecodable text), the producer must not crash: each bad record ends as a
reject with a reason, and the good records next to it still go through.

The Kafka side is a recording stand-in here; tests/integration/test_producer_hardening.py
sends the same kind of junk through the real broker into the DLQ topic.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.polygon_rest import EPOCH_MS_MAX, PolygonRest, agg_to_bar, epoch_ms
from producer.polygon_ws import PolygonStream, ws_to_bar
from producer.sink import encode_payload
from tickcast.contracts import Bar
from tickcast.errors import InvalidBar, InvalidRecord, SourceError
from tickcast.settings import PolygonSettings

T0 = int(datetime(2024, 1, 2, 14, 30, tzinfo=UTC).timestamp() * 1000)

# -- strategies ------------------------------------------------------------------------------

huge_ints = st.sampled_from([10**19, 2**63, 2**64, 10**30, 10**308, 10**309, 10**400, -(10**400)])
bad_floats = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 1e308, 5e-324, -0.0])
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    bad_floats,
    st.text(max_size=12),
)
junk = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
# a number field: usually a sane price, often something broken
number = st.one_of(st.floats(1.0, 500.0), st.integers(1, 500), leaves, junk)
timestamp = st.one_of(
    st.integers(T0 - 10**9, T0 + 10**9),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    bad_floats,
    st.just(EPOCH_MS_MAX),
    st.just(-1),
    junk,
)


def aggregate(t: Any = timestamp, n: Any = number) -> st.SearchStrategy[dict[str, Any]]:
    """A REST aggregate where any field may be broken or missing."""
    return st.fixed_dictionaries(
        {},
        optional={"t": t, "o": number, "h": number, "l": number, "c": number, "v": number, "vw": number, "n": n},
    )


def good_aggregate(i: int) -> dict[str, Any]:
    p = 100.0 + i
    return {"t": T0 + i * 60_000, "o": p, "h": p + 1, "l": p - 1, "c": p + 0.5, "v": 1000.0 + i, "vw": p, "n": 12}


def ws_event(ev: Any = None) -> st.SearchStrategy[dict[str, Any]]:
    """A WebSocket aggregate event (``ev`` "A" unless another strategy is given) where any
    field may be broken or missing."""
    return st.fixed_dictionaries(
        {"ev": st.just("A") if ev is None else ev},
        optional={
            "sym": st.one_of(st.sampled_from(["AAPL", "MSFT", "aapl", "", "X" * 300]), junk),
            "s": timestamp,
            "e": timestamp,
            "o": number,
            "h": number,
            "l": number,
            "c": number,
            "v": number,
            "vw": number,
        },
    )


def good_event(ticker: str, i: int) -> dict[str, Any]:
    p = 50.0 + i
    s = T0 + i * 1000
    return {"ev": "A", "sym": ticker, "o": p, "h": p + 1, "l": p - 1, "c": p, "v": 10, "vw": p, "s": s, "e": s + 1000}


# -- REST records ------------------------------------------------------------------------------


def convert(raw: Any) -> Bar | tuple[str, str]:
    """What the backfill does with one record: a valid Bar, or (kind, reason) for the DLQ."""
    try:
        bar = agg_to_bar(raw, "AAPL", "minute", "polygon-rest")
    except InvalidRecord as exc:
        return "malformed", exc.reason
    try:
        bar.validate()
    except InvalidBar as exc:
        return "invalid", exc.reason
    return bar


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(aggregate(), junk), max_size=6), st.randoms(use_true_random=False))
def test_rest_records_become_bars_or_rejects_with_reasons(bad: list[Any], rnd: Any) -> None:
    good = [good_aggregate(i) for i in range(3)]
    page = [*good, *bad]
    rnd.shuffle(page)
    published = []
    for raw in page:
        outcome = convert(raw)
        if isinstance(outcome, Bar):
            # everything the backfill does next with a valid bar must work too
            assert math.isfinite(outcome.end.timestamp()) and int(raw["t"]) >= 0
            assert Bar.from_json(outcome.to_json()) == outcome
            published.append(raw)
        else:
            _, reason = outcome
            assert reason and len(reason) < 400, reason
            assert isinstance(encode_payload(raw), bytes)  # the DLQ payload encodes, whatever it holds
    for raw in good:  # good records in the same page still go through
        assert any(raw is p for p in published)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({**good_aggregate(0), "t": math.nan}, "not epoch milliseconds between"),
        ({**good_aggregate(0), "t": math.inf}, "not epoch milliseconds between"),
        ({**good_aggregate(0), "t": 10**400}, "integer of"),
        ({**good_aggregate(0), "t": 1e300}, "not epoch milliseconds between"),
        ({**good_aggregate(0), "t": [1]}, "not epoch milliseconds"),
        ({**good_aggregate(0), "o": 10**400}, "too large for a number"),
        ({**good_aggregate(0), "vw": -(10**400)}, "too large for a number"),
        ({**good_aggregate(0), "n": 10**30}, "64-bit"),
        ({**good_aggregate(0), "n": 1e30}, "64-bit"),
    ],
)
def test_overflowing_records_are_malformed_not_crashes(raw: dict[str, Any], words: str) -> None:
    # before the fix these raised OverflowError/ValueError out of datetime.fromtimestamp or
    # math.isfinite and stopped the backfill
    kind, reason = convert(raw)  # type: ignore[misc]
    assert kind == "malformed" and words in reason


def test_nan_and_infinite_prices_are_invalid_with_the_field_named() -> None:
    for field, value in (("o", math.nan), ("h", math.inf), ("v", -math.inf), ("vw", math.nan)):
        kind, reason = convert({**good_aggregate(0), field: value})  # type: ignore[misc]
        assert kind == "invalid" and "not finite" in reason


def test_epoch_bounds() -> None:
    assert epoch_ms(0, "t") == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidRecord):
        epoch_ms(EPOCH_MS_MAX, "t")
    with pytest.raises(InvalidRecord):
        epoch_ms(True, "t")


# -- REST pages through the real client ------------------------------------------------------


def _client(body: bytes) -> PolygonRest:
    calls = {"n": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] > 1:  # a followed next_url ends the pagination
            return httpx.Response(200, content=b'{"results": []}')
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    polygon = PolygonSettings(
        api_key="k-fuzz",
        rest_base_url="http://polygon.test",
        requests_per_minute=1e9,
        max_retries=0,
    )
    return PolygonRest(polygon, transport=httpx.MockTransport(answer))


page_bodies = st.one_of(
    junk.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "results": st.one_of(st.lists(st.one_of(aggregate(), junk), max_size=4), junk),
            "next_url": st.one_of(
                junk,
                st.sampled_from(
                    [
                        "http://polygon.test/v2/next",
                        "http://elsewhere.test/v2/next",
                        "https://polygon.test/v2/next",
                        "http://polygon.test:8080/v2/next",
                        "http://polygon.test@elsewhere.test/",
                        "//elsewhere.test/x",
                        "ftp://polygon.test/x",
                        "not a url",
                    ]
                ),
            ),
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.just(b"[" * 200_000 + b"]" * 200_000),  # deeper than the JSON decoder recurses
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page_bodies)
def test_rest_pages_yield_records_or_raise_a_source_error(body: bytes) -> None:
    with _client(body) as rest:
        try:
            pages = list(rest.aggregate_pages("AAPL", "minute", T0, T0 + 3_600_000))
        except SourceError as exc:
            assert "k-fuzz" not in str(exc)
            return
    for page in pages:
        assert isinstance(page.results, list)
        for raw in page.results:
            convert(raw)  # and every record classifies without raising


# -- WebSocket frames --------------------------------------------------------------------------


class Recorder:
    """Takes what BarPublisher would get: valid bars and rejects (payload encoded like the DLQ's)."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []
        self.rejects: list[tuple[str, str]] = []

    def send_encoded(self, ticker: str, value: bytes, end_ts: float) -> None:
        self.bars.append(Bar.from_json(value))

    def reject(self, payload: Any, reason: str, key: str | None = None, kind: str = "invalid") -> None:
        assert isinstance(encode_payload(payload), bytes)
        self.rejects.append((kind, reason))

    def flush(self, timeout: float | None = None) -> None:
        pass


def _stream(recorder: Recorder) -> PolygonStream:
    polygon = PolygonSettings(api_key="k-fuzz", ws_url="ws://127.0.0.1:9/stocks")
    return PolygonStream(polygon, recorder, ("AAPL", "MSFT"), ("A",))  # type: ignore[arg-type]


frames = st.one_of(
    st.lists(st.one_of(ws_event(), ws_event(st.one_of(junk, st.sampled_from(["AM", "T", "Q"]))), junk), max_size=6),
    ws_event(),
    junk,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.randoms(use_true_random=False))
def test_ws_frames_never_crash_and_account_for_every_event(frame: Any, rnd: Any) -> None:
    recorder = Recorder()
    stream = _stream(recorder)
    events = frame if isinstance(frame, list) else [frame]
    good = [good_event("AAPL", 1), good_event("MSFT", 1)]
    events = [*events, *good]
    rnd.shuffle(events)
    # a junk event could be a status carrying max_connections, which is a reconnect, not data
    events = [e for e in events if not (isinstance(e, dict) and e.get("ev") == "status")]
    stream._handle(json.dumps(events), None)
    result = stream.result
    ours = [e for e in events if not isinstance(e, dict) or e.get("ev") == "A"]
    assert result.bars + result.rejected + result.duplicates == len(ours)
    assert len(recorder.rejects) == result.rejected
    assert all(reason for _, reason in recorder.rejects)
    published = {(b.ticker, b.start) for b in recorder.bars}
    for event in good:  # unless a junk event for the same ticker and second came first
        ws = ws_to_bar(event)
        assert (ws.ticker, ws.start) in published or result.duplicates


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=60), st.text(max_size=60)))
def test_ws_undecodable_frames_are_rejected_as_malformed(raw: bytes | str) -> None:
    recorder = Recorder()
    stream = _stream(recorder)
    stream._handle(raw, None)
    assert stream.result.bars == 0 or recorder.bars


def test_ws_deeply_nested_frame_is_rejected_not_a_crash() -> None:
    recorder = Recorder()
    stream = _stream(recorder)
    stream._handle("[" * 200_000 + "]" * 200_000, None)  # RecursionError in json.loads before the fix
    assert recorder.rejects == [("malformed", "WebSocket frame is not JSON")]


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"s": math.nan}, "not epoch milliseconds between"),
        ({"e": 10**400}, "integer of"),
        ({"s": -(10**30)}, "not epoch milliseconds between"),
        ({"o": 10**400}, "too large for a number"),
        ({"sym": ["AAPL"]}, "not a symbol"),
        ({"sym": {"a": 1}}, "not a symbol"),
    ],
)
def test_ws_overflows_and_unhashable_symbols_are_rejected(changes: dict[str, Any], words: str) -> None:
    recorder = Recorder()
    stream = _stream(recorder)
    stream._handle(json.dumps([{**good_event("AAPL", 1), **changes}, good_event("MSFT", 1)]), None)
    assert [b.ticker for b in recorder.bars] == ["MSFT"]  # the good event in the frame still goes through
    ((kind, reason),) = recorder.rejects
    assert kind == "malformed" and words in reason
