"""Budgets per identity (the token's `sub`) and route: requests per minute and LLM tokens
per UTC day, read from the provider's usage. Over budget: 429 with `Retry-After`, audited
`limited`, and nothing sent upstream. Budgets hold across replicas (one Redis), reset
(a minute's refill, the next UTC day: the gateway's clock in hand, in process), and
fail closed (503) when the state store is down.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from chit.gateway.app import create_app
from chit.gateway.config import parse_gateway_config
from chit.server.keys import KeyStore
from chit.server.mint import mint_jwt
from tests.factories import ChitServer, RedisServer
from tests.gateway.conftest import subject_of
from tests.gateway.servers import GATEWAY_AUDIENCE, KEYS, GatewayServer, UpstreamStandIn, route

CHAT = "/budget/v1/chat/completions"
DAY = 86400


def chat(max_tokens: int = 40, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, **extra}


def post(gateway: GatewayServer, token: str, body: dict[str, Any]) -> httpx.Response:
    return gateway.client.post(CHAT, json=body, headers={"Authorization": f"Bearer {token}"})


def test_requests_per_minute_trip_across_replicas(gateway: GatewayServer, replica: GatewayServer, upstream: UpstreamStandIn,
                                                  access_token: Callable[..., str]) -> None:
    """Three a minute for one subject, whichever replica they reach; another subject has its own."""
    token = access_token("budgeted")
    answers = [post(server, token, chat(1)).status_code for server in (gateway, replica, gateway)]
    assert answers == [200, 200, 200]
    upstream.forget()
    refused = post(replica, token, chat(1))
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "slow_down"
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # one request's refill: 60 s / 3
    line = replica.audit_for(refused.headers["x-chit-decision-id"])
    assert (line["outcome"], line["subject"], line["route"]) == ("limited", subject_of("budgeted"), "budget")
    assert upstream.requests() == []
    assert post(gateway, access_token("spender"), chat(1)).status_code == 200


def test_tokens_per_day_trip_across_replicas(gateway: GatewayServer, replica: GatewayServer, access_token: Callable[..., str]) -> None:
    """100 tokens a day: a request that starts under the budget may end over it; the next is refused."""
    token = access_token("thrifty")
    first = post(gateway, token, chat(40))  # 10 + 40: 50 used
    assert first.status_code == 200
    assert gateway.audit_for(first.headers["x-chit-decision-id"])["tokens"] == 50
    assert post(replica, token, chat(80)).status_code == 200  # starts at 50, ends at 140
    refused = post(gateway, token, chat(1))
    assert refused.status_code == 429
    assert "tokens per day" in refused.json()["error_description"]
    until_midnight = DAY - time.time() % DAY
    assert abs(int(refused.headers["retry-after"]) - until_midnight) <= 5


def test_a_streamed_answer_is_charged_too(gateway: GatewayServer, access_token: Callable[..., str]) -> None:
    """A streamed chat completion reports usage only when asked: on a budgeted route the
    gateway asks, and charges what the last chunk reports."""
    token = access_token("streamer")
    with gateway.client.stream("POST", CHAT, json=chat(30, stream=True), headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert '"usage"' in text and text.rstrip().endswith("data: [DONE]")
    assert gateway.audit_for(response.headers["x-chit-decision-id"])["tokens"] == 40


# --- in process, with the gateway's clock in hand --------------------------------------------


class InProcessGateway:
    """The gateway app in this process (httpx's ASGI transport), its clock settable, its
    tokens minted by chit's own key at that clock."""

    def __init__(self, directory: Path, token_server: ChitServer, upstream: UpstreamStandIn, state: dict[str, Any], budgets: dict[str, int]):
        (directory / "keys").mkdir(parents=True, exist_ok=True)
        (directory / "keys" / "openai").write_text(KEYS["openai"])
        document = {
            "chit": {"issuer": token_server.url}, "audience": GATEWAY_AUDIENCE, "state": state, "audit": {"sink": "audit.log"},
            "routes": [route("openai", upstream.url, name="budget", budgets=budgets)],
        }
        self.app = create_app(parse_gateway_config(document, "(test)", directory))
        self.gateway = self.app.state.gateway
        self.now = time.time()
        self.gateway.clock = lambda: self.now
        self.token_server = token_server
        self.audit = directory / "audit.log"

    def token(self, service_account: str = "coder") -> str:
        key = KeyStore(self.token_server.directory / "keys").signing_key(time.time())
        assert key is not None
        return mint_jwt(key, issuer=self.token_server.url, subject=subject_of(service_account), audience=(GATEWAY_AUDIENCE,),
                        scope=("llm:openai",), ttl=900, now=self.now, att={"kind": "kubernetes"}).token

    async def post(self, body: dict[str, Any], service_account: str = "coder") -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            return await client.post(CHAT, json=body, headers={"Authorization": f"Bearer {self.token(service_account)}"})

    async def close(self) -> None:
        """What the app's lifespan would close (httpx's ASGI transport does not run it)."""
        await self.gateway.upstreams.close()
        await self.gateway.verifier.keys.close()
        await self.gateway.budgets.state.close()

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


def test_budgets_reset(tmp_path: Path, token_server: ChitServer, upstream: UpstreamStandIn) -> None:
    """A minute refills the request bucket; the next UTC day empties the token count."""
    inproc = InProcessGateway(tmp_path, token_server, upstream, {"backend": "memory"}, {"requests_per_minute": 2, "tokens_per_day": 100})
    inproc.now = (int(time.time()) // DAY + 1) * DAY - 30  # 30 s before midnight (UTC)

    async def scenario() -> None:
        assert (await inproc.post(chat(90))).status_code == 200  # 100 tokens: the day's budget
        refused = await inproc.post(chat(1))
        assert refused.status_code == 429 and "tokens per day" in refused.json()["error_description"]
        assert refused.headers["retry-after"] == "30"
        inproc.now += 31  # the next day: the count starts again; the request bucket has refilled one
        assert (await inproc.post(chat(1))).status_code == 200
        assert (await inproc.post(chat(1))).status_code == 200
        limited = await inproc.post(chat(1))
        assert limited.status_code == 429 and "requests per minute" in limited.json()["error_description"]
        assert limited.headers["retry-after"] == "30"
        inproc.now += 30  # half a minute: one of the two requests is back
        assert (await inproc.post(chat(1))).status_code == 200
        assert (await inproc.post(chat(1))).status_code == 429
        await inproc.close()

    asyncio.run(scenario())
    assert [line["outcome"] for line in inproc.audit_lines()] == [
        "forwarded", "limited", "forwarded", "forwarded", "limited", "forwarded", "limited"]


def test_budgets_fail_closed_when_the_state_store_is_down(tmp_path: Path, token_server: ChitServer, upstream: UpstreamStandIn,
                                                          redis: RedisServer) -> None:
    inproc = InProcessGateway(tmp_path, token_server, upstream, {"backend": "redis", "redis_url": redis.url, "timeout_ms": 200},
                              {"requests_per_minute": 100, "tokens_per_day": 1000})

    async def scenario() -> None:
        assert (await inproc.post(chat(1))).status_code == 200
        redis.kill()
        upstream.forget()
        try:
            inproc.now += 2  # past the revocations' cache: every check needs Redis now
            refused = await inproc.post(chat(1))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"
            assert upstream.requests() == []
        finally:
            redis.start()
        inproc.now += 2
        assert (await inproc.post(chat(1))).status_code == 200  # back without a restart
        await inproc.close()

    asyncio.run(scenario())
    assert [line["outcome"] for line in inproc.audit_lines()] == ["forwarded", "unavailable", "forwarded"]
