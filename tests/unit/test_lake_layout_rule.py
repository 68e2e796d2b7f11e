"""Only tickcast.lake knows the lake's layout: no other module builds a table path, a
partition string or a data file name (string literals are checked with the AST, so keyword
arguments such as ``interval=interval`` do not count)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tickcast", "producer", "consumer", "serving", "dashboard", "training", "bench")
OWNER = REPO / "tickcast" / "lake"
# the earlier layout, which the migration reads, is the lake package's own business too
TABLE_NAMES = ("bars", "open_close", "forecasts", "scores", "score_aggregates")
FORBIDDEN = [
    re.compile(r"\b(interval|ticker|date|period)=$|\b(interval|ticker|date|period)=[\w{]"),  # partitions
    re.compile(r"_delta_log|\bpart-\d"),  # the table format's own files
    re.compile(rf"^({'|'.join(TABLE_NAMES)})/(?!s$)"),  # a table's folder ("forecasts/s" is a unit)
]


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant and every literal part of an f-string, with its line."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines.add(body[0].value.lineno)
    return lines


def test_no_module_outside_the_lake_package_builds_lake_paths() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if OWNER in path.parents or path.name == "lake_old.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            docs = _docstrings(tree)
            for line, text in _strings(tree):
                if line in docs:
                    continue  # prose may describe the layout
                if any(p.search(text) for p in FORBIDDEN):
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {text[:80]!r}")
    assert not offenders, "lake layout outside tickcast/lake:\n" + "\n".join(offenders)
