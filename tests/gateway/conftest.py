"""The gateway's fixtures, shared by its test modules (package-scoped: each process starts once):
a Redis both chit and the gateway use, a chit token server whose policy grants the
agents below tokens for the gateway, the providers' stand-in, and `chit gateway` with
a route to each provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import cluster_config
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, RedisServer, assert_issued, copy_policy
from tests.gateway.servers import GATEWAY_AUDIENCE, KEYS, GatewayServer, UpstreamStandIn, route

NAMESPACE = "agents"
LLM_SCOPES = ["llm:openai", "llm:anthropic", "llm:gemini"]
# Service accounts of the namespace: each test that counts or revokes has its own subject.
AGENTS = {
    "coder": {"scope": LLM_SCOPES, "audience": [GATEWAY_AUDIENCE]},
    "reader": {"scope": ["docs:read"], "audience": [GATEWAY_AUDIENCE]},
    "elsewhere": {"scope": LLM_SCOPES, "audience": ["https://other.internal"]},
    **{name: {"scope": LLM_SCOPES, "audience": [GATEWAY_AUDIENCE]}
       for name in ("budgeted", "spender", "thrifty", "revokee", "revoked-token", "replicated", "leaker", "streamer", "rotator")},
}


def subject_of(service_account: str) -> str:
    return f"spiffe://example.org/k8s/prod/ns/{NAMESPACE}/sa/{service_account}"


@pytest.fixture(scope="package")
def gateway_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("gateway-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def token_server(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer,
                 gateway_redis: RedisServer) -> Iterator[ChitServer]:
    """chit, minting the agents' tokens for the gateway; its state in the gateway's Redis."""
    directory = tmp_path_factory.mktemp("gateway-chit")
    policy = copy_policy(directory / "policies", {"bindings": {"kubernetes": {"prod": {NAMESPACE: AGENTS}}}})
    server = ChitServer(directory, {
        "trust_domain": "example.org",
        "policy": {"dir": str(policy)},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
        "state": {"backend": "redis", "redis_url": gateway_redis.url},
    }).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def access_token(token_server: ChitServer, prod_issuer: ClusterIssuer) -> Callable[..., str]:
    """A chit access token of an agent (a service account of AGENTS), by a real exchange."""

    def exchange(service_account: str = "coder", **fields: str) -> str:
        response = token_server.exchange(prod_issuer.token(NAMESPACE, service_account), **fields)
        return assert_issued(response)["access_token"]

    return exchange


@pytest.fixture(scope="package")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamStandIn]:
    server = UpstreamStandIn(tmp_path_factory.mktemp("upstream"), KEYS)
    yield server
    server.stop()


def gateway_routes(upstream: UpstreamStandIn) -> list[dict]:
    return [
        route("openai", upstream.url),
        route("anthropic", upstream.url),
        route("gemini", upstream.url),
        # One subject's budgets: 3 requests a minute, 100 LLM tokens a day.
        route("openai", upstream.url, name="budget", budgets={"requests_per_minute": 3, "tokens_per_day": 100}),
    ]


@pytest.fixture(scope="package")
def gateway(tmp_path_factory: pytest.TempPathFactory, token_server: ChitServer, upstream: UpstreamStandIn,
            gateway_redis: RedisServer) -> Iterator[GatewayServer]:
    server = GatewayServer(tmp_path_factory.mktemp("gateway"), token_server.url, gateway_routes(upstream),
                           state={"backend": "redis", "redis_url": gateway_redis.url}).start()
    yield server
    server.stop()


def sse_data(text: str) -> list[dict]:
    """The JSON objects of an SSE body's data lines."""
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip() != "[DONE]"]


@pytest.fixture(scope="package")
def replica(tmp_path_factory: pytest.TempPathFactory, token_server: ChitServer, upstream: UpstreamStandIn,
            gateway_redis: RedisServer) -> Iterator[GatewayServer]:
    """A second gateway process with the same configuration and Redis: another replica."""
    server = GatewayServer(tmp_path_factory.mktemp("gateway-replica"), token_server.url, gateway_routes(upstream),
                           state={"backend": "redis", "redis_url": gateway_redis.url}).start()
    yield server
    server.stop()
