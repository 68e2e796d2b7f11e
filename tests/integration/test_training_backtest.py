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


def test_backtest_as_of_an_old_bars_version_reproduces_the_report(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report names the bars table version it read; ``--as-of`` that version after more
    bars arrived gives identical metrics, and without it the metrics move."""
    import dataclasses
    import json
    from datetime import UTC, datetime

    from tickcast import cli
    from training.samples import sample_bars, write_sample_to_lake

    model_dir = tmp_path / "tiny"
    build_model("tiny", seed=0).save_pretrained(model_dir)
    lake = Lake(settings.lake)
    write_sample_to_lake(lake, ["SPX"], start=datetime(2018, 6, 1, tzinfo=UTC))
    monkeypatch.setenv("TICKCAST_LAKE__URL", settings.lake.url)

    def run(name: str, *extra: str) -> tuple[dict, list[dict]]:
        argv = ["backtest", "--model", str(model_dir), "--horizon", "4", "--origins", "3", "--baselines", "naive"]
        assert cli.main([*argv, "--no-ray", "--name", name, *extra]) == 0
        report = json.loads(lake.read_bytes(f"reports/{name}/report.json"))
        return report, json.loads(lake.read_bytes(f"reports/{name}/summary.json"))

    first, first_summary = run("v-first")
    version = first["table_versions"]["bars"]
    assert isinstance(version, int) and f"bars table version {version}" in first["data"]
    assert f"--as-of {version}" in capsys.readouterr().out
    # New bars: the next sessions, and a corrected close inside the scored windows.
    write_sample_to_lake(lake, ["SPX"], start=datetime(2018, 1, 1, tzinfo=UTC), end=datetime(2018, 6, 1, tzinfo=UTC))
    late = sample_bars(["SPX"])[-3]
    lake.write_bars([dataclasses.replace(late, close=late.close * 1.02, high=late.high * 1.02)])
    replay, replay_summary = run("v-replay", "--as-of", str(version))
    assert replay["table_versions"]["bars"] == version and replay["as_of"] == version
    assert replay_summary == first_summary
    latest, latest_summary = run("v-latest")
    assert latest["table_versions"]["bars"] == version + 2
    assert latest_summary != first_summary
    # A time also works: the first commit's time reads the first version.
    stamp = next(h["timestamp"] for h in lake_history(lake) if h["version"] == version)
    by_time, by_time_summary = run("v-time", "--as-of", stamp)
    assert by_time["table_versions"]["bars"] == version and by_time_summary == first_summary


def lake_history(lake: Lake) -> list[dict]:
    from tickcast.lake import BARS, tables

    return tables.history(lake, BARS)
