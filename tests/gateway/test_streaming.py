"""Server-sent events pass through as they arrive, never buffered whole: each provider's
stream reaches the client event by event, as far apart as the upstream sent them, and
its usage is still counted."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from tests.gateway.servers import GatewayServer
from tests.gateway.upstreams import INPUT_TOKENS, STREAM_EVENTS

DELAY = 0.2  # between the stand-in's events (tests/gateway/servers.py UpstreamStandIn)

STREAMS = {
    "openai": ("/openai/v1/chat/completions", {"authorization": "Bearer {token}"},
               {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": 12}),
    "anthropic": ("/anthropic/v1/messages", {"x-api-key": "{token}"},
                  {"model": "claude-sonnet-4-5", "max_tokens": 12, "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    "gemini": ("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"x-goog-api-key": "{token}"},
               {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 12}}),
}


@pytest.mark.parametrize("provider", sorted(STREAMS))
def test_events_arrive_as_the_upstream_sends_them(provider: str, gateway: GatewayServer, access_token: Callable[..., str]) -> None:
    path, headers, body = STREAMS[provider]
    token = access_token("streamer")
    arrivals: list[float] = []
    started = time.monotonic()
    with gateway.client.stream("POST", path, json=body, headers={k: v.format(token=token) for k, v in headers.items()}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= STREAM_EVENTS
    # The first event is here long before the last was sent: nothing waited for the whole answer.
    assert arrivals[0] < DELAY * 2, arrivals
    assert arrivals[-1] - arrivals[0] >= DELAY * (STREAM_EVENTS - 1) * 0.8, arrivals
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert sum(gap >= DELAY * 0.5 for gap in gaps) >= STREAM_EVENTS - 1, gaps
    assert gateway.audit_for(response.headers["x-chit-decision-id"])["tokens"] == INPUT_TOKENS + 12
