"""Benchmark: the lake's Delta tables at the scale of issue 14's acceptance, in one run.

1. ``sink``: one sink (:class:`consumer.sink.Sink`) writing minute bars from the real
   broker into ``file://`` and into MinIO (the ``sustained`` mode of ``bench/sink.py``,
   whose code this imports): bars/s from its first record to its last commit.
2. ``build``: a lake of ``tickers`` x ``years`` of daily bars plus ``tickers`` x
   ``minute_days`` days of minute bars (390 a day) from the producer's synthetic market,
   written the way a live system would through :class:`tickcast.lake.BarWriter`: minute
   bars one commit per ``--minutes-per-commit`` minutes across all tickers, daily bars one
   commit per year across all tickers. Many small files, many commits.
3. ``before`` / ``after``: the bars table's data files, bytes and rows (from its Delta log)
   before and after :func:`tickcast.lake.maintenance.optimize`, the optimize time, Parquet
   bytes per bar against the same bars as JSON lines (``Bar.to_json`` plus a newline,
   measured on a sample of tickers), and the reads, p50 and p95 over ``reps`` repetitions
   on random tickers, on both sides of the optimize:

   - ``recent_512``: one ticker's last 512 minute bars (:func:`tickcast.lake.recent_bars`);
   - ``day_year``: a year of one ticker's daily bars (:func:`tickcast.lake.read_bars`);
   - ``minute_range``: all of one ticker's minute bars (:func:`read_bars`): the lake holds
     ``minute_days`` days of them, so this stands for "a year of minute bars" at the range
     the lake has (``year_estimate_s`` extrapolates to 252 sessions from it and from
     ``minute_day``, one ticker's minute bars of one day);
   - ``duckdb_count``: ``count(*)`` of the whole bars table by DuckDB over the table's Arrow
     dataset from ``deltalake`` (a reader that is not tickcast code; DuckDB's own ``delta``
     extension needs a download); after optimize DuckDB also checks that no key is twice.

Targets (issue 14): sink >= 50,000 bars/s on ``file://`` and >= 25,000 on MinIO; Parquet
bytes per bar <= 1/5 of JSON after optimize; after optimize, ``recent_512`` p50 <= 50 ms,
``minute_range`` p50 <= 0.5 s, ``duckdb_count`` p50 <= 2 s. The old Hive layout's code is
not measured beside them: it is no longer importable as a lake.

Prints one JSON document (also to ``--out``). Exits 1 when a target is missed, 2 when a
step crashed (``errors`` says which and why), 0 otherwise. The machine may be shared: the
load average is recorded at each step.

    .venv/bin/python bench/lake.py --bootstrap 127.0.0.1:19092 --s3-endpoint http://127.0.0.1:19000
    .venv/bin/python bench/lake.py --preset smoke        # seconds; no broker needed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sink as sink_bench
from _common import Steps, finish, run_main, target

from producer.synthetic import SyntheticMarket, ticker_names
from tickcast.lake import BAR_SCHEMA, BARS, BarWriter, Lake, read_bars, recent_bars, table_to_bars, tables
from tickcast.lake.maintenance import file_stats, optimize
from tickcast.lake.specs import TIMESTAMP
from tickcast.settings import load_settings

MINUTES_PER_DAY = 390


@dataclass(frozen=True, slots=True)
class Preset:
    """The sizes of one run."""

    tickers: int
    years: int
    minute_days: int
    reps: int
    count_reps: int
    sink: bool
    sink_records: int
    json_sample_tickers: int


PRESETS = {
    "full": Preset(500, 20, 20, 30, 10, True, 300_000, 5),
    "smoke": Preset(20, 1, 2, 5, 3, False, 0, 2),
}

#: name -> (comparison, bound): the issue's acceptance targets.
TARGETS: dict[str, tuple[str, float]] = {
    "sink_file_bars_per_s": (">=", 50_000),
    "sink_s3_bars_per_s": (">=", 25_000),
    "json_over_parquet_bytes": (">=", 5.0),
    "recent_512_p50_s": ("<=", 0.050),
    "minute_range_p50_s": ("<=", 0.5),
    "duckdb_count_p50_s": ("<=", 2.0),
}

FIRST_DAY = date(2005, 1, 3)
#: The first session of minute bars (a Monday in the full preset's last year of daily bars).
MINUTE_FIRST_DAY = date(2024, 3, 4)


def load() -> float:
    """The 1-minute load average, rounded."""
    return round(os.getloadavg()[0], 2)


# -- the lake -------------------------------------------------------------------------------


def steps_table(names: np.ndarray, interval: str, steps: list[Any], ingested_at: datetime) -> pa.Table:
    """Bar rows (:data:`BAR_SCHEMA` plus ``ingested_at``) of some market steps, all tickers each, vectorised."""
    k, n = len(steps), len(names)
    starts = np.repeat(np.array([int(s.start.timestamp() * 1_000_000) for s in steps], dtype=np.int64), n)
    ends = np.repeat(np.array([int(s.end.timestamp() * 1_000_000) for s in steps], dtype=np.int64), n)

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in steps])

    table = pa.table(
        {
            "ticker": pa.array(np.tile(names, k)),
            "interval": pa.array([interval] * (k * n)),
            "start": pa.array(starts, TIMESTAMP),
            "end": pa.array(ends, TIMESTAMP),
            "open": column("open"),
            "high": column("high"),
            "low": column("low"),
            "close": column("close"),
            "volume": column("volume"),
            "vwap": column("vwap"),
            "trades": column("trades").astype(np.int64),
            "source": pa.array(["synthetic"] * (k * n)),
        }
    )
    table = table.select(BAR_SCHEMA.names).cast(BAR_SCHEMA)
    return table.append_column("ingested_at", pa.array(np.full(k * n, int(ingested_at.timestamp() * 1e6)), TIMESTAMP))


def daily_batches(tickers: tuple[str, ...], years: int) -> Iterator[pa.Table]:
    """A year of daily bars of every ticker per batch, ``years`` batches from :data:`FIRST_DAY`."""
    market = SyntheticMarket(tickers, "day", start=FIRST_DAY, seed=11)
    names = np.array(tickers)
    pending: list[Any] = []
    step = market.step()
    for year in range(FIRST_DAY.year, FIRST_DAY.year + years):
        while step.start.year == year:
            pending.append(step)
            step = market.step()
        yield steps_table(names, "day", pending, datetime.now(UTC))
        pending = []


def minute_batches(tickers: tuple[str, ...], days: int, minutes_per_commit: int) -> Iterator[pa.Table]:
    """``days`` sessions of minute bars of every ticker, ``minutes_per_commit`` minutes per batch
    (a session's last batch may be shorter: a commit never spans two days)."""
    market = SyntheticMarket(tickers, "minute", start=MINUTE_FIRST_DAY, seed=13)
    names = np.array(tickers)
    for _ in range(days):
        done = 0
        while done < MINUTES_PER_DAY:
            k = min(minutes_per_commit, MINUTES_PER_DAY - done)
            yield steps_table(names, "minute", [market.step() for _ in range(k)], datetime.now(UTC))
            done += k


def build(lake: Lake, preset: Preset, minutes_per_commit: int) -> dict[str, Any]:
    """Write the daily then the minute bars through one :class:`BarWriter`; returns timings."""
    tickers = ticker_names(preset.tickers)
    writer = BarWriter(lake)
    out: dict[str, Any] = {}
    for interval, batches in (
        ("day", daily_batches(tickers, preset.years)),
        ("minute", minute_batches(tickers, preset.minute_days, minutes_per_commit)),
    ):
        rows = commits = 0
        generate_s = write_s = 0.0
        started = time.perf_counter()
        for batch in batches:
            generated = time.perf_counter()
            generate_s += generated - started
            result = writer.write(batch)
            assert not result.merged, "fresh bars were merged: BarWriter's high-water marks are wrong"
            started = time.perf_counter()
            write_s += started - generated
            rows += batch.num_rows
            commits += 1
        out[interval] = {
            "rows": rows,
            "commits": commits,
            "generate_s": round(generate_s, 2),
            "write_s": round(write_s, 2),
            "bars_per_s": round(rows / write_s) if write_s else None,
        }
    out["table_version"] = tables.table_version(lake, BARS)
    out["load"] = load()
    return out


def table_figures(lake: Lake) -> dict[str, Any]:
    """Data files, bytes and rows of the bars table, in all and per interval (from the Delta log)."""
    files, size, rows = file_stats(lake, BARS)
    out: dict[str, Any] = {"files": files, "bytes": size, "rows": rows}
    table = tables.open_table(lake, BARS)
    if table is not None and files:
        actions = tables.add_actions(table)
        for interval in sorted(set(actions["partition.interval"].to_pylist())):
            part = actions.filter(pc.equal(actions["partition.interval"], interval))
            n = int(pc.sum(part["num_records"]).as_py())
            size = int(pc.sum(part["size_bytes"]).as_py())
            out[interval] = {
                "files": part.num_rows,
                "partitions": len(set(part["partition.period"].to_pylist())),
                "bytes": size,
                "rows": n,
                "bytes_per_bar": round(size / n, 2) if n else None,
            }
    out["bytes_per_bar"] = round(out["bytes"] / rows, 2) if rows else None
    return out


def json_bytes_per_bar(lake: Lake, tickers: list[str]) -> dict[str, Any]:
    """Mean bytes of a bar as a JSON line (``Bar.to_json`` + newline), per interval, on all of some tickers' bars."""
    out: dict[str, Any] = {}
    for interval in ("day", "minute"):
        sizes = [len(bar.to_json()) + 1 for t in tickers for bar in table_to_bars(read_bars(lake, t, interval))]
        out[interval] = round(statistics.fmean(sizes), 2) if sizes else None
        out[f"{interval}_sample_bars"] = len(sizes)
    return out


# -- reads ----------------------------------------------------------------------------------


def timed(fn: Callable[[str], int], tickers: list[str], reps: int, expect: int | None) -> dict[str, Any]:
    """p50, p95 and max wall time of ``fn`` over ``reps`` random tickers; checks the row count."""
    rng = random.Random(7)
    times, rows = [], 0
    for _ in range(reps):
        ticker = rng.choice(tickers)
        started = time.perf_counter()
        rows = fn(ticker)
        times.append(time.perf_counter() - started)
        if expect is not None and rows != expect:
            raise AssertionError(f"{fn.__name__}({ticker}) returned {rows} rows, expected {expect}")
    return {
        "p50_s": round(float(np.percentile(times, 50)), 4),
        "p95_s": round(float(np.percentile(times, 95)), 4),
        "max_s": round(max(times), 4),
        "reps": reps,
        "rows": rows,
    }


def duckdb_count(lake: Lake) -> int:
    """``count(*)`` of the bars table by DuckDB over ``deltalake``'s Arrow dataset of its latest version."""
    import duckdb
    from deltalake import DeltaTable

    dataset = DeltaTable(lake.table_uri(BARS.name), storage_options=lake.storage_options).to_pyarrow_dataset()
    with duckdb.connect() as con:
        con.register("bars", dataset)
        row = con.execute("SELECT count(*) FROM bars").fetchone()
    assert row is not None
    return int(row[0])


def duckdb_duplicate_keys(lake: Lake) -> int:
    """Rows beyond the first of each key ``(ticker, interval, start)``, counted by DuckDB."""
    import duckdb
    from deltalake import DeltaTable

    dataset = DeltaTable(lake.table_uri(BARS.name), storage_options=lake.storage_options).to_pyarrow_dataset()
    with duckdb.connect() as con:
        con.register("bars", dataset)
        row = con.execute('SELECT count(*) - count(DISTINCT (ticker, "interval", start)) FROM bars').fetchone()
    assert row is not None
    return int(row[0])


def reads(lake: Lake, preset: Preset, rows: int) -> dict[str, Any]:
    """Time the reads of the module docstring on the lake as it stands."""
    tickers = list(ticker_names(preset.tickers))
    last_year = FIRST_DAY.year + preset.years - 1
    year = min(FIRST_DAY.year + 10, last_year)
    first, after = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    day_rows: int = read_bars(lake, tickers[0], "day", first, after).num_rows  # every ticker trades every session

    def recent_512(ticker: str) -> int:
        return recent_bars(lake, ticker, "minute", 512).num_rows

    def day_year(ticker: str) -> int:
        return read_bars(lake, ticker, "day", first, after).num_rows

    def minute_range(ticker: str) -> int:
        return read_bars(lake, ticker, "minute").num_rows

    day = datetime(MINUTE_FIRST_DAY.year, MINUTE_FIRST_DAY.month, MINUTE_FIRST_DAY.day, tzinfo=UTC)

    def minute_day(ticker: str) -> int:
        return read_bars(lake, ticker, "minute", day, day + timedelta(days=1)).num_rows

    def count(_ticker: str) -> int:
        return duckdb_count(lake)

    minute_rows = preset.minute_days * MINUTES_PER_DAY
    out: dict[str, Any] = {
        "recent_512": timed(recent_512, tickers, preset.reps, min(512, minute_rows)),
        "day_year": timed(day_year, tickers, preset.reps, day_rows),
        "minute_range": timed(minute_range, tickers, preset.reps, minute_rows),
        "minute_day": timed(minute_day, tickers, preset.reps, MINUTES_PER_DAY),
        "duckdb_count": timed(count, tickers, preset.count_reps, rows),
    }
    out["day_year"]["year"] = year
    out["minute_range"]["days"] = preset.minute_days
    # each day partition read adds about the same: a year of 252 sessions costs about this much
    one, days = out["minute_day"]["p50_s"], preset.minute_days
    # never below zero: with few days (the smoke preset) timing noise can exceed the difference
    per_day = max(0.0, (out["minute_range"]["p50_s"] - one) / (days - 1)) if days > 1 else one
    out["minute_range"]["year_estimate_s"] = round(one + per_day * 251, 3)
    out["load"] = load()
    return out


# -- the run --------------------------------------------------------------------------------


def sink_figures(run: Steps, args: argparse.Namespace, preset: Preset) -> dict[str, Any]:
    """Sustained sink throughput into file:// and (with an endpoint) MinIO, via bench/sink.py."""
    sink_bench.quiet_logs()
    overrides: dict[str, Any] = {}
    if args.bootstrap:
        overrides["kafka"] = {"bootstrap_servers": args.bootstrap}
    base = load_settings(**overrides)
    records = sink_bench.synthetic(args.sink_records or preset.sink_records, args.sink_tickers)
    out: dict[str, Any] = {
        "records": len(records),
        "tickers": args.sink_tickers,
        "partitions": args.sink_partitions,
        "rounds": args.sink_rounds,
        "flush_records": base.consumer.flush_records,
    }

    def measure(url: str, settings: Any) -> dict[str, Any]:
        return sink_bench.measure(
            settings, url, records, args.sink_partitions, args.sink_tickers, args.sink_rounds, modes=("sustained",)
        )

    with tempfile.TemporaryDirectory(prefix="bench-lake-sink-") as tmp:
        out["file"] = run.step("sink_file", lambda: measure(f"file://{tmp}", base))
    if args.s3_endpoint:

        def on_s3() -> dict[str, Any]:
            settings = sink_bench.s3_settings(base, args.s3_endpoint, args.s3_key, args.s3_secret)
            with sink_bench.s3_bucket(args.s3_endpoint, args.s3_key, args.s3_secret, prefix="bench-lake") as bucket:
                return measure(f"s3://{bucket}/lake", settings)

        out["s3"] = run.step("sink_s3", on_s3)
    else:
        out["s3"] = None  # its target reads "not measured" (met: null)
    return out


def check_targets(out: dict[str, Any]) -> dict[str, Any]:
    """Each target's bound, value and whether it is met (None: not measured)."""
    sink = out.get("sink") or {}
    after = out.get("reads_after") or {}
    values: dict[str, float | None] = {
        "sink_file_bars_per_s": (sink.get("file") or {}).get("sustained_bars_per_s"),
        "sink_s3_bars_per_s": (sink.get("s3") or {}).get("sustained_bars_per_s"),
        "json_over_parquet_bytes": out.get("size", {}).get("json_over_parquet_after"),
        "recent_512_p50_s": (after.get("recent_512") or {}).get("p50_s"),
        "minute_range_p50_s": (after.get("minute_range") or {}).get("p50_s"),
        "duckdb_count_p50_s": (after.get("duckdb_count") or {}).get("p50_s"),
    }
    return {name: target(values[name], op, bound) for name, (op, bound) in TARGETS.items()}


def main() -> int:
    """Run the benchmark, print the JSON; the exit status says whether every target was met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument(
        "--lake",
        help="an empty lake URL to build in, credentials from TICKCAST_LAKE__* "
        "(default: a temporary folder, deleted afterwards)",
    )
    parser.add_argument("--minutes-per-commit", type=int, default=20, help="minute bars: minutes per commit")
    parser.add_argument("--skip-sink", action="store_true", help="skip the sink throughput (no broker)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: TICKCAST_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--s3-endpoint", help="MinIO/S3 endpoint for the sink, e.g. http://127.0.0.1:19000")
    parser.add_argument("--s3-key", default="tickcast")
    parser.add_argument("--s3-secret", default="tickcast-local-only")
    parser.add_argument("--sink-records", type=int, default=0, help="records per sink round (default: the preset's)")
    parser.add_argument("--sink-tickers", type=int, default=100)
    parser.add_argument("--sink-partitions", type=int, default=3)
    parser.add_argument("--sink-rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args()
    preset = PRESETS[args.preset]

    run = Steps()
    out: dict[str, Any] = {
        "preset": args.preset,
        "sizes": asdict(preset),
        "minutes_per_commit": args.minutes_per_commit,
        "cpus": os.cpu_count(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    if preset.sink and not args.skip_sink:
        out["sink"] = run.step("sink", lambda: sink_figures(run, args, preset))
    else:
        out["sink"] = None

    tmp = None if args.lake else tempfile.mkdtemp(prefix="bench-lake-")
    lake = Lake(load_settings(lake={"url": args.lake or f"file://{tmp}"}).lake)
    try:
        out["build"] = run.step("build", lambda: build(lake, preset, args.minutes_per_commit))
        if out["build"] is not None:
            out["before"] = run.step("before", lambda: table_figures(lake))
            rows = (out["before"] or {}).get("rows", 0)
            out["reads_before"] = run.step("reads_before", lambda: reads(lake, preset, rows))

            def timed_optimize() -> dict[str, Any]:
                started = time.perf_counter()
                # min_files=1 (`tickcast lake optimize --min-files 1`): the daily partitions
                # hold one file each (one commit a year), written in time order; sort them too
                report = optimize(lake, BARS, min_files=1)
                return {"seconds": round(time.perf_counter() - started, 2), "load": load(), **report.to_dict()}

            out["optimize"] = run.step("optimize", timed_optimize)
            out["after"] = run.step("after", lambda: table_figures(lake))
            rows_after = (out["after"] or {}).get("rows", 0)
            out["reads_after"] = run.step("reads_after", lambda: reads(lake, preset, rows_after))
            out["duplicate_keys_after"] = run.step("duplicate_keys", lambda: duckdb_duplicate_keys(lake))
            if out["duplicate_keys_after"]:
                run.errors["duplicate_keys"] = f"{out['duplicate_keys_after']} rows repeat a key after optimize"
            sample = list(ticker_names(preset.tickers))[: preset.json_sample_tickers]
            json_sizes = run.step("json_size", lambda: json_bytes_per_bar(lake, sample))
            out["size"] = size_figures(json_sizes, out.get("before"), out.get("after"))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    out["notes"] = [
        "p50/p95 over random tickers; every read opens the table's latest version (log replay included)",
        "minute_range is all minute bars the lake holds for a ticker (minute_days days), the figure for "
        "'a year of minute bars' at this lake's range; its year_estimate_s is minute_day's p50 plus 251 "
        "times the cost each further day adds (one data file per day partition is read)",
        "optimize runs with min_files=1 so that single-file partitions (the daily bars, one commit a "
        "year) are sorted by ticker too",
        "the old Hive-partitioned layout is not measured beside these: its code is no longer a lake",
    ]
    out["load_end"] = [round(x, 2) for x in os.getloadavg()]
    status = finish(out, check_targets(out), run.errors)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return status


def size_figures(
    json_sizes: dict[str, Any] | None, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any]:
    """Bytes per bar as JSON lines and as Parquet (before and after optimize), and their ratio."""
    out: dict[str, Any] = {"json": json_sizes}
    if not json_sizes or not before or not after:
        return out
    rows = {i: (after.get(i) or {}).get("rows", 0) for i in ("day", "minute")}
    total = sum(rows.values())
    json_total = sum(rows[i] * (json_sizes[i] or 0) for i in rows)
    out["json_bytes_per_bar"] = round(json_total / total, 2) if total else None
    out["parquet_bytes_per_bar_before"] = before["bytes_per_bar"]
    out["parquet_bytes_per_bar_after"] = after["bytes_per_bar"]
    if out["json_bytes_per_bar"] and after["bytes_per_bar"]:
        out["json_over_parquet_before"] = round(out["json_bytes_per_bar"] / before["bytes_per_bar"], 2)
        out["json_over_parquet_after"] = round(out["json_bytes_per_bar"] / after["bytes_per_bar"], 2)
    return out


if __name__ == "__main__":
    sys.exit(run_main(main))
