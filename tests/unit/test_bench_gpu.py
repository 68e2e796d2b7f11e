"""`make bench-gpu` on a machine without a usable GPU: says "no GPU" at once and exits 3.

Both checks are the real code paths: the script's (no ``nvidia-smi``: the command it runs is
pointed at one that does not exist, as on a CPU-only machine) and the benchmark's own (CUDA
hidden from torch), so they hold on a GPU machine too. Neither installs or loads anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: bench/gpu.py's NO_GPU, distinct from bench/_common's 0 (met), 1 (missed) and 2 (crashed).
NO_GPU = 3
#: "Quickly": the script answers before any install; Python with torch's import takes a few
#: seconds on a loaded 2-core machine, so 60 s is far from what a start of the install would take.
QUICK_S = 60.0


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def test_the_script_says_no_gpu_and_exits_3_without_installing(tmp_path: Path) -> None:
    missing = str(tmp_path / "nvidia-smi-not-here")
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "bench-gpu.sh")],
        env=_env(TICKCAST_BENCH_NVIDIA_SMI=missing, PATH="/usr/bin:/bin"),
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
    )
    assert proc.returncode == NO_GPU, proc.stderr
    assert time.monotonic() - start < 5.0  # no install, no Python started
    document = json.loads(proc.stdout)
    assert document["benchmark"] == "gpu" and document["error"].startswith("no GPU")
    assert "no GPU" in proc.stderr and "installing" not in proc.stderr


def test_make_bench_gpu_reports_no_gpu(tmp_path: Path) -> None:
    # make turns every failed recipe into its own status 2; the recipe's 3 is in its message
    proc = subprocess.run(
        ["make", "-s", "bench-gpu"],
        cwd=REPO,
        env=_env(TICKCAST_BENCH_NVIDIA_SMI=str(tmp_path / "none")),
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
    )
    assert proc.returncode != 0
    assert "no GPU" in proc.stdout and "Error 3" in proc.stderr, proc.stderr


def test_the_benchmark_itself_exits_3_when_torch_sees_no_gpu() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--models", "bolt-base", "--dtypes", "bfloat16"],
        env=_env(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
    )
    assert proc.returncode == NO_GPU, proc.stderr[-2000:]
    document = json.loads(proc.stdout)
    assert document["error"].startswith("no GPU") and "runs" not in document
    assert document["settings"]["models"] == ["bolt-base"]


def test_the_benchmark_rejects_an_unknown_model() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--models", "bolt-huge"],
        env=_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
    )
    assert proc.returncode == 2 and "unknown model or dtype 'bolt-huge'" in proc.stderr
