"""Tooling for policy authors: `chit policy test` and `chit policy eval`, on either engine.

Both commands ask their questions the way chit does in production: the
embedded engine evaluates the policy directory in process; the OPA engine asks
a running OPA server through its REST API (`POST /v1/data/…`), about the
modules OPA has loaded (`GET /v1/policies`).

`eval --explain` names the rules that produced a decision: every rule of
package `chit` with its value for the input (or undefined) and where it is
defined, and the branch that decided — the one whose source carries the
decision's reason.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import regopy

from chit.policy import PolicyEvaluationError, PolicyUnavailable
from chit.policy.bundle import (
    PolicyBundle,
    PolicyLoadError,
    format_compile_error,
    load_policy_dir,
    module_package,
    uses_whole_input_override,
)
from chit.policy.decision import parse_decision
from chit.policy.embedded import EmbeddedEngine
from chit.policy.opa import OpaEngine
from chit.policy.regocpp import quiet_stdout

TOOLING_TIMEOUT = 10.0  # seconds per OPA request: a person waits, not an exchange
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)
# A rule head at the start of a line (functions, with "(", are left out).
_RULE_HEAD = re.compile(r"^(?:default\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|=|\bif\b|\bcontains\b|\{|\[)", re.MULTILINE)
_BRANCH_HEAD = re.compile(r"^(?:default\s+)?\w+\s*:?=|^\}\s*else\b")
_KEYWORDS = frozenset({"package", "import", "default", "else", "not", "some", "every"})


@dataclass(frozen=True)
class PolicyTestResult:
    rule: str  # data.<package>.<name>
    status: str  # PASS | FAIL | ERROR
    milliseconds: float
    detail: str = ""


class Queries(Protocol):
    """The value of `data.<path>` for an input, from one engine."""

    modules: dict[str, str]  # module id -> Rego source, as the engine has them

    async def query(self, path: str, policy_input: dict[str, Any] | None = None) -> Any: ...

    async def decide(self, policy_input: dict[str, Any]) -> Any: ...

    async def close(self) -> None: ...


def compile_for_queries(bundle: PolicyBundle) -> regopy.Interpreter:
    interpreter = regopy.Interpreter()
    try:
        with quiet_stdout():
            for name, source in bundle.modules.items():
                interpreter.add_module(name, source)
            interpreter.add_data(bundle.data)
    except regopy.RegoError as error:
        detail = format_compile_error(str(error.args[0]) if error.args else "", bundle.modules)
        raise PolicyLoadError(f"{bundle.root}: policy does not compile:\n{detail}") from None
    return interpreter


class EmbeddedQueries:
    """rego-cpp over a policy directory: any rule for `eval`/`test`, decisions by chit's own engine."""

    def __init__(self, directory: Path, *, require_decision: bool = True):
        self.bundle = load_policy_dir(directory, require_decision=require_decision)
        self.modules = self.bundle.modules
        compile_for_queries(self.bundle)  # a policy that does not compile stops here, before any query
        self._decisions = EmbeddedEngine(load_policy_dir(directory, include_tests=False)) if require_decision else None

    async def query(self, path: str, policy_input: dict[str, Any] | None = None) -> Any:
        # rego-cpp keeps what every query compiled until its interpreter goes (about
        # 0.2 GB a query for the shipped policy and its tests): one interpreter per
        # query keeps `chit policy test` flat in memory, and costs no more time.
        interpreter = compile_for_queries(self.bundle)
        interpreter.set_input(regopy.Input(policy_input if policy_input is not None else {}))
        try:
            output = interpreter.query("data." + path.replace("/", "."))
        except regopy.RegoError as error:
            raise PolicyEvaluationError(format_compile_error(str(error.args[0]) if error.args else "", self.modules)) from None
        if not output.ok():
            raise PolicyEvaluationError("evaluation error (conflicting rule values or a failing built-in)")
        text = str(output)
        if text == "undefined":
            return None
        expressions = json.loads(text).get("expressions") or [None]
        return expressions[0]

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        assert self._decisions is not None
        return self._decisions.evaluate(policy_input)

    async def close(self) -> None:
        return None


class OpaQueries:
    """A running OPA server, through its REST API."""

    def __init__(self, opa_url: str):
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

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        return await self.engine.decide(policy_input)

    async def close(self) -> None:
        await self.engine.close()


def discover_tests(modules: dict[str, str]) -> dict[str, str]:
    """Every `test_*` rule of every module, as a data reference, with its module, in file order."""
    found: dict[str, str] = {}
    for name, source in modules.items():
        package = module_package(source)
        if package is None:
            continue
        for match in _TEST_RULE.finditer(source):
            found.setdefault(f"data.{package}.{match.group(1)}", name)
    return found


async def run_tests(queries: Queries, *, embedded: bool) -> list[PolicyTestResult]:
    """Each test passes when its rule is `true`; undefined or false fails; an error is ERROR."""
    results = []
    for rule, module in discover_tests(queries.modules).items():
        if embedded and uses_whole_input_override(queries.modules[module]):
            detail = f"{module} uses `with input as …`, which crashes rego-cpp: replace input key by key"
            results.append(PolicyTestResult(rule, "ERROR", 0.0, detail))
            continue
        started = time.perf_counter()
        try:
            value = await queries.query(rule.removeprefix("data.").replace(".", "/"))
            status, detail = ("PASS", "") if value is True else ("FAIL", "")
        except PolicyEvaluationError as error:
            status, detail = "ERROR", str(error)
        results.append(PolicyTestResult(rule, status, (time.perf_counter() - started) * 1000, detail))
    return results


def require_same_modules(directory: Path, queries: OpaQueries) -> None:
    """`policy test DIR --engine opa` tests DIR: refuse when OPA runs other sources."""
    bundle = load_policy_dir(directory, require_decision=False)
    loaded = set(queries.modules.values())
    missing = [name for name, source in bundle.modules.items() if source not in loaded]
    if missing:
        raise PolicyLoadError(
            f"OPA at {queries.engine.url} has not loaded {', '.join(missing)} as it is in {directory} "
            f"(start it with `opa run --server {directory}`)"
        )


def rule_locations(modules: dict[str, str], package: str = "chit") -> dict[str, list[str]]:
    """name -> ["module:line", …] for every rule (not function) of `package`, in file order."""
    rules: dict[str, list[str]] = {}
    for name, source in modules.items():
        if module_package(source) != package:
            continue
        for match in _RULE_HEAD.finditer(source):
            if match.group(1) not in _KEYWORDS:
                line = source.count("\n", 0, match.start()) + 1
                rules.setdefault(match.group(1), []).append(f"{name}:{line}")
    return rules


def deciding_branch(modules: dict[str, str], reasons: list[str], package: str = "chit") -> str | None:
    """The head (`rule :=` or `} else :=`) of the branch whose source writes the
    decision's first reason as a string literal, as "module:line"."""
    for reason in reasons[:1]:
        literal = json.dumps(reason)
        for name, source in modules.items():
            if module_package(source) != package:
                continue
            lines = source.splitlines()
            for number, line in enumerate(lines):
                if literal in line:
                    head = next((n for n in range(number, -1, -1) if _BRANCH_HEAD.match(lines[n])), number)
                    return f"{name}:{head + 1}"
    return None


async def explain(queries: Queries, policy_input: dict[str, Any], reasons: list[str]) -> dict[str, Any]:
    rules = []
    for name, locations in rule_locations(queries.modules).items():
        entry: dict[str, Any] = {"rule": f"data.chit.{name}", "defined_at": locations}
        try:
            value = await queries.query(f"chit/{name}", policy_input)
            entry.update({"value": value} if value is not None else {"undefined": True})
        except PolicyEvaluationError as error:
            entry["error"] = str(error)
        rules.append(entry)
    return {"decided_by": deciding_branch(queries.modules, reasons), "rules": rules}


async def evaluate(queries: Queries, policy_input: dict[str, Any], *, with_explanation: bool = False) -> dict[str, Any]:
    """The raw decision and how chit reads it (and, asked for, which rules produced it)."""
    try:
        raw = await queries.decide(policy_input)
        decision = parse_decision(raw)
    except PolicyEvaluationError as error:
        raw, decision = None, parse_decision({"allow": False, "reasons": [f"policy error: {error}"]})
    result: dict[str, Any] = {
        "decision": raw,
        "allow": decision.allow,
        "scope": list(decision.scope),
        "audience": list(decision.audience),
        "ttl": decision.ttl,
        "reasons": list(decision.reasons),
    }
    if with_explanation:
        result["explain"] = await explain(queries, policy_input, list(decision.reasons))
    return result


__all__ = [
    "EmbeddedQueries",
    "OpaQueries",
    "PolicyTestResult",
    "discover_tests",
    "evaluate",
    "require_same_modules",
    "run_tests",
]
