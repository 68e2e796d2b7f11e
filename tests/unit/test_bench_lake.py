"""bench/lake.py keeps working: its smallest preset runs in seconds and reports every figure.

Timings are not checked (the machine is shared); the figures that do not depend on speed are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READS = ("recent_512", "day_year", "minute_range", "minute_day", "duckdb_count")


def test_smoke_preset_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "lake.json"
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "lake.py"), "--preset", "smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    # 0: every target met, 1: one missed (a busy machine); 2 would mean a step crashed
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["errors"] == {}
    assert report["preset"] == "smoke" and report["sink"] is None
    assert report["load_start"] and report["load_end"]

    sizes = report["sizes"]
    day_rows = report["build"]["day"]["rows"]
    minute_rows = sizes["tickers"] * sizes["minute_days"] * 390
    assert report["build"]["minute"]["rows"] == minute_rows
    assert report["build"]["day"]["commits"] == sizes["years"]
    assert report["build"]["minute"]["commits"] == sizes["minute_days"] * 20  # 390 minutes, 20 a commit

    before, after = report["before"], report["after"]
    assert before["rows"] == after["rows"] == day_rows + minute_rows
    assert before["minute"]["files"] == report["build"]["minute"]["commits"]
    assert after["files"] == after["day"]["partitions"] + after["minute"]["partitions"]  # one file each
    assert after["minute"]["bytes_per_bar"] < before["minute"]["bytes_per_bar"]
    assert report["optimize"]["files_after"] == after["files"] and report["optimize"]["seconds"] > 0
    assert report["duplicate_keys_after"] == 0

    for side in ("reads_before", "reads_after"):
        for name in READS:
            figures = report[side][name]
            assert 0 < figures["p50_s"] <= figures["p95_s"] <= figures["max_s"], (side, name, figures)
        assert report[side]["recent_512"]["rows"] == 512
        assert report[side]["minute_range"]["rows"] == sizes["minute_days"] * 390
        assert report[side]["duckdb_count"]["rows"] == day_rows + minute_rows
        assert report[side]["minute_range"]["year_estimate_s"] > 0

    size = report["size"]
    assert size["json_bytes_per_bar"] > 100  # a bar as a JSON line is about 240 B
    assert size["json_over_parquet_after"] == round(size["json_bytes_per_bar"] / after["bytes_per_bar"], 2)
    assert set(report["targets"]) == {
        "sink_file_bars_per_s",
        "sink_s3_bars_per_s",
        "json_over_parquet_bytes",
        "recent_512_p50_s",
        "minute_range_p50_s",
        "duckdb_count_p50_s",
    }
    assert report["targets"]["sink_file_bars_per_s"]["met"] is None  # not measured by the smoke preset
    assert report["targets"]["json_over_parquet_bytes"]["met"] is (size["json_over_parquet_after"] >= 5)
    missed = [name for name, target in report["targets"].items() if target["met"] is False]
    assert proc.returncode == (1 if missed else 0)
