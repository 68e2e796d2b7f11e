"""Backtest windows, baselines and metrics, checked against values computed by hand."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from tickcast.contracts import quantile_loss
from training.evaluation import (
    BacktestConfig,
    aggregate,
    backtest,
    make_windows,
    mase_scale,
    naive_forecast,
    quantile_losses,
    seasonal_naive_forecast,
    summary_markdown,
    write_report,
)

Q3 = (0.1, 0.5, 0.9)


def test_windows_are_rolling_origins_oldest_first() -> None:
    y = np.arange(20.0)
    cfg = BacktestConfig(horizon=3, context_length=5, n_origins=3, stride=4, min_context=2, baselines=())
    windows = make_windows({"A": y}, cfg)
    assert [w.origin for w in windows] == [9, 13, 17]
    last = windows[-1]
    assert last.context.tolist() == [12.0, 13.0, 14.0, 15.0, 16.0]
    assert last.actual.tolist() == [17.0, 18.0, 19.0]


def test_windows_skip_origins_without_enough_history() -> None:
    cfg = BacktestConfig(horizon=2, n_origins=10, min_context=5, baselines=())
    assert [w.origin for w in make_windows({"A": np.arange(10.0)}, cfg)] == [6, 8]


def test_naive_forecast_by_hand() -> None:
    point, q = naive_forecast(np.array([1.0, 2.0, 4.0, 7.0]), 2, Q3)
    assert point.tolist() == [7.0, 7.0]
    # 1-step changes [1, 2, 3] -> quantiles 1.2, 2, 2.8; 2-step changes [3, 5] -> 3.2, 4, 4.8
    np.testing.assert_allclose(q[:, 0], [8.2, 9.0, 9.8])
    np.testing.assert_allclose(q[:, 1], [10.2, 11.0, 11.8])


def test_seasonal_naive_by_hand() -> None:
    context = np.array([1.0, 5.0, 2.0, 6.0, 3.0, 7.0])
    point, q = seasonal_naive_forecast(context, 3, Q3, season=2)
    assert point.tolist() == [3.0, 7.0, 3.0]
    # the in-sample errors of the lag-2 rule are all 1 (lag 4 for step 3: all 2)
    np.testing.assert_allclose(q[:, 0], [4.0, 4.0, 4.0])
    np.testing.assert_allclose(q[:, 2], [5.0, 5.0, 5.0])


def test_quantile_losses_match_the_contract_definition() -> None:
    actual = np.array([[9.0, 10.0]])
    forecast = np.array([[[8.2, 10.2], [9.0, 11.0], [9.8, 11.8]]])
    got = quantile_losses(actual, forecast, Q3)
    want = [sum(quantile_loss(a, lvl, forecast[0, k, j]) for k, lvl in enumerate(Q3)) for j, a in enumerate([9, 10])]
    np.testing.assert_allclose(got[0], want)
    np.testing.assert_allclose(got[0], [0.32, 1.72])


def test_mase_scale() -> None:
    assert mase_scale(np.array([1.0, 2.0, 4.0, 7.0])) == pytest.approx(2.0)
    assert mase_scale(np.array([1.0, 2.0, 4.0, 7.0]), season=2) == pytest.approx(4.0)
    assert math.isnan(mase_scale(np.array([3.0, 3.0, 3.0])))


def test_naive_backtest_metrics_by_hand() -> None:
    """Series [1, 2, 4, 7 | 9, 10]: one origin, horizon 2, naive with empirical quantiles.

    step 1: point 7, q = (8.2, 9, 9.8), actual 9: |e| = 2, scale 2 -> 1; 2*QL = .16 + 0 + .16
    step 2: point 7, q = (10.2, 11, 11.8), actual 10: |e| = 3 -> 1.5; 2*QL = .36 + 1 + .36
    WQL step 1 = 0.32 / 3 / 9; step 2 = 1.72 / 3 / 10; overall = (0.32 + 1.72) / 3 / 19.
    """
    cfg = BacktestConfig(horizon=2, context_length=4, n_origins=1, min_context=4, quantiles=Q3, baselines=("naive",))
    result = backtest({"A": np.array([1.0, 2.0, 4.0, 7.0, 9.0, 10.0])}, {}, cfg, use_ray=False)
    per_step = result.per_step.set_index("step")
    assert per_step.loc[1, "MASE"] == pytest.approx(1.0)
    assert per_step.loc[2, "MASE"] == pytest.approx(1.5)
    assert per_step.loc[1, "WQL"] == pytest.approx(0.32 / 3 / 9)
    assert per_step.loc[2, "WQL"] == pytest.approx(1.72 / 3 / 10)
    assert per_step.loc[1, "coverage_80"] == 1.0
    assert per_step.loc[2, "coverage_80"] == 0.0
    summary = result.summary.set_index("model").loc["naive"]
    assert summary["MASE"] == pytest.approx(1.25)
    assert summary["WQL"] == pytest.approx(2.04 / 3 / 19)
    assert summary["coverage_80"] == pytest.approx(0.5)
    assert summary["MASE_vs_naive"] == pytest.approx(1.0)


def test_aggregate_pools_windows_per_step() -> None:
    rows = pd.DataFrame(
        {
            "model": "m",
            "series": ["A", "B"],
            "origin": [0, 0],
            "step": [1, 1],
            "actual": [10.0, -30.0],
            "point": [12.0, -30.0],
            "lo80": [11.0, -40.0],
            "hi80": [13.0, -20.0],
            "abs_error": [2.0, 0.0],
            "scale": [1.0, 4.0],
            "qloss": [6.0, 3.0],
            "n_quantiles": 3,
        }
    )
    agg = aggregate(rows).iloc[0]
    assert agg["MASE"] == pytest.approx((2.0 + 0.0) / 2)
    assert agg["WQL"] == pytest.approx((6.0 + 3.0) / 3 / 40.0)
    assert agg["coverage_80"] == pytest.approx(0.5)


def test_config_requires_interval_quantiles() -> None:
    with pytest.raises(ValueError, match=r"0\.9"):
        BacktestConfig(quantiles=(0.1, 0.5))
    with pytest.raises(ValueError, match="unknown baselines"):
        BacktestConfig(baselines=("prophet",))


def test_auto_ets_on_a_clean_line_forecasts_the_line() -> None:
    y = 100.0 + 0.5 * np.arange(80)
    cfg = BacktestConfig(horizon=4, n_origins=1, season_length=1, baselines=("auto_ets",))
    result = backtest({"LINE": y}, {}, cfg, use_ray=False)
    rows = result.rows
    np.testing.assert_allclose(rows["point"], rows["actual"], rtol=1e-3)


def test_report_files_in_a_file_lake(tmp_path) -> None:
    from tickcast.lake import Lake
    from tickcast.settings import load_settings

    lake = Lake(load_settings(lake={"url": f"file://{tmp_path}/lake"}).lake)
    rng = np.random.default_rng(0)
    series = {"A": np.cumsum(rng.normal(size=120)) + 50, "B": np.cumsum(rng.normal(size=120)) + 80}
    cfg = BacktestConfig(horizon=4, n_origins=3, baselines=("naive", "seasonal_naive"))
    result = backtest(series, {}, cfg, use_ray=False)
    written = write_report(lake, "unit", result, series, {"data": "test"})
    names = {p.rsplit("/", 1)[1] for p in written}
    assert {"summary.csv", "summary.json", "summary.md", "per_step.csv", "windows.parquet", "report.json"} <= names
    assert {"mase_by_step.png", "wql_by_step.png", "coverage_by_step.png", "example_forecast.png"} <= names
    assert lake.read_bytes("reports/unit/mase_by_step.png").startswith(b"\x89PNG")
    assert "| naive |" in lake.read_bytes("reports/unit/summary.md").decode()
    assert summary_markdown(result.summary).count("\n") == 4
    # every series, not only the means, with its own plots
    assert {"per_series.csv", "per_series.md", "per_series_vs_naive.png", "forecasts_by_series.png"} <= names
    for plot in ("per_series_vs_naive.png", "forecasts_by_series.png"):
        assert lake.read_bytes(f"reports/unit/{plot}").startswith(b"\x89PNG")
    table = pd.read_csv(io.BytesIO(lake.read_bytes("reports/unit/per_series.csv")))
    assert sorted(zip(table["series"], table["model"], strict=True)) == [
        (s, m) for s in ("A", "B") for m in ("naive", "seasonal_naive")
    ]
    md = lake.read_bytes("reports/unit/per_series.md").decode()
    assert md.splitlines()[0].startswith("| series | model |") and md.count("\n") == 2 + 4


def test_per_series_by_hand() -> None:
    """Two series, one origin, horizon 1, naive and a model that is exact on A and off on B.

    A: [1, 3, 4 | 5]: naive 4 (|e| 1, scale 1.5 -> MASE 2/3), exact model MASE 0 and WQL 0;
    B: [0, 2, 4 | 9]: naive 4 (|e| 5, scale 2 -> 2.5), model says 6 (|e| 3 -> 1.5, ratio 0.6).
    Pooled over both series the model scores MASE 0.75; the table keeps A (0) and B (1.5) apart.
    """
    from training.evaluation import per_series, per_series_markdown, score, summarize

    cfg = BacktestConfig(horizon=1, context_length=3, n_origins=1, min_context=3, quantiles=Q3, baselines=("naive",))
    series = {"A": np.array([1.0, 3.0, 4.0, 5.0]), "B": np.array([0.0, 2.0, 4.0, 9.0])}
    windows = make_windows(series, cfg)
    naive_q = np.stack([naive_forecast(w.context, 1, Q3)[1] for w in windows])
    model_points = np.array([[5.0], [6.0]])
    model_q = np.repeat(model_points[:, None, :], 3, axis=1)
    rows = pd.concat(
        [
            score(windows, "naive", np.array([[4.0], [4.0]]), naive_q, cfg),
            score(windows, "m", model_points, model_q, cfg),
        ],
        ignore_index=True,
    )
    table = per_series(rows).set_index(["series", "model"])
    assert table.loc[("A", "naive"), "MASE"] == pytest.approx(2 / 3)
    assert table.loc[("A", "m"), "MASE"] == pytest.approx(0.0)
    assert table.loc[("B", "naive"), "MASE"] == pytest.approx(2.5)
    assert table.loc[("B", "m"), "MASE"] == pytest.approx(1.5)
    assert table.loc[("B", "m"), "MASE_vs_naive"] == pytest.approx(0.6)
    assert table.loc[("A", "m"), "WQL_vs_naive"] == pytest.approx(0.0)
    assert table.loc[("A", "naive"), "WQL"] > 0  # so the ratio of the exact model is a true 0
    assert summarize(rows).set_index("model").loc["m", "MASE"] == pytest.approx(0.75)
    md = per_series_markdown(per_series(rows), "m")
    assert md.splitlines()[0] == "| series | MASE | WQL | coverage_80 | MASE_vs_naive | WQL_vs_naive | n |"
    assert "| B | 1.5000 |" in md and "naive" not in md.split("\n", 1)[1]


def test_as_of_takes_a_version_or_a_time(tmp_path, monkeypatch, capsys) -> None:
    from datetime import UTC, datetime

    from tickcast.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["backtest", "--as-of", "12"]).as_of == 12
    assert parser.parse_args(["train", "--name", "x", "--as-of", "2024-03-04T15:00:00Z"]).as_of == datetime(
        2024, 3, 4, 15, tzinfo=UTC
    )
    assert parser.parse_args(["backtest", "--as-of", "2024-03-04"]).as_of == datetime(2024, 3, 4, tzinfo=UTC)
    assert parser.parse_args(["backtest"]).as_of is None
    with pytest.raises(SystemExit):
        parser.parse_args(["backtest", "--as-of", "yesterday"])
    monkeypatch.setenv("TICKCAST_LAKE__URL", f"file://{tmp_path}/lake")
    assert main(["backtest", "--source", "sample", "--as-of", "3", "--no-report"]) == 2
    assert "only the lake's tables have versions" in capsys.readouterr().err


def test_backtest_cli_runs_a_held_out_suite_with_per_series_results(tmp_path, monkeypatch, capsys) -> None:
    """`tickcast backtest --source suite:level_shift` backtests the suite's series with the
    suite's own windows and writes every series' results and plots into the report."""
    import torch

    from tickcast.cli import main
    from tickcast.lake import Lake
    from tickcast.settings import load_settings
    from training.suites import level_shift_set
    from training.train import build_model

    torch.set_num_threads(1)
    model_dir = tmp_path / "tiny"
    build_model("tiny", seed=0).save_pretrained(model_dir)
    monkeypatch.setenv("TICKCAST_LAKE__URL", f"file://{tmp_path}/lake")
    args = ["backtest", "--source", "suite:level_shift", "--model", str(model_dir), "--baselines", "naive"]
    assert main([*args, "--name", "shift", "--no-ray"]) == 0
    lake = Lake(load_settings(lake={"url": f"file://{tmp_path}/lake"}).lake)
    table = pd.read_csv(io.BytesIO(lake.read_bytes("reports/shift/per_series.csv")))
    series, config = level_shift_set()
    assert set(table["series"]) == set(series) and set(table["model"]) == {str(model_dir), "naive"}
    assert (table["n"] == config.n_origins * config.horizon).all()
    assert lake.read_bytes("reports/shift/forecasts_by_series.png").startswith(b"\x89PNG")
    report = json.loads(lake.read_bytes("reports/shift/report.json"))
    assert report["data"] == "suite level_shift (training/suites.py)" and report["config"]["horizon"] == config.horizon
    assert main(["backtest", "--source", "suite:nope", "--no-report"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
