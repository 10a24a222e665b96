"""Tooling for policy authors on either engine: `chit policy test`, and what
`chit policy eval --explain` asks the engine.

`chit policy test` on the embedded engine compiles the policy and its tests
once, into a plan per group of test modules with an entrypoint per test, then
evaluates each test from its plan (rego-cpp compiles in hundreds of
milliseconds, evaluates a test in about one). Tests run without an input, as
`opa test` runs them; `with` is made to work first (`chit.policy.suite`). A
test passes when its rule is `true`; false or undefined fails; an evaluation
error is an ERROR, and so is a test the engine cannot run (it is named, and
the others run). After the run, a
failing test is explained (`chit.policy.failures`), and with `coverage` the
lines the tests exercised are measured (`chit.policy.coverage`).

On OPA (`--engine opa`), each test is `POST /v1/data/<package>/<test>` of a
running OPA, about the modules it lists at `GET /v1/policies`, exactly as chit
asks OPA for decisions; a failure names the test's rule and line.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from chit.policy import PolicyEvaluationError, PolicyInputUnrepresentable, PolicyUnavailable
from chit.policy import coverage as measuring
from chit.policy import failures, suite
from chit.policy.bundle import PolicyBundle, PolicyLoadError, load_policy_dir
from chit.policy.embedded import CompiledPolicy
from chit.policy.plancache import PlanCache
from chit.policy.source import Module, Rule, read_modules

TOOLING_TIMEOUT = 10.0  # seconds per OPA request: a person waits, not an exchange
_TEST_RULE = re.compile(r"test_[A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class PolicyTest:
    rule: str  # data.<package>.test_x
    module: str
    line: int

    @property
    def entrypoint(self) -> str:
        return self.rule.removeprefix("data.").replace(".", "/")

    @property
    def where(self) -> str:
        return f"{self.module}:{self.line}"


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    test: PolicyTest
    status: str  # PASS | FAIL | ERROR
    milliseconds: float
    detail: tuple[str, ...] = ()  # why a test failed or errored, one line each

    @property
    def rule(self) -> str:
        return self.test.rule


Report = Callable[[PolicyTestResult], None]


def find_tests(modules: Iterable[Module], select: re.Pattern[str] | None = None) -> list[PolicyTest]:
    """Every `test_*` rule, in file order, once each; `select` keeps those whose full name
    (`data.pkg.test_x`) it matches anywhere, as `opa test --run` does."""
    found: dict[str, PolicyTest] = {}
    for module in modules:
        if module.package is None:
            continue
        for rule in module.rules:
            name = f"data.{module.package}.{rule.name}"
            if _TEST_RULE.fullmatch(rule.name) and not rule.function and name not in found:
                if select is None or select.search(name):
                    found[name] = PolicyTest(name, module.name, rule.line)
    return list(found.values())


def discover_tests(modules: dict[str, str]) -> dict[str, str]:
    """Every test rule as a data reference, with its module."""
    return {test.rule: test.module for test in find_tests(read_modules(modules).values())}


def _timed(evaluate: Callable[[], Any]) -> tuple[Any, PolicyEvaluationError | None, float]:
    started = time.perf_counter()
    try:
        value, error = evaluate(), None
    except PolicyEvaluationError as failure:
        value, error = None, failure
    return value, error, (time.perf_counter() - started) * 1000


def _result(test: PolicyTest, value: Any, error: Exception | None, milliseconds: float) -> PolicyTestResult:
    if error is not None:
        return PolicyTestResult(test, "ERROR", milliseconds, (f"{test.where}: {error}",))
    if value is True:
        return PolicyTestResult(test, "PASS", milliseconds)
    return PolicyTestResult(test, "FAIL", milliseconds)


def plan_groups(read: dict[str, Module], test_modules: frozenset[str]) -> list[frozenset[str]]:
    """Test modules that must be compiled together: those of one package, and those that
    refer to another's package (a shared helper). rego-cpp evaluates an entrypoint in a
    time that grows with the size of the plan, so each group gets a plan of its own."""
    groups: dict[str, set[str]] = {}
    for name in sorted(test_modules):
        groups.setdefault(read[name].package or name, set()).add(name)
    merged = True
    while merged:
        merged = False
        for first, names in list(groups.items()):
            for second in [p for p in groups if p != first]:
                if any(suite.mentions_package(read[n], second) for n in names):
                    groups[first] |= groups.pop(second)
                    merged = True
                    break
            if merged:
                break
    return [frozenset(names) for names in groups.values()]


@dataclass
class PlanGroup:
    """Test modules compiled together with the policy into one plan."""

    modules: frozenset[str]
    tests: list[PolicyTest]
    set_aside: dict[str, str]
    policy: CompiledPolicy | None = None
    companions: dict[str, measuring.Companion] = field(default_factory=dict)


@dataclass
class EmbeddedTests:
    """A policy directory's tests, compiled once for the embedded engine (a plan per group of
    test modules: chit.policy.testing.plan_groups)."""

    bundle: PolicyBundle
    select: re.Pattern[str] | None = None
    coverage: bool = False
    cache: PlanCache | None = None  # plans kept between runs (chit.policy.plancache)
    tests: list[PolicyTest] = field(init=False)
    compile_seconds: float = field(init=False)

    def __post_init__(self) -> None:
        started = time.perf_counter()
        self.read = read_modules(self.bundle.modules)
        self.test_modules = frozenset(name for name in self.bundle.modules if suite.is_test_module(name))
        self.tests = find_tests(self.read.values(), self.select)
        every_test = find_tests(self.read.values())
        self.instrumentation: measuring.Instrumentation | None = None
        self.replay = measuring.Replay()
        self.graph = measuring.RuleGraph.of(self.read) if self.coverage else None
        if self.coverage:
            self.instrumentation = measuring.instrument(m for n, m in self.read.items() if n not in self.test_modules)
        self.groups = []
        for modules in plan_groups(self.read, self.test_modules):
            tests = [t for t in self.tests if t.module in modules]
            if not tests:
                continue
            prepared = suite.prepare(self._modules(modules), modules)
            group = PlanGroup(modules, tests, prepared.set_aside)
            appended = self._companions(group) if self.coverage else {}
            # Every test of the group, selected or not: the same plan serves any --run (and its cache entry).
            entrypoints = [t.entrypoint for t in every_test if t.module in modules and t.rule not in group.set_aside]
            entrypoints += [c.entrypoint for c in group.companions.values()]
            if entrypoints:  # else every test of the group is set aside
                group.policy = self._compile(modules, appended, entrypoints, prepared if not appended else None)
            self.groups.append(group)
        self.replay_policy = self._compile_replay() if self.coverage and self.replay.queries else None
        self.covered: set[measuring.Branch] = set()
        self.compile_seconds = time.perf_counter() - started

    def _modules(self, group: frozenset[str], appended: dict[str, str] | None = None) -> dict[str, str]:
        """The policy's modules and the group's test modules, with text appended to some."""
        appended = appended or {}
        return {
            name: source + appended.get(name, "")
            for name, source in self.bundle.modules.items()
            if name in group or name not in self.test_modules
        }

    def _companions(self, group: PlanGroup) -> dict[str, str]:
        """A coverage companion per test of the group (chit.policy.coverage), to append."""
        assert self.instrumentation is not None and self.graph is not None
        appended: dict[str, str] = {}
        for test in group.tests:
            if test.rule in group.set_aside:
                continue
            module = self.read[test.module]
            made = measuring.companion(self._rule(test), module, self.graph, self.instrumentation.packages)
            if made is None:
                continue
            appended[test.module] = appended.get(test.module, "") + "\n\n" + made[0] + "\n"
            group.companions[test.rule] = made[1]
            for reach in made[1].expressions.values():
                data_paths = tuple(path for root, path in reach.targets if root == "data")
                for package in sorted({package for package, _ in reach.reaches}):
                    self.replay.query(package, data_paths)
        return appended

    def _rule(self, test: PolicyTest) -> Rule:
        module = self.read[test.module]
        return next(r for r in module.rules if f"data.{module.package}.{r.name}" == test.rule)

    def _compile(self, group: frozenset[str], appended: dict[str, str], entrypoints: list[str], prepared: suite.PreparedModules | None = None) -> CompiledPolicy:
        prepared = prepared or suite.prepare(self._modules(group, appended), group)
        return CompiledPolicy(
            self.bundle.root,
            prepared.modules,
            self.bundle.data,
            entrypoints,
            sources=self._modules(group),
            tests=group,
            locate=prepared.locate,
            cache=self.cache,
        )

    def _compile_replay(self) -> CompiledPolicy:
        assert self.instrumentation is not None
        modules = self._modules(frozenset(), self.instrumentation.appended)
        modules[measuring.REPLAY_MODULE] = self.replay.module()
        replay = frozenset({measuring.REPLAY_MODULE})
        prepared = suite.prepare(modules, replay, move_input=True, keep_input=replay)
        entrypoints = [self.replay.entrypoint(name) for name in self.replay.queries.values()]
        return CompiledPolicy(self.bundle.root, prepared.modules, self.bundle.data, entrypoints, tests=replay, locate=prepared.locate, cache=self.cache)

    def run(self, report: Report) -> list[PolicyTestResult]:
        """Each test in turn, reported as soon as it completes."""
        results = []
        for group in self.groups:
            for test in group.tests:
                if test.rule in group.set_aside:
                    result = PolicyTestResult(test, "ERROR", 0.0, (group.set_aside[test.rule],))
                else:
                    result = _result(test, *_timed(lambda: group.policy.evaluate(test.entrypoint)))  # type: ignore[union-attr]
                    self._measure(group, test)
                report(result)
                results.append(result)
        return results

    def _measure(self, group: PlanGroup, test: PolicyTest) -> None:
        """Replay each expression of the test that reaches the policy: which branches held."""
        companion = group.companions.get(test.rule)
        if companion is None or self.instrumentation is None or self.replay_policy is None or group.policy is None:
            return
        try:
            replays = group.policy.evaluate(companion.entrypoint, keep_sets=True) or []
        except PolicyEvaluationError:
            return  # nothing reached, nothing counted
        for index, values in replays:
            reach = companion.expressions[index]
            data_paths, document = measuring.replay_input(reach, values, suite.INPUT_ROOT)
            for package in sorted({package for package, _ in reach.reaches}):
                entrypoint = self.replay.entrypoint(self.replay.query(package, data_paths))
                try:
                    ids = self.replay_policy.evaluate(entrypoint, document)
                except (PolicyEvaluationError, PolicyInputUnrepresentable):
                    continue  # a replay that cannot run counts nothing as covered
                self.covered |= measuring.selected(self.instrumentation, package, reach, ids)

    def coverage_report(self) -> list[measuring.ModuleCoverage]:
        assert self.instrumentation is not None
        return measuring.report(self.instrumentation, self.covered)

    def explain_failures(self, results: list[PolicyTestResult]) -> dict[str, tuple[str, ...]]:
        """For each FAIL: the first expression of its body that does not hold and the values
        of its operands, from a second compile with probe rules (only when something failed)."""
        failed = {r.rule for r in results if r.status == "FAIL"}
        explained: dict[str, tuple[str, ...]] = {}
        for group in self.groups:
            appended: dict[str, str] = {}
            probes: list[failures.Probe] = []
            for test in (t for t in group.tests if t.rule in failed):
                made = failures.probes_for(self._rule(test), self.read[test.module])
                if made is not None:
                    appended[test.module] = appended.get(test.module, "") + made[0]
                    probes.append(made[1])
            if not probes:
                continue
            entrypoints = [e for p in probes for e in p.prefixes] + [e for p in probes for entries in p.operands for _, e in entries]
            policy = self._compile(group.modules, appended, entrypoints)
            explained.update({probe.rule: _diagnosis(policy, probe, self.read[probe.module]) for probe in probes})
        return explained


def _diagnosis(policy: CompiledPolicy, probe: failures.Probe, module: Module) -> tuple[str, ...]:
    def value(entrypoint: str) -> tuple[bool, Any, str | None]:
        try:
            result = policy.evaluate(entrypoint)
        except PolicyEvaluationError as error:
            return False, None, str(error)
        return result is not None, result, None

    for index, entrypoint in enumerate(probe.prefixes):
        holds, _, error = value(entrypoint)
        if holds:
            continue
        expression = probe.expressions[index]
        lines = [f"{module.name}:{expression.line}: {' '.join(expression.text.split())}"]
        if error is not None:
            lines.append(f"  error: {error}")
        for operand, operand_entry in probe.operands[index]:
            defined, shown_value, operand_error = value(operand_entry)
            if operand_error is not None:
                lines.append(f"  {operand}: error: {operand_error}")
            else:
                lines.append(f"  {operand} = {failures.shown(shown_value[0]) if defined else 'undefined'}")
        return tuple(lines)
    return (f"{module.name}:{probe.line}: every expression of the test holds, but its value is not true",)


# --- OPA -----------------------------------------------------------------------------------


class OpaQueries:
    """A running OPA server, through its REST API."""

    def __init__(self, opa_url: str):
        from chit.policy.opa import OpaEngine  # httpx: only when OPA is asked

        self.engine = OpaEngine(opa_url, TOOLING_TIMEOUT)
        self.modules: dict[str, str] = {}

    async def load(self) -> OpaQueries:
        try:
            policies = await self.engine.policies()
        except PolicyUnavailable as error:
            raise PolicyLoadError(f"cannot list the policies of OPA at {self.engine.url}: {error}") from None
        self.modules = {str(p.get("id")): p["raw"] for p in policies if isinstance(p.get("raw"), str)}
        return self

    async def query(self, path: str, policy_input: dict[str, Any] | None = None) -> Any:
        return await self.engine.query(path, policy_input)

    async def close(self) -> None:
        await self.engine.close()


async def run_opa_tests(queries: OpaQueries, select: re.Pattern[str] | None, report: Report) -> list[PolicyTestResult]:
    """Each test of the modules OPA serves, asked of OPA without an input."""
    results = []
    for test in find_tests(read_modules(queries.modules).values(), select):
        started = time.perf_counter()
        try:
            value, error = await queries.query(test.entrypoint), None
        except PolicyEvaluationError as failure:
            value, error = None, failure
        result = _result(test, value, error, (time.perf_counter() - started) * 1000)
        if result.status == "FAIL":
            shown_value = "undefined" if value is None else failures.shown(value)
            result = PolicyTestResult(test, "FAIL", result.milliseconds, (f"{test.where}: the test is {shown_value} on OPA (the failing expression is shown by the embedded engine)",))
        report(result)
        results.append(result)
    return results


def require_same_modules(directories: list[Path], queries: OpaQueries) -> None:
    """`policy test DIR --engine opa` tests DIR: refuse when OPA runs other sources."""
    bundle = load_policy_dir(directories[0], require_decision=False, extra_dirs=directories[1:])
    loaded = set(queries.modules.values())
    missing = [name for name, source in bundle.modules.items() if source not in loaded]
    if missing:
        raise PolicyLoadError(
            f"OPA at {queries.engine.url} has not loaded {', '.join(missing)} as it is in {directories[0]} "
            f"(start it with `opa run --server {' '.join(map(str, directories))}`)"
        )


# --- explaining a decision (chit policy eval --explain) --------------------------------------


def rule_locations(modules: dict[str, str], package: str = "chit") -> dict[str, list[str]]:
    """name -> ["module:line", …] for every rule (not function) of `package`, in file order."""
    rules: dict[str, list[str]] = {}
    for module in read_modules(modules).values():
        if module.package == package:
            for rule in module.rules:
                if not rule.function:
                    rules.setdefault(rule.name, []).append(f"{module.name}:{rule.line}")
    return rules


def _rule_entry(name: str, locations: list[str], value: Any = None, error: Exception | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": f"data.chit.{name}", "defined_at": locations}
    if error is not None:
        entry["error"] = str(error)
    elif value is None:
        entry["undefined"] = True
    else:
        entry["value"] = value
    return entry


class EmbeddedExplainer:
    """Which branches of the policy held for an input, and every rule's value: the policy
    compiled once with coverage probes (`chit.policy.coverage`) and an entrypoint per rule."""

    def __init__(self, bundle: PolicyBundle):
        self.bundle = bundle
        read = read_modules(bundle.modules)
        self.locations = rule_locations(bundle.modules)
        self.instrumentation = measuring.instrument(read.values())
        modules = {name: source + self.instrumentation.appended.get(name, "") for name, source in bundle.modules.items()}
        packages = sorted(self.instrumentation.packages)
        entrypoints = [f"chit/{name}" for name in self.locations] + [f"{p.replace('.', '/')}/{measuring.HELD}" for p in packages]
        self.packages = packages
        self.policy = CompiledPolicy(bundle.root, modules, bundle.data, entrypoints, sources=bundle.modules)

    def explain(self, policy_input: dict[str, Any]) -> dict[str, Any]:
        held: list[measuring.Branch] = []
        for package in self.packages:
            try:
                ids = self.policy.evaluate(f"{package.replace('.', '/')}/{measuring.HELD}", policy_input) or []
            except PolicyEvaluationError:
                ids = []
            held += [self.instrumentation.branches[(package, i)] for i in ids if (package, i) in self.instrumentation.branches]
        held.sort(key=lambda b: (b.module, b.first_line))
        decided = [b for b in held if (b.package, b.rule) == ("chit", "decision")]
        rules = []
        for name, locations in self.locations.items():
            try:
                rules.append(_rule_entry(name, locations, self.policy.evaluate(f"chit/{name}", policy_input)))
            except PolicyEvaluationError as error:
                rules.append(_rule_entry(name, locations, error=error))
        return {
            "decided_by": decided[0].where if len(decided) == 1 else None,
            "held": [f"{b.where} {b.rule}{' (default)' if b.default else ''}" for b in held],
            "rules": rules,
        }


async def explain_on_opa(queries: OpaQueries, policy_input: dict[str, Any]) -> dict[str, Any]:
    """Every rule of package chit with its value from OPA. Which branch decided is measured
    by the embedded engine only (OPA's REST API has no such answer)."""
    rules = []
    for name, locations in rule_locations(queries.modules).items():
        try:
            rules.append(_rule_entry(name, locations, await queries.query(f"chit/{name}", policy_input)))
        except PolicyEvaluationError as error:
            rules.append(_rule_entry(name, locations, error=error))
    return {"decided_by": None, "held": None, "rules": rules}


__all__ = [
    "EmbeddedExplainer",
    "EmbeddedTests",
    "OpaQueries",
    "PolicyTest",
    "PolicyTestResult",
    "discover_tests",
    "explain_on_opa",
    "find_tests",
    "require_same_modules",
    "run_opa_tests",
]
