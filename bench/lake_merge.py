"""Benchmark: why the bars writer appends new bars and MERGEs only the ones the table may hold.

One key per bar ``(ticker, interval, start)`` can be kept by a MERGE on every write, or by
appending and deduplicating later. ``tickcast.lake.BarWriter`` does both: it appends a batch
that is newer than every bar the table holds for its tickers (the live case) and MERGEs a
batch that overlaps (re-sent or corrected bars). This measures, in one run on ``file://``,
the commit time of a flush of minute bars for N tickers into a day partition that grows
through the trading day, as

- ``append``: ``tables.append`` (what BarWriter does for new bars),
- ``merge``: ``tables.upsert`` of the same new bars (a MERGE on every write),
- ``merge_overlap``: ``tables.upsert`` of a batch that replaces bars already in the table.

Prints JSON; exits 1 when MERGE on every write is not slower than appending by at least the
``--min-ratio`` it claims to be (then the design choice should be revisited), 2 when it crashed.

    .venv/bin/python bench/lake_merge.py --tickers 2000 --flushes 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Steps, finish, run_main, target

from tickcast.lake import BARS, Lake, tables
from tickcast.lake.bars import with_period
from tickcast.settings import LakeSettings

T0 = np.datetime64("2024-03-04T14:30", "us")


def minute_bars(tickers: int, minute0: int, minutes: int, close: float = 100.5) -> pa.Table:
    """Bars of ``tickers`` tickers for ``minutes`` minutes from ``minute0``, vectorised."""
    n = tickers * minutes
    starts = np.tile(T0 + np.arange(minute0, minute0 + minutes).astype("timedelta64[m]"), tickers)
    names = np.repeat(np.array([f"T{i:05d}" for i in range(tickers)]), minutes)
    ts = pa.timestamp("us", tz="UTC")
    start = pa.array(starts, ts)
    price = np.full(n, close)
    table = pa.table(
        {
            "ticker": pa.array(names),
            "interval": pa.array(["minute"] * n),
            "start": start,
            "end": pa.array(starts + np.timedelta64(1, "m"), ts),
            "open": price - 0.5,
            "high": price + 1,
            "low": price - 1,
            "close": price,
            "volume": np.full(n, 1000.0),
            "vwap": price,
            "trades": np.full(n, 10, dtype=np.int64),
            "source": pa.array(["bench"] * n),
            "ingested_at": pa.array(np.full(n, np.datetime64("2024-03-04T20:00", "us")), ts),
        }
    )
    return with_period(table)


def run(tickers: int, flushes: int, minutes_per_flush: int) -> dict[str, object]:
    results: dict[str, list[float]] = {"append": [], "merge": [], "merge_overlap": []}
    rows_at: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        lakes = {mode: Lake(LakeSettings(url=f"file://{tmp}/{mode}")) for mode in ("append", "merge")}
        for k in range(flushes):
            batch = minute_bars(tickers, k * minutes_per_flush, minutes_per_flush)
            for mode, lake in lakes.items():
                started = time.perf_counter()
                if mode == "append":
                    tables.append(lake, BARS, batch)
                else:
                    tables.upsert(lake, BARS, batch)
                results[mode].append(time.perf_counter() - started)
            rows_at.append((k + 1) * batch.num_rows)
        # a corrected re-send of the last flush, into the partition as it stands at the end
        again = minute_bars(tickers, (flushes - 1) * minutes_per_flush, minutes_per_flush, close=100.75)
        for _ in range(3):
            started = time.perf_counter()
            tables.upsert(lakes["merge"], BARS, again)
            results["merge_overlap"].append(time.perf_counter() - started)
    last = max(1, flushes // 5)
    summary = {
        mode: {
            "first_s": round(times[0], 4),
            "median_s": round(statistics.median(times), 4),
            "last_fifth_median_s": round(statistics.median(times[-last:]), 4),
        }
        for mode, times in results.items()
    }
    ratio_end = summary["merge"]["last_fifth_median_s"] / max(summary["append"]["last_fifth_median_s"], 1e-9)
    return {
        "tickers": tickers,
        "bars_per_flush": tickers * minutes_per_flush,
        "flushes": flushes,
        "partition_rows_at_end": rows_at[-1],
        "commit_seconds": summary,
        "merge_over_append_at_end_of_day": round(ratio_end, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=2000)
    parser.add_argument("--flushes", type=int, default=30)
    parser.add_argument("--minutes-per-flush", type=int, default=10)
    parser.add_argument("--min-ratio", type=float, default=2.0, help="MERGE must cost this many appends")
    args = parser.parse_args()
    steps = Steps()
    out = steps.step("run", lambda: run(args.tickers, args.flushes, args.minutes_per_flush))
    result: dict[str, Any] = out or {"tickers": args.tickers, "flushes": args.flushes}
    ratio = None if out is None else float(out["merge_over_append_at_end_of_day"])  # type: ignore[arg-type]
    result["target"] = f"MERGE on every write >= {args.min_ratio}x an append at the end of the day"
    result["met"] = ratio is not None and ratio >= args.min_ratio
    targets = {"merge_over_append_at_end_of_day": target(ratio, ">=", args.min_ratio)}
    return finish(result, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
