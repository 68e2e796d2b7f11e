"""The dated results file of ``make bench``: every benchmark's JSON, its status, and the machine.

``scripts/run-benchmarks.sh`` calls ``start`` first (the commit and whether the tree has
uncommitted changes: the code measured is the code at the start), ``add`` after each
benchmark (its command line, exit status, wall time, and the files its stdout and stderr
were saved to) and ``write`` at the end, which combines them into
``bench/results/YYYY-MM-DD.json`` (the UTC date the run started; a file of the same date is
replaced, or with ``--merge`` (``BENCH_ONLY=...``) updated: the benchmarks run now replace
theirs, the others keep their entries, each entry naming the commit it measured).
``scripts/bench_table.py`` renders the README's benchmark table from the newest
such file.

A benchmark's status: ``ok`` (exit 0), ``missed`` (exit 1 and a JSON document whose targets
say which were missed), ``failed`` (anything else: a crashed mode, exit 2, no JSON, a
signal). A failed benchmark is recorded, never dropped.

    .venv/bin/python bench/_results.py add --runs RUNS --name ingest --rc 1 --started T0 --ended T1 \\
        --stdout test-artifacts/bench-ingest.json --stderr test-artifacts/bench-ingest.log -- ARGS...
    .venv/bin/python bench/_results.py write --runs RUNS --out bench/results/2025-01-31.json --date 2025-01-31 \
        --started T0 --commit SHA --dirty no
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Packages whose versions the figures depend on.
PACKAGES = ("torch", "chronos-forecasting", "ray", "deltalake", "pyarrow", "kafka-python", "duckdb", "streamlit")
#: Characters of a failed benchmark's stderr kept in the results file (its traceback's end).
STDERR_TAIL = 2000


def status(exit_code: int, result: dict[str, Any] | None) -> str:
    """``ok``, ``missed`` or ``failed``, from the exit status and the JSON document (see the module doc)."""
    if result is None:
        return "failed"
    missed = any(t.get("met") is False for t in (result.get("targets") or {}).values() if isinstance(t, dict))
    if exit_code == 0 and not result.get("errors"):
        return "ok"
    if exit_code == 1 and missed and not result.get("errors"):
        return "missed"
    return "failed"


def parse_output(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The benchmark's JSON document from its stdout, or None and why not."""
    if not text.strip():
        return None, "printed nothing on stdout"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"stdout is not one JSON document ({exc})"
    if not isinstance(document, dict):
        return None, "stdout is JSON but not an object"
    return document, None


def add(args: argparse.Namespace) -> None:
    """Append one benchmark's run to the runs file (one JSON object per line)."""
    result, problem = parse_output(Path(args.stdout).read_text() if Path(args.stdout).exists() else "")
    stderr = Path(args.stderr).read_text(errors="replace") if args.stderr and Path(args.stderr).exists() else ""
    entry: dict[str, Any] = {
        "name": args.name,
        "command": [".venv/bin/python", f"bench/{args.name}.py", *args.command],
        "exit_code": args.rc,
        "wall_s": round(args.ended - args.started, 1),
        "status": status(args.rc, result),
        "result": result,
    }
    if entry["status"] == "failed":
        entry["failure"] = problem or (
            "; ".join(f"{k}: {v}" for k, v in (result or {}).get("errors", {}).items()) or f"exit {args.rc}"
        )
        entry["stderr_tail"] = stderr[-STDERR_TAIL:]
    with Path(args.runs).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")


def git(*argv: str) -> str:
    """A git command's output in the repository, stripped ("" when git is not there)."""
    try:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def dirty() -> str:
    """Tracked files with uncommitted changes, as ``git status --porcelain`` lists them."""
    return git("status", "--porcelain", "--untracked-files=no")


def start(args: argparse.Namespace) -> None:
    """Print ``COMMIT DIRTY`` as the run starts: the code measured is the code at the start."""
    print(git("rev-parse", "HEAD") or "unknown", "yes" if dirty() else "no")


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model (from /proc on Linux) and the OS."""
    out: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    if cpuinfo.exists():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        out["cpu_model"] = models[0] if models else platform.processor() or None
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                out["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)  # /proc/meminfo counts KiB
    return out


def versions() -> dict[str, str | None]:
    """Python's and the measured packages' versions (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write(args: argparse.Namespace) -> None:
    """Combine the runs file into the dated results file."""
    runs = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    commit = args.commit or git("rev-parse", "HEAD") or None
    benches = {run.pop("name"): {**run, "commit": commit} for run in runs}
    out = Path(args.out)
    if args.merge and out.exists():
        earlier = json.loads(out.read_text())
        kept = {
            name: {**run, "commit": run.get("commit", earlier.get("commit"))}
            for name, run in earlier.get("benches", {}).items()
            if name not in benches
        }
        benches = {**kept, **benches}
    document = {
        "date": args.date,
        "started_at": datetime.fromtimestamp(args.started, UTC).isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,  # of this run; each bench entry names the commit it measured
        # the figures belong to the commit plus uncommitted changes, if there were any
        "uncommitted_changes": args.dirty if args.dirty is not None else bool(dirty()),
        "machine": machine(),
        "versions": versions(),
        "statuses": {name: run["status"] for name, run in benches.items()},
        "benches": benches,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {out} ({', '.join(f'{k} {v}' for k, v in document['statuses'].items())})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``add`` one run or ``write`` the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_add = sub.add_parser("add", help="record one benchmark's run")
    p_add.add_argument("--runs", required=True, help="the runs file (JSON lines) of this `make bench`")
    p_add.add_argument("--name", required=True)
    p_add.add_argument("--rc", type=int, required=True)
    p_add.add_argument("--started", type=float, required=True, help="epoch seconds")
    p_add.add_argument("--ended", type=float, required=True, help="epoch seconds")
    p_add.add_argument("--stdout", required=True, help="the file its stdout was saved to")
    p_add.add_argument("--stderr", help="the file its stderr was saved to")
    p_add.add_argument("command", nargs="*", help="the benchmark's arguments")
    p_write = sub.add_parser("write", help="write the dated results file")
    p_write.add_argument("--runs", required=True)
    p_write.add_argument("--out", required=True)
    p_write.add_argument("--date", required=True, help="YYYY-MM-DD, UTC, the day the run started")
    p_write.add_argument("--started", type=float, required=True, help="epoch seconds")
    p_write.add_argument("--commit", help="the commit at the start of the run, from `start` (default: HEAD now)")
    p_write.add_argument(
        "--dirty",
        type=lambda text: {"yes": True, "no": False}[text],
        help="yes/no: uncommitted changes at the start, from `start` (default: looked up now)",
    )
    p_write.add_argument(
        "--merge", action="store_true", help="keep the entries of benchmarks not run now (a BENCH_ONLY run)"
    )
    sub.add_parser("start", help="print the commit and whether the tree has uncommitted changes")
    args = parser.parse_args(argv)
    {"add": add, "write": write, "start": start}[args.action](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
