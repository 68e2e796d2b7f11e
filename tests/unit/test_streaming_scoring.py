"""Live scoring: steps scored when their bars arrive, rolling MASE/WQL/coverage, bounded state."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.streaming.scoring import Scorer
from tickcast.contracts import Forecast, Score, quantile_loss

T0 = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def forecast(ticker: str, last: datetime, mean: list[float], spread: float = 1.0, model: str = "m") -> Forecast:
    h = len(mean)
    return Forecast(
        ticker=ticker,
        interval="minute",
        model_id=model,
        model_version="1",
        issued_at=last + M,
        last_bar_start=last,
        horizon=h,
        target="close",
        mean=mean,
        quantiles={"0.1": [m - spread for m in mean], "0.5": mean, "0.9": [m + spread for m in mean]},
    )


def test_steps_are_scored_when_their_bars_arrive() -> None:
    scorer = Scorer(window=100, max_pending=10)
    f = forecast("AAPL", T0, [10.0, 11.0, 12.0])
    scorer.add_forecast(f, last_actual=9.0)
    assert scorer.on_bar("AAPL", T0, 9.0) == []  # the forecast's own last bar
    (s1,) = scorer.on_bar("AAPL", T0 + M, 10.5)
    assert (s1.step, s1.target_start, s1.actual) == (1, T0 + M, 10.5)
    assert s1 == Score.compute(f, 1, 10.5, 9.0)
    assert s1.abs_error == pytest.approx(0.5)
    assert s1.naive_abs_error == pytest.approx(1.5)
    assert s1.covered_80 is True
    expected_ql = (quantile_loss(10.5, 0.1, 9.0) + quantile_loss(10.5, 0.5, 10.0) + quantile_loss(10.5, 0.9, 11.0)) / 3
    assert s1.quantile_loss == pytest.approx(expected_ql)
    (s2,) = scorer.on_bar("AAPL", T0 + 2 * M, 20.0)
    assert s2.covered_80 is False
    assert scorer.pending_forecasts() == 1
    scorer.on_bar("AAPL", T0 + 3 * M, 12.0)
    assert scorer.pending_forecasts() == 0


def test_gap_counts_missed_steps_and_drops_finished_forecasts() -> None:
    scorer = Scorer(window=100, max_pending=10)
    scorer.add_forecast(forecast("AAPL", T0, [1.0, 2.0, 3.0]), 1.0)
    # overnight gap: the next bar is long after every step
    assert scorer.on_bar("AAPL", T0 + 600 * M, 5.0) == []
    assert scorer.steps_missed == 3
    assert scorer.pending_forecasts() == 0


def test_pending_is_bounded_per_ticker() -> None:
    scorer = Scorer(window=10, max_pending=4)
    for i in range(50):
        scorer.add_forecast(forecast("AAPL", T0 + i * M, [1.0] * 100), 1.0)
    assert scorer.pending_forecasts() == 4
    assert scorer.forecasts_dropped == 46
    scorer.drop_ticker("AAPL")
    assert scorer.pending_forecasts() == 0


def test_skip_until_avoids_rescoring_after_restart() -> None:
    scorer = Scorer(window=10, max_pending=4)
    scorer.add_forecast(forecast("AAPL", T0, [1.0, 2.0, 3.0]), 1.0, skip_until=T0 + 2 * M)
    assert [p.steps for p in scorer.pending_for("AAPL")] == [{T0 + 3 * M: 3}]
    scorer.add_forecast(forecast("AAPL", T0, [1.0]), 1.0, skip_until=T0 + M)  # nothing left: not added
    assert scorer.pending_forecasts() == 1


def test_aggregates_match_their_definitions() -> None:
    scorer = Scorer(window=1000, max_pending=100)
    scores: list[Score] = []
    actuals = [10.0, 12.0, 9.0, 15.0, 11.0, 10.0, 13.0]
    for i in range(len(actuals) - 1):
        for ticker, model in (("AAPL", "m"), ("MSFT", "m"), ("AAPL", "other")):
            scorer.add_forecast(forecast(ticker, T0 + i * M, [actuals[i] + 0.5], spread=2.0, model=model), actuals[i])
        for ticker in ("AAPL", "MSFT"):
            scores += scorer.on_bar(ticker, T0 + (i + 1) * M, actuals[i + 1])
    assert len(scores) == 18

    def expect(rows: list[Score]) -> tuple[float, float, float]:
        mase = sum(s.abs_error for s in rows) / sum(s.naive_abs_error for s in rows)
        wql = sum(s.quantile_loss for s in rows) / sum(abs(s.actual) for s in rows)
        cov = sum(bool(s.covered_80) for s in rows) / len(rows)
        return mase, wql, cov

    by_key = {(a.ticker, a.model_id): a for a in scorer.ticker_aggregates()}
    assert set(by_key) == {("AAPL", "m"), ("MSFT", "m"), ("AAPL", "other")}
    for (ticker, model), agg in by_key.items():
        rows = [s for s in scores if s.ticker == ticker and s.model_id == model]
        assert agg.steps == len(rows) == 6
        assert (agg.mase, agg.wql, agg.coverage_80) == pytest.approx(expect(rows))
    models = {a.model_id: a for a in scorer.model_aggregates()}
    assert models["m"].steps == 12 and models["m"].ticker is None
    assert (models["m"].mase, models["m"].wql, models["m"].coverage_80) == pytest.approx(
        expect([s for s in scores if s.model_id == "m"])
    )
    # changed-only reporting resets
    assert len(scorer.ticker_aggregates(only_changed=True)) == 3
    assert scorer.ticker_aggregates(only_changed=True) == []


def test_window_keeps_only_the_last_steps() -> None:
    scorer = Scorer(window=3, max_pending=100)
    for i in range(10):
        scorer.add_forecast(forecast("AAPL", T0 + i * M, [100.0]), 100.0)
        scorer.on_bar("AAPL", T0 + (i + 1) * M, 100.0 + i)  # abs errors 0..9
    (agg,) = scorer.ticker_aggregates()
    assert agg.steps == 3
    assert agg.mae == pytest.approx((7 + 8 + 9) / 3)


def test_mase_undefined_when_naive_is_perfect() -> None:
    scorer = Scorer(window=3, max_pending=100)
    scorer.add_forecast(forecast("AAPL", T0, [101.0]), 100.0)
    scorer.on_bar("AAPL", T0 + M, 100.0)
    (agg,) = scorer.ticker_aggregates()
    assert agg.mase is None and agg.mae == 1.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(1, 1000), st.floats(-50, 50), st.floats(0, 30)),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 16),
)
def test_rolling_window_equals_recomputation(rows: list[tuple[float, float, float]], window: int) -> None:
    scorer = Scorer(window=window, max_pending=1000)
    scores = []
    for i, (actual, bias, spread) in enumerate(rows):
        scorer.add_forecast(forecast("X", T0 + i * M, [actual + bias], spread=spread), actual - 1.0)
        scores += scorer.on_bar("X", T0 + (i + 1) * M, actual)
    tail = scores[-window:]
    (agg,) = scorer.ticker_aggregates()
    assert agg.steps == len(tail)
    assert agg.mase == pytest.approx(sum(s.abs_error for s in tail) / sum(s.naive_abs_error for s in tail))
    assert agg.wql == pytest.approx(sum(s.quantile_loss for s in tail) / sum(abs(s.actual) for s in tail))
    assert agg.coverage_80 == pytest.approx(sum(bool(s.covered_80) for s in tail) / len(tail))
    assert math.isfinite(agg.mae)
