"""Fast serialization and vectorized validation agree exactly with the Bar contract."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.encode import bar_json, plausible_ticker, prefix, times, valid_mask
from tickcast.contracts import Bar
from tickcast.errors import InvalidBar
from tickcast.lake import bars_to_table

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
weird = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0])


@st.composite
def bars(draw: st.DrawFn) -> Bar:
    """Mostly valid bars (prices in order), sometimes broken in one field."""
    start = T0 + timedelta(minutes=draw(st.integers(0, 10_000)), microseconds=draw(st.sampled_from([0, 0, 123])))
    low = draw(st.floats(min_value=0.0001, max_value=1e5))
    high = low * (1 + draw(st.floats(min_value=0, max_value=0.1)))
    o = low + (high - low) * draw(st.floats(min_value=0, max_value=1))
    c = low + (high - low) * draw(st.floats(min_value=0, max_value=1))
    values = {"open": o, "high": high, "low": low, "close": c, "volume": draw(st.floats(min_value=0, max_value=1e9))}
    if draw(st.booleans()):
        values[draw(st.sampled_from(sorted(values)))] = draw(weird)
    return Bar(
        ticker=draw(st.sampled_from(["AAPL", "BRK.B", "BF-B", "X"])),
        interval="minute",
        start=start,
        end=start + timedelta(minutes=draw(st.sampled_from([1, 1, 1, 0]))),
        vwap=draw(st.one_of(st.none(), st.floats(min_value=0.01, max_value=1e5), weird)),
        trades=draw(st.one_of(st.none(), st.integers(-1, 10**6))),
        source="test",
        **values,
    )


def _is_valid(bar: Bar) -> bool:
    try:
        bar.validate()
    except InvalidBar:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(bars())
def test_bar_json_is_bar_to_json(bar: Bar) -> None:
    if not _is_valid(bar):
        return
    fast = bar_json(
        prefix(bar.ticker, bar.interval),
        times(bar.start, bar.end),
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
        bar.vwap,
        bar.trades,
        bar.source,
    )
    assert fast == bar.to_json()
    assert Bar.from_json(fast) == bar


@settings(max_examples=200, deadline=None)
@given(st.lists(bars(), min_size=1, max_size=20))
def test_valid_mask_agrees_with_validate(items: list[Bar]) -> None:
    table = bars_to_table(items)
    assert valid_mask(table).to_pylist() == [_is_valid(b) for b in items]


def test_valid_mask_handles_nulls_and_missing_optional_columns() -> None:
    table = pa.table(
        {
            "start": pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
            "end": pa.array([T0 + timedelta(minutes=1)] * 2, pa.timestamp("us", tz="UTC")),
            "open": [1.0, None],
            "high": [2.0, 2.0],
            "low": [0.5, 0.5],
            "close": [1.5, 1.5],
            "volume": [10.0, 10.0],
        }
    )
    assert valid_mask(table).to_pylist() == [True, False]
    assert plausible_ticker("AAPL") and not plausible_ticker("aapl") and not plausible_ticker(None)
    assert math.isfinite(
        json.loads(bar_json(prefix("A", "day"), times(T0, T0), 1.0, 1.0, 1.0, 1.0, 0.0, None, None, "s"))["open"]
    )
