"""The forecaster's rolling context: ring buffers, LRU cap, dedup of old bars, lake warm start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from serving.streaming.context import ContextStore, warm_start_bars
from tickcast.contracts import Bar
from tickcast.lake import Lake, latest_bars
from tickcast.settings import LakeSettings

T0 = datetime(2024, 1, 2, 23, 50, tzinfo=UTC)
M = timedelta(minutes=1)


def bars(ticker: str, n: int, start: datetime = T0) -> list[Bar]:
    return [
        Bar(ticker, "minute", start + i * M, start + (i + 1) * M, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 10.0)
        for i in range(n)
    ]


def test_ring_buffer_keeps_the_newest_in_order() -> None:
    store = ContextStore(context_length=4, max_tickers=10)
    for i in range(6):
        assert store.append("AAPL", T0 + i * M, T0 + (i + 1) * M, float(i))
    np.testing.assert_array_equal(store.window("AAPL"), [2.0, 3.0, 4.0, 5.0])
    assert store.get("AAPL").last_value() == 5.0  # type: ignore[union-attr]
    assert store.memory_bytes() == 4 * 8


def test_old_and_duplicate_bars_are_ignored() -> None:
    store = ContextStore(context_length=8, max_tickers=10)
    assert store.append("AAPL", T0 + M, T0 + 2 * M, 1.0)
    assert not store.append("AAPL", T0 + M, T0 + 2 * M, 9.0)  # redelivery
    assert not store.append("AAPL", T0, T0 + M, 9.0)  # out of order
    np.testing.assert_array_equal(store.window("AAPL"), [1.0])


def test_lru_cap_evicts_least_recently_updated() -> None:
    store = ContextStore(context_length=4, max_tickers=2)
    store.append("A", T0, T0 + M, 1.0)
    store.append("B", T0, T0 + M, 1.0)
    store.append("A", T0 + M, T0 + 2 * M, 2.0)  # A is now the most recent
    store.append("C", T0, T0 + M, 1.0)
    assert store.tickers() == ["A", "C"]
    assert store.pop_evicted() == ["B"]
    assert store.pop_evicted() == []
    assert store.evicted == 1
    for i in range(1000):
        store.append(f"T{i}", T0, T0 + M, 1.0)
    assert len(store) == 2 and store.memory_bytes() == 2 * 4 * 8


def test_needs_forecast_tracks_last_forecast() -> None:
    store = ContextStore(context_length=4, max_tickers=10)
    assert not store.needs_forecast("A")
    store.append("A", T0, T0 + M, 1.0)
    assert store.needs_forecast("A")
    store.mark_forecast("A", T0)
    assert not store.needs_forecast("A")
    store.mark_forecast("A", T0 - M)  # never goes backwards
    assert store.get("A").last_forecast_start == T0  # type: ignore[union-attr]
    store.append("A", T0 + M, T0 + 2 * M, 2.0)
    assert store.needs_forecast("A")


def test_load_replaces_the_context_and_the_ring_continues() -> None:
    store = ContextStore(context_length=4, max_tickers=10)
    store.append("A", T0 - M, T0, 99.0)
    starts = [T0 + i * M for i in (0, 1, 1, 2, 3, 4, 5)]  # one bar twice: kept once
    kept = store.load("A", starts, [s + M for s in starts], [0.0, 1.0, 9.0, 2.0, 3.0, 4.0, 5.0], T0 + 5 * M)
    assert kept == 4
    np.testing.assert_array_equal(store.window("A"), [2.0, 3.0, 4.0, 5.0])
    entry = store.get("A")
    assert entry is not None and (entry.last_start, entry.last_end) == (T0 + 5 * M, T0 + 6 * M)
    assert store.append("A", T0 + 6 * M, T0 + 7 * M, 6.0) and not store.needs_forecast("B")
    np.testing.assert_array_equal(store.window("A"), [3.0, 4.0, 5.0, 6.0])
    assert store.load("A", [], [], []) == 0 and store.window("A").size == 0


def test_invalid_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        ContextStore(context_length=0, max_tickers=1)


def test_warm_start_reads_last_bars_across_days(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    lake.write_bars(bars("AAPL", 30) + bars("MSFT", 3))  # AAPL spans two daily partitions
    lake.write_bars(bars("AAPL", 5, T0 + 25 * M))  # the last 5 bars again, corrected: the latest wins
    got = latest_bars(lake, "minute", ["AAPL", "MSFT", "NONE"], 15, {"MSFT": T0 + M}, ["close"])
    assert sorted(got) == ["AAPL", "MSFT"]
    assert got["AAPL"].column("close").to_pylist() == [100.5 + i for i in [*range(15, 25), *range(5)]]
    assert got["MSFT"].column("start").to_pylist() == [T0]  # bars before its end only
    assert latest_bars(lake, "minute", ["AAPL"], 100)["AAPL"].num_rows == 30

    store = ContextStore(context_length=20, max_tickers=10)
    # MSFT was last forecast at its second bar: its context must end there
    loaded = warm_start_bars(store, lake, ["AAPL", "MSFT", "NONE"], "minute", "close", {"MSFT": T0 + M})
    assert loaded == 2
    np.testing.assert_allclose(store.window("AAPL"), [100.5 + i for i in [*range(10, 25), *range(5)]])
    np.testing.assert_allclose(store.window("MSFT"), [100.5, 101.5])
    assert not store.needs_forecast("MSFT")
    # the redelivered third MSFT bar is new to the context and needs a forecast
    assert store.append("MSFT", T0 + 2 * M, T0 + 3 * M, 102.5)
    assert store.needs_forecast("MSFT")
    # redelivered bars before the last forecast are ignored
    assert not store.append("MSFT", T0 + M, T0 + 2 * M, 101.5)


def test_warm_start_remembers_forecasts_without_bars(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    store = ContextStore(context_length=4, max_tickers=10)
    warm_start_bars(store, lake, ["AAPL"], "minute", "close", {"AAPL": T0})
    assert store.append("AAPL", T0, T0 + M, 1.0)
    assert not store.needs_forecast("AAPL")  # already forecast before the restart


def test_latest_bars_walks_back_only_for_tickers_still_short(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    day = timedelta(days=1)

    def daily(ticker: str, first: datetime, n: int) -> list[Bar]:
        return [Bar(ticker, "day", first + i * day, first + (i + 1) * day, 1, 1, 1, float(i), 1) for i in range(n)]

    # 300 tickers with bars in 2024 (a long list is filtered after the scan, not per file)
    many = [f"T{i:03d}" for i in range(300)]
    lake.write_bars([b for t in many for b in daily(t, datetime(2024, 1, 2, tzinfo=UTC), 4)])
    # one ticker whose bars lie years back, in older yearly partitions
    lake.write_bars(daily("OLD", datetime(2021, 12, 30, tzinfo=UTC), 5))
    got = latest_bars(lake, "day", [*many, "OLD"], 3, columns=["close"])
    assert len(got) == 301 and all(got[t]["close"].to_pylist() == [1.0, 2.0, 3.0] for t in many)
    assert got["OLD"]["start"].to_pylist() == [datetime(2022, 1, d, tzinfo=UTC) for d in (1, 2, 3)]
    assert latest_bars(lake, "day", ["OLD"], 10)["OLD"].num_rows == 5
    assert latest_bars(lake, "minute", ["OLD"], 10) == {}
