"""`verify_instance`: the Compute Engine API (a stand-in with Google's token endpoint) must show
the token's instance running; its labels reach the policy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.factories import (
    ChitServer,
    ComputeApiStandIn,
    DocumentServer,
    GoogleServiceAccount,
    GoogleSigner,
    GoogleTokenEndpoint,
    OpaStandIn,
    assert_issued,
    assert_refused,
    closed_port_url,
    compute_instance,
)
from tests.attestors.gcp.conftest import AUDIENCE, AGENT_EMAIL, echoed, unique_instance


# --- verify_instance: the Compute Engine API ------------------------------------------------

# Grants only instances labelled team=payments; the tests read what the policy
# was asked about from the OPA stand-in's request log.
LABEL_POLICY = """package chit

import rego.v1

default decision := {"allow": false, "reasons": ["not a payments instance"]}

decision := {"allow": true, "scope": ["read"], "audience": ["https://echo.internal"]} if {
	input.attestation.labels.team == "payments"
}
"""
CHIT_ACCOUNT = "chit-verifier@chit-prod.iam.gserviceaccount.com"
ZONE = "europe-west1-b"


@dataclass
class Cloud:
    tokens: GoogleTokenEndpoint  # Google's OAuth token endpoint, knowing chit's service account key
    compute: ComputeApiStandIn
    verify: ChitServer  # verify_instance against the stand-in, with LABEL_POLICY in `opa`
    opa: OpaStandIn
    unreachable: ChitServer  # compute_endpoint where nothing listens
    refused: ChitServer  # a key of chit's account the token endpoint does not know (deleted in IAM)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, google: GoogleSigner) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("gcp-verify")
    tokens = GoogleTokenEndpoint()
    compute = ComputeApiStandIn(tokens)
    key_file = tokens.account(CHIT_ACCOUNT).key_file(base / "chit-verifier.json")
    deleted_key = GoogleServiceAccount(CHIT_ACCOUNT, tokens.token_uri).key_file(base / "deleted-key.json")
    policy = base / "label-policy"
    policy.mkdir()
    (policy / "labels.rego").write_text(LABEL_POLICY)
    opa = OpaStandIn(policy, base)
    certs = documents.serve("/google-verify/certs", google.certs)

    def server(name: str, credentials: Path, endpoint: str) -> ChitServer:
        gcp = {"certs_url": certs, "audiences": [AUDIENCE], "verify_instance": True, "compute_endpoint": endpoint, "compute_timeout_ms": 1000}
        # Application Default Credentials: a service account key file, as on any machine outside GCP.
        engine = {"engine": "opa", "opa_url": opa.url, "timeout_ms": 3000}
        return ChitServer(base / name, {"policy": engine, "attestors": {"gcp": gcp}},
                          env={"GOOGLE_APPLICATION_CREDENTIALS": str(credentials)})

    found = Cloud(tokens, compute, server("verify", key_file, compute.endpoint), opa,
                  server("unreachable", key_file, closed_port_url()), server("refused", deleted_key, compute.endpoint))
    servers = [found.verify, found.unreachable, found.refused]
    try:
        for chit_server in servers:
            chit_server.start()
        yield found
    finally:
        for chit_server in servers:
            chit_server.stop()
        compute.stop()
        tokens.stop()
        opa.stop()


def instance_token(google: GoogleSigner, compute: ComputeApiStandIn | None, labels: dict[str, str] | None = None, **resource: object) -> tuple[str, str]:
    """An identity token of a new VM and the Compute API path of that VM, which
    `compute` serves (as `compute_instance` shapes it, with `resource` changed)."""
    engine = google.instance(**unique_instance())
    if compute is not None:
        compute.add(compute_instance(engine, AGENT_EMAIL, labels={"team": "payments"} if labels is None else labels, **resource),
                    instance_id=engine["instance_id"])
    return google.token(instance=engine), ComputeApiStandIn.path(engine["project_id"], engine["zone"], engine["instance_id"])


def verified(cloud: Cloud, body: dict) -> tuple[str, dict, list[str]]:
    """The subject, input.attestation and service accounts LABEL_POLICY was asked about."""
    subject, attestation = echoed(cloud.opa, body)
    return subject, attestation, attestation["service_accounts"]


def test_a_running_instance_is_verified_and_its_facts_reach_the_policy(cloud: Cloud, google: GoogleSigner) -> None:
    token, path = instance_token(google, cloud.compute, labels={"team": "payments", "env": "prod"})
    body = assert_issued(cloud.verify.exchange(token))
    subject, attestation, service_accounts = verified(cloud, body)
    assert attestation["labels"] == {"team": "payments", "env": "prod"}
    assert (attestation["machine_type"], attestation["network"], attestation["subnetwork"]) == ("e2-medium", "payments-vpc", "agents")
    assert service_accounts == [AGENT_EMAIL] and attestation["status"] == "RUNNING"
    assert attestation["instance_name"] == "agent-vm-1" and subject.endswith("/" + path.rsplit("/", 1)[1])
    # Asked once, at the real path, with an access token the token endpoint issued.
    assert cloud.compute.hits[path] == 1 and cloud.compute.bearers[-1] in cloud.tokens.tokens
    assert 'chit_instance_lookups_total{api="gcp",result="ok"}' in cloud.verify.client.get("/metrics").text


def test_the_policy_decides_on_the_instance_labels(cloud: Cloud, google: GoogleSigner) -> None:
    token, _ = instance_token(google, cloud.compute, labels={"team": "research"})
    body = assert_refused(cloud.verify.exchange(token))
    audit = cloud.verify.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and audit["reasons"] == ["not a payments instance"]
    unlabelled, _ = instance_token(google, cloud.compute, labels={})
    assert_refused(cloud.verify.exchange(unlabelled))


def test_an_instance_that_does_not_exist_is_refused(cloud: Cloud, google: GoogleSigner) -> None:
    token, path = instance_token(google, None)
    body = assert_refused(cloud.verify.exchange(token))
    assert "instance not found" in body["error_description"]
    assert cloud.verify.audit_for(body["decision_id"])["outcome"] == "invalid" and cloud.compute.hits[path] == 1


@pytest.mark.parametrize("status", ["TERMINATED", "STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED", "REPAIRING"])
def test_an_instance_that_is_not_running_is_refused(cloud: Cloud, google: GoogleSigner, status: str) -> None:
    token, _ = instance_token(google, cloud.compute, status=status)
    body = assert_refused(cloud.verify.exchange(token))
    assert f"the instance is {status}" in body["error_description"]


@pytest.mark.parametrize("status", ["PROVISIONING", "STAGING"])
def test_an_instance_about_to_run_is_accepted(cloud: Cloud, google: GoogleSigner, status: str) -> None:
    token, _ = instance_token(google, cloud.compute, status=status)
    assert verified(cloud, assert_issued(cloud.verify.exchange(token)))[1]["status"] == status


@pytest.mark.parametrize(
    "resource, reason",
    [
        ({"id": "4520031799277581760"}, "another id"),
        ({"name": "agent-vm-2"}, "another name"),
        # Deleted and recreated under the same name: another creation time.
        ({"creationTimestamp": "2025-11-20T20:41:01.000-08:00"}, "created at another time"),
        ({"creationTimestamp": "yesterday"}, "created at another time"),
    ],
    ids=["id", "name", "creation-time", "creation-time-malformed"],
)
def test_an_instance_that_is_not_the_one_the_token_names_is_refused(cloud: Cloud, google: GoogleSigner, resource: dict, reason: str) -> None:
    token, _ = instance_token(google, cloud.compute, **resource)
    assert reason in assert_refused(cloud.verify.exchange(token))["error_description"]


@pytest.mark.parametrize(
    "failure",
    [500, 503, 429, 403, 401, b"<html>Service Unavailable</html>", b'{"id": "' + b"9" * 300_000 + b'"}', b'["not an instance"]'],
    ids=["500", "503", "429", "403", "401", "not-json", "oversized", "array"],
)
def test_a_compute_api_failure_is_503_and_never_a_token(cloud: Cloud, google: GoogleSigner, failure: int | bytes) -> None:
    token, path = instance_token(google, cloud.compute)
    if isinstance(failure, int):
        cloud.compute.failures[path] = failure
    else:
        cloud.compute.raw[path] = failure
    body = assert_refused(cloud.verify.exchange(token), status=503, error="temporarily_unavailable")
    assert cloud.verify.audit_for(body["decision_id"])["outcome"] == "unavailable"


def test_a_compute_api_that_does_not_answer_in_time_is_503(cloud: Cloud, google: GoogleSigner) -> None:
    token, path = instance_token(google, cloud.compute)
    cloud.compute.delays[path] = 2.5
    started = time.monotonic()
    assert_refused(cloud.verify.exchange(token), status=503, error="temporarily_unavailable")
    assert time.monotonic() - started < 2.0  # compute_timeout_ms: 1000


def test_an_unreachable_compute_api_is_503(cloud: Cloud, google: GoogleSigner) -> None:
    token, _ = instance_token(google, None)
    body = assert_refused(cloud.unreachable.exchange(token), status=503, error="temporarily_unavailable")
    assert "ConnectError" in " ".join(cloud.unreachable.audit_for(body["decision_id"])["reasons"])


def test_credentials_the_token_endpoint_refuses_are_503(cloud: Cloud, google: GoogleSigner) -> None:
    token, path = instance_token(google, cloud.compute)
    before = cloud.tokens.hits.get(GoogleTokenEndpoint.PATH, 0)
    body = assert_refused(cloud.refused.exchange(token), status=503, error="temporarily_unavailable")
    assert "Google credentials cannot be refreshed (RefreshError)" in " ".join(cloud.refused.audit_for(body["decision_id"])["reasons"])
    assert cloud.tokens.hits[GoogleTokenEndpoint.PATH] > before and path not in cloud.compute.hits


def test_the_access_token_is_reused_across_exchanges(cloud: Cloud, google: GoogleSigner) -> None:
    assert_issued(cloud.verify.exchange(instance_token(google, cloud.compute)[0]))
    fetched = cloud.tokens.hits[GoogleTokenEndpoint.PATH]
    bearer = cloud.compute.bearers[-1]
    for _ in range(3):
        assert_issued(cloud.verify.exchange(instance_token(google, cloud.compute)[0]))
    assert cloud.tokens.hits[GoogleTokenEndpoint.PATH] == fetched
    assert cloud.compute.bearers[-3:] == [bearer] * 3


def test_without_application_default_credentials_chit_does_not_start(tmp_path: Path, documents: DocumentServer) -> None:
    gcp = {"certs_url": documents.url("/google/certs"), "verify_instance": True}
    server = ChitServer(tmp_path, {"attestors": {"gcp": gcp}}, env={"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")})
    try:
        with pytest.raises(RuntimeError, match="verify_instance needs Google Application Default Credentials"):
            server.start()
    finally:
        server.stop()


def test_instance_facts_compare_creation_time_to_the_second() -> None:
    from chit.attestors.base import InvalidEvidence
    from chit.attestors.gcp.compute import instance_facts

    facts = {"instance_id": "1", "instance_name": "vm", "instance_creation_timestamp": 1763700000}
    resource = {"id": "1", "name": "vm", "status": "RUNNING", "labels": {"team": "payments", "bad": 7}}
    for created in ("2025-11-21T04:40:00Z", "2025-11-20T20:40:00.999-08:00"):
        extra = instance_facts({**resource, "creationTimestamp": created}, facts)
        assert extra == {"status": "RUNNING", "labels": {"team": "payments"}, "service_accounts": []}
    for created in ("2025-11-21T04:40:01Z", "2025-11-21T04:39:59.999Z", "2025-11-21T04:40:00", 1763700000):
        with pytest.raises(InvalidEvidence, match="created at another time"):
            instance_facts({**resource, "creationTimestamp": created}, facts)
