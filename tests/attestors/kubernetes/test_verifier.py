"""The Kubernetes attestor, driven through a real chit server: a projected
service-account token is evidence only if every check holds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.factories import DROP, ChitServer, ClusterIssuer, assert_issued, assert_refused, b64url, compact


def resign(token: str, header: dict, claims: dict | None, signer) -> str:
    """Rebuild a token with a new header (and claims), signed by `signer(signing_input)`."""
    parts = token.split(".")
    head = b64url(json.dumps(header).encode())
    body = parts[1] if claims is None else b64url(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64url(signer(signing_input))}"


def rs256(issuer: ClusterIssuer, header_text: str, claims_text: str) -> str:
    """Sign exactly these header and claims texts (which json.dumps could not produce)."""
    signing_input = f"{b64url(header_text.encode())}.{b64url(claims_text.encode())}"
    signature = issuer.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


# --- the happy path -------------------------------------------------------------------


def test_projected_token_is_exchanged_for_a_chit_token(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.exchange(prod_issuer.token())
    body = assert_issued(response)
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["expires_in"] == 900
    assert response.headers["cache-control"] == "no-store"
    header, claims = chit.verify_issued(body["access_token"], "https://db.internal")
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    assert claims["sub"] == "spiffe://example.org/k8s/prod/ns/payments/sa/agent"
    assert claims["client_id"] == claims["sub"]
    assert claims["att"]["kind"] == "kubernetes" and claims["att"]["cluster"] == "prod"
    assert set(claims["att"]["pod"]) == {"name", "uid"}


def test_es256_cluster_with_keys_from_a_file(chit: ChitServer, staging_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit.exchange(staging_issuer.token()))
    _, claims = chit.verify_issued(body["access_token"], "https://db.internal")
    assert claims["sub"] == "spiffe://example.org/k8s/staging/ns/payments/sa/agent"


def test_id_token_type_is_routed_the_same_way(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_issued(chit.exchange(prod_issuer.token(), subject_token_type="urn:ietf:params:oauth:token-type:id_token"))


# --- signatures and algorithms ---------------------------------------------------------


def test_bad_signature_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    head, body, signature = prod_issuer.token().split(".")
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[10] ^= 0x01
    assert_refused(chit.exchange(f"{head}.{body}.{b64url(bytes(flipped))}"))


def test_tampered_claims_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    head, _, signature = prod_issuer.token().split(".")
    claims = prod_issuer.claims(namespace="ops", service_account="orchestrator")
    assert_refused(chit.exchange(f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_casing_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer, alg: str) -> None:
    claims = prod_issuer.claims()
    # An empty signature segment, and one with junk, are both refused.
    assert_refused(chit.exchange(compact({"alg": alg, "kid": prod_issuer.kid}, claims, b"")))
    assert_refused(chit.exchange(compact({"alg": alg, "kid": prod_issuer.kid}, claims, b"x")))


def test_hs256_with_the_public_key_as_secret_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    """RS256 → HS256 confusion: the attacker signs with the (public) PEM as HMAC key."""
    public_pem = prod_issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = resign(
        prod_issuer.token(),
        {"alg": "HS256", "kid": prod_issuer.kid},
        None,
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    assert_refused(chit.exchange(token))
    jwk_secret = json.dumps(prod_issuer.jwk).encode()
    token = resign(
        prod_issuer.token(), {"alg": "HS256", "kid": prod_issuer.kid}, None, lambda d: hmac.new(jwk_secret, d, hashlib.sha256).digest()
    )
    assert_refused(chit.exchange(token))


def test_rs_key_cannot_be_used_with_another_rsa_algorithm(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    token = jwt.encode(prod_issuer.claims(), prod_issuer.private_key, algorithm="PS256", headers={"kid": prod_issuer.kid})
    assert_refused(chit.exchange(token))
    token = jwt.encode(prod_issuer.claims(), prod_issuer.private_key, algorithm="RS512", headers={"kid": prod_issuer.kid})
    assert_refused(chit.exchange(token))


def test_ecdsa_zero_signature_is_refused(chit: ChitServer, staging_issuer: ClusterIssuer) -> None:
    """CVE-2022-21449 ("psychic signatures"): r = s = 0 must never verify."""
    token = staging_issuer.token()
    head, body, _ = token.split(".")
    assert_refused(chit.exchange(f"{head}.{body}.{b64url(bytes(64))}"))
    assert_refused(chit.exchange(f"{head}.{body}.{b64url(bytes(65))}"))


@pytest.mark.parametrize(
    "extra",
    [
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]},
        {"crit": ["exp"]},
        {"b64": False, "crit": ["b64"]},
    ],
    ids=["jwk", "jku", "x5u", "x5c", "crit", "b64"],
)
def test_key_carrying_and_critical_headers_are_refused_even_when_signed(chit: ChitServer, prod_issuer: ClusterIssuer, extra: dict) -> None:
    assert_refused(chit.exchange(prod_issuer.token(headers=extra)))


def test_key_of_another_cluster_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer, staging_issuer: ClusterIssuer) -> None:
    """A staging key (with its own kid) cannot sign for the prod issuer."""
    claims = prod_issuer.claims()
    token = jwt.encode(claims, staging_issuer.private_key, algorithm="ES256", headers={"kid": staging_issuer.kid})
    assert_refused(chit.exchange(token))
    # …nor under the prod kid.
    token = jwt.encode(claims, staging_issuer.private_key, algorithm="ES256", headers={"kid": prod_issuer.kid})
    assert_refused(chit.exchange(token))


@pytest.mark.parametrize(
    "kid",
    ["../../../../etc/passwd", "' OR '1'='1", "x" * 300, "", 42, None, ["a"], {"kid": "x"}],
    ids=["path", "sql", "long", "empty", "number", "null", "list", "object"],
)
def test_kid_injection_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer, kid: object) -> None:
    header = json.dumps({"alg": "RS256", "kid": kid})
    assert_refused(chit.exchange(rs256(prod_issuer, header, json.dumps(prod_issuer.claims()))))


def test_missing_kid_matches_only_an_issuer_with_a_single_key(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    header = json.dumps({"alg": "RS256"})
    assert_issued(chit.exchange(rs256(prod_issuer, header, json.dumps(prod_issuer.claims()))))


# --- claims ----------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "nbf", "kubernetes.io"])
def test_each_missing_claim_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer, claim: str) -> None:
    assert_refused(chit.exchange(prod_issuer.token(**{claim: DROP})))


@pytest.mark.parametrize("part", ["namespace", "pod", "serviceaccount"])
def test_each_missing_kubernetes_claim_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer, part: str) -> None:
    claims = prod_issuer.claims()
    del claims["kubernetes.io"][part]
    assert_refused(chit.exchange(prod_issuer.token(**{"kubernetes.io": claims["kubernetes.io"]})))


def test_expired_token_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    body = assert_refused(chit.exchange(prod_issuer.token(iat=now - 600, nbf=now - 600, exp=now - 1)))
    assert body["error_description"] == "subject_token invalid: token expired"
    body = assert_refused(chit.exchange(prod_issuer.token(iat=now - 86000, nbf=now - 86000, exp=now - 7200)))
    assert body["error_description"] == "subject_token invalid: token expired"


def test_exp_gets_no_leeway(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    assert_refused(chit.exchange(prod_issuer.token(iat=now - 600, nbf=now - 600, exp=now - 5)))


def test_not_yet_valid_token_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    assert_refused(chit.exchange(prod_issuer.token(nbf=now + 120, iat=now, exp=now + 3600)))
    assert_refused(chit.exchange(prod_issuer.token(iat=now + 120, nbf=now, exp=now + 3600)))


def test_small_clock_skew_is_tolerated_on_nbf_and_iat(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    assert_issued(chit.exchange(prod_issuer.token(iat=now + 30, nbf=now + 30, exp=now + 3600)))


def test_over_long_lifetime_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    now = int(time.time())
    assert_refused(chit.exchange(prod_issuer.token(iat=now, nbf=now, exp=now + 86400 + 60)))


@pytest.mark.parametrize("value", ["1700000000", True, None, 1e300, [1]], ids=["string", "bool", "null", "huge", "list"])
def test_malformed_time_claims_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer, value: object) -> None:
    assert_refused(chit.exchange(prod_issuer.token(exp=value)))


def test_wrong_audience_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(aud=["kubernetes.default.svc"])))
    assert_refused(chit.exchange(prod_issuer.token(aud=[])))
    assert_refused(chit.exchange(prod_issuer.token(aud=[7])))


def test_audience_as_a_string_is_accepted(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_issued(chit.exchange(prod_issuer.token(aud="chit")))


def test_wrong_issuer_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(iss="https://prod.k8s.chit.test/")))
    assert_refused(chit.exchange(prod_issuer.token(iss="HTTPS://PROD.K8S.CHIT.TEST")))
    header = json.dumps({"alg": "RS256", "kid": prod_issuer.kid})
    claims = json.dumps(prod_issuer.claims(iss=["https://prod.k8s.chit.test"]))
    assert_refused(chit.exchange(rs256(prod_issuer, header, claims)))


def test_unknown_cluster_is_refused_without_a_fetch_to_its_issuer(chit: ChitServer, documents, prod_issuer: ClusterIssuer) -> None:
    rogue = ClusterIssuer("rogue", documents.url("/rogue"))
    documents.serve("/rogue/.well-known/openid-configuration", {"issuer": rogue.issuer, "jwks_uri": documents.url("/rogue/jwks")})
    documents.serve("/rogue/jwks", rogue.jwks())
    assert_refused(chit.exchange(rogue.token()))
    assert not any(path.startswith("/rogue") for path in documents.hits)


def test_sub_must_match_the_service_account(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(sub="system:serviceaccount:ops:orchestrator")))
    assert_refused(chit.exchange(prod_issuer.token(sub="system:serviceaccount:payments:agent:extra")))


@pytest.mark.parametrize(
    "namespace",
    ["Payments", "payments/../ops", "a" * 64, "pay ments", "payments\n"],
    ids=["uppercase", "path", "long", "space", "newline"],
)
def test_names_that_kubernetes_would_never_issue_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer, namespace: str) -> None:
    assert_refused(chit.exchange(prod_issuer.token(namespace=namespace)))


def test_legacy_secret_token_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    """Secret-based tokens: no exp, no pod binding, claims under kubernetes.io/serviceaccount/."""
    legacy = {
        "iss": prod_issuer.issuer,
        "sub": "system:serviceaccount:payments:agent",
        "aud": ["chit"],
        "kubernetes.io/serviceaccount/namespace": "payments",
        "kubernetes.io/serviceaccount/secret.name": "agent-token-x7k2p",
        "kubernetes.io/serviceaccount/service-account.name": "agent",
        "kubernetes.io/serviceaccount/service-account.uid": "3c3b0c8a-1b8c-4f3e-9a1e-2f5d7c9e0b1a",
    }
    token = jwt.encode(legacy, prod_issuer.private_key, algorithm="RS256", headers={"kid": prod_issuer.kid})
    assert_refused(chit.exchange(token))
    now = int(time.time())
    legacy.update(exp=now + 600, iat=now, nbf=now)
    token = jwt.encode(legacy, prod_issuer.private_key, algorithm="RS256", headers={"kid": prod_issuer.kid})
    body = assert_refused(chit.exchange(token))
    assert "legacy service-account secret tokens are not accepted" in body["error_description"]


def test_token_bound_to_no_pod_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    claims = prod_issuer.claims()
    del claims["kubernetes.io"]["pod"]
    claims["kubernetes.io"]["secret"] = {"name": "agent-token", "uid": "3c3b0c8a-1b8c-4f3e-9a1e-2f5d7c9e0b1a"}
    assert_refused(chit.exchange(prod_issuer.token(**{"kubernetes.io": claims["kubernetes.io"]})))


# --- malformed tokens ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",  # JWE: five segments
        "..",
        "e30.e30.",
        "!!!.@@@.###",
        "e30=.e30=.c2ln",  # padding is not base64url
        compact("[1,2]", {"iss": "x"}),
        compact({"alg": "RS256"}, "[]"),
        compact("not json", {"iss": "x"}),
        compact({"alg": "RS256"}, '{"iss": NaN}'),
        compact({"alg": "RS256"}, '{"exp": ' + "9" * 30 + "}"),
        compact({"alg": "RS256"}, b"\xff\xfe".decode("latin-1")),
        "eyJ" + "A" * 20000 + ".e30.c2ln",
    ],
    ids=["word", "two", "four", "jwe", "dots", "empty-signature", "charset", "padding", "header-array", "claims-array", "header-text", "nan", "huge-int", "latin1", "oversized"],
)
def test_malformed_token_shapes_are_refused(chit: ChitServer, token: str) -> None:
    assert_refused(chit.exchange(token))


def test_duplicate_json_members_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    """A second `sub` (or `alg`) must not silently win over the first, signed or not."""
    header = json.dumps({"alg": "RS256", "kid": prod_issuer.kid})
    claims = json.dumps(prod_issuer.claims())
    assert_issued(chit.exchange(rs256(prod_issuer, header, claims)))  # the control: verifies as is
    duplicated_sub = claims[:-1] + ', "sub": "system:serviceaccount:ops:orchestrator"}'
    duplicated_alg = header[:-1] + ', "alg": "none"}'
    nested = json.dumps(prod_issuer.claims()).replace('"namespace": "payments"', '"namespace": "payments", "namespace": "ops"', 1)
    for token, member in (
        (rs256(prod_issuer, header, duplicated_sub), "sub"),
        (rs256(prod_issuer, duplicated_alg, claims), "alg"),
        (rs256(prod_issuer, header, nested), "namespace"),
    ):
        body = assert_refused(chit.exchange(token))
        assert f"duplicate JSON member '{member}'" in body["error_description"]


def test_typed_tokens_other_than_jwt_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.exchange(prod_issuer.token(headers={"typ": "at+jwt"})))
    assert_refused(chit.exchange(prod_issuer.token(headers={"typ": "JWT", "cty": "JWT"})))
    assert_issued(chit.exchange(prod_issuer.token(headers={"typ": "JWT"})))


def test_a_token_minted_by_chit_is_never_evidence(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    minted = assert_issued(chit.exchange(prod_issuer.token()))["access_token"]
    assert_refused(chit.exchange(minted))
    assert_refused(chit.exchange(minted, subject_token_type="urn:ietf:params:oauth:token-type:access_token"))
    # Even re-labelled as a plain JWT of a trusted cluster, chit's kid gives it away.
    kid = jwt.get_unverified_header(minted)["kid"]
    assert_refused(chit.exchange(prod_issuer.token(headers={"kid": kid})))


def test_a_token_signed_with_chits_own_key_is_refused_as_chits(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    """Defense in depth: whatever its claims say, chit's own kid marks a token as chit's."""
    from chit.server.keys import KeyStore

    key = KeyStore(chit.directory / "keys").signing_key(time.time())
    assert key is not None
    token = jwt.encode(prod_issuer.claims(), key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})
    body = assert_refused(chit.exchange(token))
    assert body["error_description"] == "subject_token invalid: tokens issued by chit are not accepted as evidence"
