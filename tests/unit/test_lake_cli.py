"""`tickcast lake optimize|vacuum|migrate|history|stats` on a real file:// lake."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tickcast.cli import main
from tickcast.contracts import Bar, Forecast
from tickcast.errors import TickcastError
from tickcast.lake import BARS, FORECASTS, BarWriter, Lake, bars_to_table, read_bars, tables
from tickcast.lake.migrate import needs_migration
from tickcast.lake_cli import parse_as_of
from tickcast.settings import LakeSettings

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)


def _bars(ticker: str, n: int, day: int = 0) -> list[Bar]:
    start = T0 + timedelta(days=day)
    return [
        Bar(ticker, "minute", start + timedelta(minutes=i), start + timedelta(minutes=i + 1), 10, 11, 9, 10.5, i)
        for i in range(n)
    ]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, object]:
    code = main(args)
    return code, json.loads(capsys.readouterr().out)


def test_optimize_stats_history_vacuum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path / 'lake'}"
    monkeypatch.setenv("TICKCAST_LAKE__URL", url)
    lake = Lake(LakeSettings(url=url))
    writer = BarWriter(lake)
    for k in range(4):
        writer.write(bars_to_table(_bars("AAPL", 10, day=0)[k * 2 : k * 2 + 2] + _bars("MSFT", 2, day=k)))
    code, stats = _run(["lake", "stats", "--table", "bars"], capsys)
    assert code == 0 and stats["bars"]["files"] > 4 and stats["bars"]["rows"] == 16  # type: ignore[index]
    code, reports = _run(["lake", "optimize", "--table", "bars"], capsys)
    assert code == 0 and reports[0]["files_after"] == 4 and reports[0]["rows_after"] == 16  # type: ignore[index]
    code, history = _run(["lake", "history", "--table", "bars", "--limit", "3"], capsys)
    assert history["bars"][0]["operation"] == "WRITE"  # type: ignore[index]
    code, vacuumed = _run(["lake", "vacuum", "--table", "bars", "--dry-run"], capsys)
    assert code == 0 and vacuumed[0]["deleted_files"] == 0  # type: ignore[index]
    assert main(["lake", "optimize", "--table", "nope"]) == 2  # unknown table: one-line error


def test_as_of_parsing() -> None:
    assert parse_as_of("12") == 12
    assert parse_as_of("2024-03-04T15:00:00Z") == datetime(2024, 3, 4, 15, tzinfo=UTC)
    with pytest.raises(TickcastError, match="no UTC offset"):
        parse_as_of("2024-03-04T15:00:00")
    with pytest.raises(TickcastError, match="neither a table version"):
        parse_as_of("yesterday")


def _legacy_lake(root: Path) -> tuple[int, set[tuple[str, str, str]]]:
    """A lake in the earlier layout: Hive folders, partition values only in the path, dupes
    across files (an uncompacted replay), and a pending-marker folder."""
    keys: set[tuple[str, str, str]] = set()
    rows = 0
    for ticker in ("AAPL", "MSFT"):
        for day in range(3):
            bars = _bars(ticker, 5, day)
            table = bars_to_table(bars).drop_columns(["ticker", "interval", "period", "ingested_at"])
            folder = (
                root / "bars" / "interval=minute" / f"ticker={ticker}" / f"date={(T0 + timedelta(days=day)).date()}"
            )
            folder.mkdir(parents=True)
            pq.write_table(table, folder / "bars-t-p0-o0.parquet")
            pq.write_table(table.slice(0, 2), folder / "bars-t-p0-o9.parquet")  # the same bars again
            rows += table.num_rows + 2
            keys |= {(ticker, "minute", b.start.isoformat()) for b in bars}
    forecast = Forecast("AAPL", "minute", "m", "1", T0, T0, 2, "close", [1.0, 2.0], {"0.5": [1.0, 2.0]})
    from tickcast.lake import forecasts_to_table

    f_table = forecasts_to_table([forecast]).drop_columns(["ticker", "interval", "period"])
    folder = root / "forecasts" / "interval=minute" / "ticker=AAPL" / f"date={T0.date()}"
    folder.mkdir(parents=True)
    pq.write_table(f_table, folder / "fc-x.parquet")
    (root / "_sink" / "pending").mkdir(parents=True)
    (root / "_sink" / "pending" / "m.json").write_text("{}")
    (root / "models" / "tiny" / "1").mkdir(parents=True)
    (root / "models" / "tiny" / "1" / "config.json").write_text("{}")
    return rows, keys


def test_migrate_converts_the_earlier_layout_with_nothing_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    rows, keys = _legacy_lake(old)
    assert needs_migration(Lake(LakeSettings(url=f"file://{old}"))) == ["bars", "forecasts"]
    new_url = f"file://{tmp_path / 'new'}"
    monkeypatch.setenv("TICKCAST_LAKE__URL", new_url)
    code, report = _run(["lake", "migrate", "--from", f"file://{old}"], capsys)
    assert code == 0
    assert report["tables"]["bars"] == {"files": 12, "rows_read": rows, "rows_in_table": 30}  # type: ignore[index]
    lake = Lake(LakeSettings(url=new_url))
    table = deltalake.DeltaTable(lake.table_uri("bars")).to_pyarrow_table()  # not tickcast code
    assert table.num_rows == 30
    migrated = {
        (t, i, s.isoformat())
        for t, i, s in zip(*(table[c].to_pylist() for c in ("ticker", "interval", "start")), strict=True)
    }
    assert migrated == keys
    assert read_bars(lake, "MSFT").num_rows == 15 and tables.scan(lake, FORECASTS).num_rows == 2
    assert lake.read_bytes("models/tiny/1/config.json") == b"{}"
    assert needs_migration(lake) == []
    # in place: the same root, the old files deleted once converted
    monkeypatch.setenv("TICKCAST_LAKE__URL", f"file://{old}")
    code, _ = _run(["lake", "migrate", "--from", f"file://{old}", "--delete-source"], capsys)
    in_place = Lake(LakeSettings(url=f"file://{old}"))
    assert code == 0 and needs_migration(in_place) == [] and read_bars(in_place, "AAPL").num_rows == 15
    assert tables.scan(in_place, BARS, unique=False).num_rows == 30 and pa is not None


def test_make_up_tells_the_user_to_migrate_an_old_lake(tmp_path: Path) -> None:
    from tickcast.platform import Platform
    from tickcast.settings import load_settings

    _legacy_lake(tmp_path / "old")
    url = f"file://{tmp_path / 'old'}"
    platform = Platform(load_settings(lake={"url": url}, infra={"state_dir": str(tmp_path / "state")}))
    with pytest.raises(TickcastError) as info:
        platform.check_lake_layout()
    line = info.value.one_line()
    assert "bars, forecasts in the earlier Parquet layout" in line and f"tickcast lake migrate --from {url}" in line
    Platform(load_settings(lake={"url": f"file://{tmp_path / 'fresh'}"})).check_lake_layout()  # nothing to do
