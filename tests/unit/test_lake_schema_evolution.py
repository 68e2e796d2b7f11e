"""Schema evolution: tables written before the live calibration columns existed take them on.

The tables are written with the schemas the previous release had (the current specs without
the calibration columns), then the current code writes to them: the columns are added (one
metadata commit), old rows read back with nulls, the forecaster's readers turn those into
uncalibrated forecasts and scores, and a required column is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from serving.streaming.calibration import AdaptiveCalibrator
from serving.streaming.lakeio import rows_to_forecasts, rows_to_scores
from serving.streaming.scoring import Scorer
from tickcast.contracts import Forecast, Score
from tickcast.errors import TickcastError
from tickcast.lake import FORECASTS, Lake, read_forecasts, read_scores, tables, write_forecasts, write_scores
from tickcast.lake.results import aggregates_to_table, forecasts_to_table, read_latest_aggregates, scores_to_table
from tickcast.lake.specs import SCORE_AGGREGATES, SCORES, TableSpec
from tickcast.settings import LakeSettings

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)
#: The columns this release added, per table.
NEW = {
    "forecasts": {"calibrated_coverage", "calibrated_lower", "calibrated_upper", "calibration_alpha"},
    "scores": {
        "calibrated_coverage",
        "calibrated_lower",
        "calibrated_upper",
        "calibrated_covered",
        "calibrated_quantile_loss",
    },
    "score_aggregates": {"calibrated_coverage", "calibrated_wql", "calibrated_steps"},
}


def old_spec(spec: TableSpec) -> TableSpec:
    """The table as the previous release wrote it: no calibration columns."""
    schema = pa.schema([f for f in spec.schema if f.name not in NEW[spec.name]])
    return dataclasses.replace(spec, schema=schema)


def make_forecast(n: int, horizon: int = 2) -> Forecast:
    return Forecast(
        ticker="AAPL",
        interval="minute",
        model_id="m",
        model_version="v1",
        issued_at=T0 + n * M,
        last_bar_start=T0 + n * M,
        horizon=horizon,
        target="close",
        mean=[100.0] * horizon,
        quantiles={"0.1": [99.0] * horizon, "0.5": [100.0] * horizon, "0.9": [101.0] * horizon},
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(url=f"file://{tmp_path / 'lake'}"))


def columns_on_disk(lake: Lake, name: str) -> set[str]:
    return {f.name for f in DeltaTable(lake.table_uri(name)).schema().fields}


def test_old_tables_take_the_new_columns_and_old_rows_read_as_uncalibrated(lake: Lake) -> None:
    # 1. the previous release's writes
    old = make_forecast(0)
    old_score = Score.compute(old, 1, 100.5, 100.0)
    tables.append(lake, old_spec(FORECASTS), forecasts_to_table([old]).drop_columns(sorted(NEW["forecasts"])))
    tables.append(lake, old_spec(SCORES), scores_to_table([old_score]).drop_columns(sorted(NEW["scores"])))
    scorer = Scorer(16, 8)
    scorer.add_forecast(old, 100.0)
    scorer.on_bar("AAPL", T0 + M, 100.5)
    aggregates = scorer.ticker_aggregates()
    old_aggs = aggregates_to_table(aggregates, T0, "minute", 16).drop_columns(sorted(NEW["score_aggregates"]))
    tables.append(lake, old_spec(SCORE_AGGREGATES), old_aggs)
    for name, spec in (("forecasts", FORECASTS), ("scores", SCORES), ("score_aggregates", SCORE_AGGREGATES)):
        assert not NEW[name] & columns_on_disk(lake, name), "the old table lacks the new columns"
        assert {f.name for f in tables.missing_columns(spec, DeltaTable(lake.table_uri(name)))} == NEW[name]
    versions = {name: DeltaTable(lake.table_uri(name)).version() for name in NEW}

    # 2. this release writes calibrated forecasts and scores to the same tables
    cal = AdaptiveCalibrator(0.8, 0.05)
    new = cal.calibrate(make_forecast(1))
    new_score = Score.compute(new, 1, 103.0, 100.5)
    assert new_score.calibrated_covered is False
    write_forecasts(lake, [new])
    write_scores(lake, [new_score])
    scorer.add_forecast(new, 100.5)
    scorer.on_bar("AAPL", T0 + 2 * M, 103.0)
    tables.append(lake, SCORE_AGGREGATES, aggregates_to_table(scorer.ticker_aggregates(), T0 + M, "minute", 16))
    for name in NEW:
        assert NEW[name] <= columns_on_disk(lake, name)
        # the evolution is one metadata commit, then the write
        assert DeltaTable(lake.table_uri(name)).version() == versions[name] + 2

    # 3. old rows read with nulls, new rows with values; the forecaster's readers agree
    rows = read_forecasts(lake, "AAPL", "minute")
    back = {f.id: f for f in rows_to_forecasts(rows, "AAPL", "minute")}
    assert back[old.id].calibrated_lower is None and not back[old.id].calibrated
    assert back[new.id] == new
    scores = {s.forecast_id: s for s in rows_to_scores(read_scores(lake, "AAPL", "minute"), "AAPL", "minute")}
    assert scores[old.id] == old_score and scores[old.id].calibrated_covered is None
    assert scores[new.id] == new_score
    latest = read_latest_aggregates(lake, "minute").to_pylist()
    assert latest and latest[0]["calibrated_steps"] == 1 and latest[0]["calibrated_coverage"] == 0.0

    # 4. an outside reader (delta-rs' file list + DuckDB, no tickcast code) sees both generations
    files = DeltaTable(lake.table_uri("forecasts")).file_uris()
    got = duckdb.sql(
        f"select forecast_id, calibrated_lower from read_parquet({files!r}, union_by_name=true) order by issued_at"
    ).fetchall()
    assert [fid for fid, _ in got] == [old.id] * 2 + [new.id] * 2
    assert [v is None for _, v in got] == [True, True, False, False]


def test_a_second_writer_finds_the_columns_already_added(lake: Lake) -> None:
    tables.append(
        lake, old_spec(FORECASTS), forecasts_to_table([make_forecast(0)]).drop_columns(sorted(NEW["forecasts"]))
    )
    first = DeltaTable(lake.table_uri("forecasts"))
    stale = DeltaTable(lake.table_uri("forecasts"))  # opened before the evolution
    tables.evolve(lake, FORECASTS, first)
    # the stale handle's add_columns conflicts with the columns now there: no error, the table has them
    evolved = tables.evolve(lake, FORECASTS, stale)
    assert not tables.missing_columns(FORECASTS, evolved)


def test_a_required_column_cannot_be_added(lake: Lake) -> None:
    tables.append(
        lake, old_spec(FORECASTS), forecasts_to_table([make_forecast(0)]).drop_columns(sorted(NEW["forecasts"]))
    )
    strict = dataclasses.replace(
        FORECASTS, schema=FORECASTS.schema.append(pa.field("must_have", pa.float64(), nullable=False))
    )
    with pytest.raises(TickcastError, match="lacks the required columns must_have"):
        tables.ensure_table(lake, strict)


def test_migrate_of_the_earlier_layout_without_the_new_columns(tmp_path: Path) -> None:
    """``tickcast lake migrate`` of Hive-layout files written before calibration: nulls, not an error."""
    import pyarrow.parquet as pq

    from tickcast.lake.migrate import migrate

    old_root = tmp_path / "old"
    forecast = make_forecast(0)
    legacy = forecasts_to_table([forecast]).drop_columns(["ticker", "interval", "period", *sorted(NEW["forecasts"])])
    folder = old_root / "forecasts" / "interval=minute" / "ticker=AAPL" / f"date={T0.date()}"
    folder.mkdir(parents=True)
    pq.write_table(legacy, folder / "fc-0.parquet")
    destination = Lake(LakeSettings(url=f"file://{tmp_path / 'new'}"))
    report = migrate(Lake(LakeSettings(url=f"file://{old_root}")), destination)
    assert report.tables["forecasts"]["rows_in_table"] == forecast.horizon
    assert NEW["forecasts"] <= columns_on_disk(destination, "forecasts")
    (back,) = rows_to_forecasts(read_forecasts(destination, "AAPL", "minute"), "AAPL", "minute")
    assert back == forecast and not back.calibrated
