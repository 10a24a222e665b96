"""The embedded engine and OPA decide alike: every shipped Rego test and a
corpus of decision inputs give identical results through both backends (OPA
here is the REST API stand-in, tests/opa_standin.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from chit.policy import PolicyEvaluationError, parse_decision
from chit.policy.bundle import load_policy_dir
from chit.policy.embedded import EmbeddedEngine
from chit.policy.opa import OpaEngine
from tests.factories import ROOT, OpaStandIn, copy_policy
from tests.policy.test_decisions import QUIRKS

# Bindings that exercise every optional constraint of the shipped policy.
DATA = {
    "bindings": {
        "kubernetes": {
            "prod": {
                "payments": {
                    "agent": {"scope": ["read:db", "write:db"], "audience": ["https://db.internal"], "ttl": 600},
                    "regional": {"scope": ["read:db"], "audience": ["https://db.internal"], "regions": ["eu-west-1"]},
                    "office": {"audience": ["https://db.internal"], "hours": {"days": ["Monday", "Friday"], "start": 8, "end": 18}},
                    "night": {"audience": ["https://db.internal"], "hours": {"days": ["Friday"], "start": 22, "end": 6}},
                    "release": {"audience": ["https://db.internal"], "image_signers": ["release"]},
                },
                "signed": {"agent": {"audience": ["https://db.internal"]}},
            }
        }
    },
    "allowed_regions": {"kubernetes": ["us-east-1", "eu-west-1"]},
    "namespaces": {"kubernetes": {"prod": {"signed": {"image_signers": ["release"]}}}},
}

IMAGES: list[Any] = [
    None,
    [],
    [{"ref": "r/a@sha256:aa", "digest": "sha256:aa", "signed": True, "signers": ["release"]}],
    [{"ref": "r/a@sha256:aa", "digest": "sha256:aa", "signed": True, "signers": ["dev"]}],
    [
        {"ref": "r/a@sha256:aa", "digest": "sha256:aa", "signed": True, "signers": ["release"]},
        {"ref": "r/b@sha256:bb", "digest": "sha256:bb", "signed": False, "signers": []},
    ],
]


def corpus() -> Iterator[dict[str, Any]]:
    workloads = [("prod", "payments", sa) for sa in ("agent", "regional", "office", "night", "release", "intruder")]
    workloads += [("prod", "signed", "agent"), ("dev", "demo", "agent"), ("staging", "payments", "agent")]
    moments = [("Monday", 9), ("Monday", 18), ("Friday", 23), ("Saturday", 3), ("Friday", 5)]
    for (cluster, namespace, sa), region, (weekday, hour), images in itertools.product(
        workloads, ["us-east-1", "eu-west-1", "ap-south-1", None], moments, IMAGES
    ):
        attestation = {"kind": "kubernetes", "cluster": cluster, "namespace": namespace, "service_account": sa, "claims": {"sub": sa}}
        if region is not None:
            attestation["region"] = region
        document: dict[str, Any] = {
            "subject": f"spiffe://example.org/k8s/{cluster}/ns/{namespace}/sa/{sa}",
            "attestation": attestation,
            "request": {"audience": [], "resource": [], "scope": [], "requested_token_type": "urn:ietf:params:oauth:token-type:access_token", "actor": None},
            "now": {"unix": 1795341600, "rfc3339": "2026-11-24T10:00:00Z", "weekday": weekday, "hour": hour},
        }
        if images is not None:
            document["images"] = images
        yield document


async def both(embedded: EmbeddedEngine, opa: OpaEngine, document: dict[str, Any]) -> tuple[Any, Any]:
    async def ask(engine: Any) -> Any:
        try:
            return parse_decision(await engine.decide(document))
        except PolicyEvaluationError:
            return "evaluation error"

    return await ask(embedded), await ask(opa)


def compare(policy_dir: Path, directory: Path, documents: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    standin = OpaStandIn(policy_dir, directory)
    embedded = EmbeddedEngine(load_policy_dir(policy_dir, include_tests=False))

    async def run() -> list[tuple[Any, Any]]:
        opa = OpaEngine(standin.url, 10)
        try:
            return [await both(embedded, opa, document) for document in documents]
        finally:
            await opa.close()

    try:
        return asyncio.run(run())
    finally:
        standin.stop()


def test_decisions_are_identical_on_both_engines(tmp_path: Path) -> None:
    documents = list(corpus())
    results = compare(copy_policy(tmp_path / "policies", DATA), tmp_path, documents)
    mismatches = [(d["subject"], d["now"], d.get("images"), e, o) for d, (e, o) in zip(documents, results) if e != o]
    assert not mismatches, mismatches[:3]
    # The corpus reaches every branch of the shipped policy's decision.
    reasons = {reason for decision, _ in results for reason in decision.reasons}
    assert reasons == {
        "binding matched",
        "no binding for this workload",
        "region not allowed by the binding",
        "region not allowed for this kind of workload",
        "outside the hours of the binding",
        "signed images required, but the workload's images are unknown",
        "an image is not signed by a required signer",
    }
    assert {decision.allow for decision, _ in results} == {True, False}


def test_malformed_and_conflicting_decisions_are_read_alike(tmp_path: Path) -> None:
    policy = tmp_path / "policies"
    (policy / "chit").mkdir(parents=True)
    (policy / "chit" / "decision.rego").write_text(QUIRKS)
    namespaces = ["clean", "allow-string", "scope-string", "negative-ttl", "unknown-key", "not-an-object", "no-allow", "deny", "conflict", "undefined", "divide-by-zero"]
    documents = [{"attestation": {"namespace": ns}, "request": {"scope": []}} for ns in namespaces]
    results = compare(policy, tmp_path, documents)
    for namespace, (embedded, opa) in zip(namespaces, results):
        assert embedded == opa, namespace
    assert results[namespaces.index("conflict")] == ("evaluation error", "evaluation error")
    assert results[namespaces.index("divide-by-zero")] == ("evaluation error", "evaluation error")
    assert results[0][0].allow is True


# --- the shipped Rego tests, through `chit policy test` on each engine ------------------------


@pytest.fixture(scope="module")
def shipped_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    server = OpaStandIn(ROOT / "policies", tmp_path_factory.mktemp("opa"))
    yield server
    server.stop()


def chit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chit", *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def verdicts(output: str) -> dict[str, str]:
    return {line.split(": ", 1)[1].split(" (")[0]: line.split(":")[0] for line in output.splitlines() if line.startswith(("PASS: data.", "FAIL: ", "ERROR: "))}


def test_every_shipped_rego_test_passes_on_both_engines(shipped_opa: OpaStandIn) -> None:
    embedded = chit_cli("policy", "test", str(ROOT / "policies"), "-v")
    opa = chit_cli("policy", "test", str(ROOT / "policies"), "-v", "--engine", "opa", "--opa-url", shipped_opa.url)
    assert embedded.returncode == 0, embedded.stdout + embedded.stderr
    assert opa.returncode == 0, opa.stdout + opa.stderr
    assert verdicts(embedded.stdout) == verdicts(opa.stdout)
    assert len(verdicts(opa.stdout)) >= 27 and set(verdicts(opa.stdout).values()) == {"PASS"}
    assert "data.chit_constraints_test.test_window_across_midnight" in verdicts(opa.stdout)
    assert "PASS: data.chit_test.test_bound_workload_is_allowed" in embedded.stdout and "FAIL" not in embedded.stdout


def test_explanations_agree(tmp_path: Path, shipped_opa: OpaStandIn) -> None:
    """Every rule's value, on both engines; which branch decided, on the embedded engine
    (OPA's REST API has no such answer)."""
    document = next(d for d in corpus() if d["attestation"]["cluster"] == "dev")
    (tmp_path / "input.json").write_text(json.dumps(document))
    outputs = [
        json.loads(chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"), "--explain", *engine).stdout)
        for engine in ([], ["--engine", "opa", "--opa-url", shipped_opa.url])
    ]
    embedded, opa = ({r["rule"]: r.get("value", "undefined") for r in o["explain"]["rules"]} for o in outputs)
    assert embedded == opa
    assert embedded["data.chit.binding"]["audience"] == ["https://demo.chit.invalid"]
    assert [o["status"] for o in outputs] == [200, 200]
    module, line = outputs[0]["explain"]["decided_by"].rsplit(":", 1)
    branch = (ROOT / "policies" / module).read_text().splitlines()[int(line) - 1:]
    assert branch[0] == "} else := grant if {" and "b.aws" not in branch[1]  # the grant without an AWS role
    assert outputs[1]["explain"]["decided_by"] is None


# --- the example policies of the policy guide ------------------------------------------------------

GUIDE = sorted((ROOT / "docs" / "policy").glob("*.md"))
_REGO_BLOCK = re.compile(r"```rego\n(.*?)```", re.DOTALL)


def guide_examples() -> dict[str, str]:
    """Every complete Rego module of the policy guide (a block that declares its package), by
    a file name made of its page and its place there."""
    examples = {}
    for page in GUIDE:
        for number, block in enumerate(_REGO_BLOCK.findall(page.read_text())):
            package = re.search(r"^package\s+([\w.]+)", block, re.MULTILINE)
            if package:
                suffix = "_test.rego" if package.group(1).endswith("_test") else ".rego"
                examples[f"chit/guide_{page.stem}_{number}{suffix}"] = block
    return examples


def test_the_guide_has_example_policies_and_tests() -> None:
    examples = guide_examples()
    assert sum(name.endswith("_test.rego") for name in examples) >= 3
    assert sum(not name.endswith("_test.rego") for name in examples) >= 3


@pytest.fixture(scope="module")
def guide_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped policy with every example module of the guide beside it."""
    policy = copy_policy(tmp_path_factory.mktemp("guide") / "policies")
    for name, source in guide_examples().items():
        (policy / name).write_text(source)
    return policy


def test_the_guides_examples_pass_their_tests_alike_on_both_engines(guide_policy: Path, tmp_path: Path) -> None:
    opa = OpaStandIn(guide_policy, tmp_path)
    try:
        embedded = chit_cli("policy", "test", str(guide_policy), "-v")
        on_opa = chit_cli("policy", "test", str(guide_policy), "-v", "--engine", "opa", "--opa-url", opa.url)
    finally:
        opa.stop()
    assert embedded.returncode == 0, embedded.stdout + embedded.stderr
    assert on_opa.returncode == 0, on_opa.stdout + on_opa.stderr
    assert verdicts(embedded.stdout) == verdicts(on_opa.stdout)
    assert {
        "data.chit_payments_test.test_the_agent_may_read",
        "data.chit_refusals_test.test_saturday_is_refused",
        "data.chit_gcp_by_team_test.test_a_stopped_vm_is_not",
    } <= set(verdicts(embedded.stdout))


def test_the_guides_examples_decide_alike_on_both_engines(guide_policy: Path, tmp_path: Path) -> None:
    documents = [d for d in corpus() if d.get("images") is None][::7]
    gcp = {"kind": "gcp", "project_id": "payments-prod", "email": "agent@payments-prod.iam.gserviceaccount.com", "zone": "europe-west1-b",
           "region": "europe-west1", "status": "RUNNING", "labels": {"team": "payments"}}
    for weekday in ("Saturday", "Monday"):
        documents.append({"subject": "spiffe://example.org/gcp/x", "attestation": gcp, "request": {"audience": [], "resource": [], "scope": []},
                          "now": {"unix": 1795341600, "rfc3339": "2026-11-24T10:00:00Z", "weekday": weekday, "hour": 10}})
    results = compare(guide_policy, tmp_path, documents)
    assert all(embedded == opa for embedded, opa in results), [r for r in results if r[0] != r[1]][:2]
    assert {decision.allow for decision, _ in results} == {True, False}
