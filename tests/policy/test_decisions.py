"""Decisions that are not a clean allow are denials, and a policy that cannot be
used stops chit from starting. Tooling: `chit policy test` and `chit policy eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import PROD_ISSUER
from tests.factories import ROOT, ChitServer, ClusterIssuer, assert_issued, assert_refused, copy_policy

# One policy, many behaviours: the workload's namespace picks what `decision` is.
QUIRKS = """
package chit

import rego.v1

ns := input.attestation.namespace

decision := {"allow": true, "scope": ["a"], "audience": ["https://x"]} if ns == "clean"
decision := {"allow": "true", "scope": ["a"], "audience": ["https://x"]} if ns == "allow-string"
decision := {"allow": 1, "audience": ["https://x"]} if ns == "allow-number"
decision := {"allow": true, "scope": "a", "audience": ["https://x"]} if ns == "scope-string"
decision := {"allow": true, "audience": "https://x"} if ns == "audience-string"
decision := {"allow": true, "audience": ["https://x"], "ttl": -5} if ns == "negative-ttl"
decision := {"allow": true, "audience": ["https://x"], "ttl": "900"} if ns == "string-ttl"
decision := {"allow": true, "audience": ["https://x"], "ttl": 60} if ns == "short-ttl"
decision := {"allow": true, "audience": ["https://x"], "ttl": 7200} if ns == "long-ttl"
decision := {"allow": true, "audience": ["https://x"], "scopes": ["a"]} if ns == "unknown-key"
decision := {"allow": true, "audience": ["https://x"], "reasons": "ok"} if ns == "reasons-string"
decision := {"allow": true, "audience": ["https://x"], "aws": {"role_arn": "not-an-arn"}} if ns == "bad-aws"
decision := 42 if ns == "not-an-object"
decision := [{"allow": true}] if ns == "array"
decision := {"audience": ["https://x"]} if ns == "no-allow"
decision := {"allow": false, "reasons": ["closed for maintenance"]} if ns == "deny"

# A value the decision needs fails to evaluate: 900 / 0 with no scope requested.
decision := {"allow": true, "scope": ["a"], "audience": ["https://x"], "ttl": 900 / count(input.request.scope)} if ns == "divide-by-zero"

# Two rule bodies with different values: an evaluation error (conflict).
decision := {"allow": true, "audience": ["https://x"]} if ns == "conflict"
decision := {"allow": false} if ns == "conflict"

# Anything else: no decision at all (undefined).
"""


@pytest.fixture(scope="module")
def quirky(tmp_path_factory: pytest.TempPathFactory, documents, prod_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("quirky")
    policy = directory / "policies"
    (policy / "chit").mkdir(parents=True)
    (policy / "chit" / "decision.rego").write_text(QUIRKS)
    server = ChitServer(
        directory,
        {
            "policy": {"dir": str(policy)},
            "tokens": {"ttl_seconds": 600},
            "attestors": {
                "kubernetes": {
                    "clusters": [
                        {"name": "prod", "issuer": PROD_ISSUER, "jwks_uri": documents.url("/prod/openid/v1/jwks"), "audiences": ["chit"]}
                    ]
                }
            },
        },
    ).start()
    yield server
    server.stop()


def test_clean_allow_is_issued(quirky: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(quirky.exchange(prod_issuer.token(namespace="clean")))
    assert body["expires_in"] == 600  # tokens.ttl_seconds caps the lifetime


@pytest.mark.parametrize(
    "namespace, fault",
    [
        ("allow-string", "decision.allow is not a boolean"),
        ("allow-number", "decision.allow is not a boolean"),
        ("scope-string", "decision.scope must be an array of strings"),
        ("audience-string", "decision.audience must be an array of strings"),
        ("negative-ttl", "decision.ttl must be a positive integer"),
        ("string-ttl", "decision.ttl must be a positive integer"),
        ("unknown-key", "decision has unknown keys: scopes"),
        ("reasons-string", "decision.reasons must be an array of strings"),
        ("bad-aws", "decision.aws.role_arn must be an IAM role ARN"),
        ("not-an-object", "decision is not an object"),
        ("array", "decision is not an object"),
        ("no-allow", "decision.allow is not a boolean"),
    ],
)
def test_malformed_decision_denies_and_names_the_fault(quirky: ChitServer, prod_issuer: ClusterIssuer, namespace: str, fault: str) -> None:
    body = assert_refused(quirky.exchange(prod_issuer.token(namespace=namespace)))
    assert fault not in body["error_description"]
    line = quirky.audit_for(body["decision_id"])
    assert line["outcome"] == "denied"
    assert line["reasons"] == [f"malformed decision: {fault}"]


def test_undefined_decision_denies(quirky: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(quirky.exchange(prod_issuer.token(namespace="anything-else")))
    assert quirky.audit_for(body["decision_id"])["reasons"] == ["decision undefined"]


def test_conflicting_rules_deny(quirky: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(quirky.exchange(prod_issuer.token(namespace="conflict")))
    line = quirky.audit_for(body["decision_id"])
    assert line["outcome"] == "denied" and line["reasons"][0].startswith("policy error")


def test_an_evaluation_error_denies_and_names_it(quirky: ChitServer, prod_issuer: ClusterIssuer) -> None:
    """docs/reference/policy-contract.md "Decisions": an evaluation error is a deny (400, audit `denied`), never a 500."""
    assert_issued(quirky.exchange(prod_issuer.token(namespace="divide-by-zero"), scope="a"))
    body = assert_refused(quirky.exchange(prod_issuer.token(namespace="divide-by-zero")))
    line = quirky.audit_for(body["decision_id"])
    assert line["outcome"] == "denied" and line["error"] == "invalid_request"
    assert line["reasons"][0].startswith("policy error:") and "division by zero" in line["reasons"][0]


def test_explicit_deny_keeps_its_reasons_in_the_audit_only(quirky: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(quirky.exchange(prod_issuer.token(namespace="deny")))
    assert "maintenance" not in json.dumps(body)
    assert quirky.audit_for(body["decision_id"])["reasons"] == ["closed for maintenance"]


def test_decision_ttl_is_capped(quirky: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert assert_issued(quirky.exchange(prod_issuer.token(namespace="short-ttl")))["expires_in"] == 60
    assert assert_issued(quirky.exchange(prod_issuer.token(namespace="long-ttl")))["expires_in"] == 600


# --- a policy that cannot be used stops the start ----------------------------------------


def chit_serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chit", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config_path.parent,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def broken_policy_config(tmp_path: Path, files: dict[str, str]) -> Path:
    policy = tmp_path / "policies"
    policy.mkdir()
    for name, text in files.items():
        (policy / name).parent.mkdir(parents=True, exist_ok=True)
        (policy / name).write_text(text)
    config = tmp_path / "chit.yaml"
    config.write_text(f"issuer: http://127.0.0.1:1\nsigning: {{keys_dir: keys}}\npolicy: {{dir: {policy}}}\n")
    return config


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no Rego modules"),
        ({"chit/other.rego": "package chit\n\nallow := true\n"}, "no rule `decision` in package chit"),
        ({"other.rego": "package other\n\ndecision := {}\n"}, "no rule `decision` in package chit"),
        ({"chit/decision.rego": "package chit\n\ndecision := {\n"}, "chit/decision.rego:3:"),
        ({"chit/decision.rego": "package chit\n\ndecision := [k | some k, _ in input]\n"}, "chit/decision.rego:3:13: Invalid collection"),
        ({"chit/decision.rego": "package chit\n\ndecision := {\"allow\": true}\n", "data.json": "{not json"}, "data.json: not valid JSON"),
        ({"chit/decision.rego": "package chit\n\ndecision := {\"allow\": true}\n", "data.json": '{"a": 1, "a": 2}'}, "duplicate JSON member 'a'"),
        ({"chit/decision.rego": "package chit\n\ndecision := {\"allow\": true}\n", "data.json": '{"a": NaN}'}, "invalid JSON number NaN"),
        ({"chit/decision.rego": "package chit\n\ndecision := {\"allow\": true}\n", "data.json": '{"a": 1e999}'}, "JSON number out of range"),
        # What the embedded engine would decide differently from OPA (tests/policy/test_dialect.py has them all).
        ({"chit/decision.rego": "package chit\n\ndecision := x if { x := undefined_function(1) }\n"}, "chit/decision.rego:3: undefined_function is not a function"),
        ({"chit/decision.rego": 'package chit\n\ndecision := {"allow": true} if { not net.cidr_contains("10.0.0.0/8", input.ip) }\n'}, "chit/decision.rego:3: net.cidr_contains"),
        ({"chit/decision.rego": 'package chit\n\ndecision := {"allow": true} if { not usr == "mallory" }\n'}, "chit/decision.rego:3: data.chit.decision reads a variable that is never bound"),
        ({"chit/decision.rego": "package chit\n\ndecision := {\"allow\": true}\n", "data.json": '{"x": "a\\\\b"}'}, "data.x contains"),
    ],
    ids=["empty", "no-decision", "wrong-package", "syntax-error", "unsupported-syntax", "bad-data", "duplicate-data-key", "nan-in-data", "infinite-number-in-data",
         "undefined-function", "unimplemented-builtin", "unsafe-variable", "unfaithful-data"],
)
def test_unusable_policy_stops_the_start(tmp_path: Path, files: dict[str, str], message: str) -> None:
    result = chit_serve(broken_policy_config(tmp_path, files))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # stdout is the audit log: rego-cpp's own error report stays out of it


def test_data_files_are_placed_at_their_directory_path(tmp_path: Path) -> None:
    policy = copy_policy(tmp_path / "p", data={"bindings": {}})
    (policy / "chit" / "extra").mkdir()
    (policy / "chit" / "extra" / "data.json").write_text('{"limit": 3}')
    from chit.policy.bundle import load_policy_dir

    bundle = load_policy_dir(policy)
    assert bundle.data == {"bindings": {}, "chit": {"extra": {"limit": 3}}}


def test_overlapping_data_files_are_refused(tmp_path: Path) -> None:
    from chit.policy.bundle import PolicyLoadError, load_policy_dir

    policy = copy_policy(tmp_path / "p", data={"chit": {"extra": {"limit": 1}}})
    (policy / "chit" / "extra").mkdir()
    (policy / "chit" / "extra" / "data.json").write_text('{"limit": 3}')
    with pytest.raises(PolicyLoadError, match="defined twice"):
        load_policy_dir(policy)


# --- chit policy test / eval ----------------------------------------------------------------


def chit_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chit", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_policy_test_reports_each_failure(tmp_path: Path) -> None:
    policy = copy_policy(tmp_path / "p")
    (policy / "chit" / "broken_test.rego").write_text(
        "package chit_test\n\nimport rego.v1\n\n"
        "test_passes if { true }\n\n"
        'test_fails if { data.chit.decision.allow with input.attestation as {"kind": "nope"} }\n'
    )
    result = chit_cli("policy", "test", str(policy))
    assert result.returncode == 1
    assert "FAIL: data.chit_test.test_fails" in result.stdout
    assert "test_passes" not in result.stdout  # only failures without -v


def test_policy_eval_prints_the_decision(tmp_path: Path) -> None:
    document = {
        "subject": "spiffe://example.org/k8s/dev/ns/demo/sa/agent",
        "attestation": {"kind": "kubernetes", "cluster": "dev", "namespace": "demo", "service_account": "agent"},
        "request": {"audience": [], "resource": [], "scope": [], "requested_token_type": "urn:ietf:params:oauth:token-type:access_token", "actor": None},
        "now": {"unix": 1763776000, "rfc3339": "2026-11-22T01:46:40Z", "weekday": "Sunday", "hour": 1},
    }
    (tmp_path / "input.json").write_text(json.dumps(document))
    result = chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"), "--dir", str(ROOT / "policies"))
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["allow"] is True and output["audience"] == ["https://demo.chit.invalid"]
    document["attestation"]["namespace"] = "prod"
    (tmp_path / "input.json").write_text(json.dumps(document))
    output = json.loads(chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"), "--dir", str(ROOT / "policies")).stdout)
    assert output["allow"] is False and output["reasons"] == ["no binding for this workload"]


def test_whole_input_override_is_reported_not_run(tmp_path: Path) -> None:
    """rego-cpp would crash on it: the test is an ERROR with the fix, the run goes on."""
    policy = copy_policy(tmp_path / "p")
    (policy / "chit" / "crash_test.rego").write_text(
        "package chit_crash_test\n\nimport rego.v1\n\n"
        'test_whole_input if { data.chit.decision.allow with input as {"attestation": {}} }\n'
    )
    result = chit_cli("policy", "test", str(policy))
    assert result.returncode == 1
    assert "ERROR: data.chit_crash_test.test_whole_input" in result.stdout
    assert "replace input key by key" in result.stdout


def test_server_refuses_a_policy_overriding_the_whole_input(tmp_path: Path) -> None:
    result = chit_serve(broken_policy_config(tmp_path, {
        "chit/decision.rego": 'package chit\n\nimport rego.v1\n\nd := {"allow": true}\n\ndecision := x if { x := d with input as {} }\n',
    }))
    assert result.returncode != 0 and "with input as" in result.stderr


def test_policy_eval_explain_names_the_deciding_branch(tmp_path: Path) -> None:
    policy = copy_policy(tmp_path / "p", data={"bindings": {"kubernetes": {"dev": {"demo": {"agent": {"audience": ["https://x"], "regions": ["eu-west-1"]}}}}}})
    document = {
        "subject": "spiffe://example.org/k8s/dev/ns/demo/sa/agent",
        "attestation": {"kind": "kubernetes", "cluster": "dev", "namespace": "demo", "service_account": "agent", "region": "us-east-1"},
        "request": {"audience": [], "resource": [], "scope": [], "requested_token_type": "urn:ietf:params:oauth:token-type:access_token", "actor": None},
        "now": {"unix": 1763776000, "rfc3339": "2026-11-22T01:46:40Z", "weekday": "Sunday", "hour": 1},
    }
    (tmp_path / "input.json").write_text(json.dumps(document))
    result = chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"), "--dir", str(policy), "--explain")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["allow"] is False and output["reasons"] == ["region not allowed by the binding"]
    module, line = output["explain"]["decided_by"].rsplit(":", 1)
    assert module == "chit/decision.rego"
    branch = (policy / module).read_text().splitlines()[int(line) - 1 :][:3]
    # The branch that wrote the reason: here the binding's constraint chain.
    assert branch[0].startswith(("decision :=", "binding_refusal :=", "} else :=")) and "region not allowed by the binding" in branch[0]
    rules = {r["rule"]: r for r in output["explain"]["rules"]}
    assert rules["data.chit.binding"]["value"]["regions"] == ["eu-west-1"]
    assert rules["data.chit.within_hours"]["undefined"] is True
    assert rules["data.chit.decision"]["defined_at"][0] == "chit/decision.rego:10"


def test_policy_test_on_opa_reports_each_failure(tmp_path: Path) -> None:
    from tests.factories import OpaStandIn

    policy = copy_policy(tmp_path / "p")
    (policy / "chit" / "broken_test.rego").write_text(
        "package chit_test\n\nimport rego.v1\n\n"
        "test_passes if { true }\n\n"
        'test_fails if { data.chit.decision.allow with input.attestation as {"kind": "nope"} }\n'
    )
    opa = OpaStandIn(policy, tmp_path)
    try:
        result = chit_cli("policy", "test", str(policy), "--engine", "opa", "--opa-url", opa.url)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "FAIL: data.chit_test.test_fails" in result.stdout and "PASS: 1/2" in result.stdout
        # A directory OPA has not loaded is not silently tested against other sources.
        (policy / "chit" / "broken_test.rego").write_text("package chit_test\n\ntest_other if { true }\n")
        result = chit_cli("policy", "test", str(policy), "--engine", "opa", "--opa-url", opa.url)
        assert result.returncode == 1 and "has not loaded chit/broken_test.rego" in result.stderr
    finally:
        opa.stop()
    result = chit_cli("policy", "test", "--engine", "opa", "--opa-url", opa.url)
    assert result.returncode == 1 and "unreachable" in result.stderr and "Traceback" not in result.stderr
