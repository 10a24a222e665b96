"""chit's endpoints in process: the Starlette app built from a configuration and driven
through httpx's ASGI transport, without a server process (chit.server.app.Endpoints).
The exchange's outcome is both the response and the audit line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import jwt

from chit.server.app import create_app
from chit.server.config import parse_config
from tests.factories import JWT_TYPE, TOKEN_EXCHANGE, ClusterIssuer, copy_policy

ISSUER = "https://in-process.k8s.chit.test"
BINDINGS = {"bindings": {"kubernetes": {"inproc": {"payments": {"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]}}}}}}


def app_config(directory: Path, cluster: ClusterIssuer) -> Any:
    (directory / "jwks.json").write_text(json.dumps(cluster.jwks()))
    document = {
        "issuer": "http://127.0.0.1:8499",
        "signing": {"keys_dir": "keys"},
        "policy": {"dir": str(copy_policy(directory / "policies", BINDINGS))},
        "attestors": {"kubernetes": {"clusters": [{"name": "inproc", "issuer": ISSUER, "jwks_file": "jwks.json", "audiences": ["chit"]}]},
                      "gcp": {"enabled": False}, "aws_iid": {"enabled": False}},
        "audit": {"sink": "audit.log"},
    }
    return parse_config(document, "(test)", directory)


def test_the_endpoints_answer_in_process(tmp_path: Path) -> None:
    cluster = ClusterIssuer("inproc", ISSUER, "ES256")
    app = create_app(app_config(tmp_path, cluster))
    minted: dict[str, Any] = {}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8499") as client:
            form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": cluster.token()}
            issued = await client.post("/token", data={**form, "scope": "read:db"})
            assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store", issued.text
            keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
            token = issued.json()["access_token"]
            key = jwt.PyJWK(next(k for k in keys if k["kid"] == jwt.get_unverified_header(token)["kid"]))
            claims = jwt.decode(token, key, algorithms=["ES256"], audience="https://db.internal", issuer="http://127.0.0.1:8499")
            assert claims["sub"] == "spiffe://example.org/k8s/inproc/ns/payments/sa/agent" and claims["scope"] == "read:db"
            minted.update(claims)

            refused = await client.post("/token", data={**form, "scope": "admin"})
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"
            assert (await client.post("/token?scope=x", data=form)).json()["error"] == "invalid_request"
            assert (await client.get("/readyz")).json()["checks"] == {"signing_key": True, "policy": True, "state": True}
            discovery = (await client.get("/.well-known/openid-configuration")).json()
            assert discovery["token_endpoint"] == "http://127.0.0.1:8499/token"
        await app.state.exchange.close()

    asyncio.run(scenario())
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(line["outcome"], line["error"], line["client"]) for line in lines] == [
        ("issued", None, "10.1.2.3"), ("denied", "invalid_scope", "10.1.2.3"), ("invalid", "invalid_request", "10.1.2.3")]
    assert lines[0]["granted_scope"] == ["read:db"] and lines[0]["jti"] == minted["jti"]
    assert lines[1]["reasons"] == ["binding matched", "no requested scope in decision.scope"]
