"""Introspection (RFC 7662) and revocation by the holder (RFC 7009) on one chit
server: only a chit:introspect token for chit's issuer may introspect; a token
is active only while it is chit's, unexpired and not revoked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import TEST_BINDINGS, cluster_config
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, assert_issued, compact, copy_policy, run_chit

DB = "https://db.internal"


def bindings(issuer: str) -> dict:
    data = json.loads(json.dumps(TEST_BINDINGS))
    data["bindings"]["kubernetes"]["prod"]["ops"].update(
        {
            "introspector": {"scope": ["chit:introspect"], "audience": [issuer]},
            "wrong-audience": {"scope": ["chit:introspect"], "audience": [DB]},
        }
    )
    return data


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("introspection")
    policy_dir = copy_policy(directory / "policies")
    server = ChitServer(
        directory,
        {"policy": {"dir": str(policy_dir)}, "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}}},
    )
    (policy_dir / "data.json").write_text(json.dumps(bindings(server.url)))
    yield server.start()
    server.stop()


def token_for(chit: ChitServer, issuer: ClusterIssuer, namespace: str = "payments", service_account: str = "agent", **fields: str) -> str:
    return assert_issued(chit.exchange(issuer.token(namespace, service_account), **fields))["access_token"]


@pytest.fixture(scope="module")
def introspector(chit: ChitServer, prod_issuer: ClusterIssuer) -> str:
    return token_for(chit, prod_issuer, "ops", "introspector", audience=chit.url)


def sign_with_chits_key(chit: ChitServer, claims: dict) -> str:
    """A token signed with chit's own current key (to build expired or odd tokens)."""
    key_file = sorted((chit.directory / "keys").glob("signing-*.pem"))[-1]
    private_key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    kid = chit.jwks()["keys"][-1]["kid"]
    return jwt.encode(claims, private_key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


# --- authentication -----------------------------------------------------------------------


def test_introspection_without_a_bearer_token_is_401_with_a_challenge(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    token = token_for(chit, prod_issuer)
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        response = chit.client.post("/introspect", data={"token": token}, headers=headers)
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"] == 'Bearer realm="chit"'
        assert "active" not in response.json()


def test_introspection_needs_the_introspect_scope_for_chits_issuer(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    token = token_for(chit, prod_issuer)
    callers = {
        "no chit:introspect scope": token,
        "audience is not chit": token_for(chit, prod_issuer, "ops", "wrong-audience", audience=DB),
        "not a token": "garbage",
        "not chit's token": prod_issuer.token("ops", "introspector"),
    }
    for why, caller in callers.items():
        response = chit.introspect(token, bearer=caller)
        assert response.status_code == 401, why
        assert response.json()["error"] == "invalid_client", why
        assert 'error="invalid_token"' in response.headers["www-authenticate"], why


def test_a_revoked_introspector_can_no_longer_introspect(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    caller = token_for(chit, prod_issuer, "ops", "introspector", audience=chit.url)
    token = token_for(chit, prod_issuer)
    assert chit.is_active(token, caller)
    assert chit.revoke(caller).status_code == 200
    assert chit.introspect(token, bearer=caller).status_code == 401


# --- the answer -----------------------------------------------------------------------------


def test_an_active_token_is_described_per_rfc_7662(chit: ChitServer, prod_issuer: ClusterIssuer, introspector: str) -> None:
    token = token_for(chit, prod_issuer, scope="read:db")
    response = chit.introspect(token, bearer=introspector)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert body["active"] is True and body["token_type"] == "Bearer"
    for name in ("scope", "client_id", "exp", "iat", "nbf", "sub", "aud", "iss", "jti", "att"):
        assert body[name] == claims[name], name
    assert body["scope"] == "read:db" and body["iss"] == chit.url


def test_inactive_tokens_say_only_active_false(chit: ChitServer, prod_issuer: ClusterIssuer, introspector: str) -> None:
    now = int(time.time())
    claims = {"iss": chit.url, "sub": "spiffe://example.org/k8s/prod/ns/payments/sa/agent", "aud": DB, "jti": "x", "scope": "read:db"}
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    kid = chit.jwks()["keys"][-1]["kid"]
    tokens = {
        "expired": sign_with_chits_key(chit, {**claims, "iat": now - 1000, "nbf": now - 1000, "exp": now - 100}),
        "another issuer": sign_with_chits_key(chit, {**claims, "iss": "https://other.example", "iat": now, "exp": now + 300}),
        "signed by a foreign key with chit's kid": jwt.encode({**claims, "iat": now, "exp": now + 300}, foreign_key, algorithm="ES256", headers={"kid": kid}),
        "unsigned": jwt.encode({**claims, "iat": now, "exp": now + 300}, None, algorithm="none", headers={"kid": kid}),
        "a cluster's token": prod_issuer.token(),
        "malformed": compact({"alg": "ES256", "kid": kid}, "not json"),
        "garbage": "garbage",
    }
    for why, token in tokens.items():
        response = chit.introspect(token, bearer=introspector)
        assert response.status_code == 200, why
        assert response.json() == {"active": False}, why


def test_introspection_without_a_token_is_400(chit: ChitServer, introspector: str) -> None:
    response = chit.introspect(None, bearer=introspector)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


# --- revocation by the holder ---------------------------------------------------------------


def test_a_revoked_token_is_inactive_and_others_of_its_subject_are_not(chit: ChitServer, prod_issuer: ClusterIssuer, introspector: str) -> None:
    revoked, other = token_for(chit, prod_issuer), token_for(chit, prod_issuer)
    response = chit.revoke(revoked, token_type_hint="access_token")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert not chit.is_active(revoked, introspector)
    assert chit.is_active(other, introspector)
    assert chit.revoke(revoked).status_code == 200  # again: still 200


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 5000])
def test_revoking_garbage_is_200(chit: ChitServer, token: str) -> None:
    response = chit.revoke(token)
    assert response.status_code == 200 and response.content == b""


def test_revocation_without_a_token_is_400(chit: ChitServer) -> None:
    for response in (chit.revoke(None), chit.revoke(None, token_type_hint="access_token"), chit.client.post("/revoke", json={"token": "x"})):
        assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_token_in_the_query_string_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer, introspector: str) -> None:
    token = token_for(chit, prod_issuer)
    assert chit.client.post("/revoke", params={"token": token}).status_code == 400
    assert chit.is_active(token, introspector)


def test_discovery_names_both_endpoints(chit: ChitServer) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        metadata = chit.client.get(path).json()
        assert metadata["introspection_endpoint"] == f"{chit.url}/introspect"
        assert metadata["revocation_endpoint"] == f"{chit.url}/revoke"
        assert metadata["revocation_endpoint_auth_methods_supported"] == ["none"]


def test_chit_revoke_with_the_memory_store_says_it_cannot_reach_the_server(chit: ChitServer) -> None:
    result = run_chit("revoke", "--subject", "spiffe://example.org/k8s/prod/ns/payments/sa/agent", "--config", str(chit.config_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "state.backend is memory" in result.stderr and "nothing was revoked" in result.stderr


def test_one_worker_serves_its_own_metrics(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    before = chit.client.get("/metrics").text
    token_for(chit, prod_issuer)
    after = chit.client.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    issued = 'chit_exchanges_total{error="none",kind="kubernetes",outcome="issued"}'
    count = lambda text: float(next(line.split()[-1] for line in text.splitlines() if line.startswith(issued)))  # noqa: E731
    assert count(after.text) == (count(before) if issued in before else 0.0) + 1
