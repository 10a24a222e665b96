"""The upstream key never leaves the gateway, and the chit token never reaches a log.

An upstream that echoes the key it received (the stand-in's model `echo-key`: in a
response header and in the body, split across two chunks when streamed) gets it
redacted, for every provider, streamed or not. Then every response header and body
the client got, every log line, every audit line and /metrics are searched for each
provider key, and the logs and audit lines for the chit token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import httpx
import pytest

from tests.gateway.servers import KEYS, GatewayServer

ECHO = {
    "openai": ("/openai/v1/chat/completions", "authorization", "Bearer {token}",
               {"model": "echo-key", "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic": ("/anthropic/v1/messages", "x-api-key", "{token}",
                  {"model": "echo-key", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    "gemini": ("/gemini/v1beta/models/echo-key:{method}", "x-goog-api-key", "{token}", {"contents": []}),
}


def echo(gateway: GatewayServer, provider: str, token: str, stream: bool) -> httpx.Response:
    path, header, value, body = ECHO[provider]
    if provider == "gemini":
        path = path.format(method="streamGenerateContent?alt=sse" if stream else "generateContent")
    elif stream:
        body = {**body, "stream": True}
    response = gateway.client.post(path, json=body, headers={header: value.format(token=token)})
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", sorted(ECHO))
def test_an_echoed_key_is_redacted(provider: str, stream: bool, gateway: GatewayServer, access_token: Callable[..., str]) -> None:
    response = echo(gateway, provider, access_token("leaker"), stream)
    everything = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    assert KEYS[provider] not in everything
    assert "[REDACTED]" in response.text
    if not stream:
        assert response.headers["x-echo-key"] == "[REDACTED]"


def test_no_key_and_no_token_anywhere(gateway: GatewayServer, replica: GatewayServer, access_token: Callable[..., str]) -> None:
    """After every other test of the package has run through these gateways (this module
    runs after the SDKs', access, budget and streaming tests: pytest's order)."""
    token = access_token("leaker")
    answers = [echo(gateway, provider, token, stream) for provider in ECHO for stream in (False, True)]
    metrics = gateway.client.get("/metrics").text + replica.client.get("/metrics").text
    assert "chit_gateway_requests_total" in metrics
    client_side = metrics + "".join(a.text + str(a.headers.multi_items()) for a in answers)
    server_side = ""
    for server in (gateway, replica):
        for name in ("gateway.log", "stdout.log", "audit.log"):
            path = Path(server.directory) / name
            server_side += path.read_text(errors="replace") if path.exists() else ""
    assert '"route":"openai"' in server_side and '"route":"gemini"' in server_side  # the audit lines are there
    for key in KEYS.values():
        assert key not in client_side
        assert key not in server_side
    assert token not in server_side
    assert token.split(".")[2] not in server_side  # not even its signature
