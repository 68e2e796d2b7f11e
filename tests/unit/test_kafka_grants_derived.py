"""Every Kafka topic and consumer group each service's CODE touches is covered by its grant.

The grants (``pulumi/tickcast_infra/kafka_access.py``) become MSK IAM statements on AWS and
ACLs on the local broker. This test does not trust a copied list of what each service uses: it
reads each service package's source (an AST walk) and derives it.

- Sources: a topic is named only through the ``KafkaSettings.topic_*`` fields, a consumer group
  only through ``<settings>.consumer.group_id`` / ``<settings>.forecaster.group_id`` (directly or
  through an alias such as ``self.cfg = settings.forecaster``).
- Flow: values follow assignments (locals per function, attributes by name across the package),
  ``a or b`` / ``x if c else y`` / lists, and calls into the package's own functions and classes
  (argument -> parameter), to a fixed point. Over-approximate on purpose: a false alarm is a
  test to read, a missed grant is a service that fails on EKS.
- Sinks: a topic that reaches ``subscribe``, ``assign``, ``partitions_for_topic``,
  ``KafkaConsumer`` or ``TopicTail`` is read; one that reaches ``send`` is written; one that
  only reaches ``ensure_topics`` or a log line needs some grant on it (Describe).
  ``ensure_topics(kafka)`` without a topic list touches every standard topic.

Then per workload: reads within its read grant, writes within its write grant, every touched
topic granted somehow, every group it names granted, and no grant the code never uses.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from tickcast.settings import ConsumerSettings, ForecasterSettings, KafkaSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_ACCESS_PATH = REPO_ROOT / "pulumi" / "tickcast_infra" / "kafka_access.py"

#: Workload -> the source it runs (its deployable's package; the chart runs these images).
WORKLOAD_SOURCES: dict[str, tuple[str, ...]] = {
    "producer": ("producer",),
    "consumer": ("consumer",),
    "forecaster": ("serving/streaming",),
    "serving": ("serving",),  # minus serving/streaming, the forecaster's
    "dashboard": ("dashboard",),
    "batch": ("training",),
    "maintenance": ("tickcast/lake", "tickcast/lake_cli.py"),
}
EXCLUDED = {"serving": ("serving/streaming",)}

READ_CALLS = frozenset({"subscribe", "assign", "partitions_for_topic", "KafkaConsumer", "TopicTail"})
WRITE_CALLS = frozenset({"send"})
DESCRIBE_CALLS = frozenset({"ensure_topics"})


def _load_kafka_access() -> ModuleType:
    name = "kafka_access_under_test"
    spec = importlib.util.spec_from_file_location(name, KAFKA_ACCESS_PATH)
    assert spec and spec.loader, KAFKA_ACCESS_PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look the module up while it runs
    spec.loader.exec_module(module)
    return module


ACCESS = _load_kafka_access()

Token = tuple[str, str]  # ("topic" | "group", default name) | ("gs", settings group) | ("inst", class name)
Symbol = tuple[str, ...]  # ("attr", class name or "*", name) | ("local", function id, name)


@dataclass
class Usage:
    """What a package's code does with Kafka, in the grants' default names."""

    read: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    where: dict[str, str] = field(default_factory=dict)  # topic/group -> first place seen, for messages


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_settings_chain(node: ast.expr) -> bool:
    """``settings``, ``self.settings``, ``get_settings()`` ...: an expression that names the settings."""
    while isinstance(node, ast.Attribute):
        if "settings" in node.attr:
            return True
        node = node.value
    if isinstance(node, ast.Call):
        name = _call_name(node)
        return name is not None and "settings" in name
    return isinstance(node, ast.Name) and "settings" in node.id


class Analysis:
    """The fixed-point flow of topic and group values through one set of modules."""

    def __init__(self, files: Iterable[Path]) -> None:
        self.modules = [(path, ast.parse(path.read_text(), str(path))) for path in files]
        self.values: dict[Symbol, set[Token]] = {}
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        self.classes: set[str] = set()
        self.owner: dict[int, str] = {}  # id(node) -> the id of the function that holds it
        self.scope_class: dict[str, str] = {}  # function id -> the class it is a method of
        for path, tree in self.modules:
            self._index(tree, f"{path}:<module>", None)

    def _index(self, node: ast.AST, scope: str, cls: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.setdefault(child.name, []).append(child)
                inner = f"{scope}/{child.name}@{child.lineno}"
                self.owner[id(child)] = inner
                if cls is not None:
                    self.scope_class[inner] = cls
                self._index(child, inner, None)
            elif isinstance(child, ast.ClassDef):
                self.classes.add(child.name)
                for item in child.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        self.functions.setdefault(child.name, []).append(item)
                self._index(child, scope, child.name)
            else:
                self.owner[id(child)] = scope
                self._index(child, scope, cls)

    def _classes_of(self, node: ast.expr, scope: str) -> set[str]:
        """The package classes an object expression may be an instance of (empty: unknown)."""
        if isinstance(node, ast.Name) and node.id == "self" and scope in self.scope_class:
            return {self.scope_class[scope]}
        return {name for kind, name in self.eval(node, scope) if kind == "inst"}

    def _symbols(self, node: ast.expr, scope: str) -> list[Symbol]:
        if isinstance(node, ast.Name):
            return [("local", scope, node.id)]
        if isinstance(node, ast.Attribute):
            return [("attr", cls, node.attr) for cls in self._classes_of(node.value, scope) or {"*"}]
        return []

    def _attr_values(self, node: ast.Attribute, scope: str) -> set[Token]:
        classes = self._classes_of(node.value, scope)
        found: set[Token] = set()
        for (kind, *rest), tokens in self.values.items():
            if kind == "attr" and rest[1] == node.attr and (not classes or rest[0] in classes or rest[0] == "*"):
                found |= tokens
        return found

    def eval(self, node: ast.expr | None, scope: str) -> set[Token]:
        """The topic/group tokens an expression may carry."""
        if node is None:
            return set()
        if isinstance(node, ast.Attribute):
            if node.attr in ACCESS.TOPIC_SETTINGS:
                return {("topic", ACCESS.TOPIC_SETTINGS[node.attr])}
            if node.attr in ACCESS.GROUP_SETTINGS and _is_settings_chain(node.value):
                return {("gs", node.attr)}
            if node.attr == "group_id":
                return {
                    ("group", ACCESS.GROUP_SETTINGS[name])
                    for kind, name in self.eval(node.value, scope)
                    if kind == "gs"
                }
            return self._attr_values(node, scope)
        if isinstance(node, ast.Call) and _call_name(node) in self.classes:
            return {("inst", str(_call_name(node)))}
        if isinstance(node, ast.Name):
            return set(self.values.get(("local", scope, node.id), set()))
        if isinstance(node, ast.BoolOp):
            return set().union(*(self.eval(v, scope) for v in node.values))
        if isinstance(node, ast.IfExp):
            return self.eval(node.body, scope) | self.eval(node.orelse, scope)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return set().union(set(), *(self.eval(e, scope) for e in node.elts))
        if isinstance(node, ast.Starred):
            return self.eval(node.value, scope)
        return set()

    def _flow(self, symbols: list[Symbol], tokens: set[Token]) -> bool:
        changed = False
        for symbol in symbols if tokens else []:
            known = self.values.setdefault(symbol, set())
            if not tokens <= known:
                known |= tokens
                changed = True
        return changed

    def _bind_call(self, call: ast.Call, scope: str) -> bool:
        """Arguments of a call into the package's own code flow into the callee's parameters."""
        name = _call_name(call)
        changed = False
        for function in self.functions.get(name or "", []):
            params = [a.arg for a in function.args.posonlyargs + function.args.args]
            if params and params[0] in ("self", "cls"):
                params = params[1:]
            callee = self.owner[id(function)]
            for param, arg in zip(params, call.args, strict=False):
                changed |= self._flow([("local", callee, param)], self.eval(arg, scope))
            for keyword in call.keywords:
                if keyword.arg is not None:
                    changed |= self._flow([("local", callee, keyword.arg)], self.eval(keyword.value, scope))
        return changed

    def _walk(self) -> Iterator[tuple[ast.AST, str]]:
        for _, tree in self.modules:
            for node in ast.walk(tree):
                yield node, self.owner.get(id(node), "")

    def solve(self) -> None:
        """Propagate until nothing changes."""
        changed = True
        while changed:
            changed = False
            for node, scope in self._walk():
                if isinstance(node, ast.Assign):
                    tokens = self.eval(node.value, scope)
                    for target in node.targets:
                        for leaf in ast.walk(target) if isinstance(target, ast.Tuple | ast.List) else [target]:
                            if isinstance(leaf, ast.expr):
                                changed |= self._flow(self._symbols(leaf, scope), tokens)
                elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
                    changed |= self._flow(self._symbols(node.target, scope), self.eval(node.value, scope))
                elif isinstance(node, ast.Call):
                    changed |= self._bind_call(node, scope)

    def usage(self, root: Path) -> Usage:
        """What the code does with the values, once solved."""
        self.solve()
        usage = Usage()
        for node, scope in self._walk():
            if isinstance(node, ast.Attribute | ast.Name):
                for kind, name in self.eval(node, scope):
                    if kind in ("topic", "group"):
                        target = usage.touched if kind == "topic" else usage.groups
                        target.add(name)
                        usage.where.setdefault(name, f"{scope.split(':', 1)[0]}:{node.lineno}")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            if name in DESCRIBE_CALLS and len(node.args) + len(node.keywords) == 1:
                usage.touched.update(ACCESS.TOPICS)  # ensure_topics(kafka): the standard topics
            sink = usage.read if name in READ_CALLS else usage.write if name in WRITE_CALLS else None
            if sink is None:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for expr in ast.walk(arg):
                    if isinstance(expr, ast.expr):
                        sink.update(n for kind, n in self.eval(expr, scope) if kind == "topic")
        usage.where = {k: str(Path(v).relative_to(root)) if v.startswith("/") else v for k, v in usage.where.items()}
        return usage


def _files(workload: str) -> list[Path]:
    files: list[Path] = []
    for source in WORKLOAD_SOURCES[workload]:
        path = REPO_ROOT / source
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    excluded = [REPO_ROOT / e for e in EXCLUDED.get(workload, ())]
    return [f for f in files if not any(f.is_relative_to(e) for e in excluded)]


def usage_of(workload: str) -> Usage:
    """What ``workload``'s code touches in Kafka."""
    return Analysis(_files(workload)).usage(REPO_ROOT)


def violations(workload: str, usage: Usage, grant: object) -> list[str]:
    """Each way ``usage`` exceeds ``grant`` (or ``grant`` exceeds what the code uses)."""
    read, write = set(grant.read), set(grant.write)  # type: ignore[attr-defined]
    groups, create = set(grant.groups), set(grant.create_topics)  # type: ignore[attr-defined]
    problems = [f"{workload} reads {t} ({usage.where.get(t, '?')}) without a read grant" for t in usage.read - read]
    problems += [
        f"{workload} writes {t} ({usage.where.get(t, '?')}) without a write grant" for t in usage.write - write
    ]
    problems += [
        f"{workload} touches {t} ({usage.where.get(t, '?')}) with no grant on it"
        for t in usage.touched - read - write - create
    ]
    problems += [
        f"{workload} joins group {g} ({usage.where.get(g, '?')}) without a grant" for g in usage.groups - groups
    ]
    problems += [f"{workload} is granted read on {t} its code never reads" for t in read - usage.read]
    problems += [f"{workload} is granted write on {t} its code never writes" for t in write - usage.write]
    problems += [f"{workload} is granted group {g} its code never names" for g in groups - usage.groups]
    return sorted(problems)


# -- the names the grants use are tickcast's defaults ---------------------------------------


def test_grant_names_are_the_settings_defaults() -> None:
    topic_fields = {name for name in KafkaSettings.model_fields if name.startswith("topic_")}
    assert set(ACCESS.TOPIC_SETTINGS) == topic_fields, "a topic setting the grants do not know (or a stale one)"
    for field_name, default in ACCESS.TOPIC_SETTINGS.items():
        assert KafkaSettings.model_fields[field_name].default == default, field_name
    assert set(ACCESS.TOPICS) == set(ACCESS.TOPIC_SETTINGS.values())
    assert {
        "consumer": ConsumerSettings.model_fields["group_id"].default,
        "forecaster": ForecasterSettings.model_fields["group_id"].default,
    } == ACCESS.GROUP_SETTINGS
    assert set(ACCESS.GROUPS) == set(ACCESS.GROUP_SETTINGS.values())
    assert set(ACCESS.KAFKA_ACCESS) == set(WORKLOAD_SOURCES), "every workload's code is checked"


# -- every service's code against its grant -------------------------------------------------


@pytest.mark.parametrize("workload", sorted(WORKLOAD_SOURCES))
def test_service_code_stays_within_its_kafka_grant(workload: str) -> None:
    files = _files(workload)
    assert files, f"no source for {workload}: {WORKLOAD_SOURCES[workload]}"
    usage = usage_of(workload)
    assert violations(workload, usage, ACCESS.KAFKA_ACCESS[workload]) == []


def test_the_derivation_sees_what_each_service_does() -> None:
    """The analysis finds the known uses (so an empty result is not a blind spot)."""
    producer, consumer = usage_of("producer"), usage_of("consumer")
    forecaster, dashboard = usage_of("forecaster"), usage_of("dashboard")
    assert producer.write == {"bars", "bars.dlq", "open_close"} and producer.read == {"bars"}
    assert producer.groups == set(), "the producer's tail scan joins no group"
    assert consumer.read == {"bars"} and consumer.write == {"bars.dlq"} and consumer.groups == {"tickcast-sink"}
    assert forecaster.read == {"bars"} and forecaster.write == {"forecasts"}
    assert forecaster.groups == {"tickcast-forecaster"}
    assert dashboard.read == {"bars.dlq"} and dashboard.write == set() and dashboard.groups == set()
    for workload in ("serving", "batch", "maintenance"):
        usage = usage_of(workload)
        assert not (usage.touched or usage.groups), (workload, usage)


# -- the check fails when code outgrows its grant --------------------------------------------


def test_a_service_that_starts_using_an_ungranted_topic_fails(tmp_path: Path) -> None:
    """A dashboard that publishes forecasts or joins the sink's group is caught, through an alias
    and a call into its own helper."""
    module = tmp_path / "rogue.py"
    module.write_text(
        "from tickcast.kafka import make_consumer, make_producer\n"
        "def publish(producer, where, value):\n"
        "    producer.send(where, value=value)\n"
        "class Page:\n"
        "    def __init__(self, settings):\n"
        "        self.settings = settings\n"
        "        self.cfg = settings.consumer\n"
        "        self.out = self.settings.kafka.topic_forecasts\n"
        "    def run(self):\n"
        "        publish(make_producer(self.settings.kafka), self.out, b'x')\n"
        "        make_consumer(self.settings.kafka, self.cfg.group_id)\n"
    )
    usage = Analysis([module]).usage(tmp_path)
    problems = violations("dashboard", usage, ACCESS.KAFKA_ACCESS["dashboard"])
    assert any("writes forecasts" in p for p in problems), problems
    assert any("joins group tickcast-sink" in p for p in problems), problems
    # and a grant that loses a topic the code uses fails the real check
    broken = ACCESS.KafkaGrant(read=())
    assert "dashboard reads bars.dlq" in " ".join(violations("dashboard", usage_of("dashboard"), broken))
