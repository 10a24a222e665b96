"""Shared fixtures: one document server, two test cluster issuers, and a chit
server that trusts both (session-scoped: starting chit costs about a second)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.factories import ChitServer, ClusterIssuer, DocumentServer, copy_policy

PROD_ISSUER = "https://prod.k8s.chit.test"
STAGING_ISSUER = "https://staging.k8s.chit.test"

TEST_BINDINGS = {
    "bindings": {
        "kubernetes": {
            "prod": {
                "payments": {
                    "agent": {
                        "scope": ["read:db", "write:db"],
                        "audience": ["https://db.internal", "https://cache.internal"],
                        "ttl": 900,
                    },
                    "short-lived": {"scope": ["read:db"], "audience": ["https://db.internal"], "ttl": 120},
                    "eu-only": {"scope": ["read:db"], "audience": ["https://db.internal"], "regions": ["eu-west-1"]},
                    "no-audience": {"scope": ["read:db"], "audience": []},
                },
                "ops": {"orchestrator": {"scope": ["delegate"], "audience": ["https://db.internal"]}},
            },
            "staging": {"payments": {"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
        }
    }
}


@pytest.fixture(scope="session")
def documents() -> Iterator[DocumentServer]:
    server = DocumentServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prod_issuer(documents: DocumentServer) -> ClusterIssuer:
    """An RS256 issuer whose JWKS chit fetches over HTTP."""
    issuer = ClusterIssuer("prod", PROD_ISSUER, "RS256")
    documents.serve("/prod/openid/v1/jwks", issuer.jwks())
    return issuer


@pytest.fixture(scope="session")
def staging_issuer() -> ClusterIssuer:
    """An ES256 issuer whose JWKS chit reads from a file."""
    return ClusterIssuer("staging", STAGING_ISSUER, "ES256")


def cluster_config(documents: DocumentServer, staging_jwks: Path) -> list[dict]:
    return [
        {
            "name": "prod",
            "issuer": PROD_ISSUER,
            "jwks_uri": documents.url("/prod/openid/v1/jwks"),
            "audiences": ["chit"],
            "region": "us-east-1",
        },
        {"name": "staging", "issuer": STAGING_ISSUER, "jwks_file": str(staging_jwks), "audiences": ["chit"]},
    ]


@pytest.fixture(scope="session")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, staging_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("chit")
    staging_jwks = directory / "staging-jwks.json"
    staging_jwks.write_text(json.dumps(staging_issuer.jwks()))
    policy_dir = copy_policy(directory / "policies", TEST_BINDINGS)
    server = ChitServer(
        directory,
        {
            "trust_domain": "example.org",
            "policy": {"dir": str(policy_dir)},
            "attestors": {"kubernetes": {"clusters": cluster_config(documents, staging_jwks)}},
        },
    ).start()
    yield server
    server.stop()
