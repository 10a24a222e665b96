"""`chit policy eval` gives the server's answer (chit.server.policy_eval): held to a real
`chit serve` over a table of exchanges, at the very moment the server answered; built
from a subject token verified as the server verifies it, or from an input document;
never writing state, keys or audit, and reaching no host but this one unless asked."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from chit.server.config import load_config
from chit.server.policy_eval import EvalRequest, evaluate_exchange, parse_now
from tests.conftest import PROD_ISSUER
from tests.factories import ROOT, ChitServer, ClusterIssuer, DocumentServer, copy_policy

AWS_CREDENTIALS = "urn:chit:params:oauth:token-type:aws-credentials"
EVERY_DAY = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
HOUR = datetime.utcnow().hour  # noqa: DTZ003 — the UTC hour, as input.now.hour
CLOSED = {"days": EVERY_DAY, "start": (HOUR + 2) % 24, "end": (HOUR + 3) % 24}  # not now, for the next two hours

BINDINGS = {
    "bindings": {
        "kubernetes": {
            "prod": {
                "payments": {
                    "agent": {"scope": ["read:db", "write:db"], "audience": ["https://db.internal", "https://cache.internal"]},
                    "short-lived": {"scope": ["read:db"], "audience": ["https://db.internal"], "ttl": 120},
                    "sts-first": {"scope": ["read:db"], "audience": ["sts.amazonaws.com", "https://db.internal"]},
                    "office": {"scope": ["read:db"], "audience": ["https://db.internal"], "hours": CLOSED},
                }
            }
        }
    }
}
# Beside the policy, without editing it (policy.extra_dirs): a binding and a refusal.
LOCAL_DATA = {"bindings": {"kubernetes": {"prod": {"frozen": {"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]}}}}}}
LOCAL_DENY = 'package chit\n\nimport rego.v1\n\ndeny contains "namespace frozen for the audit" if input.attestation.namespace == "frozen"\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("eval-server")
    local = directory / "local"
    (local / "chit").mkdir(parents=True)
    (local / "data.json").write_text(json.dumps(LOCAL_DATA))
    (local / "chit" / "freeze.rego").write_text(LOCAL_DENY)
    server = ChitServer(
        directory,
        {
            "policy": {"dir": str(copy_policy(directory / "policies", BINDINGS)), "extra_dirs": [str(local)]},
            # An audience minted by another key series, with a lower cap (tokens.audiences).
            "signing": {"keys_dir": "keys", "algorithms": ["ES256", "RS256"]},
            "tokens": {"audiences": {"https://cache.internal": {"algorithm": "RS256", "ttl_seconds": 60}}},
            "attestors": {
                "kubernetes": {
                    "clusters": [{"name": "prod", "issuer": PROD_ISSUER, "jwks_uri": documents.url("/prod/openid/v1/jwks"), "audiences": ["chit"]}]
                }
            },
        },
    ).start()
    yield server
    server.stop()


# (token: namespace, service account, claims; request: the form's fields)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "allow": ({}, {"scope": "read:db"}),
    "allow, every scope and the first audience": ({}, {}),
    "deny: no binding": ({"service_account": "intruder"}, {}),
    "invalid_scope": ({}, {"scope": "admin"}),
    "invalid_scope: malformed": ({}, {"scope": 'read:db "x'}),
    "invalid_target": ({}, {"audience": "https://elsewhere.internal"}),
    "invalid_target: reserved audience by default": ({"service_account": "sts-first"}, {}),
    "ttl of the binding": ({"service_account": "short-lived"}, {}),
    "ttl of the evidence": ({"exp": 300}, {}),
    "ttl and key series of the audience": ({}, {"audience": "https://cache.internal"}),
    "hours": ({"service_account": "office"}, {}),
    "deny rule of an extra directory": ({"namespace": "frozen"}, {}),
    "aws credentials without a role": ({}, {"requested_token_type": AWS_CREDENTIALS}),
    "expired token": ({"exp": -60}, {}),
}
COMPARED = ("outcome", "error", "subject", "kind", "scope", "audience", "granted_scope", "granted_audience", "ttl", "reasons")


def token_for(issuer: ClusterIssuer, spec: dict[str, Any]) -> str:
    spec = dict(spec)
    now = int(time.time())
    if "exp" in spec:
        spec["exp"] = now + spec["exp"]
        spec.setdefault("iat", now - 120)
        spec.setdefault("nbf", now - 120)
    return issuer.token(spec.pop("namespace", "payments"), spec.pop("service_account", "agent"), **spec)


def eval_request(token: str | None, fields: dict[str, Any]) -> EvalRequest:
    return EvalRequest(
        subject_token=token,
        scope=tuple(fields["scope"].split(" ")) if "scope" in fields else (),
        audience=(fields["audience"],) if "audience" in fields else (),
        requested_token_type=fields.get("requested_token_type"),
    )


@pytest.mark.parametrize("token_spec, fields", CASES.values(), ids=CASES.keys())
def test_eval_gives_the_answer_the_server_gave(served: ChitServer, prod_issuer: ClusterIssuer, token_spec: dict, fields: dict) -> None:
    token = token_for(prod_issuer, token_spec)
    response = served.exchange(token, **fields)
    line = served.audit_lines()[-1]
    now = parse_now(line["ts"], 0)  # the moment the server answered, to the millisecond
    answer = asyncio.run(evaluate_exchange(load_config(served.config_path), eval_request(token, fields), now))
    assert answer.status == response.status_code, (answer.document(), response.text)
    assert {k: answer.audit[k] for k in COMPARED} == {k: line[k] for k in COMPARED}
    assert answer.error_description == response.json().get("error_description")


def test_the_table_covers_every_kind_of_answer(served: ChitServer) -> None:
    outcomes = {(line["outcome"], line["error"]) for line in served.audit_lines()}
    assert {("issued", None), ("denied", "invalid_request"), ("denied", "invalid_scope"), ("invalid", "invalid_scope"), ("denied", "invalid_target"), ("invalid", "invalid_request")} <= outcomes
    reasons = {reason for line in served.audit_lines() for reason in line["reasons"]}
    assert {"outside the hours of the binding", "namespace frozen for the audit", "no binding for this workload"} <= reasons
    assert {line["ttl"] for line in served.audit_lines()} >= {900, 120}


def test_now_moves_the_hours_and_the_token_with_it(served: ChitServer, prod_issuer: ClusterIssuer) -> None:
    token = token_for(prod_issuer, {"service_account": "office", "exp": 4 * 3600})
    config = load_config(served.config_path)
    # The next half past the window's first hour (the module computed the window when it was
    # imported, perhaps in an earlier hour than now).
    opening = time.time() // 3600 * 3600 + 1800
    while time.gmtime(opening).tm_hour != CLOSED["start"] or opening <= time.time():
        opening += 3600
    answer = asyncio.run(evaluate_exchange(config, eval_request(token, {}), opening))
    assert answer.audit["outcome"] == "issued" and answer.policy_input is not None
    assert answer.policy_input["now"]["hour"] == CLOSED["start"]
    # Later than the token allows: the server would refuse the token itself.
    answer = asyncio.run(evaluate_exchange(config, eval_request(token, {}), time.time() + 5 * 3600))
    assert answer.audit["outcome"] == "invalid" and "expired" in answer.error_description


# --- an input document -------------------------------------------------------------------------

DOCUMENT = {
    "subject": "spiffe://example.org/k8s/prod/ns/payments/sa/agent",
    "attestation": {"kind": "kubernetes", "cluster": "prod", "namespace": "payments", "service_account": "agent"},
}


def test_an_input_document_is_decided_and_granted_as_the_server_would(served: ChitServer) -> None:
    config = load_config(served.config_path)
    answer = asyncio.run(evaluate_exchange(config, eval_request(None, {"scope": "write:db admin"}), time.time(), document=DOCUMENT))
    assert answer.audit["granted_scope"] == ["write:db"] and answer.audit["granted_audience"] == ["https://db.internal"]
    assert answer.audit["ttl"] == 900
    assert answer.policy_input is not None and set(answer.policy_input) == {"subject", "attestation", "request", "now"}
    assert answer.policy_input["request"]["scope"] == ["write:db", "admin"]
    answer = asyncio.run(evaluate_exchange(config, eval_request(None, {"scope": "admin"}), time.time(), document=DOCUMENT))
    assert (answer.status, answer.audit["error"]) == (400, "invalid_scope")
    # At any time: a month ago too (eval's signing key does not stand in the way).
    answer = asyncio.run(evaluate_exchange(config, eval_request(None, {}), time.time() - 30 * 86400, document=DOCUMENT))
    assert answer.audit["outcome"] == "issued"


def chit_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chit", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_command_fills_now_and_explains_the_branch_that_decided(served: ChitServer, tmp_path: Path) -> None:
    document = {**DOCUMENT, "attestation": {**DOCUMENT["attestation"], "service_account": "office"}}
    (tmp_path / "input.json").write_text(json.dumps(document))
    result = chit_cli("policy", "eval", "--config", str(served.config_path), "--input", str(tmp_path / "input.json"), "--explain")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == 400 and answer["reasons"] == ["outside the hours of the binding"]
    assert answer["input"]["now"]["hour"] == datetime.utcnow().hour  # noqa: DTZ003 — filled: the current time
    module, line = answer["explain"]["decided_by"].rsplit(":", 1)
    branch = (Path(served.config["policy"]["dir"]) / module).read_text().splitlines()[int(line) - 1]
    assert branch.startswith("} else := {\"allow\": false, \"reasons\": [refusal]} if {")
    rules = {r["rule"]: r for r in answer["explain"]["rules"]}
    assert rules["data.chit.binding_refusal"]["value"] == "outside the hours of the binding"
    assert f"chit/decision.rego:{line} decision" in answer["explain"]["held"]
    # The same, at a time inside the window.
    opening = f"{datetime.utcnow():%Y-%m-%d}T{CLOSED['start']:02d}:30:00Z"  # noqa: DTZ003
    result = chit_cli("policy", "eval", "--config", str(served.config_path), "--input", str(tmp_path / "input.json"), "--now", opening)
    assert json.loads(result.stdout)["status"] == 200


# --- what eval never touches -------------------------------------------------------------------


def test_eval_writes_nothing_and_uses_no_shared_state(tmp_path: Path, prod_issuer: ClusterIssuer, documents: DocumentServer) -> None:
    config_path = tmp_path / "chit.yaml"
    config_path.write_text(yaml.safe_dump({
        "issuer": "http://127.0.0.1:1",
        "signing": {"keys_dir": "keys"},
        "audit": {"sink": "audit.log"},
        "state": {"backend": "redis", "redis_url": "redis://127.0.0.1:1"},  # nothing listens: eval never asks it
        "rate_limits": {"per_subject_per_minute": 1},
        "attestors": {"kubernetes": {"clusters": [{"name": "prod", "issuer": PROD_ISSUER, "jwks_uri": documents.url("/prod/openid/v1/jwks"), "audiences": ["chit"]}]}},
    }))
    config = load_config(config_path)
    token = prod_issuer.token()
    for _ in range(2):  # twice: a rate limit of one per minute would refuse the second
        answer = asyncio.run(evaluate_exchange(config, eval_request(token, {}), time.time()))
        assert answer.audit["outcome"] == "denied" and answer.audit["reasons"] == ["no binding for this workload"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chit.yaml"]  # no keys, no audit log


def test_eval_reaches_no_other_host_unless_asked(tmp_path: Path, prod_issuer: ClusterIssuer) -> None:
    config_path = tmp_path / "chit.yaml"
    config_path.write_text(yaml.safe_dump({
        "issuer": "http://127.0.0.1:1",
        "signing": {"keys_dir": "keys"},
        "attestors": {"kubernetes": {"clusters": [{"name": "prod", "issuer": PROD_ISSUER, "jwks_uri": "https://keys.chit.invalid/jwks", "audiences": ["chit"]}]}},
    }))
    (tmp_path / "token").write_text(prod_issuer.token())
    result = chit_cli("policy", "eval", "--config", str(config_path), "--subject-token", str(tmp_path / "token"))
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["error"]) == (503, "temporarily_unavailable")
    assert answer["network_refused"] == ["keys.chit.invalid"]
    # With --network the lookup is made (and fails: .invalid never resolves), nothing refused by eval.
    result = chit_cli("policy", "eval", "--config", str(config_path), "--subject-token", str(tmp_path / "token"), "--network")
    answer = json.loads(result.stdout)
    assert answer["status"] == 503 and "network_refused" not in answer


def test_a_bad_now_or_input_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "input.json").write_text(json.dumps({**DOCUMENT, "request": {"actor": {"subject": "x"}}}))
    result = chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"))
    assert result.returncode == 2 and "takes no actor token" in result.stderr
    (tmp_path / "input.json").write_text(json.dumps(DOCUMENT))
    result = chit_cli("policy", "eval", "--input", str(tmp_path / "input.json"), "--now", "2026-11-24T10:00:00")
    assert result.returncode == 2 and "needs its offset" in result.stderr


def test_the_issues_example_a_dev_token_asking_for_demo_admin_is_invalid_scope(tmp_path: Path) -> None:
    """Issue 17: eval showed `allow: true` with demo:read demo:write where the server answers invalid_scope."""
    from chit.server.dev import prepare_dev_issuer

    prepare_dev_issuer(tmp_path / ".chit")
    assert chit_cli("dev", "token", "--namespace", "demo", "--service-account", "agent", "--output", "token.jwt", cwd=tmp_path).returncode == 0
    result = chit_cli("policy", "eval", "--dev", "--subject-token", "token.jwt", "--scope", "demo:admin", cwd=tmp_path)
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["error"]) == (400, "invalid_scope")
    assert answer["decision"]["allow"] is True and answer["granted_scope"] == []
    result = chit_cli("policy", "eval", "--dev", "--subject-token", "token.jwt", "--scope", "demo:read", cwd=tmp_path)
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["granted_scope"], answer["granted_audience"]) == (200, ["demo:read"], ["https://demo.chit.invalid"])
    result = chit_cli("policy", "eval", "--dev", "--state-dir", "elsewhere", "--subject-token", "token.jwt", cwd=tmp_path)
    assert result.returncode == 2 and "no development cluster under elsewhere" in result.stderr
    assert not (tmp_path / "elsewhere").exists()
