"""The GCP attestor, driven through real chit servers: a Compute Engine identity
token is evidence only if Google's certificate verifies it and every check that
google-auth leaves to its caller holds. A local stand-in serves Google's
certificates (`{kid: PEM}`) with cache headers. For `verify_instance`, local
stand-ins answer as Google's OAuth token endpoint (for a test service account
key that chit's Application Default Credentials name) and as the Compute
Engine API's instances.get."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from chit.attestors.base import CollectionFailed, EvidenceUnavailable, PlatformAbsent
from chit.protocol import TOKEN_TYPE_JWT
from chit.attestors.gcp.collector import GcpCollector
from tests.factories import (
    KeySourceClock,
    DROP,
    GOOGLE_ISSUER,
    ChitServer,
    ComputeApiStandIn,
    DocumentServer,
    GcpMetadataStandIn,
    GoogleServiceAccount,
    GoogleSigner,
    GoogleTokenEndpoint,
    ImdsStandIn,
    OpaStandIn,
    assert_issued,
    assert_refused,
    b64url,
    closed_port_url,
    compact,
    compute_instance,
    copy_policy,
    free_port,
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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def echo_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    directory = tmp_path_factory.mktemp("gcp-echo-opa")
    (directory / "policies").mkdir()
    (directory / "policies" / "echo.rego").write_text(ECHO_POLICY)
    server = OpaStandIn(directory / "policies", directory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


# --- the happy path -------------------------------------------------------------------


def test_full_format_token_is_exchanged_for_a_chit_token(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    token = google.token()
    body = assert_issued(chit_gcp.exchange(token, audience="https://db.internal"))
    header, claims = chit_gcp.verify_issued(body["access_token"], "https://db.internal")
    assert claims["sub"] == claims["client_id"] == SUBJECT
    assert claims["att"] == {
        "kind": "gcp", "project_id": "payments-prod", "zone": "europe-west1-b", "instance_id": "4520031799277581759"}
    assert claims["scope"] == "read:db" and body["expires_in"] == 600
    audit = issued_audit(chit_gcp, body)
    assert (audit["outcome"], audit["kind"], audit["region"], audit["subject"]) == ("issued", "gcp", "europe-west1", SUBJECT)
    assert token.split(".")[2] not in json.dumps(chit_gcp.audit_lines()) + chit_gcp.log()


def test_both_google_issuer_spellings_and_token_types_are_accepted(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    assert_issued(chit_gcp.exchange(google.token(iss="accounts.google.com")))
    assert_issued(chit_gcp.exchange(google.token(), subject_token_type=ID_TOKEN_TYPE))


def test_every_configured_audience_is_accepted(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    assert_issued(chit_gcp.exchange(google.token(aud=SECOND_AUDIENCE)))


def test_policy_sees_the_verified_instance_facts(servers: dict[str, ChitServer], google: GoogleSigner, echo_opa: OpaStandIn) -> None:
    echo = servers["echo"]
    subject, attestation = echoed(echo_opa, assert_issued(echo.exchange(google.token())))
    assert subject == SUBJECT
    claims = attestation.pop("claims")
    assert attestation == {
        "kind": "gcp",
        "issuer": GOOGLE_ISSUER,
        "project_id": "payments-prod",
        "project_number": 733428162846,  # a number, as in the token (docs/reference/policy-contract.md "Claim values keep their JSON types")
        "zone": "europe-west1-b",
        "region": "europe-west1",
        "instance_id": "4520031799277581759",
        "instance_name": "agent-vm-1",
        "instance_creation_timestamp": 1763700000,
        "email": AGENT_EMAIL,
        "sub": "104318925392713268142",
    }
    assert claims["google"]["compute_engine"]["project_number"] == 733428162846 and claims["aud"] == AUDIENCE


def test_subject_is_keyed_on_the_instance_id_never_the_name(servers: dict[str, ChitServer], google: GoogleSigner, echo_opa: OpaStandIn) -> None:
    echo = servers["echo"]
    renamed, _ = echoed(echo_opa, assert_issued(echo.exchange(google.token(instance={"instance_name": "someone-else"}))))
    assert renamed == SUBJECT
    other, _ = echoed(echo_opa, assert_issued(echo.exchange(google.token(instance={"instance_id": "17"}))))
    assert other == "spiffe://example.org/gcp/payments-prod/europe-west1-b/17"


def test_zone_restricted_binding(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    zonal = "zonal@payments-prod.iam.gserviceaccount.com"
    assert_issued(chit_gcp.exchange(google.token(email=zonal, instance={"zone": "europe-west1-c"})))
    body = assert_refused(chit_gcp.exchange(google.token(email=zonal)))  # europe-west1-b
    assert chit_gcp.audit_for(body["decision_id"])["outcome"] == "denied"


def test_binding_is_per_project_and_service_account(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    other_account = google.token(email="intruder@payments-prod.iam.gserviceaccount.com")
    assert chit_gcp.audit_for(assert_refused(chit_gcp.exchange(other_account))["decision_id"])["outcome"] == "denied"
    # The same account name in another project is another account.
    assert_refused(chit_gcp.exchange(google.token(instance={"project_id": "payments-dev"})))


# --- format=full and format=standard ---------------------------------------------------


def test_standard_token_is_refused_when_full_format_is_required(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    body = assert_refused(chit_gcp.exchange(google.token("standard")))
    assert "format=full" in body["error_description"]
    assert chit_gcp.audit_for(body["decision_id"])["outcome"] == "invalid"


def test_standard_token_is_the_service_account_when_allowed(servers: dict[str, ChitServer], google: GoogleSigner, echo_opa: OpaStandIn) -> None:
    echo = servers["echo"]
    body = assert_issued(echo.exchange(google.token("standard")))
    subject, attestation = echoed(echo_opa, body)
    assert subject == f"spiffe://example.org/gcp/sa/{AGENT_EMAIL}"
    attestation.pop("claims")
    # No instance facts: a standard token names none.
    assert attestation == {"kind": "gcp", "issuer": GOOGLE_ISSUER, "email": AGENT_EMAIL, "sub": "104318925392713268142"}
    _, claims = echo.verify_issued(body["access_token"], "https://echo.internal")
    assert claims["att"] == {"kind": "gcp", "email": AGENT_EMAIL}
    assert issued_audit(echo, body)["region"] is None


def test_metadata_server_standard_token_names_no_account_and_is_refused(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    """format=standard from the metadata server: aud, azp, exp, iat, iss, sub only."""
    token = google.token("standard", email=DROP, email_verified=DROP)
    assert "format=full" in assert_refused(servers["echo"].exchange(token))["error_description"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"email": DROP},
        {"email_verified": False},
        {"email_verified": "true"},
        {"email": "alice@gmail.com"},  # a person, not a service account
        {"email": "agent/../x@payments-prod.iam.gserviceaccount.com"},
        {"sub": DROP},
    ],
    ids=["no-email", "unverified", "verified-string", "person", "path", "no-sub"],
)
def test_token_must_name_a_verified_service_account(servers: dict[str, ChitServer], google: GoogleSigner, overrides: dict) -> None:
    assert_refused(servers["echo"].exchange(google.token("standard", **overrides)))
    assert_refused(servers["echo"].exchange(google.token("full", **overrides)))


@pytest.mark.parametrize(
    "instance",
    [
        {"instance_id": 4520031799277581759},  # Google sends a string
        {"instance_id": "18446744073709551616"},  # 2**64
        {"instance_id": "../../admin"},
        {"instance_id": DROP},
        {"zone": "europe-west1-b/../../x"},
        {"zone": "europe"},
        {"zone": DROP},
        {"project_id": "Payments-Prod"},
        {"project_id": "example.com:payments"},
        {"project_id": DROP},
        {"project_number": "733428162846"},
        {"project_number": True},
        {"project_number": 0},
        {"instance_name": "Agent_VM"},
        {"instance_creation_timestamp": "yesterday"},
    ],
    ids=lambda v: "-".join(f"{k}={v[k] if v[k] is not DROP else 'absent'}" for k in v),
)
def test_malformed_compute_engine_claims_are_refused(servers: dict[str, ChitServer], google: GoogleSigner, instance: dict) -> None:
    # On the server that accepts standard tokens too: a malformed instance is
    # never read as "no instance".
    assert_refused(servers["echo"].exchange(google.token(instance=instance)))


@pytest.mark.parametrize("google_claim", [{"compute_engine": "x"}, {"compute_engine": None}, "x", ["compute_engine"]])
def test_malformed_google_claim_is_refused(servers: dict[str, ChitServer], google: GoogleSigner, google_claim: object) -> None:
    assert_refused(servers["echo"].exchange(google.token(google=google_claim)))


# --- audience --------------------------------------------------------------------------


def test_wrong_audience_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    body = assert_refused(chit_gcp.exchange(google.token(aud="https://elsewhere.example")))
    assert "audience" in body["error_description"]


def test_absent_audience_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    assert_refused(chit_gcp.exchange(google.token(aud=DROP)))


def test_azp_never_stands_in_for_the_audience(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    assert_refused(chit_gcp.exchange(google.token(aud="https://elsewhere.example", azp=AUDIENCE)))
    assert_refused(chit_gcp.exchange(google.token(aud=DROP, azp=AUDIENCE)))


@pytest.mark.parametrize("aud", [[AUDIENCE], [AUDIENCE, "https://elsewhere.example"], [], "", AUDIENCE + "/", AUDIENCE.upper()])
def test_audience_must_be_exactly_one_configured_string(chit_gcp: ChitServer, google: GoogleSigner, aud: object) -> None:
    assert_refused(chit_gcp.exchange(google.token(aud=aud)))


def test_no_configured_audience_means_chits_issuer(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    allowlist = servers["allowlist"]
    assert_issued(allowlist.exchange(google.token(aud=allowlist.url)))
    assert_refused(allowlist.exchange(google.token(aud=allowlist.url + "/")))
    assert_refused(allowlist.exchange(google.token(aud=AUDIENCE)))


# --- issuer, algorithm, signature -------------------------------------------------------


@pytest.mark.parametrize(
    "iss", ["https://accounts.google.com/", "http://accounts.google.com", "https://accounts.google.com.evil.example", "Accounts.google.com", "securetoken.google.com"]
)
def test_foreign_issuer_is_refused(chit_gcp: ChitServer, google: GoogleSigner, iss: str) -> None:
    body = assert_refused(chit_gcp.exchange(google.token(iss=iss)))
    assert "issuer not trusted" in body["error_description"]


def test_hs256_with_googles_certificate_as_secret_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    """RS256 → HS256 confusion: the attacker HMACs with the (public) certificate or key."""
    public_pem = google.keys[google.kid].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (google.certificates[google.kid].encode(), public_pem):
        header = b64url(json.dumps({"alg": "HS256", "kid": google.kid, "typ": "JWT"}).encode())
        payload = b64url(json.dumps(google.claims()).encode())
        signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        body = assert_refused(chit_gcp.exchange(f"{header}.{payload}.{b64url(signature)}"))
        assert "RS256 only" in body["error_description"]


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(chit_gcp: ChitServer, google: GoogleSigner, alg: str) -> None:
    assert_refused(chit_gcp.exchange(compact({"alg": alg, "kid": google.kid}, google.claims(), b"")))
    assert_refused(chit_gcp.exchange(compact({"alg": alg, "kid": google.kid}, google.claims(), b"x")))


def test_es256_token_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    token = jwt.encode(google.claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": google.kid})
    assert "RS256 only" in assert_refused(chit_gcp.exchange(token))["error_description"]


@pytest.mark.parametrize("alg", ["RS512", "PS256"])
def test_googles_key_with_another_rsa_algorithm_is_refused(chit_gcp: ChitServer, google: GoogleSigner, alg: str) -> None:
    assert_refused(chit_gcp.exchange(google.token(algorithm=alg)))


def test_token_without_kid_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    token = jwt.encode(google.claims(), google.keys[google.kid], algorithm="RS256")
    assert "kid" in assert_refused(chit_gcp.exchange(token))["error_description"]


def test_tampered_claims_are_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    header, _, signature = google.token().split(".")
    forged = google.claims(instance={"project_id": "payments-dev"}, email=AGENT_EMAIL.replace("prod", "dev"))
    body = assert_refused(chit_gcp.exchange(f"{header}.{b64url(json.dumps(forged).encode())}.{signature}"))
    assert "signature" in body["error_description"]


def test_self_signed_token_with_forged_compute_engine_claims_is_refused(chit_gcp: ChitServer, documents: DocumentServer, google: GoogleSigner) -> None:
    """CVE-2020-16251 class: a service-account key signs its own "identity token"
    with whatever compute_engine claims it likes. Only Google's keys count."""
    service_account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = google.claims(instance={"project_id": "payments-prod", "instance_id": "1"})
    before = documents.hits.get("/google/certs", 0)
    # As the service account itself: not an issuer chit trusts, no request to Google.
    as_itself = jwt.encode(dict(forged, iss=AGENT_EMAIL), service_account_key, algorithm="RS256", headers={"kid": "sa-key-1"})
    assert "issuer not trusted" in assert_refused(chit_gcp.exchange(as_itself))["error_description"]
    assert documents.hits.get("/google/certs", 0) == before
    # Claiming Google as issuer with its own key id, or with one of Google's.
    for kid in ("sa-key-1", google.kid):
        token = jwt.encode(forged, service_account_key, algorithm="RS256", headers={"kid": kid})
        assert_refused(chit_gcp.exchange(token))


@pytest.mark.parametrize("extra", [{"x5c": ["MIIB"]}, {"jku": "https://attacker.example/certs"}, {"jwk": {"kty": "RSA"}}], ids=["x5c", "jku", "jwk"])
def test_key_carrying_headers_are_refused_even_when_signed(chit_gcp: ChitServer, google: GoogleSigner, extra: dict) -> None:
    assert_refused(chit_gcp.exchange(google.token(headers=extra)))


def test_duplicate_claims_are_refused_even_when_google_signed(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    header = b64url(json.dumps({"alg": "RS256", "kid": google.kid}).encode())
    text = json.dumps(google.claims()).replace('"project_id": "payments-prod"', '"project_id": "payments-prod", "project_id": "payments-dev"')
    signing_input = f"{header}.{b64url(text.encode())}"
    signature = google.keys[google.kid].sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert "duplicate" in assert_refused(chit_gcp.exchange(f"{signing_input}.{b64url(signature)}"))["error_description"]


# --- validity window -------------------------------------------------------------------


def test_expired_token_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    now = int(time.time())
    assert "expired" in assert_refused(chit_gcp.exchange(google.token(iat=now - 3600, exp=now - 1)))["error_description"]


def test_too_long_lived_token_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    now = int(time.time())
    body = assert_refused(chit_gcp.exchange(google.token(iat=now, exp=now + 3601 + 60)))
    assert "lifetime" in body["error_description"]


def test_not_yet_valid_token_is_refused(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    now = int(time.time())
    assert_refused(chit_gcp.exchange(google.token(iat=now + 300, exp=now + 3600)))
    assert_refused(chit_gcp.exchange(google.token(nbf=now + 300)))


def test_small_clock_skew_is_tolerated_on_iat(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    now = int(time.time())
    assert_issued(chit_gcp.exchange(google.token(iat=now + 30, exp=now + 3600)))


@pytest.mark.parametrize("claim", ["exp", "iat"])
@pytest.mark.parametrize("value", [DROP, "1790000000", None, 1.5e300])
def test_missing_or_malformed_time_claims_are_refused(chit_gcp: ChitServer, google: GoogleSigner, claim: str, value: object) -> None:
    assert_refused(chit_gcp.exchange(google.token(**{claim: value})))


def test_minted_token_never_outlives_the_identity_token(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    now = int(time.time())
    body = assert_issued(chit_gcp.exchange(google.token(iat=now - 3480, exp=now + 120)))
    assert body["expires_in"] <= 120


# --- Google's certificates ----------------------------------------------------------------


def test_certificates_are_cached_per_their_cache_headers(chit_gcp: ChitServer, documents: DocumentServer, google: GoogleSigner) -> None:
    assert_issued(chit_gcp.exchange(google.token()))
    before = documents.hits["/google/certs"]
    for _ in range(10):
        assert_issued(chit_gcp.exchange(google.token(instance=unique_instance())))
    assert documents.hits["/google/certs"] == before  # max-age=3600: no request to Google


def test_unknown_kid_flood_costs_at_most_one_fetch(chit_gcp: ChitServer, documents: DocumentServer, google: GoogleSigner) -> None:
    assert_issued(chit_gcp.exchange(google.token()))
    before = documents.hits["/google/certs"]
    for _ in range(30):
        assert_refused(chit_gcp.exchange(google.token(kid=uuid.uuid4().hex)))
    assert documents.hits["/google/certs"] - before <= 1
    assert_issued(chit_gcp.exchange(google.token()))


def test_certificates_unreachable_with_nothing_cached_is_503(tmp_path: Path, google: GoogleSigner) -> None:
    policy = copy_policy(tmp_path / "policy", GCP_BINDINGS)
    down = f"http://127.0.0.1:{free_port()}/oauth2/v1/certs"  # nothing listens there
    server = ChitServer(tmp_path / "chit", {"policy": {"dir": str(policy)}, "attestors": {"gcp": {"certs_url": down, "audiences": [AUDIENCE]}}})
    server.start()  # Google being down does not block start or readiness
    try:
        body = assert_refused(server.exchange(google.token()), status=503, error="temporarily_unavailable")
        audit = server.audit_for(body["decision_id"])
        assert audit["outcome"] == "unavailable" and "Google's certificates" in " ".join(audit["reasons"])
        assert server.client.get("/readyz").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    "document",
    [b"<html>busy</html>", ["not", "an", "object"], {"kid": "not a certificate"}],
    ids=["not-json", "array", "bad-certificate"],
)
def test_unusable_certificates_are_never_a_token(tmp_path: Path, documents: DocumentServer, google: GoogleSigner, document: object) -> None:
    path = f"/unusable-{uuid.uuid4().hex}/certs"
    documents.serve(path, document)
    policy = copy_policy(tmp_path / "policy", GCP_BINDINGS)
    server = gcp_server(tmp_path / "chit", documents, path, policy=policy, audiences=[AUDIENCE]).start()
    try:
        response = server.exchange(google.token())
        assert response.status_code in (400, 503) and "access_token" not in response.json()
    finally:
        server.stop()


def test_stale_certificates_are_refetched_and_keep_working_when_google_is_down(documents: DocumentServer, google: GoogleSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Cache-Control: no-cache`: stale at once, so refetched (at most once per 30 s);
    when that refetch fails, the cached certificates keep working. In process, with
    the certificate cache's clock in hand."""
    from chit.attestors.gcp.certificates import GoogleCertificates
    from chit.attestors.jwks import http_client

    clock = KeySourceClock(monkeypatch)
    path = "/google-no-cache/certs"
    documents.serve(path, google.certs)
    documents.headers[path] = {"Cache-Control": "no-cache"}
    kid = next(iter(google.certs()))

    async def scenario() -> None:
        certificates = GoogleCertificates(documents.url(path), http_client())
        try:
            assert (await certificates.certificate(kid)).kid == kid
            assert documents.hits[path] == 1
            clock.advance(20)
            await certificates.certificate(kid)
            assert documents.hits[path] == 1  # within 30 s of the last fetch
            documents.failures[path] = 503
            clock.advance(11)
            assert (await certificates.certificate(kid)).kid == kid  # answered from the cache …
            for _ in range(100):  # … while the refresh runs beside it
                if documents.hits[path] == 2:
                    break
                await asyncio.sleep(0.02)
            assert documents.hits[path] == 2, "stale certificates were not refetched"
            assert (await certificates.certificate(kid)).kid == kid  # the failed refresh kept them
            # A kid that cannot be checked while Google is down: unavailable (503), never accepted.
            clock.advance(31)
            with pytest.raises(EvidenceUnavailable):
                await certificates.certificate(uuid.uuid4().hex)
        finally:
            documents.failures.pop(path, None)
            await certificates.close()

    asyncio.run(scenario())


# --- allowlist and single use --------------------------------------------------------------


def test_project_outside_the_allowlist_is_refused(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    allowlist = servers["allowlist"]
    assert_issued(allowlist.exchange(google.token(aud=allowlist.url)))
    body = assert_refused(allowlist.exchange(google.token(aud=allowlist.url, instance={"project_id": "payments-dev"},
                                                          email=AGENT_EMAIL.replace("prod", "dev"))))
    assert "project not allowed" in body["error_description"]
    assert allowlist.audit_for(body["decision_id"])["outcome"] == "invalid"


def test_standard_token_is_refused_when_an_allowlist_is_set(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    allowlist = servers["allowlist"]
    body = assert_refused(allowlist.exchange(google.token("standard", aud=allowlist.url)))
    assert allowlist.audit_for(body["decision_id"])["outcome"] == "invalid"


def test_unsigned_token_learns_nothing_about_the_allowlist(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    allowlist = servers["allowlist"]
    for project_id in ("payments-prod", "payments-dev"):
        forged = google.token(aud=allowlist.url, instance={"project_id": project_id}, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        assert "signature" in assert_refused(allowlist.exchange(forged))["error_description"]


def test_single_use_token_is_refused_the_second_time(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    once = servers["once"]
    token = google.token(instance=unique_instance())
    assert_issued(once.exchange(token))
    body = assert_refused(once.exchange(token))
    assert "already used" in body["error_description"]
    assert once.audit_for(body["decision_id"])["outcome"] == "invalid"
    assert_issued(once.exchange(google.token(instance=unique_instance())))  # a new token from the same VM


def test_a_failed_exchange_does_not_use_the_token(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    once = servers["once"]
    token = google.token(instance=unique_instance())
    assert_refused(once.exchange(token, audience="https://not-granted.example"), error="invalid_target")
    assert_issued(once.exchange(token))
    assert_refused(once.exchange(token))


def test_single_use_is_keyed_on_the_claims_not_the_encoding(servers: dict[str, ChitServer], google: GoogleSigner) -> None:
    """The same claims signed again (here with Google's other key) are the same token."""
    once = servers["once"]
    claims = google.claims(instance=unique_instance())
    first = jwt.encode(claims, google.keys[google.kid], algorithm="RS256", headers={"kid": google.kid})
    again = jwt.encode(claims, google.keys[google.second_kid], algorithm="RS256", headers={"kid": google.second_kid})
    assert first != again
    assert_issued(once.exchange(first))
    assert "already used" in assert_refused(once.exchange(again))["error_description"]


def test_single_use_is_off_by_default(chit_gcp: ChitServer, google: GoogleSigner) -> None:
    token = google.token(instance=unique_instance())
    assert_issued(chit_gcp.exchange(token))
    assert_issued(chit_gcp.exchange(token))


def test_gcp_disabled_refuses_google_tokens_without_a_request(tmp_path: Path, documents: DocumentServer, google: GoogleSigner) -> None:
    path = f"/disabled-{uuid.uuid4().hex}/certs"
    documents.serve(path, google.certs)
    policy = copy_policy(tmp_path / "policy", GCP_BINDINGS)
    server = gcp_server(tmp_path / "chit", documents, path, policy=policy, audiences=[AUDIENCE], enabled=False).start()
    try:
        assert_refused(server.exchange(google.token()))
        assert documents.hits.get(path, 0) == 0
    finally:
        server.stop()


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


# --- the pieces, in process ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Cache-Control": "public, max-age=19790, must-revalidate, no-transform"}, 19790),  # Google's
        ({"Cache-Control": "public, max-age=19790", "Age": "790"}, 19000),
        ({"Cache-Control": "max-age=60", "Age": "120"}, 0),
        ({"Cache-Control": "no-cache"}, 0),
        ({"Cache-Control": "no-store, max-age=600"}, 0),
        ({"Cache-Control": "max-age=-5"}, 0),
        ({"Cache-Control": "max-age=soon"}, 0),
        ({"Cache-Control": 'max-age="600"'}, 600),
        ({"Cache-Control": "max-age=\xb2".encode("latin-1")}, 0),  # '²' is a digit to str.isdigit
        ({"Cache-Control": "max-age=60", "Age": "\xb2".encode("latin-1")}, 60),
        ({"Expires": "Wed, 21 Oct 2026 07:28:00 GMT", "Date": "Wed, 21 Oct 2026 07:18:00 GMT"}, 600),
        ({"Expires": "0", "Date": "Wed, 21 Oct 2026 07:18:00 GMT"}, 0),  # RFC 9111 §5.3: already expired
        ({"Cache-Control": "max-age=600", "Expires": "Wed, 21 Oct 2026 07:18:00 GMT"}, 600),  # max-age wins
        ({"Cache-Control": "max-age=31536000"}, 86400),  # capped at a day
        ({"Cache-Control": "public"}, 300),
        ({}, 300),
    ],
)
def test_freshness_follows_the_cache_headers(headers: dict, expected: float) -> None:
    from chit.attestors.gcp.freshness import freshness_lifetime

    assert freshness_lifetime(httpx.Headers(headers)) == expected


def test_only_rsa_2048_e65537_certificates_are_kept() -> None:
    from chit.attestors.gcp.certificates import parse_certificates
    from tests.factories import self_signed_certificate

    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = {
        "good": self_signed_certificate(good, "google"),
        "small": self_signed_certificate(rsa.generate_private_key(public_exponent=65537, key_size=1024), "google"),
        "e3": self_signed_certificate(rsa.generate_private_key(public_exponent=3, key_size=2048), "google"),
        "ec": self_signed_certificate(ec.generate_private_key(ec.SECP256R1()), "google"),
        "garbage": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "number": 7,
        "": self_signed_certificate(good, "google"),
    }
    certificates = parse_certificates(document, "test")
    assert list(certificates) == ["good"]
    assert certificates["good"].algorithm == "RS256" and certificates["good"].pem == document["good"]
    with pytest.raises(ValueError):
        parse_certificates(["good"], "test")


def test_a_certificate_with_exponent_3_never_verifies_and_the_others_keep_working(
    tmp_path: Path, documents: DocumentServer
) -> None:
    """Google's certificates meet the same rule as every JWKS key (RFC 7518 §3.3, e = 65537)."""
    signer = GoogleSigner(AUDIENCE)
    weak_kid = signer.add_key(public_exponent=3)
    documents.serve("/google-weak/certs", signer.certs())
    server = gcp_server(tmp_path / "chit", documents, "/google-weak/certs", policy=copy_policy(tmp_path / "p", GCP_BINDINGS), audiences=[AUDIENCE])
    server.start()
    try:
        for _ in range(3):
            body = assert_refused(server.exchange(signer.token(kid=weak_kid)))
            assert server.audit_for(body["decision_id"])["outcome"] == "invalid"
        assert_issued(server.exchange(signer.token()))
        assert server.log().count(f"kid {weak_kid!r} not used: RSA-2048 with exponent 3") == 1, server.log()
    finally:
        server.stop()


def test_google_auth_is_never_called_without_an_audience(google: GoogleSigner) -> None:
    """google-auth skips the aud check when given None; chit's one call into it refuses first."""
    from chit.attestors.base import InvalidEvidence
    from chit.attestors.gcp.certificates import GoogleCertificate, verify_with_google_auth

    key = google.keys[google.kid]
    certificate = GoogleCertificate(google.kid, key.public_key(), "RS256", google.certificates[google.kid])
    token = google.token(aud="https://anyone.example")
    with pytest.raises(InvalidEvidence):
        verify_with_google_auth(token, certificate, ())
    with pytest.raises(InvalidEvidence):
        verify_with_google_auth(token, certificate, (AUDIENCE,))
    assert verify_with_google_auth(token, certificate, ("https://anyone.example",))["aud"] == "https://anyone.example"


# --- the collector (client side): the metadata server ---------------------------------------


@pytest.fixture
def metadata(google: GoogleSigner) -> Iterator[GcpMetadataStandIn]:
    stand_in = GcpMetadataStandIn(google)
    yield stand_in
    stand_in.stop()


def test_the_metadata_stand_in_is_as_strict_as_googles(metadata: GcpMetadataStandIn) -> None:
    identity = metadata.url + GcpMetadataStandIn.IDENTITY
    refused = httpx.get(identity, params={"audience": AUDIENCE})
    assert refused.status_code == 403 and refused.headers["Metadata-Flavor"] == "Google"
    forwarded = {"Metadata-Flavor": "Google", "X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(identity, params={"audience": AUDIENCE}, headers=forwarded).status_code == 403
    assert httpx.get(identity, headers={"Metadata-Flavor": "Google"}).status_code == 400  # no audience


def test_collector_gets_a_full_format_token_chit_accepts(metadata: GcpMetadataStandIn, chit_gcp: ChitServer) -> None:
    subject = GcpCollector(AUDIENCE, metadata.url).collect()
    assert subject.token_type == TOKEN_TYPE_JWT
    claims = jwt.decode(subject.value, options={"verify_signature": False})
    assert claims["aud"] == AUDIENCE and "compute_engine" in claims["google"]
    (request,) = metadata.requests
    assert (request.method, request.path) == ("GET", "/computeMetadata/v1/instance/service-accounts/default/identity")
    assert request.query == {"audience": [AUDIENCE], "format": ["full"]}
    assert request.headers["metadata-flavor"] == "Google"
    body = assert_issued(chit_gcp.exchange(subject.value, subject_token_type=subject.token_type, audience="https://db.internal"))
    assert chit_gcp.verify_issued(body["access_token"], "https://db.internal")[1]["sub"] == SUBJECT


def test_a_vm_without_a_service_account_fails_the_collection(google: GoogleSigner) -> None:
    stand_in = GcpMetadataStandIn(google, service_account=False)
    try:
        with pytest.raises(CollectionFailed, match="refused an identity token: HTTP 404"):
            GcpCollector(AUDIENCE, stand_in.url).collect()
    finally:
        stand_in.stop()


def test_off_gcp_the_platform_is_absent() -> None:
    with pytest.raises(PlatformAbsent, match="no GCP metadata server"):
        GcpCollector(AUDIENCE, closed_port_url()).collect()


def test_a_server_that_is_not_googles_metadata_server_is_not_gcp() -> None:
    """EC2's metadata service listens on the same address (169.254.169.254) and does not
    answer with Metadata-Flavor: Google."""
    imds = ImdsStandIn("{}", "")
    try:
        with pytest.raises(PlatformAbsent, match="not as Google's metadata server"):
            GcpCollector(AUDIENCE, imds.url).collect()
    finally:
        imds.stop()
