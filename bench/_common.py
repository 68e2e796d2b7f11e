"""What every benchmark under ``bench/`` shares: its targets, its crashed steps, its exit status.

A benchmark builds one JSON document, runs each of its modes through :meth:`Steps.step` (a
mode that raises is recorded under ``errors`` and the run goes on with the others), checks
its figures with :func:`target`, and ends with :func:`finish`, which adds the ``targets``
and ``errors`` sections, prints the document and returns the exit status:

- 0: every target met (or not measured in this run), no step crashed;
- 1: a target missed;
- 2: a step crashed (its figures are missing; ``errors`` says which step and why).

``make bench`` (``scripts/run-benchmarks.sh``) records the status of each benchmark in the
dated results file, and ``scripts/bench_table.py`` shows it in the README's table.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: Exit statuses of a benchmark.
MET, MISSED, CRASHED = 0, 1, 2

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    ">": lambda value, bound: value > bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
}


def target(value: float | None, op: str, bound: float) -> dict[str, Any]:
    """One target's entry: ``{"value", "target", "met"}``; ``met`` is None when not measured.

    A NaN value (a figure computed from no samples) counts as not met: it is a figure that
    exists and says nothing good.
    """
    if op not in _COMPARE:
        raise ValueError(f"unknown comparison {op!r}: use one of {', '.join(_COMPARE)}")
    if value is None:
        return {"value": None, "target": f"{op} {bound:g}", "met": None}
    met = not math.isnan(value) and _COMPARE[op](value, bound)
    return {"value": None if math.isnan(value) else value, "target": f"{op} {bound:g}", "met": met}


class Steps:
    """Steps (a benchmark's modes) that may fail without ending the run: failures land in ``errors``."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def step(self, name: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None with the failure recorded under ``name`` (its traceback goes to stderr)."""
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            return fn()
        except Exception as exc:  # a benchmark reports every failure and carries on with its other modes
            traceback.print_exc()
            self.fail(name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return None

    def fail(self, name: str, reason: str) -> None:
        """Record a failure found without an exception (a mode that answered with errors)."""
        self.errors[name] = reason


def finish(
    result: dict[str, Any],
    targets: dict[str, dict[str, Any]],
    errors: dict[str, str] | None = None,
    out: IO[str] | None = None,
) -> int:
    """Add ``targets`` and ``errors`` to ``result``, print it as JSON, and return the exit status.

    ``out`` is where the JSON goes (default: stdout; some benchmarks keep stdout clear of
    Ray's output). What was missed or crashed is also said in one line on stderr.
    """
    result["targets"] = targets
    result["errors"] = dict(errors or {})
    print(json.dumps(result, indent=2), file=out or sys.stdout, flush=True)
    missed = [name for name, t in targets.items() if t["met"] is False]
    if result["errors"]:
        print(f"crashed: {', '.join(result['errors'])}", file=sys.stderr)
    if missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
    return CRASHED if result["errors"] else MISSED if missed else MET


def run_main(main: Callable[[], int | None]) -> int:
    """``main()``'s exit status, with an exception that escapes it turned into 2 (crashed).

    Python exits 1 on an uncaught exception, which would read as "a target missed".
    """
    try:
        return main() or MET
    except Exception:  # the whole benchmark crashed before it could report: say so in the status
        traceback.print_exc()
        return CRASHED


@dataclass
class ClosedLoop:
    """What :func:`closed_loop` measured: latencies of the 200 answers, other statuses counted."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0


async def closed_loop(session: Any, urls: list[str], bodies: list[bytes], clients: int, duration: float) -> ClosedLoop:
    """``clients`` concurrent clients, each posting its next body as soon as the last answer came.

    Client ``k`` posts to ``urls[k % len(urls)]`` the bodies ``k, k + clients, ...`` (cycling)
    for ``duration`` seconds over ``session`` (an ``aiohttp.ClientSession``; warm it up first).
    """
    import asyncio
    import time

    out = ClosedLoop()
    deadline = time.perf_counter() + duration

    async def client(k: int) -> None:
        url, i = urls[k % len(urls)], k
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            async with session.post(url, data=bodies[i % len(bodies)]) as resp:
                await resp.read()
                if resp.status != 200:
                    out.errors[str(resp.status)] = out.errors.get(str(resp.status), 0) + 1
                    continue
            out.latencies.append(time.perf_counter() - t)
            i += clients

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    out.elapsed = time.perf_counter() - start
    return out
