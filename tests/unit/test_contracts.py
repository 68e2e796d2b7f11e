"""Bar, Forecast and Score contracts: validation (property-based) and JSON round-trips."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickcast.contracts import INTERVALS, Bar, Forecast, Score, quantile_loss
from tickcast.errors import InvalidBar, InvalidRecord

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)

prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
tickers = st.from_regex(r"[A-Z][A-Z0-9]{0,4}", fullmatch=True)


@st.composite
def valid_bars(draw: st.DrawFn) -> Bar:
    p = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    low, a, b, high = p
    o, c = (a, b) if draw(st.booleans()) else (b, a)
    interval = draw(st.sampled_from(list(INTERVALS)))
    start = T0 + timedelta(minutes=draw(st.integers(0, 10**6)))
    return Bar(
        ticker=draw(tickers),
        interval=interval,
        start=start,
        end=start + INTERVALS[interval],
        open=o,
        high=high,
        low=low,
        close=c,
        volume=draw(st.floats(min_value=0, max_value=1e12)),
        vwap=draw(st.none() | prices),
        trades=draw(st.none() | st.integers(0, 10**9)),
        source="test",
    )


@given(valid_bars())
def test_valid_bars_pass_and_round_trip(bar: Bar) -> None:
    assert bar.validate() is bar
    assert Bar.from_json(bar.to_json()) == bar


@given(
    valid_bars(), st.sampled_from(["nan", "inf", "-inf"]), st.sampled_from(["open", "high", "low", "close", "volume"])
)
def test_non_finite_numbers_are_rejected(bar: Bar, bad: str, field: str) -> None:
    data = bar.to_dict() | {field: float(bad)}
    with pytest.raises(InvalidBar, match=field):
        Bar(**{**_fields(bar), field: float(bad)}).validate()
    assert math.isnan(data[field]) or math.isinf(data[field])


def _fields(bar: Bar) -> dict:
    return {name: getattr(bar, name) for name in Bar.__slots__}


@given(valid_bars(), st.floats(min_value=1.0001, max_value=10))
@settings(max_examples=50)
def test_high_below_close_is_rejected(bar: Bar, factor: float) -> None:
    with pytest.raises(InvalidBar, match="out of order"):
        Bar(**{**_fields(bar), "high": bar.close / factor, "low": min(bar.low, bar.close / factor / 2)}).validate()


@given(valid_bars(), st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))
@settings(max_examples=30)
def test_negative_volume_is_rejected(bar: Bar, volume: float) -> None:
    with pytest.raises(InvalidBar, match="volume"):
        Bar(**{**_fields(bar), "volume": volume}).validate()


@pytest.mark.parametrize("ticker", ["", "aapl", "TOO-LONG-TICKER-NAME", "A B", "1ABC", None])
def test_implausible_tickers_are_rejected(ticker: object) -> None:
    bar = Bar("AAPL", "minute", T0, T0 + timedelta(minutes=1), 1, 2, 0.5, 1.5, 10)
    with pytest.raises(InvalidBar, match="ticker"):
        Bar(**{**_fields(bar), "ticker": ticker}).validate()


def test_naive_timestamps_and_bad_interval_are_rejected() -> None:
    naive = datetime(2024, 1, 2, 14, 30)
    with pytest.raises(InvalidBar, match="timezone-aware"):
        Bar("AAPL", "minute", naive, naive + timedelta(minutes=1), 1, 2, 0.5, 1.5, 10).validate()
    with pytest.raises(InvalidBar, match="interval"):
        Bar("AAPL", "week", T0, T0 + timedelta(days=7), 1, 2, 0.5, 1.5, 10).validate()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"{not json", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"schema_version": 99}', "schema_version"),
        (b'{"schema_version": 1, "ticker": "AAPL"}', "missing field"),
        (
            b'{"schema_version":1,"ticker":"AAPL","interval":"minute","start":"2024-01-02T14:30:00",'
            b'"end":"2024-01-02T14:31:00Z","open":1,"high":2,"low":0.5,"close":1.5,"volume":1}',
            "offset",
        ),
    ],
)
def test_malformed_records_say_what_is_wrong(payload: bytes, match: str) -> None:
    with pytest.raises(InvalidRecord, match=match):
        Bar.from_json(payload)


def test_json_is_versioned_and_uses_utc_z() -> None:
    bar = Bar("AAPL", "minute", T0, T0 + timedelta(minutes=1), 1, 2, 0.5, 1.5, 10, source="t")
    data = json.loads(bar.to_json())
    assert data["schema_version"] == 1
    assert data["start"] == "2024-01-02T14:30:00Z"


def _forecast(**kw: object) -> Forecast:
    base = dict(
        ticker="AAPL",
        interval="minute",
        model_id="m",
        model_version="1",
        issued_at=T0,
        last_bar_start=T0,
        horizon=2,
        target="close",
        mean=[10.0, 11.0],
        quantiles={"0.1": [9.0, 9.5], "0.5": [10.0, 11.0], "0.9": [11.0, 12.5]},
    )
    base.update(kw)
    return Forecast(**base)  # type: ignore[arg-type]


def test_forecast_round_trip_and_deterministic_id() -> None:
    f = _forecast()
    assert Forecast.from_json(f.to_json()) == f
    assert _forecast(issued_at=T0 + timedelta(hours=1)).id == f.id  # same ticker/model/last bar
    assert _forecast(last_bar_start=T0 + timedelta(minutes=1)).id != f.id
    assert f.step_starts() == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]


def test_forecast_shape_errors() -> None:
    with pytest.raises(InvalidRecord, match="steps"):
        _forecast(mean=[1.0])
    with pytest.raises(InvalidRecord, match="quantile"):
        _forecast(quantiles={"1.5": [1.0, 2.0]})


def test_score_by_hand() -> None:
    f = _forecast()
    s = Score.compute(f, step=2, actual=12.0, last_actual=10.5)
    assert s.abs_error == pytest.approx(1.0)  # |12 - median 11|
    # pinball, x2: q=.1 p=9.5 -> 2*.1*2.5=.5 ; q=.5 p=11 -> 2*.5*1=1 ; q=.9 p=12.5 -> 2*.1*.5=.1
    assert s.quantile_loss == pytest.approx((0.5 + 1.0 + 0.1) / 3)
    assert s.covered_80 is True
    assert s.naive_abs_error == pytest.approx(1.5)
    assert s.target_start == T0 + timedelta(minutes=2)
    assert quantile_loss(1.0, 0.5, 3.0) == pytest.approx(2.0)
