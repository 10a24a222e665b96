"""`with` in Rego tests on the embedded engine (chit.policy.suite): what rego-cpp 1.5 does
with it, measured, and that every form a test suite mocks with either works or is
reported on its own — never a test that passes because an override was ignored."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chit.policy.bundle import PolicyLoadError, load_policy_dir
from chit.policy.testing import EmbeddedTests
from tests.factories import ROOT

# A policy whose rules call functions (built-ins and its own): what makes rego-cpp
# abort on `with input as …`.
POLICY = """
package p

import rego.v1

double(x) := x * 2

allow if input.user == "alice"

doubled := double(input.n)

limit := data.config.limit + 0

named := count(input.user)
"""

DATA = {"config": {"limit": 3}, "other": {"limit": 11}}


def suite_dir(tmp_path: Path, tests: str, policy: str = POLICY, data: dict | None = None) -> Path:
    (tmp_path / "p").mkdir(parents=True, exist_ok=True)
    (tmp_path / "p" / "policy.rego").write_text(textwrap.dedent(policy))
    (tmp_path / "p" / "policy_test.rego").write_text("package p_test\n\nimport rego.v1\n" + textwrap.dedent(tests))
    (tmp_path / "data.json").write_text(json.dumps(DATA if data is None else data))
    return tmp_path


def verdicts(directory: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    tests = EmbeddedTests(load_policy_dir(directory, require_decision=False))
    return {r.rule.rsplit(".", 1)[1]: (r.status, r.detail) for r in tests.run(lambda _: None)}


# --- what rego-cpp 1.5 does without chit's rewrites (why they exist) ----------------------------

RAW = """
import json, sys
import chit.policy.embedded  # rego-cpp's log level, once
import regopy
from regopy import rego_shared
from chit.policy import regocpp
modules, entrypoint = json.loads(sys.argv[1]), sys.argv[2]
interpreter = regopy.Interpreter()
for name, source in modules.items():
    interpreter.add_module(name, source)
interpreter.add_data_json(json.dumps({"config": {"limit": 3}}))
plan = interpreter.build(None, [entrypoint])
output = rego_shared.rego.regoBundleQueryEntrypoint(interpreter._impl, plan._impl, entrypoint.encode())
print(json.dumps(regocpp.read_result(output)))
"""


def raw_rego_cpp(test: str) -> subprocess.CompletedProcess[str]:
    modules = {"policy.rego": POLICY, "t.rego": "package t\n\nimport rego.v1\n\nseven := 7\n\n" + test}
    return subprocess.run([sys.executable, "-c", RAW, json.dumps(modules), "t/test_x"], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_rego_cpp_aborts_on_a_whole_input_override_of_rules_calling_functions() -> None:
    result = raw_rego_cpp('test_x if { data.p.doubled == 4 with input as {"n": 2} }')
    assert result.returncode != 0 and "rego-refhead" in result.stderr


def test_rego_cpp_reads_a_rule_given_as_a_with_value_as_undefined() -> None:
    # OPA: true (data.p.limit is 7 under the override); rego-cpp: the test is undefined.
    result = raw_rego_cpp("test_x if { data.p.limit == 7 with data.config.limit as seven }")
    assert result.returncode == 0 and json.loads(result.stdout) is None


# --- every form, positive and negative: the override is honoured ---------------------------------

FORMS = {
    "whole input, rules calling functions": (
        'data.p.doubled == 4 with input as {"n": 2}',
        'data.p.doubled == 5 with input as {"n": 2}',
    ),
    "whole input, a local": ('i := {"user": "alice"}\n\tdata.p.allow with input as i', 'i := {"user": "bob"}\n\tdata.p.allow with input as i'),
    "whole input under not": ('not data.p.allow with input as {"user": "bob"}', 'not data.p.allow with input as {"user": "alice"}'),
    "whole input, then one key of it": (
        'data.p.named == 3 with input as {"user": "alice"} with input.user as "bob"',
        'data.p.named == 5 with input as {"user": "alice"} with input.user as "bob"',
    ),
    "one input key": ('data.p.doubled == 6 with input.n as 3', 'data.p.doubled == 7 with input.n as 3'),
    "data as a literal": ("data.p.limit == 7 with data.config.limit as 7", "data.p.limit == 3 with data.config.limit as 7"),
    "data as a local": ("v := 7\n\tdata.p.limit == 7 with data.config.limit as v", "v := 7\n\tdata.p.limit == 3 with data.config.limit as v"),
    "data as a rule": ("data.p.limit == 7 with data.config.limit as seven", "data.p.limit == 3 with data.config.limit as seven"),
    "data as another data document": ("data.p.limit == 11 with data.config as data.other", "data.p.limit == 3 with data.config as data.other"),
    "input key as a rule": ("data.p.doubled == 14 with input.n as seven", "data.p.doubled == 7 with input.n as seven"),
    "a rule replaced": ("data.p.limit == 1 with data.p.limit as 1", "data.p.limit == 3 with data.p.limit as 1"),
}


@pytest.mark.parametrize("passing, failing", FORMS.values(), ids=FORMS.keys())
def test_every_with_form_is_honoured(tmp_path: Path, passing: str, failing: str) -> None:
    tests = f"\nseven := 7\n\ntest_holds if {{\n\t{passing}\n}}\n\ntest_does_not_hold if {{\n\t{failing}\n}}\n"
    results = verdicts(suite_dir(tmp_path, tests))
    assert results["test_holds"][0] == "PASS", results
    assert results["test_does_not_hold"][0] == "FAIL", results


def test_without_with_tests_run_with_no_input_as_opa_test_runs_them(tmp_path: Path) -> None:
    results = verdicts(suite_dir(tmp_path, "\ntest_no_input if { not input }\n\ntest_not_an_empty_object if { input == {} }\n"))
    assert results == {"test_no_input": ("PASS", ()), "test_not_an_empty_object": ("FAIL", ())}


# --- what cannot work is reported on its own; the rest runs ---------------------------------------

MOCKS = """
test_plain if { data.p.allow with input.user as "alice" }

# OPA replaces every call of double; rego-cpp would ignore it, and `not` would then hold.
test_function_mock if { not data.p.doubled == 10 with data.p.double as 5 with input.n as 1 }

test_builtin_mock if { data.p.named == 9 with count as 9 with input.user as "x" }
"""


def test_a_function_mock_is_reported_not_run_and_the_others_run(tmp_path: Path) -> None:
    results = verdicts(suite_dir(tmp_path, MOCKS))
    assert results["test_plain"] == ("PASS", ())
    status, detail = results["test_function_mock"]
    assert status == "ERROR" and "not run: p/policy_test.rego:8 mocks the function data.p.double" in detail[0]
    assert "--engine opa" in detail[0]
    status, detail = results["test_builtin_mock"]
    assert status == "ERROR" and "mocks the function or built-in count" in detail[0]


def test_a_helper_with_a_mock_sets_aside_every_test_that_may_use_it(tmp_path: Path) -> None:
    directory = suite_dir(tmp_path, "\nmocked := v if { v := data.p.doubled with data.p.double as 5 }\n\ntest_uses_it if { not mocked == 1 }\n\ntest_other if { true }\n")
    (directory / "p" / "other_test.rego").write_text(
        "package q_test\n\nimport rego.v1\n\ntest_elsewhere if { not data.p_test.mocked == 1 }\n"
    )
    (directory / "p" / "apart_test.rego").write_text("package r_test\n\nimport rego.v1\n\ntest_apart if { true }\n")
    results = verdicts(directory)
    assert results["test_uses_it"][0] == results["test_other"][0] == results["test_elsewhere"][0] == "ERROR"
    assert "it may use p_test.mocked" in results["test_elsewhere"][1][0]
    assert results["test_apart"] == ("PASS", ())


def test_a_compile_error_names_the_line_and_column_as_written(tmp_path: Path) -> None:
    # The line is rewritten (input moved, a value wrapped) before the error: its place is still the source's.
    line = 'test_a if { data.p.allow with input as {"user": seven} with data.config as seven; x := 1 +* 2 }'
    with pytest.raises(PolicyLoadError) as refusal:
        verdicts(suite_dir(tmp_path, f"\nseven := 7\n\n{line}\n"))
    assert f"p/policy_test.rego:7:{line.index('+*') + 1}: Invalid arithmetic operator" in str(refusal.value)


def test_the_server_still_refuses_with_outside_tests(tmp_path: Path) -> None:
    directory = suite_dir(tmp_path, "\ntest_x if { true }\n", policy=POLICY + '\nwrapped := v if { v := allow with input.user as "alice" }\n')
    with pytest.raises(PolicyLoadError, match="`with` is not supported by the embedded engine outside tests"):
        verdicts(directory)


def test_a_target_with_a_quoted_key_is_rewritten_too(tmp_path: Path) -> None:
    # The target's string is blanked while scanning: the modifier is still found, its value wrapped.
    policy = POLICY + '\nspaced := input["a b"]\n'
    tests = '\nseven := 7\n\ntest_holds if { data.p.spaced == 7 with input["a b"] as seven }\n\ntest_does_not_hold if { not data.p.spaced == 7 with input["a b"] as seven }\n'
    results = verdicts(suite_dir(tmp_path, tests, policy=policy))
    assert results["test_holds"][0] == "PASS" and results["test_does_not_hold"][0] == "FAIL"
