"""One chit that LLM providers trust (RS256 tokens for their audiences, revocations in
Redis), the pod of a cluster it verifies, and a stand-in per provider that trusts it
through discovery."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import cluster_config
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, RedisServer, copy_policy
from tests.providers.standins import AnthropicStandIn, GoogleStandIn, OpenAIStandIn, Trust

ANTHROPIC = "https://api.anthropic.com"
OPENAI = "https://api.openai.com/v1"
GOOGLE = "https://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/chit/providers/chit"
PROVIDERS = [ANTHROPIC, OPENAI, GOOGLE]
SUBJECT_PREFIX = "spiffe://example.org/k8s/prod/ns/payments/sa/"
AGENT = SUBJECT_PREFIX + "agent"

LLM_BINDINGS = {
    "bindings": {
        "kubernetes": {
            "prod": {
                "payments": {
                    # Ordinary bindings: a provider's audience is granted like any other.
                    "agent": {"audience": PROVIDERS, "ttl": 900},
                    "claude-only": {"audience": [ANTHROPIC]},
                    "revocable": {"audience": PROVIDERS},
                    "db-reader": {"scope": ["read:db"], "audience": ["https://db.internal"]},
                }
            }
        }
    }
}


def llm_chit_config(documents: DocumentServer, policy_dir: Path, **extra: object) -> dict:
    return {
        "trust_domain": "example.org",
        "policy": {"dir": str(policy_dir)},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
        "signing": {"keys_dir": "keys", "algorithms": ["ES256", "RS256"]},
        "tokens": {"audiences": {audience: {"algorithm": "RS256"} for audience in PROVIDERS}},
        **extra,
    }


@pytest.fixture(scope="session")
def llm_chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, redis_server: RedisServer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("llm-chit")
    config = llm_chit_config(documents, copy_policy(directory / "policies", LLM_BINDINGS), state={"backend": "redis", "redis_url": redis_server.url})
    server = ChitServer(directory, config).start()
    yield server
    server.stop()


def trust(chit: ChitServer, audience: str, **options: object) -> Trust:
    """The provider-side registration: chit's issuer URL, the audience, a rule on `sub`."""
    return Trust(issuer=chit.url, audience=audience, subject_matches=lambda sub: sub.startswith(SUBJECT_PREFIX), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def anthropic_api(llm_chit: ChitServer) -> Iterator[AnthropicStandIn]:
    stand_in = AnthropicStandIn(trust(llm_chit, ANTHROPIC, max_lifetime=900))
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def openai_api(llm_chit: ChitServer) -> Iterator[OpenAIStandIn]:
    stand_in = OpenAIStandIn(trust(llm_chit, OPENAI))
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def google_api(llm_chit: ChitServer) -> Iterator[GoogleStandIn]:
    stand_in = GoogleStandIn(trust(llm_chit, GOOGLE, algorithms=("RS256", "ES256"), max_lifetime=86400))
    yield stand_in
    stand_in.stop()


@pytest.fixture
def pod(tmp_path: Path, prod_issuer: ClusterIssuer):
    """A pod's projected service-account token file (audience chit), for a service account."""

    def project(service_account: str = "agent") -> Path:
        path = tmp_path / f"{service_account}.token"
        path.write_text(prod_issuer.token(service_account=service_account))
        return path

    return project
