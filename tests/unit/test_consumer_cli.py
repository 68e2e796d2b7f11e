"""`tickcast consume` and `python -m consumer`: the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tickcast.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_consume_is_registered() -> None:
    args = build_parser().parse_args(["consume", "--max-records", "10", "--timeout", "2.5", "--group", "g"])
    assert (args.max_records, args.timeout, args.group) == (10, 2.5, "g")


def test_python_m_consumer_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--max-records" in done.stdout
