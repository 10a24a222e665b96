"""`chit policy test --coverage` (chit.policy.coverage): a line is covered when a branch
holding it was selected in some test, for a rule the test reaches — and never otherwise:
not through a rule a test replaces, not past a test's failing expression, not an else
branch after one that held."""

from __future__ import annotations

import textwrap
from pathlib import Path

from chit.policy.bundle import load_policy_dir
from chit.policy.coverage import line_ranges
from chit.policy.testing import EmbeddedTests
from tests.factories import ROOT

POLICY = """\
package p

import rego.v1

default grade := "none"

grade := "high" if {
	input.score >= 90
} else := "mid" if {
	input.score >= 50
} else := "low"

flagged if input.flag

label(x) := upper(x)

tiers := ["a", "b"]

badge := b if {
	grade == "high"
	b := "gold"
}

default allow := false

allow if input.ok
"""


def coverage(tmp_path: Path, tests: str) -> dict[str, set[int]]:
    (tmp_path / "p").mkdir(exist_ok=True)
    (tmp_path / "p" / "policy.rego").write_text(POLICY)
    (tmp_path / "p" / "policy_test.rego").write_text("package p_test\n\nimport rego.v1\n" + textwrap.dedent(tests))
    suite = EmbeddedTests(load_policy_dir(tmp_path, require_decision=False), coverage=True)
    suite.run(lambda _: None)
    (module,) = suite.coverage_report()
    return {"covered": set(module.covered), "not_covered": set(module.not_covered), "not_measured": set(module.not_measured)}


def test_branches_of_an_else_chain_count_only_when_selected(tmp_path: Path) -> None:
    lines = coverage(tmp_path, """
        test_high if { data.p.grade == "high" with input.score as 95 }
        test_low if { data.p.grade == "low" with input.score as 10 }
    """)
    # "mid" (line 10) never held; its `else` and closing lines are shared with the branches around it.
    assert lines["covered"] == {7, 8, 9, 11}
    assert lines["not_covered"] == {10, 13, 19, 20, 21, 22, 24, 26}
    # A default that can never apply (the chain ends in an unconditional else), a function, a constant.
    assert lines["not_measured"] == {5, 15, 17}


def test_a_rule_the_test_replaces_is_not_covered_by_it(tmp_path: Path) -> None:
    # With no input, grade's last branch ("low") holds: counted only if the test reached grade itself.
    lines = coverage(tmp_path, """
        test_badge if { data.p.badge == "gold" with data.p.grade as "high" }
    """)
    assert lines["covered"] == {19, 20, 21, 22}
    assert {7, 8, 9, 10, 11} <= lines["not_covered"]


def test_a_failing_test_counts_what_it_reached_and_nothing_after(tmp_path: Path) -> None:
    lines = coverage(tmp_path, """
        test_fails_late if {
        	data.p.grade == "high" with input.score as 95
        	false
        }
        test_fails_early if {
        	false
        	data.p.flagged with input.flag as true
        }
    """)
    assert {7, 8, 9} <= lines["covered"]
    assert 13 in lines["not_covered"]


def test_a_default_is_covered_when_no_body_of_its_rule_holds(tmp_path: Path) -> None:
    only_default = coverage(tmp_path, "\ntest_closed if { not data.p.allow }\n")
    assert 24 in only_default["covered"] and 26 in only_default["not_covered"]
    only_body = coverage(tmp_path, "\ntest_open if { data.p.allow with input.ok as true }\n")
    assert 26 in only_body["covered"] and 24 in only_body["not_covered"]


def test_a_test_that_reaches_nothing_covers_nothing(tmp_path: Path) -> None:
    lines = coverage(tmp_path, "\ntest_arithmetic if { 1 + 1 == 2 }\n")
    assert lines["covered"] == set()


def test_the_shipped_tests_cover_the_shipped_policy() -> None:
    suite = EmbeddedTests(load_policy_dir(ROOT / "policies", require_decision=False), coverage=True)
    assert {r.status for r in suite.run(lambda _: None)} == {"PASS"}
    (module,) = suite.coverage_report()
    assert module.module == "chit/decision.rego"
    assert not module.not_covered, f"not covered by policies/chit/*_test.rego: {line_ranges(module.not_covered)}"
    assert len(module.covered) > 80


def test_line_ranges() -> None:
    assert line_ranges([3, 4, 5, 9, 12, 13]) == "3-5, 9, 12-13"
    assert line_ranges([]) == ""
