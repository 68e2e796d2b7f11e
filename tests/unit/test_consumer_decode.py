"""The sink's batch decoder accepts and rejects exactly what Bar.from_json does, with the same values."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decode import OFFSET_COLUMN, PARTITION_COLUMN, SINK_SCHEMA, bar_from_row, decode_batch, reference_decode
from tickcast.contracts import INTERVALS, Bar

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def bar(i: int = 0, **changes: Any) -> dict[str, Any]:
    start = T0 + timedelta(minutes=i)
    data = Bar("AAPL", "minute", start, start + timedelta(minutes=1), 10.0, 11.0, 9.5, 10.5, 100.0, 10.2, 7, "test")
    wire = data.to_dict()
    wire.update(changes)
    return wire


def enc(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def verdicts(values: list[bytes | None]) -> list[Any]:
    """What the decoder says per value: a Bar or the reason."""
    decoded = decode_batch(values, list(range(100, 100 + len(values))), partition=3)
    out: list[Any] = [None] * len(values)
    for reject in decoded.rejects:
        out[reject.index] = reject.reason
        assert reject.offset == 100 + reject.index
    rows = decoded.table.to_pylist()
    assert decoded.table.schema == SINK_SCHEMA
    assert [r[OFFSET_COLUMN] for r in rows] == sorted(r[OFFSET_COLUMN] for r in rows)
    for row in rows:
        assert row[PARTITION_COLUMN] == 3
        out[row[OFFSET_COLUMN] - 100] = bar_from_row(row)
    assert all(v is not None for v in out), "every record is either a row or a reject"
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, Bar) and isinstance(b, Bar):
        fa, fb = a.to_dict(), b.to_dict()
        for key in ("open", "high", "low", "close", "volume", "vwap"):
            x, y = fa[key], fb[key]
            if x is None or y is None:
                if x is not y:
                    return False
            elif float(x) != float(y):
                return False
            fa.pop(key), fb.pop(key)
        return fa == fb
    return bool(a == b)


def assert_matches_contract(values: list[bytes | None]) -> None:
    got = verdicts(values)
    for value, verdict in zip(values, got, strict=True):
        expected = reference_decode(value)
        assert same(verdict, expected), f"{value!r}: decoder says {verdict!r}, contract says {expected!r}"


HOSTILE: list[bytes | None] = [
    None,
    b"",
    b" ",
    b"not json",
    b"[1,2]",
    b'"AAPL"',
    b"{}",
    b'{"a":1}{"b":2}',
    enc(bar()) + b" ",
    b" " + enc(bar()),
    enc(bar()).replace(b",", b",\n", 1),
    enc(bar()).replace(b'"open":10.0', b'"open":NaN'),
    enc(bar()).replace(b'"open":10.0', b'"open":Infinity'),
    enc(bar()).replace(b'"volume":100.0', b'"volume":1e400'),
    enc(bar()).replace(b'"ticker":"AAPL"', b'"ticker":"AAPL","ticker":"MSFT"'),
    enc(bar()).replace(b'"source":"test"', b'"source":"\xff\xfe"'),
    enc(bar()).replace(b'"source":"test"', b'"source":"x","junk":"\xff"'),
    enc(bar()).replace(b'"source":"test"', b'"source":"\\ud800"'),
    enc(bar(schema_version=2)),
    enc(bar(schema_version=1.0)),
    enc(bar(schema_version=True)),
    enc(bar(schema_version="1")),
    enc({k: v for k, v in bar().items() if k != "schema_version"}),
    enc({k: v for k, v in bar().items() if k != "close"}),
    enc({k: v for k, v in bar().items() if k != "source"}),
    enc({k: v for k, v in bar().items() if k != "vwap"}),
    enc(bar(source=None)),
    enc(bar(source=123)),
    enc(bar(source=["x"])),
    enc(bar(ticker="aapl")),
    enc(bar(ticker="AAPL\n")),
    enc(bar(ticker="TOOLONGTICKER1")),
    enc(bar(ticker="BRK.B")),
    enc(bar(ticker=None)),
    enc(bar(ticker=7)),
    enc(bar(interval="week")),
    enc(bar(interval=["minute"])),
    enc(bar(start="2024-01-02T14:30:00")),
    enc(bar(start="2024-01-02T14:30:00+05:00", end="2024-01-02T09:31:00Z")),
    enc(bar(start="2024-01-02 14:30:00Z")),
    enc(bar(start="2024-02-30T14:30:00Z")),
    enc(bar(start="2024-01-02T24:00:00Z")),
    enc(bar(start="2024-01-02T23:59:60Z")),
    enc(bar(start="2024-01-02T14:30:00.5Z")),
    enc(bar(start="2024-01-02T14:30:00.1234567Z")),
    enc(bar(start="0999-01-02T14:30:00Z", end="0999-01-02T14:31:00Z")),
    enc(bar(start=1704205800000)),
    enc(bar(end="2024-01-02T14:30:00Z")),
    enc(bar(end="2024-01-02T14:29:00Z")),
    enc(bar(open=True)),
    enc(bar(open="10")),
    enc(bar(open=None)),
    enc(bar(open=12.0)),
    enc(bar(close=9.0)),
    enc(bar(low=0.0, open=0.0, close=0.0)),
    enc(bar(low=-1.0)),
    enc(bar(volume=-1)),
    enc(bar(volume=-0.0)),
    enc(bar(volume=10**20)),
    enc(bar(volume=10**400)),
    enc(bar(open=10, high=11, low=9, close=10)),
    enc(bar(vwap=0)),
    enc(bar(vwap=-1.0)),
    enc(bar(vwap=None)),
    enc(bar(trades=None)),
    enc(bar(trades=-1)),
    enc(bar(trades=5.0)),
    enc(bar(trades=True)),
    enc(bar(trades=2**63)),
    enc(bar(trades=2**63 - 1)),
    enc(bar(extra={"nested": [1, 2]})),
    enc(bar(high=1e308, open=1e308, close=1e308)),
]


def test_valid_bars_decode_to_the_same_values() -> None:
    values = [enc(bar(i, open=10.0 + i / 7, close=10.0 + i / 9, high=99.0)) for i in range(500)]
    decoded = decode_batch(values, list(range(500)), partition=0)
    assert decoded.rejects == []
    assert decoded.table.num_rows == 500
    for i, row in enumerate(decoded.table.to_pylist()):
        assert bar_from_row(row) == Bar.from_json(values[i])


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_value_alone_matches_the_contract(value: bytes | None) -> None:
    assert_matches_contract([value])


def test_hostile_values_among_good_ones_keep_order_and_reasons() -> None:
    values: list[bytes | None] = []
    for i, hostile in enumerate(HOSTILE):
        values += [enc(bar(2 * i)), hostile, enc(bar(2 * i + 1))]
    assert_matches_contract(values)
    reasons = [r.reason for r in decode_batch(values, list(range(len(values))), 0).rejects]
    assert any("not JSON" in r for r in reasons)
    assert any("prices out of order" in r for r in reasons)


def test_invalid_bar_reason_is_the_contracts() -> None:
    decoded = decode_batch([enc(bar(volume=-5))], [42], partition=1)
    assert decoded.table.num_rows == 0
    (reject,) = decoded.rejects
    assert reject.offset == 42
    assert reject.reason == "volume is -5.0, must be >= 0"
    assert "invalid bar" in reject.error


def test_empty_batch() -> None:
    decoded = decode_batch([], [], partition=0)
    assert decoded.table.num_rows == 0 and decoded.rejects == []


prices = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


@st.composite
def wire_bars(draw: st.DrawFn) -> dict[str, Any]:
    low, a, b, high = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    interval = draw(st.sampled_from(list(INTERVALS)))
    start = T0 + timedelta(microseconds=draw(st.integers(0, 10**13)))
    wire = Bar(
        ticker=draw(st.from_regex(r"[A-Z][A-Z0-9.\-]{0,11}", fullmatch=True)),
        interval=interval,
        start=start,
        end=start + INTERVALS[interval],
        open=a,
        high=high,
        low=low,
        close=b,
        volume=draw(st.floats(min_value=0, max_value=1e15)),
        vwap=draw(st.none() | prices),
        trades=draw(st.none() | st.integers(0, 2**63 - 1)),
        source=draw(st.text(max_size=10)),
    ).to_dict()
    # Break some of them: a field replaced by any JSON scalar, or removed.
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(wire)))
        if draw(st.booleans()):
            wire[key] = draw(json_scalars)
        else:
            wire.pop(key)
    return wire


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(wire_bars(), min_size=1, max_size=12))
def test_random_records_match_the_contract(records: list[dict[str, Any]]) -> None:
    values: list[bytes | None] = []
    for record in records:
        try:
            values.append(json.dumps(record, separators=(",", ":")).encode())
        except ValueError:
            values.append(json.dumps(record, allow_nan=True).encode())
    assert_matches_contract(values)


def test_float_values_survive_exactly() -> None:
    values = []
    for i in range(200):
        price = math.pi * (i + 1) * 10 ** ((i % 13) - 6)
        values.append(enc(bar(i, open=price, high=price * 2, low=price / 2, close=price, vwap=price, volume=price)))
    rows = decode_batch(values, list(range(200)), 0).table.to_pylist()
    for value, row in zip(values, rows, strict=True):
        assert bar_from_row(row) == Bar.from_json(value)
