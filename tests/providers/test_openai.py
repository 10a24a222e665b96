"""GPT with no API key: the openai SDK's `workload_identity` with a subject-token provider,
fed by the sidecar's file or by chit.agent.providers, exchanging at a stand-in of
OpenAI's token endpoint, then /v1/responses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import openai
import pytest
from openai.auth import k8s_service_account_token_provider

from chit.agent.exchange import ExchangeError
from chit.agent.providers import ChitTokenSource, openai_subject_token_provider
from tests.factories import AgentProcess, ChitServer, run_chit, wait_until
from tests.providers.conftest import OPENAI, SUBJECT_PREFIX, trust
from tests.providers.standins import OpenAIStandIn


def client(stand_in: OpenAIStandIn, provider: dict[str, Any]) -> openai.OpenAI:
    """What a workload writes: `workload_identity` and `base_url`, no API key. The token
    endpoint is the stand-in's too: openai 3.63 reads it from the `token_exchange_url`
    of its WorkloadIdentityAuth, which the client constructor does not expose."""
    sdk = openai.OpenAI(
        workload_identity={"identity_provider_id": stand_in.identity_provider_id, "service_account_id": stand_in.service_account_id, "provider": provider},
        base_url=f"{stand_in.url}/v1", max_retries=0,
    )
    sdk._workload_identity_auth.token_exchange_url = f"{stand_in.url}/oauth/token"  # type: ignore[union-attr]
    return sdk


def respond(sdk: openai.OpenAI) -> str:
    return sdk.responses.create(model="gpt-5", input="hello").output_text


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def test_the_sdk_calls_gpt_through_the_sidecars_file(llm_chit: ChitServer, openai_api: OpenAIStandIn, pod, tmp_path: Path) -> None:
    token_file = tmp_path / "openai" / "token"
    agent = AgentProcess(tmp_path, "--server", llm_chit.url, "--kubernetes", "--subject-token-file", str(pod()),
                         "--file", f"{token_file},audience={OPENAI},token-type=jwt")
    try:
        wait_until(token_file.exists, 30, "the token file", agent)
        assert respond(client(openai_api, k8s_service_account_token_provider(token_file))) == "hello from the stand-in"
        claims = openai_api.exchanges[-1]
        assert claims["sub"] == SUBJECT_PREFIX + "agent" and claims["aud"] == OPENAI
        audit = next(line for line in llm_chit.audit_lines() if line["jti"] == claims["jti"])
        assert audit["granted_audience"] == [OPENAI]
    finally:
        agent.kill()


def test_without_a_sidecar_the_agent_package_is_the_subject_token_provider(llm_chit: ChitServer, openai_api: OpenAIStandIn, pod) -> None:
    source = ChitTokenSource(llm_chit.url, OPENAI, platform="kubernetes", subject_token_file=pod())
    assert respond(client(openai_api, openai_subject_token_provider(source))) == "hello from the stand-in"


def test_a_workload_not_granted_openai_gets_no_token(llm_chit: ChitServer, openai_api: OpenAIStandIn, pod) -> None:
    """claude-only is bound to Anthropic's audience alone: chit refuses OpenAI's, the SDK fails."""
    source = ChitTokenSource(llm_chit.url, OPENAI, platform="kubernetes", subject_token_file=pod("claude-only"))
    with pytest.raises(ExchangeError, match="invalid_target"):
        respond(client(openai_api, openai_subject_token_provider(source)))


@pytest.fixture
def short_lived_api(llm_chit: ChitServer) -> Iterator[OpenAIStandIn]:
    """Access tokens of 1 s: the SDK refreshes after half of it."""
    stand_in = OpenAIStandIn(trust(llm_chit, OPENAI), access_token_ttl=1)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def revoke(llm_chit: ChitServer) -> Iterator[Callable[[str], None]]:
    revoked: list[str] = []

    def run(subject: str) -> None:
        result = run_chit("revoke", "--subject", subject, "--config", str(llm_chit.config_path))
        assert result.returncode == 0, result.stderr
        revoked.append(subject)

    yield run
    for subject in revoked:
        run_chit("revoke", "--subject", subject, "--lift", "--config", str(llm_chit.config_path))


def test_a_revoked_subject_stops_getting_tokens_at_the_next_refresh(
    llm_chit: ChitServer, short_lived_api: OpenAIStandIn, pod, revoke: Callable[[str], None]
) -> None:
    source = ChitTokenSource(llm_chit.url, OPENAI, platform="kubernetes", subject_token_file=pod("revocable"))
    sdk = client(short_lived_api, openai_subject_token_provider(source))
    assert respond(sdk) == "hello from the stand-in"
    revoke(SUBJECT_PREFIX + "revocable")
    assert respond(sdk) == "hello from the stand-in"  # the access token it holds lives on until it expires
    time.sleep(1.05)
    with pytest.raises(ExchangeError, match="is not permitted"):
        respond(sdk)
    denied = [line for line in llm_chit.audit_lines() if line["subject"] == SUBJECT_PREFIX + "revocable" and line["outcome"] == "denied"]
    assert denied and "revoked" in " ".join(denied[-1]["reasons"])
