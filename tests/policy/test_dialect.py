"""The embedded engine refuses, at load, every policy it would decide differently from
OPA in a way that could fail open — naming file, line and function — and loads
the Rego that it evaluates as OPA does."""

from __future__ import annotations

from pathlib import Path

import pytest

from chit.policy.bundle import PolicyLoadError, load_policy_dir
from chit.policy.embedded import EmbeddedEngine
from tests.factories import ROOT


def load(tmp_path: Path, body: str, data: str | None = None) -> EmbeddedEngine:
    (tmp_path / "chit").mkdir(exist_ok=True)
    (tmp_path / "chit" / "decision.rego").write_text("package chit\n\nimport rego.v1\n\n" + body + "\n")
    if data is not None:
        (tmp_path / "data.json").write_text(data)
    return EmbeddedEngine(load_policy_dir(tmp_path))


REFUSED = {
    # OPA: rego_type_error "undefined function"; rego-cpp compiled it (review finding 3).
    "undefined function": ('decision := x if { x := undefined_function(1) }', "chit/decision.rego:5: undefined_function is not a function"),
    "undefined imported function": ('import data.lib\n\ndecision := lib.nosuch(1)', "chit/decision.rego:7: data.lib.nosuch is not a function"),
    # rego-cpp declares net.cidr_contains without implementing it: undefined, so `not` grants (finding 8).
    "placeholder built-in under not": (
        'decision := {"allow": true} if { not net.cidr_contains("10.0.0.0/8", input.ip) }',
        "chit/decision.rego:5: net.cidr_contains is not a function the policy defines or the embedded engine implements",
    ),
    "placeholder json.verify_schema": ('decision := {"allow": json.verify_schema({})[0]}', "json.verify_schema is not a function"),
    # OPA: "var usr is unsafe"; rego-cpp: undefined, so `not usr == "mallory"` holds.
    "unsafe variable under not": ('decision := {"allow": true} if { not usr == "mallory" }', "chit/decision.rego:5: data.chit.decision reads a variable that is never bound"),
    "unsafe variable iterated": ('decision := {"allow": true, "scope": [s | s := scopes[_]]}', "data.chit.decision reads a variable that is never bound"),
    "unsafe variable in a helper rule": ('blocked if { user == "mallory" }\n\ndecision := {"allow": true} if { not blocked }', "chit/decision.rego:5: data.chit.blocked reads a variable that is never bound"),
    "with data": ('v := data.q\n\nok if { v == 1 with data.q as 1 }\n\ndecision := {"allow": ok}', "chit/decision.rego:7: `with` is not supported"),
    "with input": ('d := {"allow": true}\n\ndecision := x if { x := d with input as {} }', "chit/decision.rego:7: `with` is not supported"),
    "sprintf %q": ('decision := {"allow": false, "reasons": [sprintf("%q", ["a"])]}', "chit/decision.rego:5: sprintf's %q is printed literally"),
    "base64.decode": ('decision := {"allow": true, "reasons": [base64.decode(input.x)]}', "base64.decode returns the decoded text unescaped"),
    "urlquery.decode": ('decision := {"allow": true, "reasons": [urlquery.decode(input.x)]}', "urlquery.decode returns the decoded text unescaped"),
    "time.parse_rfc3339_ns": ('decision := {"allow": time.parse_rfc3339_ns(input.t) > 0}', "time.parse_rfc3339_ns is undefined for timestamps ending in Z"),
    "object.union": ('decision := object.union({"allow": false}, input.x)', "object.union replaces nested objects where OPA merges them"),
}


@pytest.mark.parametrize("body, message", REFUSED.values(), ids=REFUSED.keys())
def test_what_would_decide_differently_from_opa_is_refused_at_load(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(PolicyLoadError) as refusal:
        load(tmp_path, body)
    assert message in str(refusal.value)
    assert "engine: opa" in str(refusal.value) or "OPA" in str(refusal.value)


@pytest.mark.parametrize("data", ['{"d": {"reason": "a\\"b"}}', '{"d": {"a\\\\b": 1}}', '{"d": ["\\u0000"]}'], ids=["quote", "backslash-key", "nul"])
def test_policy_data_the_engine_cannot_carry_is_refused_at_load(tmp_path: Path, data: str) -> None:
    with pytest.raises(PolicyLoadError, match=r"data\.d.* contains .* cannot be used in policy data"):
        load(tmp_path, "decision := data.d", data)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as refusal:
        load(tmp_path, 'decision := {"allow": true, "reasons": [base64.decode(input.b)]} if { not net.cidr_contains("10.0.0.0/8", input.ip) }')
    assert "net.cidr_contains" in str(refusal.value) and "base64.decode" in str(refusal.value)


LOADS = {
    "functions": 'f(x) := y if { y := x + 1 }\n\ndecision := {"allow": f(1) == 2}',
    "partial functions": 'f(1) := "a"\n\nf(2) := "b"\n\ndecision := {"allow": f(1) == "a"}',
    "every": 'decision := {"allow": true} if { every s in input.request.scope { startswith(s, "read") } }',
    "some in object": 'decision := {"allow": true} if { some k, v in input.attestation; k == "kind"; v == "x" }',
    "comprehensions": 'decision := {"allow": true, "scope": [s | some s in input.request.scope; s != "x"]}',
    "partial sets": 'deny contains "no" if { input.x }\n\ndecision := {"allow": count(deny) == 0}',
    "else chains": 'default decision := {"allow": false}\n\ndecision := {"allow": true} if { input.a } else := {"allow": false} if { input.b }',
    "walk": 'decision := {"allow": true, "reasons": [v | walk(input, [_, v]); is_string(v)]}',
    "partial objects": 'limits[k] := v if { some k, v in {"a": 1} }\n\ndecision := {"allow": limits.a == 1}',
    "regex with a raw string": 'decision := {"allow": regex.match(`^\\d+$`, "12")}',
    "sprintf %s": 'decision := {"allow": false, "reasons": [sprintf("image %s is not pinned", ["x"])]}',
    "with in a comment or a string": '# with input as x\ndecision := {"allow": false, "reasons": ["with data.x as y, %q"]}',
    "negation of a rule": 'decision := {"allow": true} if { not blocked }\n\nblocked if { input.x == 1 }',
    "some declarations": 'decision := {"allow": true} if { some i; input.a[i] == 1 }',
    "iteration": 'decision := {"allow": true} if { x := input.a[_]; x > 1 }',
}


@pytest.mark.parametrize("body", LOADS.values(), ids=LOADS.keys())
def test_rego_the_engine_evaluates_as_opa_loads(tmp_path: Path, body: str) -> None:
    load(tmp_path, body)


def test_the_shipped_policy_loads() -> None:
    EmbeddedEngine(load_policy_dir(ROOT / "policies", include_tests=False))


def test_the_shipped_rego_tests_call_every_builtin_the_shipped_policy_calls() -> None:
    """Review finding 8: each built-in the shipped decision depends on is pinned to
    OPA's answers by a Rego test (policies/chit/engine_test.rego) run on both engines."""
    import regopy

    from chit.policy.bundle import ENTRYPOINT
    from chit.policy.dialect import OWN_FUNCTION, plan_facts
    from chit.policy.testing import discover_tests

    def builtins(modules: dict[str, str], data: dict, entrypoints: list[str]) -> set[str]:
        interpreter = regopy.Interpreter()
        for name, source in modules.items():
            interpreter.add_module(name, source)
        interpreter.add_data(data)
        plan = interpreter.build(None, entrypoints)
        return {call for call in plan_facts(plan._impl).calls if not OWN_FUNCTION.match(call)}

    policy = load_policy_dir(ROOT / "policies", include_tests=False)
    used = builtins(policy.modules, policy.data, [ENTRYPOINT])
    everything = load_policy_dir(ROOT / "policies")
    tests = {name: source for name, source in everything.modules.items() if name.endswith("engine_test.rego")}
    entrypoints = [rule.removeprefix("data.").replace(".", "/") for rule in discover_tests(tests)]
    tested = builtins(tests, {}, entrypoints)  # the plan holds every rule of its modules: the tests alone
    assert used, "the shipped policy calls no built-in: the plan was not read"
    assert used <= tested, f"not exercised by policies/chit/engine_test.rego: {sorted(used - tested)}"
