"""The embedded engine and OPA decide alike: every shipped Rego test and a
corpus of decision inputs give identical results through both backends (OPA
here is the REST API stand-in, tests/opa_standin.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
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
    document = next(d for d in corpus() if d["attestation"]["cluster"] == "dev")
    (tmp_path / "input.json").write_text(json.dumps(document))
    outputs = [
        json.loads(chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"), "--explain", *engine).stdout)
        for engine in ([], ["--engine", "opa", "--opa-url", shipped_opa.url])
    ]
    embedded, opa = ({r["rule"]: r.get("value", "undefined") for r in o["explain"]["rules"]} for o in outputs)
    assert embedded == opa
    assert embedded["data.chit.binding"]["audience"] == ["https://demo.chit.invalid"]
    assert outputs[0]["explain"]["decided_by"] == "chit/decision.rego:" + outputs[1]["explain"]["decided_by"].rsplit(":", 1)[1]
