"""Backtests on Ray tasks, the CLI end to end, and the bundled model's honest evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tickcast.lake import Lake
from tickcast.settings import Settings
from training.evaluation import BacktestConfig, backtest
from training.train import build_model

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.mark.slow
def test_ray_tasks_give_the_same_scores_as_in_process(tmp_path: Path) -> None:
    import ray

    model_dir = tmp_path / "tiny"
    build_model("tiny", seed=0).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    series = {f"S{i}": 100 + np.cumsum(rng.normal(size=150)) for i in range(4)}
    cfg = BacktestConfig(horizon=4, n_origins=2, baselines=("naive",), ray_min_series=2, ray_chunk=2)
    local = backtest(series, {"tiny": str(model_dir)}, cfg, use_ray=False)
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        on_ray = backtest(series, {"tiny": str(model_dir)}, cfg)  # 4 series >= ray_min_series
    finally:
        if own_ray:
            ray.shutdown()
    assert on_ray.used_ray and not local.used_ray
    key = ["model", "series", "origin", "step"]
    a = local.rows.sort_values(key).reset_index(drop=True)
    b = on_ray.rows.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


def test_backtest_cli_writes_a_report_into_the_lake(settings: Settings, tmp_path: Path, monkeypatch) -> None:
    from tickcast import cli
    from training.samples import write_sample_to_lake

    model_dir = tmp_path / "tiny"
    build_model("tiny", seed=0).save_pretrained(model_dir)
    lake = Lake(settings.lake)
    from datetime import UTC, datetime

    write_sample_to_lake(lake, ["SPX"], start=datetime(2018, 1, 1, tzinfo=UTC))
    monkeypatch.setenv("TICKCAST_LAKE__URL", settings.lake.url)
    code = cli.main(
        [
            "backtest",
            "--model",
            str(model_dir),
            "--target",
            "volume",
            "--horizon",
            "4",
            "--origins",
            "3",
            "--baselines",
            "naive,seasonal_naive",
            "--name",
            "cli-test",
            "--no-ray",
        ]
    )
    assert code == 0
    files = lake.list_files("reports/cli-test")
    assert "reports/cli-test/summary.md" in files and "reports/cli-test/wql_by_step.png" in files
    summary = pd.read_csv(lake.uri("reports/cli-test/summary.csv").removeprefix("file://"))
    assert set(summary["model"]) == {str(model_dir), "naive", "seasonal_naive"}
