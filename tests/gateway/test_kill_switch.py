"""The kill switch: a subject revoked with `chit revoke --subject`, or one token revoked
with `POST /revoke` at chit, is refused by every gateway replica within a second, before
any upstream call; lifting the subject's revocation lets new tokens through again (its
old tokens stay revoked)."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from chit.revocation import MAX_AGE
from tests.factories import ChitServer, run_chit
from tests.gateway.conftest import subject_of
from tests.gateway.servers import GatewayServer, UpstreamStandIn

pytestmark = pytest.mark.timeout(120)
CHAT = "/anthropic/v1/messages"
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def status(gateway: GatewayServer, token: str) -> int:
    return gateway.client.post(CHAT, json=BODY, headers={"x-api-key": token}).status_code


def refused_everywhere_within(replicas: list[GatewayServer], token: str, seconds: float) -> float:
    """How long until every replica refuses `token` (401); fails past `seconds`."""
    started = time.monotonic()
    pending = list(replicas)
    while pending:
        pending = [replica for replica in pending if status(replica, token) != 401]
        elapsed = time.monotonic() - started
        assert elapsed <= seconds, f"still accepted after {elapsed:.2f} s by {[r.url for r in pending]}"
    return time.monotonic() - started


def test_a_revoked_subject_is_refused_by_every_replica_within_a_second(
        gateway: GatewayServer, replica: GatewayServer, upstream: UpstreamStandIn, token_server: ChitServer,
        access_token: Callable[..., str]) -> None:
    token = access_token("revokee")
    assert [status(gateway, token), status(replica, token)] == [200, 200]
    result = run_chit("revoke", "--subject", subject_of("revokee"), "--config", str(token_server.config_path))
    assert result.returncode == 0, result.stderr
    revoked_at, revoked_wall = time.monotonic(), time.time()
    refused_everywhere_within([gateway, replica], token, MAX_AGE)
    assert time.monotonic() - revoked_at <= MAX_AGE + 0.2
    upstream.forget()
    for server in (gateway, replica):
        answer = server.client.post(CHAT, json=BODY, headers={"x-api-key": token})
        assert answer.status_code == 401 and "revoked" in answer.json()["error_description"]
        line = server.audit_for(answer.headers["x-chit-decision-id"])
        assert (line["outcome"], line["subject"]) == ("unauthorized", subject_of("revokee"))
    assert upstream.requests() == []

    result = run_chit("revoke", "--subject", subject_of("revokee"), "--lift", "--config", str(token_server.config_path))
    assert result.returncode == 0, result.stderr
    # Minted once the lift has reached every process of chit (chit.revocation: MAX_AGE), and
    # issued (iat, whole seconds) later than MAX_AGE after the revocation, which revokes those too.
    time.sleep(max(MAX_AGE + 0.1, revoked_wall + MAX_AGE + 1.05 - time.time()))
    fresh = access_token("revokee")
    deadline = time.monotonic() + 2 * MAX_AGE
    while status(gateway, fresh) != 200 or status(replica, fresh) != 200:
        assert time.monotonic() < deadline, "a lifted subject's new token is still refused"
        time.sleep(0.05)
    assert status(gateway, token) == 401  # its old token stays revoked


def test_a_token_revoked_at_chit_is_refused_by_every_replica(gateway: GatewayServer, replica: GatewayServer,
                                                             token_server: ChitServer, access_token: Callable[..., str]) -> None:
    token = access_token("replicated")
    other = access_token("replicated")
    assert [status(gateway, token), status(replica, token)] == [200, 200]
    assert token_server.revoke(token).status_code == 200
    refused_everywhere_within([gateway, replica], token, MAX_AGE)
    assert [status(gateway, other), status(replica, other)] == [200, 200]  # the subject's other token is not revoked
