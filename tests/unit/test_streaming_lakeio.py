"""The forecaster's lake tables: one commit per flush, replays deduplicated, read-back for warm start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from deltalake import DeltaTable

from serving.streaming.lakeio import (
    recent_forecasts,
    recent_scores,
    warm_lookback,
    write_aggregates,
    write_forecasts,
    write_scores,
)
from serving.streaming.scoring import Scorer
from tickcast.contracts import Forecast
from tickcast.lake import Lake, read_forecasts, read_latest_aggregates
from tickcast.settings import LakeSettings

T0 = datetime(2024, 1, 2, 23, 57, tzinfo=UTC)
M = timedelta(minutes=1)
LOOKBACK = warm_lookback("minute", 3, 10)


def forecast(ticker: str, last: datetime, h: int = 3) -> Forecast:
    mean = [100.0 + i for i in range(h)]
    return Forecast(
        ticker=ticker,
        interval="minute",
        model_id="tiny",
        model_version="v1",
        issued_at=last + M + timedelta(seconds=1),
        last_bar_start=last,
        bar_event_time=last + M,
        horizon=h,
        target="close",
        mean=mean,
        quantiles={"0.1": [m - 1 for m in mean], "0.5": mean, "0.9": [m + 1 for m in mean]},
    )


def raw(tmp_path: Path, table: str) -> list[tuple]:
    """(ticker, rows) of a table's current version, read by delta-rs and DuckDB, not tickcast:
    copies of a key included."""
    files = DeltaTable(str(tmp_path / table)).file_uris()
    return duckdb.sql(
        f"select ticker, count(*) from read_parquet({files!r}) group by ticker order by ticker"
    ).fetchall()


def test_forecasts_one_commit_per_flush_and_replays_read_once(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    batch = [forecast("AAPL", T0 + i * M) for i in range(4)] + [forecast("MSFT", T0)]
    first = write_forecasts(lake, batch)
    table = DeltaTable(str(tmp_path / "forecasts"))
    assert table.version() == first
    # one commit: one file per partition touched (AAPL's batch spans midnight), not per ticker
    periods = sorted(table.get_add_actions(flatten=True).column("partition.period").to_pylist())
    assert periods == ["2024-01-02", "2024-01-03"]
    assert raw(tmp_path, "forecasts") == [("AAPL", 12), ("MSFT", 3)]

    # a replay after a crash appends the same keys again: the table holds them twice ...
    assert write_forecasts(lake, batch) == first + 1
    assert raw(tmp_path, "forecasts") == [("AAPL", 24), ("MSFT", 6)]
    # ... and every reader sees each (forecast_id, step) once
    assert read_forecasts(lake, "AAPL", "minute").num_rows == 12
    last, pending = recent_forecasts(lake, "minute", horizon=3, lookback=LOOKBACK)
    assert last == {"AAPL": T0 + 3 * M, "MSFT": T0}
    # forecasts within the horizon of the last one can still have unscored steps
    assert [f.last_bar_start for f in pending["AAPL"]] == [T0 + i * M for i in (1, 2, 3)]
    assert pending["AAPL"][0] == batch[1] and pending["MSFT"] == [batch[4]]


def test_recent_forecasts_look_back_from_the_newest_forecast(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    assert recent_forecasts(lake, "minute", 3, LOOKBACK) == ({}, {})
    old = T0 - LOOKBACK - 5 * M  # a ticker last forecast long before the others
    write_forecasts(lake, [forecast("OLD", old), forecast("AAPL", T0)])
    write_forecasts(lake, [forecast("AAPL", T0 + 10 * M)])
    last, pending = recent_forecasts(lake, "minute", 3, LOOKBACK)
    assert last == {"AAPL": T0 + 10 * M}
    assert [f.last_bar_start for f in pending["AAPL"]] == [T0 + 10 * M]
    last, _ = recent_forecasts(lake, "minute", 3, LOOKBACK + 20 * M)
    assert last == {"AAPL": T0 + 10 * M, "OLD": old}
    assert recent_forecasts(lake, "day", 3, LOOKBACK) == ({}, {})


def test_scores_and_aggregates_round_trip(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    scorer = Scorer(window=10, max_pending=10)
    scores = []
    for i in range(6):
        scorer.add_forecast(forecast("AAPL", T0 + i * M), 100.0)
        scorer.add_forecast(forecast("MSFT", T0 + i * M), 100.0)
        scores += scorer.on_bar("AAPL", T0 + (i + 1) * M, 101.0)
        scores += scorer.on_bar("MSFT", T0 + (i + 1) * M, 99.0)
    write_scores(lake, scores)
    write_scores(lake, scores[:5])  # a replayed flush
    back = recent_scores(lake, "minute", rows=4, lookback=LOOKBACK)
    for ticker in ("AAPL", "MSFT"):
        mine = [s for s in scores if s.ticker == ticker]
        assert back[ticker] == sorted(mine, key=lambda s: (s.target_start, s.step))[-4:]
    assert len(recent_scores(lake, "minute", rows=1000, lookback=LOOKBACK)["AAPL"]) == len(scores) // 2

    now = datetime(2024, 1, 3, 0, 10, tzinfo=UTC)
    aggs = scorer.ticker_aggregates() + scorer.model_aggregates()
    write_aggregates(lake, aggs[:1], now - M, "minute", 10)
    write_aggregates(lake, aggs, now, "minute", 10)
    assert write_aggregates(lake, [], now, "minute", 10) is None
    latest = read_latest_aggregates(lake, "minute").sort_by([("scope", "descending"), ("ticker", "ascending")])
    rows = latest.select(["computed_at", "scope", "ticker", "steps", "window"]).to_pylist()
    assert [(r["scope"], r["ticker"], r["steps"]) for r in rows] == [
        ("ticker", "AAPL", 10),
        ("ticker", "MSFT", 10),
        ("model", None, 20),  # pools both tickers
    ]
    assert {r["computed_at"] for r in rows} == {now} and {r["window"] for r in rows} == {10}


def test_warm_lookback_spans_the_score_window() -> None:
    # 256 scores of horizon 8 come from about 40 bars; four times that is read
    assert warm_lookback("minute", 8, 256) == timedelta(minutes=160)
    assert warm_lookback("day", 1, 1) == timedelta(days=8)
