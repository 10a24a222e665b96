"""Decisions that are not a clean allow are denials, and a policy that cannot be
used stops chit from starting; how a policy directory and its extra directories load.
(The tooling: tests/policy/test_testing.py and tests/server/test_policy_eval.py.)"""

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


def test_data_files_merge_key_by_key_as_opa_loads_them(tmp_path: Path) -> None:
    """OPA's loader (internal/merge): objects merge at any depth; a second file adds bindings."""
    from chit.policy.bundle import load_policy_dir

    policy = copy_policy(tmp_path / "p", data={"bindings": {"kubernetes": {"dev": {"demo": {"agent": {"scope": ["a"]}}}}}})
    (policy / "bindings" / "kubernetes").mkdir(parents=True)
    (policy / "bindings" / "kubernetes" / "data.json").write_text('{"prod": {"payments": {"agent": {"scope": ["b"]}}}}')
    bundle = load_policy_dir(policy)
    assert bundle.data["bindings"]["kubernetes"] == {"dev": {"demo": {"agent": {"scope": ["a"]}}}, "prod": {"payments": {"agent": {"scope": ["b"]}}}}


@pytest.mark.parametrize(
    "second, key",
    [
        ('{"dev": {"demo": {"agent": {"scope": ["b"]}}}}', "bindings.kubernetes.dev.demo.agent.scope"),  # a value changed
        ('{"dev": {"demo": {"agent": 1}}}', "bindings.kubernetes.dev.demo.agent"),  # an object replaced
        ('{"dev": {"demo": {"agent": {"ttl": 60}}}}', None),  # a key added inside another file's object: merged
    ],
    ids=["value", "object", "added-key"],
)
def test_a_value_defined_by_two_data_files_refuses_the_policy_naming_both(tmp_path: Path, second: str, key: str | None) -> None:
    from chit.policy.bundle import PolicyLoadError, load_policy_dir

    policy = copy_policy(tmp_path / "p", data={"bindings": {"kubernetes": {"dev": {"demo": {"agent": {"scope": ["a"]}}}}}})
    (policy / "bindings" / "kubernetes").mkdir(parents=True)
    (policy / "bindings" / "kubernetes" / "data.json").write_text(second)
    if key is None:
        assert load_policy_dir(policy).data["bindings"]["kubernetes"]["dev"]["demo"]["agent"] == {"scope": ["a"], "ttl": 60}
        return
    with pytest.raises(PolicyLoadError) as refusal:
        load_policy_dir(policy)
    message = str(refusal.value)
    assert f"data {key} is already defined by" in message
    assert str(policy / "data.json") in message and str(policy / "bindings" / "kubernetes" / "data.json") in message


def test_extra_dirs_add_modules_and_data_beside_the_policy(tmp_path: Path) -> None:
    """policy.extra_dirs: local bindings and rules without editing the shipped files."""
    from chit.policy import build_engine, policy_bundle
    from chit.policy.config import PolicySettings

    local = tmp_path / "local"
    (local / "chit").mkdir(parents=True)
    (local / "data.json").write_text('{"bindings": {"kubernetes": {"dev": {"ops": {"agent": {"audience": ["https://ops"]}}}}}}')
    (local / "chit" / "freeze.rego").write_text('package chit\n\nimport rego.v1\n\ndeny contains "frozen" if input.attestation.namespace == "frozen"\n')
    settings = PolicySettings(extra_dirs=[local])
    assert str(local / "chit" / "freeze.rego") in policy_bundle(settings).modules
    engine = build_engine(settings)

    def decide(namespace: str) -> dict:
        document = {"subject": "s", "attestation": {"kind": "kubernetes", "cluster": "dev", "namespace": namespace, "service_account": "agent"}, "request": {}, "now": {}}
        return engine.evaluate(document)  # type: ignore[attr-defined]

    assert decide("ops")["audience"] == ["https://ops"]  # the local binding
    assert decide("demo")["audience"] == ["https://demo.chit.invalid"]  # the shipped one, still there
    assert decide("frozen") == {"allow": False, "reasons": ["frozen"]}  # the local deny


def test_server_refuses_a_policy_overriding_the_whole_input(tmp_path: Path) -> None:
    result = chit_serve(broken_policy_config(tmp_path, {
        "chit/decision.rego": 'package chit\n\nimport rego.v1\n\nd := {"allow": true}\n\ndecision := x if { x := d with input as {} }\n',
    }))
    assert result.returncode != 0 and "with input as" in result.stderr
