"""Which lines of a policy its tests exercised (`chit policy test --coverage`), and which
branch decided (`chit policy eval --explain`), measured by instrumenting the modules.

rego-cpp has no coverage API and Rego no side effects, so chit asks the engine
a question it can answer: which rule bodies *hold*. Each branch of a rule (its
body, each `else`) gets a copy of its expressions in a probe rule appended to
the same module (same package, same imports), and a partial set `__chit_held`
of package P collects the ids of the selected branches:

    __chit_h3 if { <the expressions of branch 3> }
    __chit_held contains 4 if { not __chit_h3; __chit_h4 }   # an else: selected when the one before did not hold

A `default` rule is selected when no body of its rule holds.

For coverage, each test gets a companion rule in its module. For each of the
test's expressions that may reach a policy rule (directly, or through rules
without `with` of their own), it hands back the values of that expression's
`with` modifiers, in the test's own bindings, once the expressions before it
held. chit replays the expression on a second plan, the policy and its
probes: the input it built goes in through `set_input`, the data it replaced
through `with` in a query rule per combination of data paths the tests use
(`Replay`). Only branches of the rules the expression reaches count, never
those of a rule it replaces. (A modifier whose target is not a plain path,
`input["x"]`, is not replayed: its expression counts nothing.)

So a line is *covered* when a branch containing it was selected in some test:
for the input and data a test expression built, the branch's expressions all
held (and no earlier branch of its chain did), for a rule that expression
reaches. That is a statement about the situations the tests create, not a
trace of the engine's evaluation order: a branch whose rule the engine never
had to evaluate (a short-circuit) still counts when it holds. Bodies of
functions and rules without a body are *not measured*, and listed as such.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from chit.policy.source import Expression, Module, Rule, code_only, referenced_rules

HELD = "__chit_held"
_PROBE = "__chit_h"
COMPANION = "__chit_cov_"

RuleId = tuple[str, str]  # (package, rule)
_WITH = re.compile(r"(?<![\w.])with(?![\w])")


@dataclass(frozen=True, slots=True)
class Branch:
    """One branch of a rule: what `__chit_held` reports as `id`."""

    id: int
    package: str
    rule: str
    module: str
    first_line: int
    last_line: int
    default: bool = False

    @property
    def where(self) -> str:
        return f"{self.module}:{self.first_line}"


@dataclass
class Instrumentation:
    appended: dict[str, str] = field(default_factory=dict)  # module -> probe rules to append
    branches: dict[tuple[str, int], Branch] = field(default_factory=dict)  # (package, id) -> branch
    measured: dict[str, set[int]] = field(default_factory=dict)  # module -> lines
    unmeasured: dict[str, set[int]] = field(default_factory=dict)

    @property
    def packages(self) -> set[str]:
        return {package for package, _ in self.branches}


def _body_text(expressions: Iterable[Expression]) -> str:
    return "\n".join(f"\t{expression.text}" for expression in expressions)


def instrument(modules: Iterable[Module]) -> Instrumentation:
    """Probe rules for every branch of every rule (not function) of the policy modules."""
    result = Instrumentation()
    modules = [m for m in modules if m.package is not None]
    counters: dict[str, int] = {}
    texts: dict[str, list[str]] = {m.name: [] for m in modules}
    chains: dict[RuleId, list[str]] = {}  # the probes of every conditional branch of a rule, package-wide
    unconditional: set[RuleId] = set()  # rules that always have a value: their default is never selected

    def add(module: Module, rule: Rule, first: int, last: int, conditions: list[str], default: bool = False) -> None:
        package = module.package or ""
        number = counters[package] = counters.get(package, 0) + 1
        result.branches[(package, number)] = Branch(number, package, rule.name, module.name, first, last, default)
        result.measured.setdefault(module.name, set()).update(range(first, last + 1))
        texts[module.name].append(f"{HELD} contains {number} if {{\n" + ("\n".join(conditions) or "\ttrue") + "\n}")

    for module in modules:
        for rule in module.rules:
            key = (module.package or "", rule.name)
            if rule.function or (not rule.branches and not rule.default):
                result.unmeasured.setdefault(module.name, set()).update(rule.lines())
                if not rule.function:
                    unconditional.add(key)
                continue
            probes: list[str] = []
            for branch in rule.branches:
                conditions = [f"\tnot {probe}" for probe in probes]
                if branch.conditional:
                    probe = f"{_PROBE}{len(chains.get(key, [])) + len(probes)}_{rule.name}"
                    texts[module.name].append(f"{probe} if {{\n{_body_text(branch.expressions)}\n}}")
                    conditions.append(f"\t{probe}")
                    probes.append(probe)
                else:
                    unconditional.add(key)
                add(module, rule, branch.first_line, branch.last_line, conditions)
            chains.setdefault(key, []).extend(probes)
    for module in modules:
        for rule in module.rules:
            key = (module.package or "", rule.name)
            if not rule.default:
                continue
            if key in unconditional:
                result.unmeasured.setdefault(module.name, set()).update(rule.lines())
                continue
            add(module, rule, rule.line, rule.lines()[-1], [f"\tnot {probe}" for probe in chains.get(key, [])], default=True)
    for module in modules:
        if texts[module.name]:
            result.appended[module.name] = "\n\n# chit: coverage probes\n\n" + "\n\n".join(texts[module.name]) + "\n"
        result.unmeasured[module.name] = result.unmeasured.get(module.name, set()) - result.measured.get(module.name, set())
    return result


def _rules_with_their_own_with(modules: Iterable[Module]) -> set[RuleId]:
    found = set()
    for module in modules:
        for rule in module.rules:
            if _WITH.search(code_only(module.source[rule.start : rule.end])):
                found.add((module.package or "", rule.name))
    return found


@dataclass
class RuleGraph:
    """Which rules each rule may refer to, textually (chit.policy.source.referenced_rules)."""

    modules: dict[str, Module]
    rules_by_package: dict[str, set[str]] = field(default_factory=dict)
    edges: dict[RuleId, set[RuleId]] = field(default_factory=dict)
    stops: set[RuleId] = field(default_factory=set)  # rules evaluated under their own `with`

    @classmethod
    def of(cls, modules: dict[str, Module]) -> RuleGraph:
        graph = cls(modules)
        for module in modules.values():
            if module.package:
                graph.rules_by_package.setdefault(module.package, set()).update(r.name for r in module.rules)
        for module in modules.values():
            for rule in module.rules:
                code = code_only(module.source[rule.start : rule.end])
                graph.edges.setdefault((module.package or "", rule.name), set()).update(
                    referenced_rules(code, module, graph.rules_by_package)
                )
        graph.stops = _rules_with_their_own_with(modules.values())
        return graph

    def reached(self, expression: Expression, module: Module) -> set[RuleId]:
        """The rules an expression of `module` may evaluate, in its own `with` context: not
        through a rule it replaces, nor into a rule with `with` of its own."""
        mocked = {(p, r) for target in (m.target for m in expression.modifiers) for p, r in self._target_rule(target)}
        start = referenced_rules(code_only(expression.base), module, self.rules_by_package)
        seen: set[RuleId] = set()
        queue = deque(rule for rule in start if rule not in mocked)
        while queue:
            rule = queue.popleft()
            if rule in seen:
                continue
            seen.add(rule)
            if rule in self.stops:
                continue
            queue.extend(r for r in self.edges.get(rule, ()) if r not in mocked and r not in seen)
        return seen

    def _target_rule(self, target: str) -> set[RuleId]:
        if not target.startswith("data."):
            return set()
        parts = target.removeprefix("data.").split(".")
        for cut in range(len(parts) - 1, 0, -1):
            package = ".".join(parts[:cut])
            if package in self.rules_by_package and parts[cut] in self.rules_by_package[package]:
                return {(package, parts[cut])}
        return set()


_PATH = re.compile(r"(input|data)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


@dataclass(frozen=True, slots=True)
class Reach:
    """One test expression, replayed: the rules it reaches, and where its `with` values go."""

    index: int
    reaches: frozenset[RuleId]
    targets: tuple[tuple[str, tuple[str, ...]], ...]  # ("input" | "data", path) of each modifier


@dataclass(frozen=True, slots=True)
class Companion:
    """A test's coverage companion: its entrypoint, and its expressions that reach the policy."""

    entrypoint: str
    expressions: dict[int, Reach]


def companion(test: Rule, module: Module, graph: RuleGraph, instrumented: set[str]) -> tuple[str, Companion] | None:
    """The companion rule of one test (text to append to its module), or None when no
    expression of it reaches an instrumented package. It evaluates nothing of the policy:
    for each such expression, it gives the values of its `with` modifiers, in the test's
    own bindings (the expressions before it), to be replayed on the coverage plan."""
    if not test.branches or module.package is None:
        return None
    expressions = test.branches[0].expressions
    name = f"{COMPANION}{test.name}"
    bodies, reaches = [], {}
    for index, expression in enumerate(expressions):
        reached = frozenset(rule for rule in graph.reached(expression, module) if rule[0] in instrumented)
        targets = [_PATH.fullmatch(m.target) for m in expression.modifiers]
        if not reached or not all(targets):
            continue  # a target that is not a plain path (input["x"]) is not replayed: not counted
        paths = tuple((t.group(1), tuple(t.group(2).split(".")[1:])) for t in targets if t)
        reaches[index] = Reach(index, reached, paths)
        prefix = _body_text(expressions[:index])
        values = ", ".join(m.value for m in expression.modifiers)
        bodies.append(f"{name} contains [{index}, [{values}]] if {{\n{prefix}\n\ttrue\n}}")
    if not bodies:
        return None
    return "\n\n".join(bodies), Companion(f"{module.package.replace('.', '/')}/{name}", reaches)


REPLAY_MODULE = "__chit_coverage__.rego"
REPLAY_PACKAGE = "__chit_coverage__"
REPLAY_VALUES = "__chit_with"


@dataclass
class Replay:
    """The policy with its probes, compiled once, asked `__chit_held` under each combination
    of data `with` targets the tests use (one query rule each: `with` copies the rules it
    reaches, so there are as few as the tests need). Input comes through `set_input`,
    under `input.__chit_input__` (the policy's `input` is moved there: chit.policy.suite),
    beside the data values."""

    queries: dict[tuple[str, tuple[tuple[str, ...], ...]], str] = field(default_factory=dict)  # (package, data paths) -> rule

    def query(self, package: str, data_paths: tuple[tuple[str, ...], ...]) -> str:
        key = (package, data_paths)
        if key not in self.queries:
            self.queries[key] = f"q{len(self.queries)}"
        return self.queries[key]

    def module(self) -> str:
        rules = []
        for (package, paths), name in self.queries.items():
            withs = "".join(
                f" with data.{'.'.join(path)} as [input.{REPLAY_VALUES}[{number}]][0]" for number, path in enumerate(paths)
            )
            rules.append(f"{name} := held if {{\n\theld := data.{package}.{HELD}{withs}\n}}")
        return f"package {REPLAY_PACKAGE}\n\nimport rego.v1\n\n" + "\n\n".join(rules) + "\n"

    def entrypoint(self, name: str) -> str:
        return f"{REPLAY_PACKAGE}/{name}"


def replay_input(reach: Reach, values: list[Any], input_root: str) -> tuple[tuple[tuple[str, ...], ...], dict[str, Any]]:
    """The data paths a replay overrides, and the input document to set: the test's `with
    input…` values applied in order onto no input, its data values in a list."""
    policy_input: Any = None
    data_paths, data_values = [], []
    for (root, path), value in zip(reach.targets, values):
        if root == "data":
            data_paths.append(path)
            data_values.append(value)
        elif not path:
            policy_input = value
        else:
            policy_input = _with_path(policy_input if isinstance(policy_input, dict) else {}, path, value)
    document: dict[str, Any] = {REPLAY_VALUES: data_values}
    if policy_input is not None:
        document[input_root] = policy_input
    return tuple(data_paths), document


def _with_path(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """`document` with `value` at `path`, as `with input.a.b as value` makes it."""
    copy = dict(document)
    head = path[0]
    copy[head] = value if len(path) == 1 else _with_path(copy.get(head) if isinstance(copy.get(head), dict) else {}, path[1:], value)
    return copy


def selected(instrumentation: Instrumentation, package: str, reach: Reach, ids: Any) -> set[Branch]:
    """The branches `ids` name, each kept only if the expression reaches its rule."""
    found = set()
    for number in ids or []:
        branch = instrumentation.branches.get((package, number))
        if branch is not None and (branch.package, branch.rule) in reach.reaches:
            found.add(branch)
    return found


@dataclass(frozen=True, slots=True)
class ModuleCoverage:
    module: str
    covered: frozenset[int]
    not_covered: frozenset[int]
    not_measured: frozenset[int]

    @property
    def percent(self) -> float:
        measured = len(self.covered) + len(self.not_covered)
        return 100.0 * len(self.covered) / measured if measured else 100.0


def report(instrumentation: Instrumentation, covered_branches: set[Branch]) -> list[ModuleCoverage]:
    covered: dict[str, set[int]] = {}
    for branch in covered_branches:
        covered.setdefault(branch.module, set()).update(range(branch.first_line, branch.last_line + 1))
    modules = []
    for module, measured in instrumentation.measured.items():
        lines = covered.get(module, set()) & measured
        modules.append(ModuleCoverage(module, frozenset(lines), frozenset(measured - lines), frozenset(instrumentation.unmeasured.get(module, set()))))
    return modules


def line_ranges(lines: Iterable[int]) -> str:
    """`3-5, 9, 12-13`."""
    ordered = sorted(lines)
    ranges: list[str] = []
    start = previous = None
    for line in ordered + [None]:  # type: ignore[list-item]
        if start is not None and (line is None or line != previous + 1):  # type: ignore[operator]
            ranges.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = None
        if line is not None and start is None:
            start = line
        previous = line
    return ", ".join(ranges)
