"""What an exchange grants: scope and audience narrowing, lifetime, token types,
delegation, the minted token's claims, the audit line, and discovery."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from tests.factories import ChitServer, ClusterIssuer, assert_issued, assert_refused

DB = "https://db.internal"
CACHE = "https://cache.internal"


def test_minted_token_claims_follow_the_contract(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    subject_token = prod_issuer.token()
    body = assert_issued(chit.exchange(subject_token, scope="read:db", audience=DB))
    header, claims = chit.verify_issued(body["access_token"], DB)
    assert header == {"alg": "ES256", "kid": header["kid"], "typ": "at+jwt"}
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "client_id", "att"}
    assert claims["iss"] == chit.url
    assert claims["aud"] == DB  # a string when there is one audience
    assert claims["scope"] == "read:db"
    assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 5
    pod = jwt.decode(subject_token, options={"verify_signature": False})["kubernetes.io"]["pod"]
    assert claims["att"] == {
        "kind": "kubernetes",
        "cluster": "prod",
        "namespace": "payments",
        "service_account": "agent",
        "pod": {"name": pod["name"], "uid": pod["uid"]},
    }


@pytest.mark.parametrize("service_account", ["sts-only", "sts-first", "sts-url"])
def test_a_policy_cannot_grant_the_reserved_sts_audience(chit: ChitServer, prod_issuer: ClusterIssuer, service_account: str) -> None:
    """docs/reference/http-api.md "Reserved audience": `sts.amazonaws.com` "is only ever the audience of the
    web-identity JWTs chit mints for its own AssumeRoleWithWebIdentity call"; a decision
    listing it first does not make it the default audience of an ordinary token."""
    body = assert_refused(chit.exchange(prod_issuer.token(service_account=service_account)), error="invalid_target")
    audit = chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and audit["granted_audience"] == [] and audit["jti"] is None
    assert any("reserved audience" in reason and "amazonaws.com" in reason for reason in audit["reasons"]), audit


def test_other_audiences_of_a_decision_listing_the_reserved_one_are_granted(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit.exchange(prod_issuer.token(service_account="sts-first"), audience=DB))
    assert chit.verify_issued(body["access_token"], DB)[1]["aud"] == DB


def test_every_token_has_a_unique_jti(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    jtis = set()
    for _ in range(20):
        token = assert_issued(chit.exchange(prod_issuer.token()))["access_token"]
        jtis.add(jwt.decode(token, options={"verify_signature": False})["jti"])
    assert len(jtis) == 20


def test_requested_scope_is_narrowed_to_what_policy_allows(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit.exchange(prod_issuer.token(), scope="read:db admin:all"))
    assert body["scope"] == "read:db"
    _, claims = chit.verify_issued(body["access_token"], DB)
    assert claims["scope"] == "read:db"


def test_no_requested_scope_grants_all_of_the_decision(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert assert_issued(chit.exchange(prod_issuer.token()))["scope"] == "read:db write:db"


def test_no_permitted_scope_is_invalid_scope(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(), scope="admin:all"), error="invalid_scope")


def test_malformed_scope_is_invalid_scope(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(), scope='read:db  "quoted"'), error="invalid_scope")


def test_audience_outside_the_decision_is_invalid_target(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(), audience="https://evil.example"), error="invalid_target")
    assert_refused(chit.exchange(prod_issuer.token(), resource="https://evil.example/api"), error="invalid_target")


def test_one_refused_target_refuses_the_exchange(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.client.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": prod_issuer.token(),
            "audience": [DB, "https://evil.example"],
        },
    )
    assert_refused(response, error="invalid_target")


def test_resource_must_be_an_absolute_uri_without_fragment(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(), resource="db.internal"), error="invalid_target")
    assert_refused(chit.exchange(prod_issuer.token(), resource="https://db.internal#frag"), error="invalid_target")
    for unparsable in ("http://[x", "http://[::1", "http://]x"):  # urlsplit raises on these
        assert_refused(chit.exchange(prod_issuer.token(), resource=unparsable), error="invalid_target")


def test_several_targets_make_an_audience_array(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit.exchange(prod_issuer.token(), audience=DB, resource=CACHE))
    _, claims = chit.verify_issued(body["access_token"], DB)
    assert claims["aud"] == [DB, CACHE]


def test_no_requested_audience_gets_the_first_of_the_decision(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    _, claims = chit.verify_issued(assert_issued(chit.exchange(prod_issuer.token()))["access_token"], DB)
    assert claims["aud"] == DB


def test_decision_without_audience_is_invalid_target(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(service_account="no-audience")), error="invalid_target")


def test_policy_ttl_shortens_the_token(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit.exchange(prod_issuer.token(service_account="short-lived")))
    assert body["expires_in"] == 120
    _, claims = chit.verify_issued(body["access_token"], DB)
    assert claims["exp"] - claims["iat"] == 120


def test_token_never_outlives_its_evidence(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    body = assert_issued(chit.exchange(prod_issuer.token(iat=now - 3500, nbf=now - 3500, exp=now + 100)))
    assert 95 <= body["expires_in"] <= 100
    _, claims = chit.verify_issued(body["access_token"], DB)
    assert claims["exp"] <= now + 100


def test_policy_deny_is_invalid_request_with_decision_id(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.exchange(prod_issuer.token(service_account="intruder"))
    body = assert_refused(response)
    assert "binding" not in body["error_description"]  # no policy detail reaches the caller
    line = chit.audit_for(body["decision_id"])
    assert line["outcome"] == "denied"
    assert line["reasons"] == ["no binding for this workload"]


def test_region_restricted_binding_is_denied_elsewhere(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(chit.exchange(prod_issuer.token(service_account="eu-only")))
    assert chit.audit_for(body["decision_id"])["reasons"] == ["region not allowed by the binding"]


def test_jwt_token_type_is_issued_as_requested(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit.exchange(prod_issuer.token(), requested_token_type="urn:ietf:params:oauth:token-type:jwt"))
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["token_type"] == "Bearer"
    header, _ = chit.verify_issued(body["access_token"], DB)
    assert header["typ"] == "JWT"


def test_aws_credentials_are_refused_without_an_aws_grant(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.exchange(prod_issuer.token(), requested_token_type="urn:chit:params:oauth:token-type:aws-credentials")
    assert_refused(response)


def test_delegation_adds_the_act_claim(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    actor = prod_issuer.token(namespace="ops", service_account="orchestrator")
    body = assert_issued(
        chit.exchange(prod_issuer.token(), actor_token=actor, actor_token_type="urn:ietf:params:oauth:token-type:jwt")
    )
    _, claims = chit.verify_issued(body["access_token"], DB)
    assert claims["sub"] == "spiffe://example.org/k8s/prod/ns/payments/sa/agent"
    assert claims["act"] == {"sub": "spiffe://example.org/k8s/prod/ns/ops/sa/orchestrator"}


def test_actor_token_is_verified_like_a_subject_token(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    expired = prod_issuer.token(namespace="ops", service_account="orchestrator", iat=now - 600, nbf=now - 600, exp=now - 1)
    body = assert_refused(chit.exchange(prod_issuer.token(), actor_token=expired, actor_token_type="urn:ietf:params:oauth:token-type:jwt"))
    assert "actor_token" in body["error_description"]


def test_actor_token_needs_its_type_and_the_type_needs_a_token(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(), actor_token=prod_issuer.token()))
    assert_refused(chit.exchange(prod_issuer.token(), actor_token_type="urn:ietf:params:oauth:token-type:jwt"))


# --- the audit log --------------------------------------------------------------------

AUDIT_FIELDS = {
    "ts", "decision_id", "outcome", "error", "subject", "kind", "region", "client", "audience", "resource",
    "scope", "granted_audience", "granted_scope", "ttl", "jti", "reasons", "latency_ms",
}


def test_issued_exchange_is_audited_without_token_material(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    subject_token = prod_issuer.token()
    response = chit.exchange(subject_token, scope="read:db", audience=DB)
    access_token = assert_issued(response)["access_token"]
    jti = jwt.decode(access_token, options={"verify_signature": False})["jti"]
    line = next(line for line in reversed(chit.audit_lines()) if line["jti"] == jti)
    assert set(line) == AUDIT_FIELDS
    assert line["outcome"] == "issued" and line["error"] is None
    assert line["subject"] == "spiffe://example.org/k8s/prod/ns/payments/sa/agent"
    assert line["kind"] == "kubernetes" and line["region"] == "us-east-1" and line["client"] == "127.0.0.1"
    assert line["audience"] == [DB] and line["scope"] == ["read:db"]
    assert line["granted_audience"] == [DB] and line["granted_scope"] == ["read:db"]
    assert line["ttl"] == 900 and isinstance(line["latency_ms"], (int, float))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    text = (chit.directory / "audit.log").read_text()
    for secret in (subject_token, access_token, subject_token.split(".")[2], access_token.split(".")[2]):
        assert secret not in text


def test_every_refusal_is_audited_with_its_outcome(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    cases = [
        (chit.exchange("garbage"), "invalid", "invalid_request"),
        (chit.exchange(prod_issuer.token(), scope="admin:all"), "denied", "invalid_scope"),
        (chit.exchange(prod_issuer.token(), audience="https://evil.example"), "denied", "invalid_target"),
        (chit.exchange(prod_issuer.token(service_account="intruder")), "denied", "invalid_request"),
        (chit.client.post("/token", data={"grant_type": "password"}), "invalid", "unsupported_grant_type"),
    ]
    for response, outcome, error in cases:
        line = chit.audit_for(response.json()["decision_id"])
        assert (line["outcome"], line["error"]) == (outcome, error)
        assert line["jti"] is None and line["granted_scope"] == []


def test_audit_lines_escape_control_characters(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.exchange(prod_issuer.token(), audience="https://evil.example/\r\n{\"outcome\":\"issued\"}")
    assert_refused(response, error="invalid_target")
    raw = (chit.directory / "audit.log").read_text()
    assert "\r" not in raw
    assert all(line.startswith("{") for line in raw.splitlines())


# --- discovery and keys -------------------------------------------------------------------


def test_discovery_documents(chit: ChitServer) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        document = chit.client.get(path).json()
        assert document["issuer"] == chit.url
        assert document["token_endpoint"] == f"{chit.url}/token"
        assert document["jwks_uri"] == f"{chit.url}/.well-known/jwks.json"
        assert document["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]


def test_jwks_publishes_public_keys_only(chit: ChitServer) -> None:
    response = chit.client.get("/.well-known/jwks.json")
    assert response.headers["content-type"].startswith("application/jwk-set+json")
    for key in response.json()["keys"]:
        assert key["kty"] == "EC" and key["alg"] == "ES256" and key["use"] == "sig" and key["kid"]
        assert "d" not in key


def test_health_and_readiness(chit: ChitServer) -> None:
    assert chit.client.get("/healthz").json() == {"status": "ok"}
    ready = chit.client.get("/readyz").json()
    assert ready["status"] == "ready" and all(ready["checks"].values())
