"""`chit policy test` (chit.policy.testing): results as they complete, the failing
expression and its values, --run, exit codes as `opa test`, on both engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chit.policy.bundle import load_policy_dir
from chit.policy.testing import EmbeddedTests, PolicyTestResult
from tests.factories import ROOT, OpaStandIn, copy_policy

POLICY = """\
package p

import rego.v1

limits := {"read": 10, "write": 2}

allow if input.user == "alice"

quota := limits[input.action]

conflict := 1 if input.both

conflict := 2 if input.both
"""

TESTS = """\
package p_test

import rego.v1

test_alice_is_allowed if { data.p.allow with input.user as "alice" }

test_compares if {
	q := data.p.quota with input.action as "write"
	q > 1
	q == 5
}

test_negation if {
	not data.p.allow with input as {"user": "alice"}
}

test_bare_reference if {
	data.p.allow with input.user as "bob"
}

test_undefined_assignment if {
	q := data.p.quota with input.action as "delete"
	q == 0
}

test_error if {
	data.p.conflict == 1 with input.both as true
}

test_value := false if { true }
"""


def policy_dir(tmp_path: Path, tests: str = TESTS) -> Path:
    (tmp_path / "p").mkdir(parents=True, exist_ok=True)
    (tmp_path / "p" / "policy.rego").write_text(POLICY)
    (tmp_path / "p" / "policy_test.rego").write_text(tests)
    return tmp_path


def test_a_failure_shows_its_failing_expression_and_the_values_involved(tmp_path: Path) -> None:
    suite = EmbeddedTests(load_policy_dir(policy_dir(tmp_path), require_decision=False))
    results = suite.run(lambda _: None)
    statuses = {r.rule.rsplit(".", 1)[1]: r.status for r in results}
    assert statuses == {
        "test_alice_is_allowed": "PASS",
        "test_compares": "FAIL",
        "test_negation": "FAIL",
        "test_bare_reference": "FAIL",
        "test_undefined_assignment": "FAIL",
        "test_error": "ERROR",
        "test_value": "FAIL",
    }
    details = {rule.rsplit(".", 1)[1]: lines for rule, lines in suite.explain_failures(results).items()}
    assert details["test_compares"] == ("p/policy_test.rego:10: q == 5", "  q = 2")
    assert details["test_negation"] == (
        'p/policy_test.rego:14: not data.p.allow with input as {"user": "alice"}',
        "  data.p.allow = true",
    )
    assert details["test_bare_reference"] == ('p/policy_test.rego:18: data.p.allow with input.user as "bob"', "  data.p.allow = undefined")
    assert details["test_undefined_assignment"] == (
        'p/policy_test.rego:22: q := data.p.quota with input.action as "delete"',
        "  data.p.quota = undefined",
    )
    assert "test_error" not in details
    (error,) = [r for r in results if r.status == "ERROR"]
    assert error.detail[0].startswith("p/policy_test.rego:26: evaluation error")
    assert details["test_value"] == ("p/policy_test.rego:30: every expression of the test holds, but its value is not true",)


def test_each_result_is_reported_as_soon_as_its_test_completes(tmp_path: Path) -> None:
    suite = EmbeddedTests(load_policy_dir(policy_dir(tmp_path), require_decision=False))
    events: list[str] = []
    for group in suite.groups:
        assert group.policy is not None
        evaluate = group.policy.evaluate
        group.policy.evaluate = lambda entrypoint, *args, _evaluate=evaluate, **kwargs: (events.append(f"run {entrypoint}"), _evaluate(entrypoint, *args, **kwargs))[1]  # type: ignore[method-assign]

    def report(result: PolicyTestResult) -> None:
        events.append(f"reported {result.test.entrypoint}")

    suite.run(report)
    assert events[:4] == [
        "run p_test/test_alice_is_allowed",
        "reported p_test/test_alice_is_allowed",
        "run p_test/test_compares",
        "reported p_test/test_compares",
    ]


def test_run_selects_tests_by_their_full_name(tmp_path: Path) -> None:
    import re

    suite = EmbeddedTests(load_policy_dir(policy_dir(tmp_path), require_decision=False), re.compile(r"p_test\.test_(alice|negation)"))
    assert [r.rule for r in suite.run(lambda _: None)] == ["data.p_test.test_alice_is_allowed", "data.p_test.test_negation"]


# --- the command ---------------------------------------------------------------------------------


def chit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chit", *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_command_reports_failures_with_their_expression_and_exits_2(tmp_path: Path) -> None:
    result = chit_cli("policy", "test", str(policy_dir(tmp_path)))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert not any(line.startswith("PASS: data.") for line in lines)  # passes only with -v
    assert "FAIL: data.p_test.test_compares" in result.stdout
    failures = result.stdout.split("FAILURES\n", 1)[1]
    assert "data.p_test.test_compares (p/policy_test.rego:7)\n  p/policy_test.rego:10: q == 5\n    q = 2\n" in failures
    assert "PASS: 1/7\nFAIL: 5/7\nERROR: 1/7\n" in result.stdout
    assert "ms per test" in result.stdout


def test_verbose_lists_every_test_and_run_selects_some(tmp_path: Path) -> None:
    result = chit_cli("policy", "test", str(policy_dir(tmp_path)), "-v", "--run", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS: data.p_test.test_alice_is_allowed (")
    assert "PASS: 1/1" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", "nothing-matches"], "no test_ rules match --run"),
        (["--run", "("], "is not a regular expression"),
    ],
)
def test_nothing_to_run_exits_1(tmp_path: Path, args: list[str], message: str) -> None:
    # As `opa test --fail-on-empty`: a typo in --run never turns a CI job green.
    result = chit_cli("policy", "test", str(policy_dir(tmp_path)), *args)
    assert result.returncode == 1 and message in result.stderr


def test_a_policy_that_does_not_load_exits_1(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, "package p_test\n\ntest_x if { 1 +* 2 }\n")
    result = chit_cli("policy", "test", str(directory))
    assert result.returncode == 1 and "p/policy_test.rego:3:" in result.stderr and "Traceback" not in result.stderr


def test_the_command_on_opa_reports_each_failure(tmp_path: Path) -> None:
    policy = copy_policy(tmp_path / "p")
    (policy / "chit" / "broken_test.rego").write_text(
        "package chit_test\n\nimport rego.v1\n\n"
        "test_passes if { true }\n\n"
        'test_fails if { data.chit.decision.allow with input.attestation as {"kind": "nope"} }\n'
    )
    opa = OpaStandIn(policy, tmp_path)
    try:
        result = chit_cli("policy", "test", str(policy), "--engine", "opa", "--opa-url", opa.url)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "FAIL: data.chit_test.test_fails" in result.stdout and "PASS: 1/2" in result.stdout
        assert "chit/broken_test.rego:7: the test is undefined on OPA" in result.stdout
        result = chit_cli("policy", "test", str(policy), "--engine", "opa", "--opa-url", opa.url, "--coverage")
        assert result.returncode == 1 and "embedded engine only" in result.stderr
        # A directory OPA has not loaded is not silently tested against other sources.
        (policy / "chit" / "broken_test.rego").write_text("package chit_test\n\ntest_other if { true }\n")
        result = chit_cli("policy", "test", str(policy), "--engine", "opa", "--opa-url", opa.url)
        assert result.returncode == 1 and "has not loaded chit/broken_test.rego" in result.stderr
    finally:
        opa.stop()
    result = chit_cli("policy", "test", "--engine", "opa", "--opa-url", opa.url)
    assert result.returncode == 1 and "unreachable" in result.stderr and "Traceback" not in result.stderr
