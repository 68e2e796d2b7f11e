"""Every lake table and blob prefix each service touches, derived from the code, is in its grants.

The grants (``LAKE_ACCESS`` in ``pulumi/tickcast_infra/lake_access.py``) become the IAM roles on
EKS and the MinIO users locally; a grant a service's code needs but lacks fails there only at
run time, in the code path that needs it. This test finds it first, without running anything:

1. It parses every first-party module and builds a call graph (imports resolved, functions
   imported inside functions too; ``self.method`` within a class; a class used from another
   package contributes all its methods; a method called on a receiver named ``*lake*`` is a
   :class:`tickcast.lake.Lake` method).
2. The only hand-written facts are the storage primitives, what each does to its ``spec`` or
   path argument: ``tickcast.lake.tables`` (open/scan/read: read; ensure/append/upsert: write),
   ``tickcast.lake.maintenance`` (optimize: write; vacuum: maintain) and the ``Lake`` blob
   methods (read_bytes, exists, list_*, path, uri: read; write_bytes: write; delete: delete).
3. Every other function's effects follow from what it calls, the arguments substituted: a
   spec constant (``BARS``) names its table, ``TABLES``/``resolve_tables`` all of them, a path
   string (f-strings, constants, ``self.path`` properties and helper returns are followed) its
   blob prefix (``models``, ``reports``, ``_state/<service>``), a parameter is resolved at each
   call site.
4. Each workload's entry points are its package's functions (the maintenance CronJobs: the
   ``tickcast lake optimize`` and ``vacuum`` handlers); the test collects everything they reach
   and checks it against the workload's grants. A path it cannot resolve fails the test too:
   code whose lake access cannot be derived cannot be checked.

``test_derivation_finds_a_missing_grant`` shows the check bites: with the consumer's bars grant
removed (or the producer's ``_state/producer``), the derived touches are no longer covered.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tickcast", "producer", "consumer", "serving", "dashboard", "training")
RANK = {"read": 0, "write": 1, "maintain": 2, "delete": 3}

#: Workload -> its entry points: module prefixes (every function in them), or "module:function".
ENTRY_POINTS: Mapping[str, tuple[str, ...]] = {
    "consumer": ("consumer",),
    "producer": ("producer",),
    "forecaster": ("serving.streaming",),
    "serving": ("serving",),  # minus serving.streaming (below): the forecaster is its own deployable
    "dashboard": ("dashboard",),
    # The backtest CronJob runs `tickcast backtest`, the fine-tune RayJob `tickcast train` (helm
    # templates); the rest of `training` builds the bundled model or feeds tests.
    "batch": ("training.cli:_backtest", "training.cli:_train"),
    # The CronJobs run `tickcast lake optimize` and `tickcast lake vacuum` (helm test checks the args).
    "maintenance": ("tickcast.lake_cli:_optimize", "tickcast.lake_cli:_vacuum"),
}
EXCLUDED: Mapping[str, tuple[str, ...]] = {"serving": ("serving.streaming",)}

#: The storage primitives: function -> (what it does, the parameter naming the table or path).
PRIMITIVES: Mapping[str, tuple[str, str]] = {
    **{f"tickcast.lake.tables:{f}": ("read", "spec") for f in ("open_table", "scan", "read", "dataset")},
    **{f"tickcast.lake.tables:{f}": ("read", "spec") for f in ("table_version", "transaction_version", "history")},
    **{f"tickcast.lake.tables:{f}": ("write", "spec") for f in ("ensure_table", "append", "upsert")},
    "tickcast.lake.maintenance:file_stats": ("read", "spec"),
    "tickcast.lake.maintenance:optimize": ("write", "spec"),
    "tickcast.lake.maintenance:compact_small_files": ("write", "spec"),
    "tickcast.lake.maintenance:vacuum": ("maintain", "spec"),
    **{
        f"tickcast.lake.store:Lake.{m}": ("read", p)
        for m, p in (
            ("read_bytes", "relpath"),
            ("exists", "relpath"),
            ("path", "relpath"),  # the full path, for reads through `lake.fs` directly
            ("list_files", "prefix"),
            ("list_dirs", "prefix"),
        )
    },
    "tickcast.lake.store:Lake.write_bytes": ("write", "relpath"),
    "tickcast.lake.store:Lake.delete": ("delete", "relpath"),
}
#: Functions that only format a location (no request): no effect of their own.
NO_EFFECT = ("tickcast.lake.store:Lake.uri", "tickcast.lake.store:Lake.table_uri")
#: Paths that come from configuration, not code: function -> what they are, and why.
CONFIGURED: Mapping[str, tuple[Target, str]] = {
    "serving.models:_resolve_s3": (
        ("blob", "models"),
        "TICKCAST_SERVING__MODEL=s3://...: the checkpoint at the URL the operator sets, read with the lake's "
        "keys; its documented form is a registry entry, s3://BUCKET/PREFIX/models/NAME/VERSION",
    ),
}
LAKE_CLASS = "tickcast.lake.store:Lake"
ALL_TABLES = "*"


@cache
def lake_access() -> ModuleType:
    path = REPO / "pulumi" / "tickcast_infra" / "lake_access.py"
    spec = importlib.util.spec_from_file_location("grants_lake_access", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- the code model ---------------------------------------------------------------------------


@dataclass
class Function:
    qualname: str  # "module:name" or "module:Class.name"
    module: str
    cls: str | None
    node: ast.FunctionDef | ast.AsyncFunctionDef
    params: list[str]


@dataclass
class Module:
    name: str
    tree: ast.Module
    imports: dict[str, str] = field(default_factory=dict)  # local name -> "module" or "module:attr"
    constants: dict[str, ast.expr] = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> method names


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Code:
    """Every first-party module, its functions, imports and module-level constants."""

    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}
        self.functions: dict[str, Function] = {}
        for package in PACKAGES:
            for path in sorted((REPO / package).rglob("*.py")):
                if ".venv" in path.parts:
                    continue
                self._add(_module_name(path), ast.parse(path.read_text(), str(path)), path.name == "__init__.py")

    def _add(self, name: str, tree: ast.Module, is_package: bool) -> None:
        module = Module(name, tree)
        self.modules[name] = module
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        module.imports[alias.asname] = alias.name
                    else:
                        module.imports.setdefault(alias.name.split(".")[0], alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = f"{base}:{alias.name}"
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        module.constants[target.id] = stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                module.constants[stmt.target.id] = stmt.value
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                self._function(module, None, stmt)
            elif isinstance(stmt, ast.ClassDef):
                module.classes[stmt.name] = []
                for item in stmt.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        module.classes[stmt.name].append(item.name)
                        self._function(module, stmt.name, item)

    def _function(self, module: Module, cls: str | None, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qual = f"{module.name}:{cls}.{node.name}" if cls else f"{module.name}:{node.name}"
        args = node.args
        params = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
        self.functions[qual] = Function(qual, module.name, cls, node, params)

    def resolve_symbol(self, ref: str, depth: int = 0) -> str:
        """Follow re-exports: ``tickcast.lake:read_bars`` -> ``tickcast.lake.bars:read_bars``."""
        if depth > 10 or ":" not in ref:
            return ref
        mod, _, attr = ref.partition(":")
        if ref in self.functions or (mod in self.modules and attr in self.modules[mod].classes):
            return ref
        if f"{mod}.{attr}" in self.modules:
            return f"{mod}.{attr}"  # a submodule
        module = self.modules.get(mod)
        if module is not None and attr in module.imports:
            return self.resolve_symbol(module.imports[attr], depth + 1)
        return ref

    def name_ref(self, module: Module, name: str) -> str | None:
        """What a bare name in ``module`` refers to (function, class, module, constant)."""
        if f"{module.name}:{name}" in self.functions or name in module.classes or name in module.constants:
            return f"{module.name}:{name}"
        if name in module.imports:
            return self.resolve_symbol(module.imports[name])
        return None

    def expr_ref(self, module: Module, expr: ast.expr) -> str | None:
        """A Name or dotted Attribute chain as a symbol, e.g. ``tl.tables.scan``."""
        if isinstance(expr, ast.Name):
            return self.name_ref(module, expr.id)
        if isinstance(expr, ast.Attribute):
            base = self.expr_ref(module, expr.value)
            if base is not None and ":" not in base:  # a module
                return self.resolve_symbol(f"{base}:{expr.attr}")
        return None


# -- targets ----------------------------------------------------------------------------------

#: ("table", name) | ("table", "*") | ("blob", key) | ("unresolved", why), or a parameter of the
#: function the effect is in: ("spec", name) naming a table, ("path", name) a lake path.
Target = tuple[str, str]
PARAMS = ("spec", "path")


def blob_key(path: str) -> Target:
    """The grant key a lake-relative path falls under: ``models``, ``reports``, ``_state/<x>``."""
    parts = path.strip("/").split("/")
    access = lake_access()
    if parts[0] == "_state" and len(parts) > 1 and parts[1]:
        return ("blob", f"_state/{parts[1]}")
    if parts[0] in access.LAKE_BLOB_PREFIXES and parts[0] != "_state":
        return ("blob", parts[0])
    if parts[0] in access.LAKE_TABLES:
        return ("unresolved", f"blob call on table folder {path!r}")
    return ("unresolved", f"path {path!r} is under no blob prefix")


class Resolver:
    """Turns an argument expression inside a function into the table or path it names."""

    def __init__(self, code: Code) -> None:
        self.code = code

    def targets(self, fn: Function, expr: ast.expr, kind: str) -> set[Target]:
        """``kind``: ``spec`` (a table) or a path parameter."""
        if kind == "spec":
            return self.spec_targets(fn, expr, 0)
        text = self.leading(fn, expr, 0)
        if isinstance(text, tuple):
            return {text}
        if fn.qualname in CONFIGURED:
            return {CONFIGURED[fn.qualname][0]}
        return {blob_key(text)}

    # tables

    def spec_targets(self, fn: Function, expr: ast.expr, depth: int) -> set[Target]:
        module = self.code.modules[fn.module]
        if depth > 8:
            return {("unresolved", ast.unparse(expr))}
        if isinstance(expr, ast.Subscript) and self._is_tables(module, expr.value):
            return {("table", ALL_TABLES)}
        if isinstance(expr, ast.Name):
            if expr.id in fn.params:
                return {("spec", expr.id)}
            local = self._local_bindings(fn, expr.id)
            if local:
                return set().union(*(self._binding_specs(fn, b, depth) for b in local))
        ref = self.code.expr_ref(module, expr)
        if ref is not None and ":" in ref:
            table = self._spec_constant(ref)
            if table is not None:
                return {("table", table)}
        return {("unresolved", f"table argument {ast.unparse(expr)} in {fn.qualname}")}

    def _binding_specs(self, fn: Function, binding: tuple[str, ast.expr], depth: int) -> set[Target]:
        how, value = binding
        module = self.code.modules[fn.module]
        if how == "for":
            if self._is_tables(module, value) or self._is_all_tables_call(module, value):
                return {("table", ALL_TABLES)}
            if isinstance(value, ast.Tuple | ast.List):
                return set().union(*(self.spec_targets(fn, e, depth + 1) for e in value.elts))
            return {("unresolved", f"loop over {ast.unparse(value)} in {fn.qualname}")}
        return self.spec_targets(fn, value, depth + 1)

    def _is_tables(self, module: Module, expr: ast.expr) -> bool:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("values", "keys"):
            expr = expr.func.value
        return self.code.expr_ref(module, expr) == "tickcast.lake.specs:TABLES"

    def _is_all_tables_call(self, module: Module, expr: ast.expr) -> bool:
        # `resolve_tables(names)`: the tables named on the command line, all of them by default.
        return isinstance(expr, ast.Call) and self.code.expr_ref(module, expr.func) == (
            "tickcast.lake.maintenance:resolve_tables"
        )

    def _spec_constant(self, ref: str) -> str | None:
        mod, _, name = ref.partition(":")
        module = self.code.modules.get(mod)
        value = module.constants.get(name) if module else None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "TableSpec":
            for kw in value.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
        return None

    @staticmethod
    def _local_bindings(fn: Function, name: str) -> list[tuple[str, ast.expr]]:
        out: list[tuple[str, ast.expr]] = []
        for node in ast.walk(fn.node):
            if isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    out.append(("=", node.value))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                if node.value is not None:
                    out.append(("=", node.value))
            elif isinstance(node, ast.For | ast.comprehension):
                target = node.target
                if isinstance(target, ast.Name) and target.id == name:
                    out.append(("for", node.iter))
        return out

    # paths: the leading literal text of a path expression

    def leading(self, fn: Function, expr: ast.expr, depth: int) -> str | Target:
        module = self.code.modules[fn.module]
        unresolved: Target = ("unresolved", f"path {ast.unparse(expr)} in {fn.qualname}")
        if depth > 8:
            return unresolved
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.JoinedStr):
            text = ""
            for value in expr.values:
                if isinstance(value, ast.Constant):
                    text += str(value.value)
                    continue
                assert isinstance(value, ast.FormattedValue)
                inner = self.leading(fn, value.value, depth + 1)
                if isinstance(inner, tuple):
                    # "{prefix}/x" with prefix a parameter: resolved at the call site; after a
                    # literal start, the start is what names the prefix
                    return text if text else inner
                text += inner
            return text
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.leading(fn, expr.left, depth + 1)
        if isinstance(expr, ast.Name):
            if expr.id in fn.params:
                return ("path", expr.id)
            local = self._local_bindings(fn, expr.id)
            if local:
                found = {self.leading(fn, value, depth + 1) for how, value in local if how == "="}
                return found.pop() if len(found) == 1 else unresolved
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in ("self", "cls"):
            return self._method_return(fn, expr.attr, depth) or unresolved
        if isinstance(expr, ast.Call):
            func = expr.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in ("self", "cls")
            ):
                return self._method_return(fn, func.attr, depth) or unresolved
            ref = self.code.expr_ref(module, func)
            if ref in self.code.functions:
                return self._returns(self.code.functions[ref], depth) or unresolved
        ref = self.code.expr_ref(module, expr)
        if ref is not None and ":" in ref:
            mod, _, name = ref.partition(":")
            owner = self.code.modules.get(mod)
            if owner is not None and name in owner.constants:
                holder = Function(f"{mod}:<module>", mod, None, ast.FunctionDef(name="<module>"), [])  # type: ignore[call-arg]
                holder.node.body = []
                return self.leading(holder, owner.constants[name], depth + 1)
        return unresolved

    def _method_return(self, fn: Function, name: str, depth: int) -> str | Target | None:
        method = self.code.functions.get(f"{fn.module}:{fn.cls}.{name}")
        return self._returns(method, depth) if method else None

    def _returns(self, fn: Function, depth: int) -> str | Target | None:
        found = {
            self.leading(fn, node.value, depth + 1)
            for node in ast.walk(fn.node)
            if isinstance(node, ast.Return) and node.value is not None
        }
        return found.pop() if len(found) == 1 else None


# -- effects ----------------------------------------------------------------------------------

Effect = tuple[str, Target, str]  # (mode, target, where)


class Effects:
    """Each function's lake effects, to a fixpoint over the call graph."""

    def __init__(self, code: Code) -> None:
        self.code = code
        self.resolver = Resolver(code)
        self.calls: dict[str, list[tuple[str, ast.Call | None]]] = {q: [] for q in code.functions}
        for qual, fn in code.functions.items():
            if qual not in PRIMITIVES and qual not in NO_EFFECT:
                self.calls[qual] = list(self._callees(fn))
        self.summary: dict[str, set[Effect]] = {q: set() for q in code.functions}
        for qual, (mode, param) in PRIMITIVES.items():
            assert qual in code.functions, f"primitive {qual} no longer exists: update PRIMITIVES"
            assert param in code.functions[qual].params, f"{qual} has no parameter {param}"
            self.summary[qual] = {(mode, ("spec" if param == "spec" else "path", param), qual)}
        changed = True
        while changed:
            changed = False
            for qual, calls in self.calls.items():
                fn = code.functions[qual]
                new = set(self.summary[qual])
                for callee, call in calls:
                    new |= self._substitute(fn, callee, call)
                if new != self.summary[qual]:
                    self.summary[qual] = new
                    changed = True

    def _callees(self, fn: Function) -> Iterator[tuple[str, ast.Call | None]]:
        module = self.code.modules[fn.module]
        for node in ast.walk(fn.node):
            if isinstance(node, ast.Call):
                callee = self._call_target(fn, module, node.func)
                if callee is not None:
                    yield callee, node
            elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
                # A function passed as a value (a handler, a thread target) runs too; a class
                # used from elsewhere runs its methods. Their own effects count (arguments unknown).
                ref = self.code.expr_ref(module, node)
                if ref in self.code.functions:
                    yield ref, None
                elif ref and ":" in ref and ref != LAKE_CLASS:
                    mod, _, cls = ref.partition(":")
                    owner = self.code.modules.get(mod)
                    if owner is not None and cls in owner.classes and mod != fn.module:
                        for method in owner.classes[cls]:
                            yield f"{mod}:{cls}.{method}", None

    def _call_target(self, fn: Function, module: Module, func: ast.expr) -> str | None:
        if isinstance(func, ast.Attribute):
            receiver = func.value
            if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls") and fn.cls:
                qual = f"{fn.module}:{fn.cls}.{func.attr}"
                return qual if qual in self.code.functions else None
            ref = self.code.expr_ref(module, func)
            if ref in self.code.functions:
                return ref
            method = f"{LAKE_CLASS}.{func.attr}"
            if "lake" in ast.unparse(receiver).lower() and method in self.code.functions:
                return method
            return None
        ref = self.code.expr_ref(module, func)
        return ref if ref in self.code.functions else None

    def _substitute(self, fn: Function, callee: str, call: ast.Call | None) -> set[Effect]:
        out: set[Effect] = set()
        target_fn = self.code.functions[callee]
        params = (
            target_fn.params[1:] if target_fn.cls and target_fn.params[:1] in (["self"], ["cls"]) else target_fn.params
        )
        for mode, target, where in self.summary[callee]:
            if target[0] not in PARAMS:
                out.add((mode, target, where))
                continue
            if call is None:
                continue  # passed as a value: its parametric effects bind where it is called
            arg = self._argument(call, params, target[1])
            if arg is None:
                continue  # the default applies: no lake path of the caller's
            for resolved in self.resolver.targets(fn, arg, target[0]):
                out.add((mode, resolved, f"{fn.qualname} -> {where}"))
        return out

    @staticmethod
    def _argument(call: ast.Call, params: list[str], name: str) -> ast.expr | None:
        for kw in call.keywords:
            if kw.arg == name:
                return kw.value
        if name in params:
            index = params.index(name)
            positional = [a for a in call.args if not isinstance(a, ast.Starred)]
            if index < len(positional):
                return positional[index]
        return None


@cache
def effects() -> Effects:
    return Effects(Code())


def entry_functions(workload: str) -> list[str]:
    code = effects().code
    out = []
    excluded = EXCLUDED.get(workload, ())
    for entry in ENTRY_POINTS[workload]:
        if ":" in entry:
            assert entry in code.functions, f"entry point {entry} no longer exists"
            out.append(entry)
            continue
        for qual, fn in code.functions.items():
            in_package = fn.module == entry or fn.module.startswith(entry + ".")
            if in_package and not any(fn.module == e or fn.module.startswith(e + ".") for e in excluded):
                out.append(qual)
    assert out, f"no code found for workload {workload}"
    return out


def touches(workload: str) -> dict[Target, tuple[str, str]]:
    """Every table and blob prefix the workload's code reaches: target -> (strongest mode, where)."""
    fx = effects()
    seen: set[str] = set()
    stack = entry_functions(workload)
    out: dict[Target, tuple[str, str]] = {}
    while stack:
        qual = stack.pop()
        if qual in seen:
            continue
        seen.add(qual)
        stack.extend(callee for callee, _ in fx.calls[qual])
        for mode, target, where in fx.summary[qual]:
            if target[0] in PARAMS:
                continue  # bound where the function is called (with the caller's argument)
            targets = [("table", t) for t in lake_access().LAKE_TABLES] if target == ("table", ALL_TABLES) else [target]
            for t in targets:
                if t not in out or RANK[mode] > RANK[out[t][0]]:
                    out[t] = (mode, where)
    return out


def uncovered(workload: str, access: Mapping[str, str]) -> list[str]:
    """The derived touches ``access`` does not grant, one line each."""
    problems = []
    for (kind, name), (mode, where) in sorted(touches(workload).items()):
        if kind == "unresolved":
            problems.append(f"{workload}: cannot tell what {name} touches (via {where})")
            continue
        if kind == "table":
            level = access.get(name)
        else:
            covering = [k for k in access if name == k or name.startswith(k + "/")]
            level = access[max(covering, key=len)] if covering else None
        granted = -1 if level is None else RANK[level]
        if kind == "blob" and level is not None:
            granted = min(granted, RANK["write"])  # blob grants never include delete
        if granted < RANK[mode]:
            problems.append(f"{workload}: {mode} {kind} {name} (via {where}) but the grant is {level or 'nothing'}")
    return problems


# -- the tests ------------------------------------------------------------------------------------


def test_every_workload_has_entry_points_and_grants() -> None:
    assert set(ENTRY_POINTS) == set(lake_access().LAKE_ACCESS)


def test_what_each_service_touches_is_in_its_grants() -> None:
    problems = [p for w in ENTRY_POINTS for p in uncovered(w, lake_access().LAKE_ACCESS[w])]
    assert not problems, "\n".join(problems)


def test_the_derivation_sees_the_known_writers() -> None:
    """Sanity of the analysis itself: it finds what each service is known to do."""
    wants = {
        "consumer": {("table", "bars"): "write"},
        "producer": {("table", "open_close"): "write", ("blob", "_state/producer"): "write", ("table", "bars"): "read"},
        "forecaster": {
            ("table", "forecasts"): "write",
            ("table", "scores"): "write",
            ("table", "score_aggregates"): "write",
            ("table", "bars"): "read",
        },
        "serving": {("table", "forecasts"): "write", ("blob", "models"): "read", ("table", "bars"): "read"},
        "dashboard": {("blob", "reports"): "read", ("table", "forecasts"): "read"},
        "batch": {("blob", "reports"): "write", ("blob", "models"): "write", ("table", "bars"): "read"},
        "maintenance": {("table", t): "maintain" for t in lake_access().LAKE_TABLES},
    }
    for workload, want in wants.items():
        got = touches(workload)
        for target, mode in want.items():
            assert target in got and got[target][0] == mode, (workload, target, got.get(target))
    # and writes nothing it should not
    dashboard_writes = [t for t, (mode, _) in touches("dashboard").items() if mode != "read"]
    assert dashboard_writes == []


def test_the_derivation_finds_a_missing_grant() -> None:
    """With a grant taken away, the check fails naming the code path that needs it."""
    grants = lake_access().LAKE_ACCESS
    consumer = {k: v for k, v in grants["consumer"].items() if k != "bars"}
    assert any("write table bars" in p for p in uncovered("consumer", consumer))
    producer = {k: v for k, v in grants["producer"].items() if k != "_state/producer"}
    assert any("blob _state/producer" in p for p in uncovered("producer", producer))
    forecaster = {**grants["forecaster"], "score_aggregates": "read"}
    assert any("write table score_aggregates" in p for p in uncovered("forecaster", forecaster))
    maintenance = {**grants["maintenance"], "bars": "write"}
    assert any("maintain table bars" in p for p in uncovered("maintenance", maintenance))


def test_no_grant_goes_unused() -> None:
    """Least privilege: every grant in lake_access.py is one some code path of the workload uses."""
    unused: dict[str, set[str]] = {}
    for workload, access in lake_access().LAKE_ACCESS.items():
        used = {name for (kind, name) in touches(workload) if kind in ("table", "blob")}
        extra = {key for key in access if not any(u == key or u.startswith(key + "/") for u in used)}
        if extra:
            unused[workload] = extra
    assert unused == {}, f"grants no code uses (remove them from lake_access.py): {unused}"


# -- the local MinIO users get exactly these grants -----------------------------------------------


def test_each_minio_policy_is_the_pulumi_statements(tmp_path: Path) -> None:
    from tickcast.infra.minio_users import policy_document, user_name, workloads

    access = lake_access()
    assert workloads() == sorted(access.LAKE_ACCESS)
    for workload in workloads():
        document = policy_document(workload, "lake-bucket", "tick/cast")
        want = access.s3_statements(access.LAKE_ACCESS[workload], "arn:aws:s3:::lake-bucket", "tick/cast")
        assert document == {"Version": "2012-10-17", "Statement": want}
        assert user_name(workload) == f"tickcast-{workload}"


def test_minio_user_secrets_are_random_private_and_kept(tmp_path: Path) -> None:
    import stat

    from tickcast.infra.minio_users import MinioUsers
    from tickcast.settings import InfraSettings

    infra = InfraSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    first = MinioUsers(infra, "v0", lambda _: None).credentials()
    path = tmp_path / "state" / "minio" / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secrets = {c.secret_access_key.get_secret_value() for c in first.values()}
    assert len(secrets) == len(first) and all(len(s) >= 40 for s in secrets)
    path.chmod(0o644)  # loosened by someone: tightened again on the next read, keys unchanged
    again = MinioUsers(infra, "v0", lambda _: None).credentials()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {w: c.secret_access_key.get_secret_value() for w, c in again.items()} == {
        w: c.secret_access_key.get_secret_value() for w, c in first.items()
    }
    assert first["consumer"].secret_access_key.get_secret_value() not in repr(first["consumer"])


def test_a_service_gets_its_own_keys_and_never_the_root_ones() -> None:
    from pydantic import SecretStr

    from tickcast.infra.minio_users import LakeCredentials, service_env, uses_local_minio
    from tickcast.settings import InfraSettings, LakeSettings

    creds = LakeCredentials("producer", "tickcast-producer", SecretStr("p-secret-123456"))
    base = {
        "PATH": "/bin",
        "TICKCAST_INFRA__MINIO_ROOT_PASSWORD": "root-pass",
        "TICKCAST_LAKE__S3_ACCESS_KEY_ID": "tickcast",
        "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY": "root-pass",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
    }
    env = service_env(base, creds)
    assert env["TICKCAST_LAKE__S3_ACCESS_KEY_ID"] == "tickcast-producer"
    assert env["TICKCAST_LAKE__S3_SECRET_ACCESS_KEY"] == "p-secret-123456"
    assert "root-pass" not in env.values() and "aws-secret" not in env.values() and env["PATH"] == "/bin"
    infra = InfraSettings(minio_port=19555)
    on_minio = LakeSettings(url="s3://b/lake", s3_endpoint_url="http://127.0.0.1:19555")
    assert uses_local_minio(on_minio, infra)
    assert not uses_local_minio(on_minio.model_copy(update={"s3_endpoint_url": "https://s3.example.com"}), infra)
    assert not uses_local_minio(LakeSettings(url="file:///tmp/lake"), infra)
