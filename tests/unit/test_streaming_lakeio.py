"""The forecaster's lake tables: deterministic batched files, read-back for warm start."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from serving.streaming.lakeio import (
    forecast_file_name,
    recent_forecasts,
    recent_scores,
    write_aggregates,
    write_forecasts,
    write_scores,
)
from serving.streaming.scoring import Scorer
from tickcast.contracts import Forecast
from tickcast.lake import Lake
from tickcast.settings import LakeSettings

T0 = datetime(2024, 1, 2, 23, 57, tzinfo=UTC)
M = timedelta(minutes=1)


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


def test_forecasts_round_trip_one_file_per_ticker_and_flush(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    batch = [forecast("AAPL", T0 + i * M) for i in range(4)] + [forecast("MSFT", T0)]
    with ThreadPoolExecutor(2) as pool:
        written = write_forecasts(lake, batch, pool)
    # AAPL's batch spans midnight: one file per date partition, same deterministic name
    name = forecast_file_name(batch[:4])
    assert name.startswith("fc-") and name.endswith("-20240102T235700Z-20240103T000000Z.parquet")
    assert sorted(written) == sorted(
        [
            f"forecasts/interval=minute/ticker=AAPL/date=2024-01-02/{name}",
            f"forecasts/interval=minute/ticker=AAPL/date=2024-01-03/{name}",
            f"forecasts/interval=minute/ticker=MSFT/date=2024-01-02/{forecast_file_name(batch[4:])}",
        ]
    )
    # replaying the same batch overwrites
    write_forecasts(lake, batch)
    rows = duckdb.sql(
        f"select ticker, count(*) from read_parquet('{tmp_path}/forecasts/**/*.parquet', hive_partitioning=true) "
        "group by ticker order by ticker"
    ).fetchall()
    assert rows == [("AAPL", 12), ("MSFT", 3)]

    last, pending = recent_forecasts(lake, "AAPL", "minute", horizon=3)
    assert last == T0 + 3 * M
    # forecasts within the horizon of the last one can still have unscored steps
    assert [f.last_bar_start for f in pending] == [T0 + i * M for i in (1, 2, 3)]
    assert pending[0] == batch[1]
    assert recent_forecasts(lake, "NONE", "minute", 3) == (None, [])


def test_scores_and_aggregates_round_trip(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    scorer = Scorer(window=10, max_pending=10)
    scores = []
    for i in range(6):
        scorer.add_forecast(forecast("AAPL", T0 + i * M), 100.0)
        scores += scorer.on_bar("AAPL", T0 + (i + 1) * M, 101.0)
    written = write_scores(lake, scores)
    assert all(p.startswith("scores/interval=minute/ticker=AAPL/date=") for p in written)
    back = recent_scores(lake, "AAPL", "minute", rows=4)
    expected = sorted(scores, key=lambda s: (s.target_start, s.step))[-4:]
    assert back == expected

    now = datetime(2024, 1, 3, 0, 10, tzinfo=UTC)
    aggs = scorer.ticker_aggregates() + scorer.model_aggregates()
    (path,) = write_aggregates(lake, aggs, now, "minute", 10)
    assert path == "score_aggregates/interval=minute/date=2024-01-03/agg-20240103T001000000000Z.parquet"
    rows = duckdb.sql(
        f"select scope, ticker, steps, mase from read_parquet('{tmp_path}/{path}') order by scope desc"
    ).fetchall()
    assert [r[:3] for r in rows] == [("ticker", "AAPL", 10), ("model", None, 10)]
