"""`tickcast consume`, `tickcast compact` and `python -m consumer`: the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumer.buffer import PartitionBuffer
from consumer.decode import decode_batch
from consumer.writer import LakeWriter
from tickcast.cli import build_parser, main
from tickcast.contracts import Bar
from tickcast.lake import Lake
from tickcast.settings import LakeSettings

REPO = Path(__file__).resolve().parents[2]


def test_commands_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["consume", "--max-records", "10", "--timeout", "2.5", "--group", "g"])
    assert (args.max_records, args.timeout, args.group) == (10, 2.5, "g")
    args = parser.parse_args(["compact", "--table", "bars", "--ticker", "AAPL", "--ticker", "MSFT", "--dry-run"])
    assert args.ticker == ["AAPL", "MSFT"] and args.dry_run


def test_compact_command_merges_and_reports_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path / 'lake'}"
    lake = Lake(LakeSettings(url=url))
    writer = LakeWriter(lake, "bars")
    t0 = datetime(2024, 1, 2, 15, tzinfo=UTC)
    for first in (0, 5, 10):
        values = [
            Bar("AAPL", "minute", t0 + timedelta(minutes=i), t0 + timedelta(minutes=i + 1), 1, 2, 1, 1, 1).to_json()
            for i in range(first, first + 5)
        ]
        buffer = PartitionBuffer(0, 100, 10**9, 10**9)
        buffer.add(
            list(range(first, first + 5)), [1] * 5, [0] * 5, decode_batch(values, list(range(first, first + 5)), 0)
        )
        batch = buffer.seal("stop")
        writer.write(batch)
        writer.confirm([batch])
    writer.close()
    monkeypatch.setenv("TICKCAST_LAKE__URL", url)
    assert main(["compact", "--table", "bars", "--ticker", "AAPL", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["folders_compacted"], summary["files_merged"], summary["rows"]) == (1, 3, 15)
    assert [p.rsplit("/", 1)[-1] for p in lake.list_files("bars")] == [
        "compact-p0-o00000000000000000000-00000000000000000014.parquet"
    ]
    assert lake.read_bars("AAPL").num_rows == 15


def test_compact_of_another_table_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TICKCAST_LAKE__URL", f"file://{tmp_path}")
    with pytest.raises(SystemExit):
        main(["compact", "--table", "forecasts"])


def test_python_m_consumer_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--max-records" in done.stdout
