"""Helpers of the OIDC tests: CI issuers with their own keys (discovery and JWKS served
on 127.0.0.1), tokens with the claims each platform documents, and a chit server
trusting them through the presets (package scope)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.factories import DROP, ChitServer, DocumentServer, copy_policy

AUDIENCE = "https://chit.example.test"
DEPLOY = "https://deploy.internal"

# docs/policy/writing.md's examples: the protected branch deploys, anything else reads.
CI_BINDINGS = {
    "bindings": {
        "oidc": {
            "github": {
                "65/74": {"when": {"ref": ["refs/heads/main"], "event_name": ["push", "workflow_dispatch"]},
                          "scope": ["deploy:write", "read"], "audience": [DEPLOY],
                          "otherwise": {"scope": ["read"], "audience": [DEPLOY]}},
            },
            "gitlab": {
                "99/4242": {"when": {"ref_protected": [True], "ref_type": ["branch"]}, "scope": ["deploy:write", "read"], "audience": [DEPLOY],
                            "otherwise": {"scope": ["read"], "audience": [DEPLOY]}},
            },
            "buildkite": {"acme/deploy": {"when": {"build_branch": ["main"]}, "scope": ["deploy:write"], "audience": [DEPLOY]}},
        }
    }
}


class CiIssuer:
    """An OIDC issuer on 127.0.0.1: an RS256 key, its JWKS and discovery document
    (`issuer` exactly as its tokens' `iss`), and tokens with `claims`."""

    def __init__(self, documents: DocumentServer, name: str, claims: dict[str, Any]):
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"{name}-{uuid.uuid4().hex[:8]}"
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        self.jwk = jwk
        self.issuer = documents.url(f"/{name}")
        self.jwks_uri = documents.serve(f"/{name}/jwks", {"keys": [jwk]})
        documents.serve(f"/{name}/.well-known/openid-configuration", {"issuer": self.issuer, "jwks_uri": self.jwks_uri})
        self.base_claims = claims

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 300, "jti": str(uuid.uuid4()),
                  **self.base_claims}
        for key, value in overrides.items():
            if value is DROP:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def token(self, *, key: Any = None, algorithm: str = "RS256", headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        return jwt.encode(self.claims(**overrides), key if key is not None else self.private_key, algorithm=algorithm,
                          headers={"kid": self.kid, "typ": "JWT", **(headers or {})})


# The claims each platform's documentation shows (ids as the JSON type it writes).
GITHUB_CLAIMS = {
    "sub": "repo:octo-org/octo-repo:ref:refs/heads/main", "repository": "octo-org/octo-repo", "repository_id": "74",
    "repository_owner": "octo-org", "repository_owner_id": "65", "repository_visibility": "private", "ref": "refs/heads/main",
    "ref_type": "branch", "sha": "e4f8a1c2d3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8", "event_name": "push", "actor": "octocat", "actor_id": "12",
    "workflow": "deploy", "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
    "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main", "runner_environment": "github-hosted",
    "run_id": "9001", "run_number": "10", "run_attempt": "1", "head_ref": "", "base_ref": "",
}
GITLAB_CLAIMS = {
    "sub": "project_path:acme/api:ref_type:branch:ref:main", "namespace_id": "99", "namespace_path": "acme", "project_id": "4242",
    "project_path": "acme/api", "user_id": "184239", "user_login": "dev", "pipeline_id": "1519139981", "pipeline_source": "push",
    "job_id": "8222997048", "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main", "ref_protected": "true",
    "runner_id": 12270835, "runner_environment": "gitlab-hosted", "sha": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
    "groups_direct": ["acme"],
}
BUILDKITE_CLAIMS = {
    "sub": "organization:acme:pipeline:deploy:ref:refs/heads/main:commit:b5ffe3aeea51cec6c41aef16e45ee6bce47d8810:step:",
    "organization_slug": "acme", "pipeline_slug": "deploy", "build_number": 5, "build_branch": "main", "build_tag": None,
    "build_commit": "b5ffe3aeea51cec6c41aef16e45ee6bce47d8810", "step_key": None, "job_id": "01945ecf-80f0-41e8-9b83-a2970a9305a1",
    "agent_id": "01945ecf-8bcf-40a6-9d70-a765db9a0928", "build_source": "ui", "runner_environment": "buildkite-hosted",
}


@pytest.fixture(scope="package")
def github(documents: DocumentServer) -> CiIssuer:
    return CiIssuer(documents, "github-actions", GITHUB_CLAIMS)


@pytest.fixture(scope="package")
def gitlab(documents: DocumentServer) -> CiIssuer:
    return CiIssuer(documents, "gitlab", GITLAB_CLAIMS)


@pytest.fixture(scope="package")
def buildkite(documents: DocumentServer) -> CiIssuer:
    return CiIssuer(documents, "buildkite", BUILDKITE_CLAIMS)


def oidc_config(github: CiIssuer, gitlab: CiIssuer, buildkite: CiIssuer) -> dict[str, Any]:
    """The three presets, each pointed at its stand-in (keys by discovery, as the presets default to)."""
    return {
        "issuers": [
            {"name": "github", "preset": "github", "issuer": github.issuer, "audiences": [AUDIENCE]},
            {"name": "gitlab", "preset": "gitlab", "issuer": gitlab.issuer, "audiences": [AUDIENCE]},
            {"name": "buildkite", "preset": "buildkite", "issuer": buildkite.issuer, "audiences": [AUDIENCE],
             "required_claims": {"organization_slug": ["acme"]}},
        ]
    }


@pytest.fixture(scope="package")
def ci_chit(tmp_path_factory: pytest.TempPathFactory, github: CiIssuer, gitlab: CiIssuer, buildkite: CiIssuer) -> Iterator[ChitServer]:
    """chit with the three CI presets and the shipped policy (with policies/chit/oidc.rego)."""
    directory = tmp_path_factory.mktemp("ci-chit")
    config = {"policy": {"dir": str(copy_policy(directory / "policies", CI_BINDINGS))},
              "attestors": {"oidc": oidc_config(github, gitlab, buildkite)}}
    server = ChitServer(directory, config).start()
    yield server
    server.stop()
