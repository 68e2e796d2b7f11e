"""The committed benchmark results, the README's table generated from them, and benchmark exit statuses.

No timings are checked (the machine is shared): what is checked is that the README shows
what the newest results file holds, that the file covers every benchmark `make bench` runs,
that a missed target or a failed benchmark reads as such, and that a benchmark says so in
its exit status.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run-benchmarks.sh"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench_table = _load("bench_table", REPO / "scripts" / "bench_table.py")
common = _load("bench_common", REPO / "bench" / "_common.py")
results_mod = _load("bench_results", REPO / "bench" / "_results.py")


def _script_benches() -> list[str]:
    """The benchmarks scripts/run-benchmarks.sh runs, in order (its `run NAME ...` lines)."""
    names = re.findall(r"^run (\w+)", SCRIPT.read_text(), flags=re.MULTILINE)
    assert names, f"no `run NAME` lines found in {SCRIPT}"
    return names


# -- the committed results and the README ---------------------------------------------------


def test_readme_table_is_generated_from_the_newest_results() -> None:
    newest = bench_table.newest()
    readme = (REPO / "README.md").read_text()
    span = bench_table.block(readme)
    assert span is not None, (
        f"README.md has no {bench_table.START} ... {bench_table.END} markers: add them where the "
        "benchmark table goes and run `scripts/bench_table.py --write`"
    )
    rendered = bench_table.render(json.loads(newest.read_text()), str(newest.relative_to(REPO)))
    assert readme[span[0] : span[1]] == "\n" + rendered, (
        f"README.md's benchmark table differs from {newest.relative_to(REPO)}: run `scripts/bench_table.py --write`"
    )


def test_newest_results_cover_every_benchmark_make_bench_runs() -> None:
    newest = bench_table.newest()
    results = json.loads(newest.read_text())
    assert newest.name == f"{results['date']}.json"
    assert re.fullmatch(r"[0-9a-f]{40}", results["commit"])
    assert results["machine"]["cpus"] >= 1 and results["machine"]["memory_gib"] > 0 and results["machine"]["cpu_model"]
    assert results["versions"]["python"] and results["versions"]["torch"]
    assert set(results["benches"]) == set(_script_benches()), "run `make bench` to record every benchmark"
    for name, bench in results["benches"].items():
        assert bench["command"][:2] == [".venv/bin/python", f"bench/{name}.py"], name
        assert isinstance(bench["exit_code"], int) and bench["wall_s"] >= 0, name
        assert bench["status"] in ("ok", "missed", "failed"), name
        assert bench["status"] == results_mod.status(bench["exit_code"], bench["result"]), name
        assert results["statuses"][name] == bench["status"]


def test_every_listed_figure_is_in_the_newest_results() -> None:
    """A figure renamed in a benchmark's JSON would show as "—" in the README: catch it here."""
    results = json.loads(bench_table.newest().read_text())
    missing = []
    for figure in bench_table.FIGURES:
        bench = results["benches"].get(figure.bench)
        if bench is None or bench["status"] == "failed":
            continue  # a failed run's figures may be missing; its row says it failed
        if bench_table.lookup(bench["result"], figure.path) is None:
            missing.append(f"{figure.bench}: {figure.path}")
        if figure.target and figure.target not in bench["result"]["targets"]:
            missing.append(f"{figure.bench}: target {figure.target}")
    assert not missing, missing


# -- rendering ------------------------------------------------------------------------------


def _synthetic() -> dict[str, Any]:
    """A results file with a met target, a missed one, an unlisted one, and a failed benchmark."""
    return {
        "date": "2030-01-02",
        "commit": "0" * 40,
        "uncommitted_changes": False,
        "machine": {"cpus": 2, "cpu_model": "Test CPU", "memory_gib": 8.0},
        "versions": {"python": "3.11.0", "torch": "2.0.0"},
        "benches": {
            "lake_merge": {
                "command": [".venv/bin/python", "bench/lake_merge.py"],
                "exit_code": 1,
                "wall_s": 3.0,
                "status": "missed",
                "result": {
                    "merge_over_append_at_end_of_day": 1.5,
                    "commit_seconds": {"append": {"last_fifth_median_s": 0.02}},
                    "targets": {
                        "merge_over_append_at_end_of_day": {"value": 1.5, "target": ">= 2", "met": False},
                        "something_new": {"value": 7, "target": "<= 5", "met": False},
                    },
                    "errors": {},
                },
            },
            "dashboard_read": {
                "command": [".venv/bin/python", "bench/dashboard_read.py"],
                "exit_code": 0,
                "wall_s": 9.0,
                "status": "ok",
                "result": {
                    "prepared_read_and_figure_s": 0.9,
                    "targets": {"prepared_read_and_figure_s": {"value": 0.9, "target": "< 2", "met": True}},
                    "errors": {},
                },
            },
            "stream": {
                "command": [".venv/bin/python", "bench/stream.py"],
                "exit_code": 2,
                "wall_s": 1.0,
                "status": "failed",
                "failure": "printed nothing on stdout",
                "result": None,
            },
        },
    }


def _rows(text: str, bench: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| `bench/{bench}.py` |")]


def test_rendering_shows_missed_and_failed() -> None:
    text = bench_table.render(_synthetic(), "bench/results/2030-01-02.json")
    merge = _rows(text, "lake_merge")
    assert merge[0] == "| `bench/lake_merge.py` | MERGE / append commit time, end of day | 1.5x | >= 2x | **missed** |"
    assert "| append commit, end of day | 20 ms |  |  |" in merge[1]
    # a target the benchmark judged but the figure list does not name still gets its row
    assert merge[-1] == "| `bench/lake_merge.py` | something_new | 7 | <= 5 | **missed** |"
    assert _rows(text, "dashboard_read")[0].endswith("| 0.9 s | < 2 s | yes |")
    stream = _rows(text, "stream")
    assert stream[0] == "| `bench/stream.py` | the run | failed: printed nothing on stdout |  | **failed** |"
    # its judged figure is listed as failed, not as "not measured"
    assert any("p99 bar to forecast | — |  | **failed** |" in line for line in stream)
    assert "commit `0000000000`" in text and "Test CPU" in text


def test_write_and_check_round_trip(tmp_path: Path) -> None:
    results = tmp_path / "2030-01-02.json"
    results.write_text(json.dumps(_synthetic()))
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n## Benchmarks\n\n{bench_table.START}\nold\n{bench_table.END}\n\n## Next\n")
    args = ["--readme", str(readme), "--results", str(results)]
    assert bench_table.main([*args, "--check"]) == 1
    assert bench_table.main([*args, "--write"]) == 0
    assert bench_table.main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# T\n\n## Benchmarks\n\n" + bench_table.START + "\nGenerated by")
    assert text.endswith("| yes |\n" + bench_table.END + "\n\n## Next\n")
    assert "old" not in text


def test_write_without_markers_says_what_to_do(tmp_path: Path) -> None:
    results = tmp_path / "2030-01-02.json"
    results.write_text(json.dumps(_synthetic()))
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no <!-- bench-table:start -->"):
        bench_table.main(["--readme", str(readme), "--results", str(results), "--write"])


def test_newest_picks_the_latest_date(tmp_path: Path) -> None:
    for name in ("2029-12-31.json", "2030-01-02.json", "2030-01-01.json", "notes.json"):
        (tmp_path / name).write_text("{}")
    assert bench_table.newest(tmp_path).name == "2030-01-02.json"


# -- statuses ---------------------------------------------------------------------------------


def test_finish_exit_statuses() -> None:
    met = {"a": common.target(3.0, ">=", 2)}
    missed = {"a": common.target(1.0, ">=", 2), "b": common.target(None, "<", 1)}
    assert common.finish({}, met, out=io.StringIO()) == 0
    assert common.finish({}, missed, out=io.StringIO()) == 1
    printed = io.StringIO()
    assert common.finish({"figure": 3.0}, met, {"mode": "RuntimeError: boom"}, out=printed) == 2
    document = json.loads(printed.getvalue())
    assert document["figure"] == 3.0 and document["errors"] == {"mode": "RuntimeError: boom"}
    assert document["targets"]["a"] == {"value": 3.0, "target": ">= 2", "met": True}
    assert common.target(None, "<=", 1)["met"] is None  # not measured
    assert common.target(math.nan, ">=", 1) == {"value": None, "target": ">= 1", "met": False}


def test_steps_record_a_crash_and_go_on() -> None:
    steps = common.Steps()

    def boom() -> int:
        raise ValueError("bad input\nmore detail")

    assert steps.step("one", boom) is None
    assert steps.step("two", lambda: 5) == 5
    assert steps.errors == {"one": "ValueError: bad input"}


@pytest.mark.parametrize(
    ("exit_code", "result", "expected"),
    [
        (0, {"targets": {"a": {"met": True}}, "errors": {}}, "ok"),
        (1, {"targets": {"a": {"met": False}}, "errors": {}}, "missed"),
        (2, {"targets": {"a": {"met": False}}, "errors": {"m": "x"}}, "failed"),
        (1, None, "failed"),  # an uncaught exception: Python's exit 1 and no JSON
        (0, None, "failed"),
        (-9, {"targets": {}, "errors": {}}, "failed"),
        (1, {"targets": {"a": {"met": True}}, "errors": {}}, "failed"),  # exit 1 with nothing missed
    ],
)
def test_status_of_a_run(exit_code: int, result: dict[str, Any] | None, expected: str) -> None:
    assert results_mod.status(exit_code, result) == expected


def test_a_failed_run_is_recorded_with_its_reason(tmp_path: Path) -> None:
    runs, out, err = tmp_path / "runs.jsonl", tmp_path / "x.json", tmp_path / "x.log"
    out.write_text("")
    err.write_text("Traceback ...\nRuntimeError: broker down\n")
    common_args = ["--runs", str(runs), "--started", "100", "--ended", "112.34"]
    results_mod.main(["add", *common_args, "--name", "sink", "--rc", "2", "--stdout", str(out), "--stderr", str(err)])
    out.write_text(json.dumps({"targets": {"t": {"value": 1, "target": ">= 2", "met": False}}, "errors": {}}))
    results_mod.main(["add", *common_args, "--name", "train", "--rc", "1", "--stdout", str(out), "--", "--steps", "5"])
    dated = tmp_path / "results" / "2030-01-02.json"
    write = ["write", "--runs", str(runs), "--out", str(dated), "--date", "2030-01-02", "--started", "100"]
    # the commit and state at the start of the run, not at its end (others may commit meanwhile)
    results_mod.main([*write, "--commit", "a" * 40, "--dirty", "no"])
    written = json.loads(dated.read_text())
    assert written["commit"] == "a" * 40 and written["uncommitted_changes"] is False
    assert written["statuses"] == {"sink": "failed", "train": "missed"}
    sink = written["benches"]["sink"]
    assert sink["failure"] == "printed nothing on stdout" and "RuntimeError: broker down" in sink["stderr_tail"]
    assert sink["wall_s"] == 12.3 and sink["exit_code"] == 2 and sink["result"] is None
    assert written["benches"]["train"]["command"] == [".venv/bin/python", "bench/train.py", "--steps", "5"]
    assert written["machine"]["cpus"] >= 1 and written["versions"]["python"]

    # a BENCH_ONLY run (--merge) replaces only what it ran; the rest keeps its entry and commit
    runs.write_text("")
    out.write_text(json.dumps({"targets": {}, "errors": {}}))
    results_mod.main(["add", *common_args, "--name", "sink", "--rc", "0", "--stdout", str(out)])
    results_mod.main([*write, "--commit", "b" * 40, "--dirty", "no", "--merge"])
    merged = json.loads(dated.read_text())
    assert merged["statuses"] == {"train": "missed", "sink": "ok"}
    assert merged["benches"]["sink"]["commit"] == "b" * 40 and merged["benches"]["train"]["commit"] == "a" * 40
    # without --merge the file holds this run only
    results_mod.main([*write, "--commit", "c" * 40, "--dirty", "no"])
    assert json.loads(dated.read_text())["statuses"] == {"sink": "ok"}


# -- a real benchmark's exit status -------------------------------------------------------------


def _lake_merge(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "lake_merge.py"), "--flushes", "2", "--minutes-per-flush", "2", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_a_benchmark_exits_1_on_a_missed_target_and_2_on_a_crash() -> None:
    # a ratio no MERGE reaches: missed, whatever the machine's speed
    code, report = _lake_merge("--tickers", "20", "--min-ratio", "1e9")
    assert code == 1 and report["targets"]["merge_over_append_at_end_of_day"]["met"] is False
    assert report["errors"] == {} and report["met"] is False
    # no tickers: the batch has no rows to type, and the run crashes inside the mode
    code, report = _lake_merge("--tickers", "0")
    assert code == 2 and set(report["errors"]) == {"run"}
    assert report["targets"]["merge_over_append_at_end_of_day"]["met"] is None
