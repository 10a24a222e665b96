"""Tokens for relying parties that accept RS256 only (LLM providers): key series per
algorithm (`signing.algorithms`), rotated and retired apart, and the algorithm and
lifetime cap chosen per audience (`tokens.audiences`), in process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from chit.server.app import create_app
from chit.server.config import ConfigError, parse_config
from chit.server.keys import KeySeries, KeyStore, describe, ensure_signing_keys, rotate
from tests.factories import JWT_TYPE, TOKEN_EXCHANGE, ClusterIssuer, copy_policy

ISSUER = "https://series.k8s.chit.test"
CLAUDE = "https://api.anthropic.com"
DB = "https://db.internal"
BINDINGS = {"bindings": {"kubernetes": {"series": {"payments": {"agent": {"scope": ["read:db"], "audience": [DB, CLAUDE, "https://short.example"]}}}}}}
SERIES = KeySeries(("ES256", "RS256"))


def config_document(directory: Path, cluster: ClusterIssuer, **overrides: Any) -> dict[str, Any]:
    (directory / "jwks.json").write_text(json.dumps(cluster.jwks()))
    return {
        "issuer": "http://127.0.0.1:8499",
        "signing": {"keys_dir": "keys", "algorithms": ["ES256", "RS256"]},
        "tokens": {"audiences": {CLAUDE: {"algorithm": "RS256"}, "https://short.example": {"ttl_seconds": 120}}},
        "policy": {"dir": str(copy_policy(directory / "policies", BINDINGS))},
        "attestors": {"kubernetes": {"clusters": [{"name": "series", "issuer": ISSUER, "jwks_file": "jwks.json", "audiences": ["chit"]}]},
                      "gcp": {"enabled": False}, "aws_iid": {"enabled": False}},
        "audit": {"sink": "audit.log"},
        **overrides,
    }


def test_each_audience_gets_its_algorithm_and_cap(tmp_path: Path) -> None:
    cluster = ClusterIssuer("series", ISSUER, "ES256")
    app = create_app(parse_config(config_document(tmp_path, cluster), "(test)", tmp_path))
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8499") as client:
            form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": cluster.token(),
                    "requested_token_type": JWT_TYPE}
            for audience in (CLAUDE, DB, "https://short.example"):
                results[audience] = (await client.post("/token", data={**form, "audience": audience})).json()
            results["mixed"] = (await client.post("/token", data={**form, "audience": [CLAUDE, DB]})).json()
            results["jwks"] = (await client.get("/.well-known/jwks.json")).json()
            results["discovery"] = (await client.get("/.well-known/openid-configuration")).json()
        await app.state.exchange.close()

    asyncio.run(scenario())
    keys = {k["kid"]: k for k in results["jwks"]["keys"]}
    assert sorted(k["alg"] for k in keys.values()) == ["ES256", "RS256"]
    assert results["discovery"]["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    for audience, algorithm in ((CLAUDE, "RS256"), (DB, "ES256")):
        token = results[audience]["access_token"]
        header = jwt.get_unverified_header(token)
        assert header["alg"] == algorithm and header["typ"] == "JWT" and keys[header["kid"]]["alg"] == algorithm
        claims = jwt.decode(token, jwt.PyJWK(keys[header["kid"]]), algorithms=[algorithm], audience=audience, issuer="http://127.0.0.1:8499",
                            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]})
        assert claims["sub"] == "spiffe://example.org/k8s/series/ns/payments/sa/agent" and claims["exp"] - claims["iat"] == 900
    assert results["https://short.example"]["expires_in"] == 120
    # One token, one signature: audiences signed with different algorithms are refused together.
    assert results["mixed"]["error"] == "invalid_target" and "access_token" not in results["mixed"]
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [line["granted_audience"] for line in lines if line["outcome"] == "issued"] == [[CLAUDE], [DB], ["https://short.example"]]


@pytest.mark.parametrize("document, message", [
    ({"signing": {"algorithm": "ES256", "algorithms": ["RS256"]}}, "signing.algorithms must include signing.algorithm"),
    ({"signing": {"algorithms": ["ES256", "ES256"]}}, "lists an algorithm twice"),
    ({"tokens": {"audiences": {CLAUDE: {"algorithm": "RS256"}}}}, "has no key series: add it to signing.algorithms"),
    ({"tokens": {"audiences": {CLAUDE: {"algorithm": "HS256"}}}}, "tokens.audiences"),
    ({"tokens": {"audiences": {CLAUDE: {"ttl_seconds": 901}}}}, "tokens.audiences"),
])
def test_configuration_errors_name_the_key(tmp_path: Path, document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"issuer": "https://chit.example.org", **document}, "chit.yaml", tmp_path)


def test_every_series_gets_its_first_key_and_rotates_apart(tmp_path: Path) -> None:
    ensure_signing_keys(tmp_path, SERIES)
    store = KeyStore(tmp_path, SERIES)
    now = time.time()
    es, rs = store.signing_key(now, "ES256"), store.signing_key(now, "RS256")
    assert es is not None and rs is not None and (es.algorithm, rs.algorithm) == ("ES256", "RS256")
    assert store.signing_key(now) is es  # the default series

    new_rs = rotate(tmp_path, "RS256", 300, now=now, series=SERIES)
    store.reload(force=True)
    assert new_rs.activates_at == int(now) + 300
    assert {k.kid for k in store.published(now)} == {es.kid, rs.kid, new_rs.kid}  # the next key before it signs
    later = now + 300
    assert store.signing_key(later, "RS256").kid == new_rs.kid and store.signing_key(later, "ES256").kid == es.kid
    # The ES256 key is not superseded by an RS256 one; the old RS256 key retires after 900 s.
    assert {k.kid for k in store.published(later + 900)} == {es.kid, new_rs.kid}
    states = {row["kid"]: row["state"] for row in describe(tmp_path, later + 900, SERIES)}
    assert states == {es.kid: "signing", new_rs.kid: "signing", rs.kid: "retired"}


def test_without_series_a_new_type_supersedes_the_old(tmp_path: Path) -> None:
    """One algorithm configured: changing signing.algorithm and rotating replaces the key type."""
    ensure_signing_keys(tmp_path, KeySeries(("ES256",)))
    old = KeyStore(tmp_path).keys[0]
    now = time.time()
    rotate(tmp_path, "RS256", 0, now=now, series=KeySeries(("RS256",)))
    store = KeyStore(tmp_path, KeySeries(("RS256",)))
    assert store.signing_key(now + 1).algorithm == "RS256"  # a rotation never activates before its predecessor
    assert old.kid not in {k.kid for k in store.published(now + 901)}
