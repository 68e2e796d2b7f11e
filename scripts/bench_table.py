#!/usr/bin/env python3
"""Render the README's benchmark table from the newest results file of ``make bench``.

``make bench`` (``scripts/run-benchmarks.sh``) writes ``bench/results/YYYY-MM-DD.json``: every
benchmark's JSON document with its status. This script picks the headline figures listed in
:data:`FIGURES` (a JSON path per figure, with its label and unit) and renders one Markdown
row per figure: benchmark, figure, value, target, met. A target a benchmark judged but
:data:`FIGURES` does not list still gets a row, so a missed target is never left out; a
failed benchmark gets a row saying so.

    scripts/bench_table.py             # print the block
    scripts/bench_table.py --write     # replace the block between the markers in README.md
    scripts/bench_table.py --check     # exit 1 if README.md's block differs from the rendering
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"
#: A results file's name: the UTC date of the run.
RESULT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}\.json$")
#: A failed benchmark's reason is cut to this many characters in the table.
REASON_CHARS = 120


@dataclass(frozen=True, slots=True)
class Figure:
    """One headline figure: where it is in a benchmark's JSON and how to show it.

    ``path`` is dotted keys; ``[key=value]`` picks the element of a list whose ``key`` equals
    ``value`` (``results[tickers=5000]``). ``target`` names the benchmark's entry in its
    ``targets`` section that judges this figure, if any. ``scale`` multiplies the value and
    the target's bound for display (seconds shown as milliseconds: 1000).
    """

    bench: str
    label: str
    path: str
    unit: str
    target: str | None = None
    scale: float = 1.0


F = Figure
#: The README's rows, in order.
FIGURES: tuple[Figure, ...] = (
    F("ingest", "synthetic producer into the broker", "summary.producer_bars_per_s", "bars/s", "producer_bars_per_s"),
    F("ingest", "producer / raw kafka-python send loop", "summary.producer_over_raw", "x", "producer_over_raw"),
    F("ingest", "Kafka's Java ProducerPerformance, JSON bars", "summary.java_bars_per_s", "records/s"),
    F("sink", "sink draining a topic into file://", "file.sustained_bars_per_s", "bars/s", "sustained_file_bars_per_s"),
    F("sink", "sink draining a topic into MinIO", "s3.sustained_bars_per_s", "bars/s", "sustained_s3_bars_per_s"),
    F("sink", "producer and sink at once, file://", "file.end_to_end_bars_per_s", "bars/s"),
    F("sink", "JSON / Parquet bytes per bar", "size_ratio_json_over_parquet", "x", "size_ratio_json_over_parquet"),
    F("lake", "sink into file://", "sink.file.sustained_bars_per_s", "bars/s", "sink_file_bars_per_s"),
    F("lake", "sink into MinIO", "sink.s3.sustained_bars_per_s", "bars/s", "sink_s3_bars_per_s"),
    F("lake", "JSON / Parquet bytes per bar after optimize", "size.json_over_parquet_after", "x",
      "json_over_parquet_bytes"),
    F("lake", "optimize of the whole bars table", "optimize.seconds", "s"),
    F("lake", "last 512 minute bars, p50", "reads_after.recent_512.p50_s", "ms", "recent_512_p50_s", 1000),
    F("lake", "all minute bars of a ticker, p50", "reads_after.minute_range.p50_s", "s", "minute_range_p50_s"),
    F("lake", "a year of daily bars, p50", "reads_after.day_year.p50_s", "ms", scale=1000),
    F("lake", "DuckDB count(*) of the table, p50", "reads_after.duckdb_count.p50_s", "s", "duckdb_count_p50_s"),
    F("lake_merge", "MERGE / append commit time, end of day", "merge_over_append_at_end_of_day", "x",
      "merge_over_append_at_end_of_day"),
    F("lake_merge", "append commit, end of day", "commit_seconds.append.last_fifth_median_s", "ms", scale=1000),
    F("lake_merge", "MERGE commit, end of day", "commit_seconds.merge.last_fifth_median_s", "ms", scale=1000),
    *(
        F("serve", f"{model} ({via}): {what}", f"modes.{mode}.models[model={model}].{path}", unit,
          f"{mode}/{model}/{name}" if name else None)
        for mode, via in (("optimized", "direct ingress"), ("proxy", "Serve's HTTP proxy"))
        for model in ("bolt-tiny", "bolt-small")
        for what, path, unit, name in (
            ("32-series requests / raw", "big_requests.ratio_to_raw", "x", "big_requests_ratio"),
            ("single-series requests, 128 clients / raw batched", "single_concurrent.ratio_to_raw", "x",
             "single_concurrent_ratio"),
            ("p50 overhead at low load", f"low_load.{mode.replace('optimized', 'direct')}.p50_overhead_ms", "ms",
             "low_load_p50_overhead_ms" if mode == "optimized" else None),
        )
    ),
    F("stream", "5,000 tickers spread over the minute: p99 bar to forecast",
      "results[tickers=5000].staggered.bar_to_forecast_p99_s", "s", "staggered_5000_bar_to_forecast_p99_s"),
    F("stream", "5,000 tickers spread over the minute: p50 bar to forecast",
      "results[tickers=5000].staggered.bar_to_forecast_p50_s", "s"),
    F("stream", "1,000 tickers spread: p99", "results[tickers=1000].staggered.bar_to_forecast_p99_s", "s"),
    F("stream", "5,000 bars closing at once: forecasts/s", "results[tickers=5000].aligned.forecasts_per_s", "/s"),
    F("stream", "5,000 bars closing at once: p99", "results[tickers=5000].aligned.bar_to_forecast_p99_s", "s"),
    F("calibration", "replay: 80% coverage, raw band", "coverage_raw", ""),
    F("calibration", "replay: 80% coverage, live-calibrated band (after 360 steps per key)",
      "coverage_calibrated_settled", "", "coverage_calibrated_settled_min"),
    F("calibration", "replay: WQL, raw band", "wql_raw", ""),
    F("calibration", "replay: WQL, live-calibrated band", "wql_calibrated", ""),
    F("scale", "Serve on 2 Ray nodes / 1 node", "serve_ratio", "x", "serve_two_nodes_over_one"),
    F("scale", "batch inference on 2 Ray nodes / 1 node", "batch_ratio", "x", "batch_two_nodes_over_one"),
    F("cpu", "bundled model: 1 torch thread / default threads", "models[model=bundled].variants.fp32_threads_1.speedup",
      "x"),
    F("cpu", "Bolt-tiny size: 1 torch thread / default threads",
      "models[model=bolt-tiny].variants.fp32_threads_1.speedup", "x"),
    F("train", "bundled preset, batch 32", "steps_per_s", "steps/s"),
    F("train", "bundled preset, batch 32", "series_per_s", "series/s"),
    F("dashboard_read", "a year of minute bars: read, prepare, chart", "prepared_read_and_figure_s", "s",
      "prepared_read_and_figure_s"),
    F("dashboard_read", "a year of minute bars: read_bars alone", "pruned_read_s", "s"),
)  # fmt: skip

_SELECT = re.compile(r"^(?P<key>[^\[]+)?\[(?P<field>[^=\]]+)=(?P<value>[^\]]+)\]$")


def lookup(document: Any, path: str) -> Any:
    """The value at ``path`` (see :class:`Figure`), or None where any part is missing."""
    node = document
    for part in path.split("."):
        match = _SELECT.match(part)
        key = match.group("key") if match else part
        if key is not None:
            node = node.get(key) if isinstance(node, dict) else None
        if match and isinstance(node, list):
            field, wanted = match.group("field"), match.group("value")
            node = next((item for item in node if isinstance(item, dict) and str(item.get(field)) == wanted), None)
        elif match:
            node = None
        if node is None:
            return None
    return node


def number(value: float) -> str:
    """A figure for a table: thousands separated when large, three significant digits when small."""
    if abs(value) >= 100 or (abs(value) >= 10 and value == int(value)):
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def with_unit(value: float, unit: str) -> str:
    """``value`` formatted, with its unit (``2.5x``, ``45,027 bars/s``)."""
    return f"{number(value)}{unit}" if unit == "x" else f"{number(value)} {unit}".strip()


def show_target(text: str | None, scale: float, unit: str) -> str:
    """A target such as ``">= 50000"`` in the figure's unit (``"<= 0.05"`` seconds as ``"<= 50 ms"``)."""
    if not text:
        return ""
    op, _, bound = text.partition(" ")
    try:
        return f"{op} {with_unit(float(bound) * scale, unit)}"
    except ValueError:
        return text


def met_cell(entry: dict[str, Any] | None, bench_failed: bool) -> str:
    """``yes``, ``**missed**``, ``not measured`` (``**failed**`` when the benchmark failed), or empty."""
    if entry is None:
        return ""
    if entry.get("met") is True:
        return "yes"
    if entry.get("met") is False:
        return "**missed**"
    return "**failed**" if bench_failed else "not measured"


def row(*cells: str) -> str:
    """One Markdown table row (pipes in cells escaped)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render(results: dict[str, Any], source: str) -> str:
    """The block between the markers: where the figures come from, then the table."""
    machine = results.get("machine", {})
    versions = results.get("versions", {})
    commit = (results.get("commit") or "unknown")[:10]
    # a BENCH_ONLY run merged into the day's file: some entries measured an earlier commit
    earlier = sorted(
        {(b.get("commit") or "unknown")[:10] for b in results.get("benches", {}).values() if b.get("commit")} - {commit}
    )
    also = f" (some entries: {', '.join(f'`{c}`' for c in earlier)})" if earlier else ""
    lines = [
        f"Generated by `scripts/bench_table.py` from `{source}` (`make bench` of {results.get('date')}, "
        f"commit `{commit}`{also}{' with uncommitted changes' if results.get('uncommitted_changes') else ''}; "
        f"{machine.get('cpus')} cores, {machine.get('cpu_model')}, {machine.get('memory_gib')} GiB; "
        f"Python {versions.get('python')}, torch {versions.get('torch')}). "
        "The command line, exit status and wall time of each benchmark are in that file.",
        "",
        row("benchmark", "figure", "value", "target", "met"),
        "| --- | --- | --- | --- | --- |",
    ]
    benches: dict[str, Any] = results.get("benches", {})
    listed = {f.bench for f in FIGURES}
    order = [f.bench for f in FIGURES] + [name for name in benches if name not in listed]
    for name in dict.fromkeys(order):
        bench = benches.get(name)
        cell = f"`bench/{name}.py`"
        if bench is None:
            continue  # not run this time (BENCH_ONLY); its rows appear when it is
        failed = bench.get("status") == "failed"
        if failed:
            reason = bench.get("failure") or f"exit {bench.get('exit_code')}"
            if len(reason) > REASON_CHARS:  # the whole reason is in the results file
                reason = reason[: REASON_CHARS - 1] + "…"
            lines.append(row(cell, "the run", f"failed: {reason}", "", "**failed**"))
        document = bench.get("result") or {}
        targets: dict[str, Any] = document.get("targets") or {}
        shown: set[str] = set()
        for fig in (f for f in FIGURES if f.bench == name):
            value = lookup(document, fig.path)
            entry = targets.get(fig.target) if fig.target else None
            if fig.target:
                shown.add(fig.target)
            if value is None and entry is None and not failed:
                continue  # a figure this run did not produce (other flags), and nothing judged it
            text = "—" if value is None else with_unit(float(value) * fig.scale, fig.unit)
            target_text = show_target(entry.get("target") if entry else None, fig.scale, fig.unit)
            # a failed run may have judged nothing: its judged figures read "failed", not blank
            met = met_cell(entry if entry or not fig.target else {"met": None}, failed)
            lines.append(row(cell, fig.label, text, target_text, met))
        for target_name, entry in targets.items():  # judged but not listed above: never hide it
            if target_name in shown:
                continue
            value = entry.get("value")
            lines.append(
                row(
                    cell,
                    target_name,
                    "—" if value is None else number(float(value)),
                    show_target(entry.get("target"), 1.0, ""),
                    met_cell(entry, failed),
                )
            )
    return "\n".join(lines) + "\n"


def newest(folder: Path = RESULTS) -> Path:
    """The newest results file (by its date name) under ``folder``."""
    files = sorted(p for p in folder.glob("*.json") if RESULT_NAME.match(p.name))
    if not files:
        raise SystemExit(f"no results file in {folder}: run `make bench` first")
    return files[-1]


def block(readme: str) -> tuple[int, int] | None:
    """The start and end offsets of the text between the markers, or None without markers."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        return None
    return start + len(START), end


def splice(readme: str, rendered: str) -> str:
    """``readme`` with the text between the markers replaced by ``rendered``."""
    span = block(readme)
    if span is None:
        raise SystemExit(f"README has no {START} ... {END} markers: add them where the table goes")
    return readme[: span[0]] + "\n" + rendered + readme[span[1] :]


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the README's benchmark block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the block in the README")
    mode.add_argument("--check", action="store_true", help="exit 1 if the README's block differs")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--results", type=Path, help="a results file (default: the newest under bench/results/)")
    args = parser.parse_args(argv)
    path = args.results or newest()
    try:
        source = str(path.resolve().relative_to(REPO))
    except ValueError:
        source = str(path)
    rendered = render(json.loads(path.read_text()), source)
    if not (args.write or args.check):
        print(rendered, end="")
        return 0
    readme = args.readme.read_text()
    updated = splice(readme, rendered)
    if args.write:
        args.readme.write_text(updated)
        return 0
    if updated != readme:
        print(
            f"{args.readme}'s benchmark table differs from {source}: run `scripts/bench_table.py --write`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
