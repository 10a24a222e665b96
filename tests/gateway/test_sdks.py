"""The providers' official SDKs, unmodified, through the gateway: each is pointed at its
route and given the agent's chit token where the API key would go; the stand-in
behind the gateway accepts only the provider key the gateway injects.

- `openai`: `base_url` + `api_key` (Chat Completions, streamed and not; Responses);
- `anthropic`: `base_url` + `api_key` (sent as `x-api-key`) or `auth_token`
  (sent as `Authorization: Bearer`), streamed and not;
- `google-genai`: `http_options.base_url` + `api_key` (sent as `x-goog-api-key`),
  `generate_content` and `generate_content_stream`.

The agent holds no provider key at all; the audit line of each call names the
agent and the tokens the provider reported.
"""

from __future__ import annotations

import time
from typing import Callable

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.gateway.conftest import subject_of
from tests.gateway.servers import KEYS, GatewayServer, UpstreamStandIn
from tests.gateway.upstreams import INPUT_TOKENS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def audit_line(gateway: GatewayServer) -> Callable[[str], dict]:
    """The audit line of the test's call on `route`: the first written after the test
    began (a call is audited once its answer has been sent)."""
    before = len(gateway.audit_lines())

    def line(route: str) -> dict:
        deadline = time.time() + 3
        while not (new := [line for line in gateway.audit_lines()[before:] if line["route"] == route]):
            assert time.time() < deadline, gateway.log()
            time.sleep(0.02)
        return new[0]

    return line


def injected(upstream: UpstreamStandIn, header: str) -> list[str]:
    """The values of `header` in the last request the stand-in received."""
    return [value for name, value in upstream.requests()[-1]["headers"] if name == header]


def test_openai_chat_completion_with_a_chit_token(gateway: GatewayServer, upstream: UpstreamStandIn,
                                                 access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=access_token(), max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=7)
    assert completion.choices[0].message.content == "hello from the stand-in"
    assert completion.usage is not None and completion.usage.total_tokens == INPUT_TOKENS + 7
    assert injected(upstream, "authorization") == [f"Bearer {KEYS['openai']}"]  # the chit token never left the gateway
    line = audit_line("openai")
    assert (line["outcome"], line["subject"], line["upstream_status"], line["tokens"], line["model"]) == (
        "forwarded", subject_of("coder"), 200, INPUT_TOKENS + 7, "gpt-4o-mini")


def test_openai_streamed_chat_completion(gateway: GatewayServer, access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=access_token(), max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True}, max_tokens=9)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello from the stand-in"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == INPUT_TOKENS + 9
    assert audit_line("openai")["tokens"] == INPUT_TOKENS + 9


def test_openai_responses_api(gateway: GatewayServer, access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=access_token(), max_retries=0)
    response = client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=16)
    assert response.output_text == "hello"
    assert audit_line("openai")["tokens"] == INPUT_TOKENS + 16


@pytest.mark.parametrize("credential", ["api_key", "auth_token"])
def test_anthropic_messages_with_a_chit_token(credential: str, gateway: GatewayServer, upstream: UpstreamStandIn,
                                              access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", max_retries=0, **{credential: access_token()})
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=11, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "hello from the stand-in"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (INPUT_TOKENS, 11)
    assert injected(upstream, "x-api-key") == [KEYS["anthropic"]]
    assert injected(upstream, "authorization") == []
    assert audit_line("anthropic")["tokens"] == INPUT_TOKENS + 11


def test_anthropic_streamed_message(gateway: GatewayServer, access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key=access_token(), max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=13, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "hello from the stand-in"
    assert final.usage.output_tokens == 13
    # message_start's input tokens and message_delta's cumulative output tokens.
    assert audit_line("anthropic")["tokens"] == INPUT_TOKENS + 13


def test_gemini_generate_content_with_a_chit_token(gateway: GatewayServer, upstream: UpstreamStandIn,
                                                   access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = genai.Client(api_key=access_token(), http_options=genai_types.HttpOptions(base_url=f"{gateway.url}/gemini"))
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="hi",
                                            config=genai_types.GenerateContentConfig(max_output_tokens=5))
    assert answer.text == "hello from the stand-in"
    assert injected(upstream, "x-goog-api-key") == [KEYS["gemini"]]
    line = audit_line("gemini")
    assert (line["tokens"], line["model"]) == (INPUT_TOKENS + 5, "gemini-2.5-flash")


def test_gemini_streamed_content(gateway: GatewayServer, access_token: Callable[..., str], audit_line: Callable[[str], dict]) -> None:
    client = genai.Client(api_key=access_token(), http_options=genai_types.HttpOptions(base_url=f"{gateway.url}/gemini"))
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi",
                                                        config=genai_types.GenerateContentConfig(max_output_tokens=6)))
    assert "".join(c.text or "" for c in chunks) == "hello from the stand-in"
    assert audit_line("gemini")["tokens"] == INPUT_TOKENS + 6


def test_a_provider_key_instead_of_a_chit_token_is_refused(gateway: GatewayServer, upstream: UpstreamStandIn) -> None:
    """Even the provider's real key is no credential at the gateway: it is not a chit token."""
    upstream.forget()
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=KEYS["openai"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert upstream.requests() == []
