"""Reading forecast context from the lake: the last N bars, across partitions and gaps, as of a version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.context import UnknownTicker, read_context, read_recent_bars
from tickcast.contracts import Bar
from tickcast.lake import Lake
from tickcast.settings import load_settings


def bars(ticker: str, interval: str, starts: list[datetime]) -> list[Bar]:
    step = {"minute": timedelta(minutes=1), "day": timedelta(days=1)}[interval]
    out = []
    for i, start in enumerate(starts):
        price = 100.0 + i
        out.append(
            Bar(ticker, interval, start, start + step, price, price + 1, price - 1, price, 1000.0 + i, source="test")
        )
    return out


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(load_settings(lake={"url": f"file://{tmp_path / 'lake'}"}).lake)


def test_daily_bars_across_yearly_partitions(lake: Lake) -> None:
    # 300 trading days with weekend gaps, over two yearly partitions
    day = datetime(2023, 1, 2, 14, 30, tzinfo=UTC)
    starts = []
    while len(starts) < 300:
        if day.weekday() < 5:
            starts.append(day)
        day += timedelta(days=1)
    lake.write_bars(bars("SPY", "day", starts))
    ctx = read_context(lake, "SPY", "day", 250, "close", ("volume",))
    assert len(ctx.target) == 250 and ctx.target[-1] == 100.0 + 299 and ctx.target[0] == 100.0 + 50
    assert ctx.covariates["volume"][-1] == 1000.0 + 299
    assert ctx.last_bar_start == starts[-1]
    assert len(read_context(lake, "SPY", "day", 1000, "close").target) == 300  # all there is
    before = read_context(lake, "SPY", "day", 10, "close", end=starts[100])
    assert before.last_bar_start == starts[99] and len(before.target) == 10


def test_minute_bars_deduplicated_and_sorted(lake: Lake) -> None:
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    starts = [t0 + timedelta(minutes=i) for i in range(50)]
    lake.write_bars(bars("AAPL", "minute", starts))
    lake.write_bars(bars("AAPL", "minute", starts[40:]))  # a replay wrote some bars twice
    table = read_recent_bars(lake, "AAPL", "minute", 20, ["close"])
    got = table["start"].to_pylist()
    assert len(got) == 20 and got == sorted(set(got)) and got[-1] == starts[-1]


def test_unknown_ticker(lake: Lake) -> None:
    with pytest.raises(UnknownTicker):
        read_context(lake, "NOPE", "minute", 10, "close")
    lake.write_bars(bars("MSFT", "minute", [datetime(2024, 3, 4, 14, 30, tzinfo=UTC)]))
    with pytest.raises(UnknownTicker):
        read_context(lake, "MSFT", "minute", 10, "close", end=datetime(2024, 3, 1, tzinfo=UTC))


def test_context_as_of_an_earlier_table_version(lake: Lake) -> None:
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    starts = [t0 + timedelta(minutes=i) for i in range(30)]
    version = lake.write_bars(bars("AAPL", "minute", starts[:20]))
    lake.write_bars(bars("AAPL", "minute", starts[20:]))
    now = read_context(lake, "AAPL", "minute", 10, "close")
    then = read_context(lake, "AAPL", "minute", 10, "close", as_of=version)
    assert (now.last_bar_start, then.last_bar_start) == (starts[-1], starts[19])
    with pytest.raises(UnknownTicker):
        read_context(lake, "AAPL", "minute", 10, "close", as_of=0)  # the empty table as created
