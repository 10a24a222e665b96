"""Helpers of the GCP tests: Google's signer, the chit servers they share (package scope),
what the policy was asked about."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterator

import jwt
import pytest

from tests.factories import (
    ChitServer,
    DocumentServer,
    GoogleSigner,
    OpaStandIn,
    copy_policy,
)

AUDIENCE = "https://chit.example.test/gcp"
SECOND_AUDIENCE = "https://chit-eu.example.test/gcp"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT = "spiffe://example.org/gcp/payments-prod/europe-west1-b/4520031799277581759"
AGENT_EMAIL = "agent@payments-prod.iam.gserviceaccount.com"

GCP_BINDINGS = {
    "bindings": {
        "gcp": {
            "payments-prod": {
                AGENT_EMAIL: {"scope": ["read:db"], "audience": ["https://db.internal"], "ttl": 600},
                "zonal@payments-prod.iam.gserviceaccount.com": {
                    "scope": ["read:db"], "audience": ["https://db.internal"], "zones": ["europe-west1-c"]},
            },
            "payments-dev": {AGENT_EMAIL.replace("prod", "dev"): {"scope": ["read:db"], "audience": ["https://db.internal"]}},
        }
    }
}

# Grants everything; the tests read what the policy was asked about from the
# OPA stand-in's request log (the input exactly as chit sent it).
ECHO_POLICY = """package chit

import rego.v1

decision := {"allow": true, "scope": ["read"], "audience": ["https://echo.internal"]}
"""


@pytest.fixture(scope="package")
def google(documents: DocumentServer) -> GoogleSigner:
    signer = GoogleSigner(AUDIENCE)
    signer.second_kid = signer.add_key()  # Google publishes more than one key at a time
    for path in ("/google/certs", "/google-echo/certs", "/google-allowlist/certs", "/google-once/certs"):
        documents.serve(path, signer.certs)  # callable: keys added later are served too
        documents.headers[path] = {"Cache-Control": "public, max-age=3600, must-revalidate, no-transform"}
    return signer


def gcp_server(directory: Path, documents: DocumentServer, path: str, *, policy: Path | OpaStandIn, **gcp: object) -> ChitServer:
    engine = {"engine": "opa", "opa_url": policy.url, "timeout_ms": 3000} if isinstance(policy, OpaStandIn) else {"dir": str(policy)}
    config = {"policy": engine, "attestors": {"gcp": {"certs_url": documents.url(path), **gcp}}}
    return ChitServer(directory, config)


@pytest.fixture(scope="package")
def echo_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    directory = tmp_path_factory.mktemp("gcp-echo-opa")
    (directory / "policies").mkdir()
    (directory / "policies" / "echo.rego").write_text(ECHO_POLICY)
    server = OpaStandIn(directory / "policies", directory)
    yield server
    server.stop()


@pytest.fixture(scope="package")
def servers(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, google: GoogleSigner, echo_opa: OpaStandIn) -> Iterator[dict[str, ChitServer]]:
    base = tmp_path_factory.mktemp("gcp")
    shipped = copy_policy(base / "shipped-policy", GCP_BINDINGS)
    echo = echo_opa
    audiences = [AUDIENCE, SECOND_AUDIENCE]
    found = {
        # format=full required (the default), the shipped policy.
        "full": gcp_server(base / "full", documents, "/google/certs", policy=shipped, audiences=audiences),
        # standard tokens accepted; the policy is asked through the OPA stand-in, which logs the input.
        "echo": gcp_server(base / "echo", documents, "/google-echo/certs", policy=echo, audiences=audiences, require_full_format=False),
        # a project allowlist; no audiences configured, so chit's issuer is the audience.
        "allowlist": gcp_server(
            base / "allowlist", documents, "/google-allowlist/certs", policy=shipped, project_ids=["payments-prod"], require_full_format=False
        ),
        "once": gcp_server(base / "once", documents, "/google-once/certs", policy=echo, audiences=audiences, single_use=True),
    }
    try:
        for server in found.values():
            server.start()
        yield found
    finally:
        for server in found.values():
            server.stop()


@pytest.fixture(scope="package")
def chit_gcp(servers: dict[str, ChitServer]) -> ChitServer:
    return servers["full"]


def issued_audit(server: ChitServer, body: dict) -> dict:
    """The audit line of an issued exchange, found by the minted token's jti."""
    jti = jwt.decode(body["access_token"], options={"verify_signature": False})["jti"]
    deadline = time.time() + 2
    while not (lines := [line for line in server.audit_lines() if line["jti"] == jti]):
        assert time.time() < deadline, f"no audit line for jti {jti}"
        time.sleep(0.05)
    return lines[0]


def policy_input(opa: OpaStandIn) -> dict:
    """The input of the last decision the stand-in was asked for (the tests exchange one at a time)."""
    return [r for r in opa.requests() if r["path"] == "/v1/data/chit/decision"][-1]["input"]


def echoed(opa: OpaStandIn, body: dict) -> tuple[str, dict]:
    """The subject and input.attestation the policy was asked about for an issued exchange."""
    assert body["access_token"]
    document = policy_input(opa)
    return document["subject"], document["attestation"]


def unique_instance() -> dict[str, str]:
    return {"instance_id": str(uuid.uuid4().int >> 65)}
