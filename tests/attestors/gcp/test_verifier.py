"""The GCP verifier: every check of a Google identity token, through real chit servers."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.factories import (
    DROP,
    GOOGLE_ISSUER,
    ChitServer,
    DocumentServer,
    GoogleSigner,
    OpaStandIn,
    assert_issued,
    assert_refused,
    b64url,
    compact,
    copy_policy,
)
from tests.attestors.gcp.conftest import AUDIENCE, SECOND_AUDIENCE, ID_TOKEN_TYPE, SUBJECT, AGENT_EMAIL, GCP_BINDINGS, gcp_server, issued_audit, echoed, unique_instance


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
