"""Benchmark: the dashboard's read of a year of minute bars for one ticker, on the Delta lake.

Writes (once) ``--tickers`` tickers x 252 sessions x 390 minute bars (~98k bars per ticker)
into the lake's bars table with the sink's writer (:class:`tickcast.lake.BarWriter`, one
commit per ticker: a day partition then holds one file per ticker), then times, through
:mod:`tickcast.lake` readers:

* ``prepared_read_s``: what the Live and Explore pages do for the range "all" (a year):
  list the ticker's periods from the Delta log, read the newest period and the older ones
  (partition and statistics pruning), build the DataFrame, and resample it for the chart
  (``max_chart_bars`` candles);
* ``prepared_read_and_figure_s``: the same plus the Plotly figure, serialized to JSON as
  Streamlit sends it to the browser;
* ``pruned_read_s``: :func:`tickcast.lake.read_bars` alone (the whole year of the ticker);
* ``recent_512_s``: :func:`tickcast.lake.recent_bars`, the ticker's last 512 bars (what a
  forecast's context needs);
* ``full_scan_row_filter_s``: :func:`tickcast.lake.tables.scan` with the same row filter but
  no file pruning (every data file of the table is opened);
* ``full_scan_then_filter_s``: the whole table read, then filtered in memory;
* ``prepared_full_scan_s``: the same preparation as ``prepared_read_s`` on that unpruned read.

The unpruned figures grow with the number of tickers in the lake (``--tickers``); the
pruned ones do not. With ``--optimize`` the table is compacted (one sorted file per day
partition, :func:`tickcast.lake.maintenance.optimize`) and the reads are timed again
(``after_optimize``).

Prints one JSON object. Target: ``prepared_read_and_figure_s`` < 2 s (after optimize too);
exits 1 when it is missed, 2 when a step crashed (``errors`` says which and why).

    .venv/bin/python bench/dashboard_read.py [--lake file:///tmp/tickcast-bench-delta] [--tickers 4] [--optimize]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from _common import Steps, finish, run_main, target

os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
import streamlit  # noqa: F401  (configures its loggers; quiet them before dashboard.data uses caches)

logging.getLogger("streamlit").setLevel(logging.ERROR)
logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)

from dashboard import analysis, charts  # noqa: E402
from dashboard.data import read_window  # noqa: E402
from tickcast.lake import BAR_SCHEMA, BARS, BarWriter, Lake, bar_periods, recent_bars, tables  # noqa: E402
from tickcast.lake.maintenance import file_stats, optimize  # noqa: E402
from tickcast.lake.specs import TIMESTAMP  # noqa: E402
from tickcast.settings import load_settings  # noqa: E402

#: The dashboard's read and chart of a year of minute bars, in seconds.
TARGET_S = 2.0
SESSIONS = 252
BARS_PER_SESSION = 390


def sessions(first: date, count: int) -> list[date]:
    """``count`` weekdays from ``first``."""
    out: list[date] = []
    day = first
    while len(out) < count:
        if day.weekday() < 5:
            out.append(day)
        day += timedelta(days=1)
    return out


def year_of_minutes(ticker: str, seed: int) -> pa.Table:
    """A year of minute bars of one ticker as bar rows (:data:`BAR_SCHEMA` plus ``ingested_at``)."""
    rng = np.random.default_rng(seed)
    days = sessions(date(2024, 1, 2), SESSIONS)
    base = (
        np.array([datetime(d.year, d.month, d.day, 14, 30, tzinfo=UTC).timestamp() for d in days], dtype=np.int64)
        * 1_000_000
    )
    starts = (base[:, None] + np.arange(BARS_PER_SESSION)[None, :] * 60_000_000).ravel()
    n = len(starts)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.0003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.0003, n)))
    columns = {
        "ticker": pa.array([ticker] * n),
        "interval": pa.array(["minute"] * n),
        "start": pa.array(starts, TIMESTAMP),
        "end": pa.array(starts + 60_000_000, TIMESTAMP),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": rng.lognormal(8, 0.5, n),
        "vwap": (open_ + close) / 2,
        "trades": rng.integers(10, 500, n),
        "source": pa.array(["bench"] * n),
    }
    table = pa.table(columns).select(BAR_SCHEMA.names).cast(BAR_SCHEMA)
    return table.append_column("ingested_at", pa.array([datetime.now(UTC)] * n, TIMESTAMP))


def ensure_lake(lake: Lake, tickers: list[str]) -> float:
    """Write the bars of the tickers the lake lacks; returns the seconds spent writing."""
    started = time.perf_counter()
    writer = BarWriter(lake)
    for i, ticker in enumerate(tickers):
        if len(bar_periods(lake, "minute", ticker)) >= SESSIONS:
            continue
        writer.write(year_of_minutes(ticker, i))
    return time.perf_counter() - started


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median and first wall time of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times[0], result


def measure(lake: Lake, ticker: str, max_bars: int, repeat: int) -> dict[str, Any]:
    """Time every read of the module docstring; returns the JSON-ready figures."""

    def prepared() -> tuple[int, int, str]:
        window = read_window(lake, ticker, "minute", None)
        shown, bucket = analysis.display_bars(window.bars, "minute", max_bars)
        return len(window.bars), len(shown), bucket.label

    def with_figure() -> int:
        window = read_window(lake, ticker, "minute", None)
        shown, bucket = analysis.display_bars(window.bars, "minute", max_bars)
        fig = charts.price_figure(shown, bucket, 60, f"{ticker} minute bars")
        return len(fig.to_json())

    def pruned() -> int:
        return lake.read_bars(ticker, "minute").num_rows

    def recent() -> int:
        return recent_bars(lake, ticker, "minute", 512).num_rows

    where = (ds.field("interval") == "minute") & (ds.field("ticker") == ticker)

    def full_row_filter() -> int:
        return tables.scan(lake, BARS, where=where).num_rows

    def full_then_filter() -> pa.Table:
        table = tables.scan(lake, BARS, columns=BAR_SCHEMA.names)
        mask = pc.and_(pc.equal(table["interval"], "minute"), pc.equal(table["ticker"], ticker))
        return table.filter(mask)

    def prepared_full_scan() -> int:
        shown, _ = analysis.display_bars(analysis.bars_frame(full_then_filter()), "minute", max_bars)
        return len(shown)

    prepared_s, prepared_first_s, (n_bars, n_candles, bucket) = timed(prepared, repeat)
    figure_s, _, _ = timed(with_figure, repeat)
    pruned_s, _, pruned_rows = timed(pruned, repeat)
    recent_s, _, recent_rows = timed(recent, max(repeat, 5))
    row_filter_s, _, row_filter_rows = timed(full_row_filter, repeat)
    scan_s, _, scan_table = timed(full_then_filter, repeat)
    unpruned_prepared_s, _, unpruned_candles = timed(prepared_full_scan, repeat)
    assert unpruned_candles == n_candles
    assert pruned_rows == row_filter_rows == scan_table.num_rows == n_bars, (pruned_rows, row_filter_rows, n_bars)
    assert recent_rows == 512
    files, size, rows = file_stats(lake, BARS)
    return {
        "bars_read": n_bars,
        "periods": len(bar_periods(lake, "minute", ticker)),
        "table_files": files,
        "table_bytes": size,
        "table_rows": rows,
        "candles_drawn": n_candles,
        "candle_bucket": bucket,
        "prepared_read_s": round(prepared_s, 3),
        "prepared_read_first_s": round(prepared_first_s, 3),
        "prepared_read_and_figure_s": round(figure_s, 3),
        "pruned_read_s": round(pruned_s, 3),
        "recent_512_s": round(recent_s, 4),
        "full_scan_row_filter_s": round(row_filter_s, 3),
        "full_scan_then_filter_s": round(scan_s, 3),
        "prepared_full_scan_s": round(unpruned_prepared_s, 3),
        "pruning_speedup_prepared": round(unpruned_prepared_s / prepared_s, 1) if prepared_s else None,
        "pruning_speedup_read": round(scan_s / pruned_s, 1) if pruned_s else None,
        "meets_target": figure_s < TARGET_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default=f"file://{tempfile.gettempdir()}/tickcast-bench-delta")
    parser.add_argument("--tickers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--optimize", action="store_true", help="also time the reads after optimize")
    args = parser.parse_args()

    settings = load_settings(lake={"url": args.lake})
    lake = Lake(settings.lake)
    tickers = [f"BN{chr(65 + i)}" for i in range(args.tickers)]
    steps = Steps()
    write_s = steps.step("write", lambda: ensure_lake(lake, tickers))
    max_bars = settings.dashboard.max_chart_bars
    result: dict[str, Any] = {
        "benchmark": "dashboard_read",
        "lake": lake.url,
        "tickers_in_lake": len(tickers),
        "target_s": TARGET_S,
        "repeat": args.repeat,
        "lake_write_s": None if write_s is None else round(write_s, 1),
    }
    if write_s is not None:
        result.update(steps.step("read", lambda: measure(lake, tickers[0], max_bars, args.repeat)) or {})
    targets = {"prepared_read_and_figure_s": target(result.get("prepared_read_and_figure_s"), "<", TARGET_S)}
    if args.optimize and write_s is not None:

        def after_optimize() -> dict[str, Any]:
            started = time.perf_counter()
            report = optimize(lake, BARS)
            result["optimize_s"] = round(time.perf_counter() - started, 1)
            return {
                **measure(lake, tickers[0], max_bars, args.repeat),
                "partitions_rewritten": report.partitions_rewritten,
            }

        result["after_optimize"] = steps.step("after_optimize", after_optimize)
        targets["after_optimize/prepared_read_and_figure_s"] = target(
            (result["after_optimize"] or {}).get("prepared_read_and_figure_s"), "<", TARGET_S
        )
    return finish(result, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
