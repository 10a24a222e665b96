"""Tooling for policy authors: `chit policy test` and `chit policy eval`."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy

from server.policy.bundle import PolicyBundle, PolicyLoadError, format_compile_error, load_policy_dir, uses_whole_input_override
from server.policy.decision import parse_decision
from server.policy.embedded import EmbeddedEngine, PolicyEvaluationError

_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)


@dataclass(frozen=True)
class PolicyTestResult:
    rule: str  # data.<package>.<name>
    status: str  # PASS | FAIL | ERROR
    milliseconds: float
    detail: str = ""


def discover_tests(bundle: PolicyBundle) -> dict[str, str]:
    """Every `test_*` rule of every module, as a data reference, with its module, in file order."""
    found: dict[str, str] = {}
    for name, source in bundle.modules.items():
        package = bundle.module_package(name)
        if package is None:
            continue
        for match in _TEST_RULE.finditer(source):
            found.setdefault(f"data.{package}.{match.group(1)}", name)
    return found


def compile_for_queries(bundle: PolicyBundle) -> regopy.Interpreter:
    interpreter = regopy.Interpreter()
    try:
        for name, source in bundle.modules.items():
            interpreter.add_module(name, source)
        interpreter.add_data(bundle.data)
    except regopy.RegoError as error:
        detail = format_compile_error(str(error.args[0]) if error.args else "", bundle.modules)
        raise PolicyLoadError(f"{bundle.root}: policy does not compile:\n{detail}") from None
    return interpreter


def run_tests(directory: Path) -> list[PolicyTestResult]:
    bundle = load_policy_dir(directory, require_decision=False)
    interpreter = compile_for_queries(bundle)
    results = []
    for rule, module in discover_tests(bundle).items():
        if uses_whole_input_override(bundle.modules[module]):
            detail = f"{module} uses `with input as …`, which crashes rego-cpp: replace input key by key"
            results.append(PolicyTestResult(rule, "ERROR", 0.0, detail))
            continue
        started = time.perf_counter()
        try:
            output = interpreter.query(rule)
            passed = output.ok() and bool(output.results) and output.results[0].expressions == [True]
            status, detail = ("PASS", "") if passed else ("FAIL", "" if output.ok() else "evaluation error")
        except regopy.RegoError as error:
            status, detail = "ERROR", format_compile_error(str(error.args[0]) if error.args else "", bundle.modules)
        results.append(PolicyTestResult(rule, status, (time.perf_counter() - started) * 1000, detail))
    return results


def evaluate(directory: Path, policy_input: dict[str, Any]) -> dict[str, Any]:
    """The raw decision and how chit reads it."""
    engine = EmbeddedEngine(load_policy_dir(directory))
    try:
        raw = engine.evaluate(policy_input)
        error = None
    except PolicyEvaluationError as failure:
        raw, error = None, str(failure)
    decision = parse_decision(raw) if error is None else parse_decision({"allow": False, "reasons": [f"policy error: {error}"]})
    return {
        "decision": raw,
        "allow": decision.allow,
        "scope": list(decision.scope),
        "audience": list(decision.audience),
        "ttl": decision.ttl,
        "reasons": list(decision.reasons),
    }
