"""Plans kept between runs of `chit policy test` (chit.policy.plancache): reused only for
exactly the same inputs, recompiled for anything else, never from a directory another
user could write to, and a damaged file is compiled again, not trusted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chit.policy.bundle import load_policy_dir
from chit.policy.embedded import CompiledPolicy
from chit.policy.plancache import PlanCache, default_directory
from chit.policy.testing import EmbeddedTests
from tests.factories import ROOT


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The entrypoints of every plan compiled (not loaded) from now on."""
    compiled: list[str] = []
    original = CompiledPolicy._compile

    def counting(self, root, modules, data, entrypoints, locate):  # type: ignore[no-untyped-def]
        compiled.append(",".join(entrypoints))
        return original(self, root, modules, data, entrypoints, locate)

    monkeypatch.setattr(CompiledPolicy, "_compile", counting)
    return compiled


def run(directory: Path, cache: PlanCache) -> dict[str, str]:
    suite = EmbeddedTests(load_policy_dir(directory, require_decision=False), cache=cache)
    return {r.rule: r.status for r in suite.run(lambda _: None)}


def test_an_unchanged_group_is_loaded_and_a_changed_one_compiled(tmp_path: Path, compiles: list[str]) -> None:
    policy = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policy)
    cache = PlanCache(tmp_path / "cache")
    first = run(policy, cache)
    assert len(compiles) == 3 and set(first.values()) == {"PASS"}  # three groups: decision, constraints, engine tests
    compiles.clear()
    assert run(policy, cache) == first and compiles == []  # nothing compiled the second time
    engine_test = policy / "chit" / "engine_test.rego"
    engine_test.write_text(engine_test.read_text().replace("count([1, 2, 3]) == 3", "count([1, 2, 3]) == 4"))
    results = run(policy, cache)
    assert len(compiles) == 1 and "chit_engine_test/test_count" in compiles[0]
    assert results["data.chit_engine_test.test_count"] == "FAIL"  # the new source, not the old plan


def test_a_change_to_the_data_compiles_again(tmp_path: Path, compiles: list[str]) -> None:
    policy = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policy, ignore=shutil.ignore_patterns("decision_test.rego", "constraints_test.rego"))
    cache = PlanCache(tmp_path / "cache")
    run(policy, cache)
    (policy / "data.json").write_text('{"bindings": {}}')
    compiles.clear()
    run(policy, cache)
    assert len(compiles) == 1


def test_a_damaged_plan_is_compiled_again(tmp_path: Path, compiles: list[str]) -> None:
    policy = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policy, ignore=shutil.ignore_patterns("decision_test.rego", "constraints_test.rego"))
    cache = PlanCache(tmp_path / "cache")
    run(policy, cache)
    (plan,) = (tmp_path / "cache").glob("*.rbb")
    plan.write_bytes(plan.read_bytes()[: len(plan.read_bytes()) // 2])
    compiles.clear()
    assert set(run(policy, cache).values()) == {"PASS"} and len(compiles) == 1


def test_a_directory_others_can_write_to_is_not_used(tmp_path: Path, compiles: list[str]) -> None:
    policy = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policy, ignore=shutil.ignore_patterns("decision_test.rego", "constraints_test.rego"))
    (tmp_path / "cache").mkdir()
    os.chmod(tmp_path / "cache", 0o777)
    cache = PlanCache(tmp_path / "cache")
    run(policy, cache)
    run(policy, cache)
    assert len(compiles) == 2 and not list((tmp_path / "cache").iterdir())


def test_the_default_directory_follows_xdg() -> None:
    assert default_directory({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/chit/plans")
    assert default_directory({"HOME": "/h"}) == Path("/h/.cache/chit/plans")
    assert default_directory({}) is None
