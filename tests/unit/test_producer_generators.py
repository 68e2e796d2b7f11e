"""Synthetic and replay sources without a broker: a recording stand-in takes the bars, so
these check generation, ordering, pacing and validation; the Kafka path is covered by the
integration tests."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producer.replay import Replay, file_batches, lake_batches, normalize, parse_speed, read_bars_file
from producer.synthetic import SyntheticMarket, run_synthetic, session_open_utc, ticker_names, u_shape
from tickcast.contracts import Bar
from tickcast.errors import InvalidBar, SourceError
from tickcast.lake import Lake
from tickcast.settings import LakeSettings


class Recorder:
    """Takes what BarPublisher would send: valid bars (decoded) and rejects."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []
        self.times: list[float] = []
        self.rejected: list[tuple[Any, str]] = []

    def send_encoded(self, ticker: str, value: bytes, end_ts: float) -> None:
        bar = Bar.from_json(value)
        assert bar.ticker == ticker and bar.end.timestamp() == end_ts
        self.bars.append(bar)
        self.times.append(time.monotonic())

    def publish(self, bar: Bar) -> bool:
        try:
            bar.validate()
        except InvalidBar as exc:
            self.rejected.append((bar, exc.reason))
            return False
        self.send_encoded(bar.ticker, bar.to_json(), bar.end.timestamp())
        return True

    def flush(self) -> None:
        pass


# -- synthetic --------------------------------------------------------------------------------


def test_ticker_names_are_valid_and_distinct() -> None:
    names = ticker_names(2000)
    assert len(set(names)) == 2000
    Bar(names[-1], "minute", datetime.now(UTC), datetime.now(UTC) + timedelta(minutes=1), 1, 1, 1, 1, 1).validate()


def test_synthetic_bars_are_valid_ordered_and_follow_sessions() -> None:
    market = SyntheticMarket(ticker_names(20), "minute", start=date(2024, 1, 5), seed=1)  # a Friday
    recorder = Recorder()
    result = run_synthetic(market, recorder, max_bars=20 * 400)  # type: ignore[arg-type]
    assert result.bars == 8000 == len(recorder.bars)
    first = recorder.bars[0]
    assert first.start == session_open_utc(date(2024, 1, 5)) == datetime(2024, 1, 5, 14, 30, tzinfo=UTC)
    per_ticker: dict[str, list[Bar]] = {}
    for bar in recorder.bars:
        per_ticker.setdefault(bar.ticker, []).append(bar)
    for bars in per_ticker.values():
        starts = [b.start for b in bars]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        assert bars[389].start == datetime(2024, 1, 5, 20, 59, tzinfo=UTC)  # the session's last minute
        assert bars[390].start.date() == date(2024, 1, 8)  # the weekend is skipped
        for a, b in itertools.pairwise(bars):
            if a.start.date() == b.start.date():
                assert b.open == a.close  # a continuous path


def test_synthetic_volume_and_volatility_are_u_shaped() -> None:
    market = SyntheticMarket(ticker_names(300), "minute", start=date(2024, 1, 2), seed=2)
    steps = [market.step() for _ in range(390)]
    volume = [float(s.volume.mean()) for s in steps]
    spread = [float(((s.high - s.low) / s.close).mean()) for s in steps]
    edges, middle = volume[:30] + volume[-30:], volume[180:210]
    assert sum(edges) / 60 > 1.8 * sum(middle) / 30
    assert sum(spread[:30] + spread[-30:]) / 60 > 1.3 * sum(spread[180:210]) / 30
    assert u_shape(0) == u_shape(1) == 1 and u_shape(0.5) == 0


def test_synthetic_rate_is_paced() -> None:
    recorder = Recorder()
    market = SyntheticMarket(ticker_names(10), "second", seed=3)
    result = run_synthetic(market, recorder, rate=200, max_bars=100)  # type: ignore[arg-type]
    assert result.bars == 100
    assert recorder.times[-1] - recorder.times[0] >= 0.4  # 100 bars at 200/s: at least ~0.45 s


# -- replay ------------------------------------------------------------------------------------

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def bars_table(n: int, tickers: tuple[str, ...] = ("AAPL", "MSFT"), step_s: int = 60) -> pa.Table:
    rows: dict[str, list[Any]] = {k: [] for k in ("ticker", "start", "open", "high", "low", "close", "volume")}
    for i in range(n):
        for j, ticker in enumerate(tickers):
            p = 100.0 + i + j
            rows["ticker"].append(ticker)
            rows["start"].append(T0 + timedelta(seconds=step_s * i))
            rows["open"].append(p)
            rows["high"].append(p + 1)
            rows["low"].append(p - 1)
            rows["close"].append(p + 0.5)
            rows["volume"].append(1000.0 + i)
    return pa.table(rows)


def test_csv_with_polygon_columns_and_epoch_ms(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    t = int(T0.timestamp() * 1000)
    path.write_text(f"sym,t,o,h,l,c,v,vw,n\nMSFT,{t + 60000},2,3,1,2.5,10,2.2,4\nAAPL,{t},1,2,0.5,1.5,10,1.2,3\n")
    table = read_bars_file(path, "minute")
    assert table["ticker"].to_pylist() == ["AAPL", "MSFT"]  # sorted by start
    assert table["start"].to_pylist()[0] == T0 and table["end"].to_pylist()[0] == T0 + timedelta(minutes=1)
    assert table["trades"].to_pylist() == [3, 4]


def test_missing_columns_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no close column"):
        normalize(
            pa.table({"ticker": ["A"], "start": [T0], "open": [1.0], "high": [1.0], "low": [1.0], "volume": [1.0]}),
            "minute",
        )
    with pytest.raises(SourceError, match="does not exist"):
        read_bars_file(tmp_path / "nope.parquet")


def test_replay_keeps_per_ticker_order_and_routes_invalid_rows(tmp_path: Path) -> None:
    table = bars_table(50)
    bad = pa.table({**{n: table[n] for n in table.column_names}})
    lows = bad["low"].to_pylist()
    lows[7] = 1e9  # low above high: invalid
    bad = bad.set_column(bad.column_names.index("low"), "low", pa.array(lows))
    path = tmp_path / "bars.parquet"
    pq.write_table(bad, path)
    recorder = Recorder()
    result = Replay(recorder, speed=None).run(file_batches(path, "minute"))  # type: ignore[arg-type]
    assert result.bars == 99 and result.rejected == 1 and "prices out of order" in recorder.rejected[0][1]
    for ticker in ("AAPL", "MSFT"):
        starts = [b.start for b in recorder.bars if b.ticker == ticker]
        assert starts == sorted(starts)
    assert all(b.source == "replay" for b in recorder.bars)


def test_replay_speed_paces_by_market_time(tmp_path: Path) -> None:
    path = tmp_path / "bars.parquet"
    pq.write_table(bars_table(6, ("AAPL",), step_s=60), path)
    recorder = Recorder()
    Replay(recorder, speed=600.0).run(file_batches(path, "minute"))  # type: ignore[arg-type]
    # 5 minutes of market time at 600x is 0.5 s of wall time
    assert recorder.times[-1] - recorder.times[0] >= 0.45
    assert parse_speed("max") is None and parse_speed("60x") == 60.0 and parse_speed("1") == 1.0
    with pytest.raises(ValueError):
        parse_speed("-2")


def test_replay_from_lake_day_by_day(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path / 'lake'}"))
    day1 = [
        Bar(
            "AAPL",
            "minute",
            T0 + timedelta(minutes=i),
            T0 + timedelta(minutes=i + 1),
            1,
            2,
            0.5,
            1.5,
            10,
            source="backfill",
        )
        for i in range(5)
    ]
    t1 = T0 + timedelta(days=1)
    day2 = [
        Bar(t, "minute", t1 + timedelta(minutes=i), t1 + timedelta(minutes=i + 1), 1, 2, 0.5, 1.5, 10)
        for i in range(3)
        for t in ("AAPL", "MSFT")
    ]
    lake.write_bars(day1 + day2)
    batches = list(lake_batches(lake, "minute"))
    assert [b.num_rows for b in batches] == [5, 6]
    recorder = Recorder()
    result = Replay(recorder).run(lake_batches(lake, "minute", ("MSFT",)), max_bars=2)  # type: ignore[arg-type]
    assert result.bars == 2 and [b.ticker for b in recorder.bars] == ["MSFT", "MSFT"]
    recorder = Recorder()
    Replay(recorder).run(lake_batches(lake, "minute", (), T0 + timedelta(days=1)))  # type: ignore[arg-type]
    assert len(recorder.bars) == 6
    assert {b.source for b in Recorder().bars} == set()
    with pytest.raises(SourceError, match="no minute bars"):
        list(lake_batches(Lake(LakeSettings(url=f"file://{tmp_path / 'empty'}")), "minute"))
    with pytest.raises(SourceError, match="no day bars"):
        list(lake_batches(lake, "day"))
    # The replay reads the table version of its start: bars committed meanwhile are not replayed.
    running = lake_batches(lake, "minute")
    assert next(running).num_rows == 5
    t2 = T0 + timedelta(days=2)
    lake.write_bars(
        [Bar("AAPL", "minute", t1 + timedelta(hours=1), t1 + timedelta(hours=1, minutes=1), 1, 2, 0.5, 1.5, 1)]
    )
    lake.write_bars([Bar("AAPL", "minute", t2, t2 + timedelta(minutes=1), 1, 2, 0.5, 1.5, 1)])
    assert [b.num_rows for b in running] == [6]
    assert [b.num_rows for b in lake_batches(lake, "minute")] == [5, 7, 1]


def test_replay_from_lake_reads_day_bars_a_year_at_a_time(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path / 'lake'}"))
    days = [datetime(2023, 12, 27, tzinfo=UTC) + timedelta(days=i) for i in range(10)]
    lake.write_bars([Bar("SPY", "day", d, d + timedelta(days=1), 1, 2, 0.5, 1.5, 10) for d in days])
    assert [b.num_rows for b in lake_batches(lake, "day")] == [5, 5]  # 2023, then 2024
    since = datetime(2023, 12, 30, tzinfo=UTC)
    until = datetime(2024, 1, 3, tzinfo=UTC)
    batches = list(lake_batches(lake, "day", ("SPY",), since, until))
    assert [[s.day for s in b["start"].to_pylist()] for b in batches] == [[30, 31], [1, 2]]
    assert list(lake_batches(lake, "day", ("SPY",), datetime(2025, 1, 1, tzinfo=UTC))) == []
