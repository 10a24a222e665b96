"""Claude with no API key: a pod's projected token → `chit agent` → a token file the
anthropic SDK reads (ANTHROPIC_IDENTITY_TOKEN_FILE) → the jwt-bearer exchange at a stand-in
of Anthropic's token endpoint → /v1/messages. Anthropic accepts each `jti` once and the SDK
re-reads the file at every exchange, so the file is kept with `renew=on-read`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import jwt
import pytest
from anthropic.lib.credentials import WorkloadIdentityCredentials

from chit.agent.providers import ChitTokenSource
from tests.factories import AgentProcess, ChitServer, run_chit, wait_until
from tests.providers.conftest import AGENT, ANTHROPIC, trust
from tests.providers.standins import AnthropicStandIn

MODEL = "claude-sonnet-4-5"


@pytest.fixture
def sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the federation settings: no API key, token or profile the SDK could fall back to."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CONFIG_DIR", "ANTHROPIC_BASE_URL",
                 "ANTHROPIC_IDENTITY_TOKEN", "ANTHROPIC_WORKSPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_FEDERATION_RULE_ID", AnthropicStandIn.rule_id)
    monkeypatch.setenv("ANTHROPIC_ORGANIZATION_ID", AnthropicStandIn.organization_id)
    monkeypatch.setenv("ANTHROPIC_SERVICE_ACCOUNT_ID", AnthropicStandIn.service_account_id)


def sidecar(tmp_path: Path, chit: ChitServer, pod_token: Path, renew: str = "on-read") -> tuple[AgentProcess, Path]:
    token_file = tmp_path / "anthropic" / "token"
    agent = AgentProcess(tmp_path, "--server", chit.url, "--kubernetes", "--subject-token-file", str(pod_token),
                         "--file", f"{token_file},audience={ANTHROPIC},token-type=jwt,renew={renew}")
    return agent, token_file


@pytest.fixture
def short_lived_api(llm_chit: ChitServer) -> Iterator[AnthropicStandIn]:
    """Access tokens of 1 s: the SDK exchanges again before every request, reading the file each time."""
    stand_in = AnthropicStandIn(trust(llm_chit, ANTHROPIC, max_lifetime=900), access_token_ttl=1)
    yield stand_in
    stand_in.stop()


def ask(base_url: str, **client: Any) -> str:
    reply = anthropic.Anthropic(base_url=base_url, max_retries=0, **client).messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hello"}]
    )
    return reply.content[0].text


def unverified_jti(token_file: Path) -> str:
    return jwt.decode(token_file.read_text(), options={"verify_signature": False})["jti"]


def test_the_sdk_calls_claude_through_the_sidecars_file(
    llm_chit: ChitServer, anthropic_api: AnthropicStandIn, pod, tmp_path: Path, sdk_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, token_file = sidecar(tmp_path, llm_chit, pod())
    try:
        wait_until(token_file.exists, 30, "the token file", agent)
        monkeypatch.setenv("ANTHROPIC_IDENTITY_TOKEN_FILE", str(token_file))

        assert ask(anthropic_api.url) == "hello from the stand-in"

        claims = anthropic_api.exchanges[-1]
        assert claims["sub"] == AGENT and claims["iss"] == llm_chit.url and claims["aud"] == ANTHROPIC
        assert anthropic_api.api_calls[-1] == AGENT
        # The audit line of the token the stand-in accepted names the provider's audience.
        audit = next(line for line in llm_chit.audit_lines() if line["jti"] == claims["jti"])
        assert audit["outcome"] == "issued" and audit["granted_audience"] == [ANTHROPIC] and audit["subject"] == AGENT
        assert agent.terminate() == 0
    finally:
        agent.kill()


def test_the_sidecar_never_leaves_a_used_token_in_the_file(
    llm_chit: ChitServer, short_lived_api: AnthropicStandIn, pod, tmp_path: Path, sdk_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, token_file = sidecar(tmp_path, llm_chit, pod())
    try:
        wait_until(lambda: "fetched the next credential" in agent.log(), 30, "the spare token", agent)
        monkeypatch.setenv("ANTHROPIC_IDENTITY_TOKEN_FILE", str(token_file))
        client = anthropic.Anthropic(base_url=short_lived_api.url, max_retries=0)
        for _ in range(6):  # each request exchanges anew, re-reading the file: a used jti would be refused
            client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hello"}])
            time.sleep(1.05)  # the access token (1 s) expires: the next request exchanges
        jtis = [claims["jti"] for claims in short_lived_api.exchanges]
        assert len(jtis) == 6 and len(set(jtis)) == 6
        assert not short_lived_api.refusals
        assert unverified_jti(token_file) not in short_lived_api.seen_jtis
    finally:
        agent.kill()


def test_without_renew_on_read_the_sdk_presents_a_used_token(
    llm_chit: ChitServer, short_lived_api: AnthropicStandIn, pod, tmp_path: Path, sdk_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why renew=on-read exists: a file renewed at 80 % of its lifetime is read twice, and
    Anthropic refuses the second presentation of its jti."""
    agent, token_file = sidecar(tmp_path, llm_chit, pod(), renew="lifetime")
    try:
        wait_until(token_file.exists, 30, "the token file", agent)
        monkeypatch.setenv("ANTHROPIC_IDENTITY_TOKEN_FILE", str(token_file))
        client = anthropic.Anthropic(base_url=short_lived_api.url, max_retries=0)
        client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hello"}])
        time.sleep(1.05)
        with pytest.raises(anthropic.lib.credentials.WorkloadIdentityError, match="already used"):
            client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hello"}])
    finally:
        agent.kill()


def test_a_workload_the_policy_denies_gets_no_file_and_the_sdk_says_so(
    llm_chit: ChitServer, anthropic_api: AnthropicStandIn, pod, tmp_path: Path, sdk_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, token_file = sidecar(tmp_path, llm_chit, pod("db-reader"))
    try:
        agent.wait_for_log("renewing")
        assert "invalid_target" in agent.log() and "decision_id" in agent.log()
        assert not token_file.exists()
        monkeypatch.setenv("ANTHROPIC_IDENTITY_TOKEN_FILE", str(token_file))
        with pytest.raises(anthropic.AnthropicError, match="Identity token file not found"):
            ask(anthropic_api.url)
        refused = [line for line in llm_chit.audit_lines() if line["subject"] == "spiffe://example.org/k8s/prod/ns/payments/sa/db-reader"]
        assert refused and all(line["outcome"] == "denied" and line["audience"] == [ANTHROPIC] for line in refused)
    finally:
        agent.kill()


def test_without_a_sidecar_the_agent_package_supplies_the_identity_token(
    llm_chit: ChitServer, anthropic_api: AnthropicStandIn, pod, sdk_environment: None
) -> None:
    """chit.agent.providers: a fresh chit JWT at each exchange, so each jti is new."""
    source = ChitTokenSource(llm_chit.url, ANTHROPIC, platform="kubernetes", subject_token_file=pod())
    credentials = WorkloadIdentityCredentials(
        identity_token_provider=source, federation_rule_id=AnthropicStandIn.rule_id,
        organization_id=AnthropicStandIn.organization_id, service_account_id=AnthropicStandIn.service_account_id,
    )
    before = len(anthropic_api.exchanges)
    assert ask(anthropic_api.url, credentials=credentials) == "hello from the stand-in"
    assert ask(anthropic_api.url, credentials=credentials) == "hello from the stand-in"
    assert len(anthropic_api.exchanges) == before + 2
    assert anthropic_api.exchanges[-1]["jti"] != anthropic_api.exchanges[-2]["jti"]


def test_an_inline_registration_of_the_exported_jwks_verifies(llm_chit: ChitServer, pod, sdk_environment: None) -> None:
    """An issuer Anthropic cannot reach: `chit keys export` is registered inline."""
    exported = run_chit("keys", "export", "--config", str(llm_chit.config_path))
    assert exported.returncode == 0, exported.stderr
    jwks = json.loads(exported.stdout)
    assert {k["kid"] for k in jwks["keys"]} == {k["kid"] for k in llm_chit.jwks()["keys"]}
    assert all("d" not in k and "p" not in k for k in jwks["keys"])  # public members only
    stand_in = AnthropicStandIn(trust(llm_chit, ANTHROPIC, inline_jwks=jwks))
    try:
        source = ChitTokenSource(llm_chit.url, ANTHROPIC, platform="kubernetes", subject_token_file=pod())
        credentials = WorkloadIdentityCredentials(
            identity_token_provider=source, federation_rule_id=stand_in.rule_id,
            organization_id=stand_in.organization_id, service_account_id=stand_in.service_account_id,
        )
        assert ask(stand_in.url, credentials=credentials) == "hello from the stand-in"
        assert stand_in.trust.fetches == 0  # never fetched anything from chit
    finally:
        stand_in.stop()


# --- the stand-in refuses what Anthropic refuses ---------------------------------------------


def signing_key(chit: ChitServer, algorithm: str) -> tuple[Any, str]:
    """One of chit's own private keys, to forge tokens a real chit would never sign."""
    from chit.server.keys import KeySeries, KeyStore

    key = KeyStore(chit.directory / "keys", KeySeries(("ES256", "RS256"))).signing_key(time.time(), algorithm)
    assert key is not None
    return key.private_key, key.kid


def forged(chit: ChitServer, algorithm: str = "RS256", header: dict | None = None, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": chit.url, "sub": AGENT, "aud": ANTHROPIC, "iat": now, "exp": now + 300, "jti": f"forged-{time.monotonic_ns()}", **overrides}
    private_key, kid = signing_key(chit, algorithm)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, private_key, algorithm=algorithm, headers={"kid": kid, **(header or {})})


def exchange(stand_in: AnthropicStandIn, assertion: str, **body: str) -> httpx.Response:
    return httpx.post(f"{stand_in.url}/v1/oauth/token", headers={"anthropic-beta": "oauth-2025-04-20,oidc-federation-2026-04-01"}, json={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion, "federation_rule_id": stand_in.rule_id,
        "organization_id": stand_in.organization_id, "service_account_id": stand_in.service_account_id, **body})


@pytest.mark.parametrize("case", ["valid", "es256", "wrong issuer", "wrong audience", "expired", "no iat", "too long", "other subject",
                                  "bad signature", "unknown kid", "alg none"])
def test_the_stand_in_verifies_like_anthropic(llm_chit: ChitServer, anthropic_api: AnthropicStandIn, case: str) -> None:
    now = int(time.time())
    token = {
        "valid": lambda: forged(llm_chit),
        "es256": lambda: forged(llm_chit, "ES256"),
        "wrong issuer": lambda: forged(llm_chit, iss="https://elsewhere.example"),
        "wrong audience": lambda: forged(llm_chit, aud="https://db.internal"),
        "expired": lambda: forged(llm_chit, iat=now - 600, exp=now - 120),
        "no iat": lambda: forged(llm_chit, iat=None),
        "too long": lambda: forged(llm_chit, exp=now + 3600),
        "other subject": lambda: forged(llm_chit, sub="spiffe://example.org/k8s/prod/ns/ops/sa/agent"),
        "bad signature": lambda: forged(llm_chit)[:-4] + "AAAA",
        "unknown kid": lambda: forged(llm_chit, header={"kid": "not-a-chit-key"}),
        "alg none": lambda: jwt.encode({"iss": llm_chit.url, "sub": AGENT, "aud": ANTHROPIC, "iat": now, "exp": now + 60}, None, algorithm="none"),
    }[case]()
    response = exchange(anthropic_api, token)
    if case == "valid":
        assert response.status_code == 200 and response.json()["access_token"].startswith("sk-ant-oat01-")
    else:
        assert response.status_code in (400, 401) and "access_token" not in response.json(), response.text


def test_the_stand_in_accepts_a_jti_once(llm_chit: ChitServer, anthropic_api: AnthropicStandIn, pod) -> None:
    token = ChitTokenSource(llm_chit.url, ANTHROPIC, platform="kubernetes", subject_token_file=pod())()
    assert exchange(anthropic_api, token).status_code == 200
    replay = exchange(anthropic_api, token)
    assert replay.status_code == 401 and "already used" in replay.json()["error_description"]


def test_api_calls_need_a_token_the_stand_in_issued(anthropic_api: AnthropicStandIn, llm_chit: ChitServer, pod) -> None:
    """A chit token is no API credential: only the exchanged access token is."""
    chit_token = ChitTokenSource(llm_chit.url, ANTHROPIC, platform="kubernetes", subject_token_file=pod())()
    for bearer in (chit_token, "sk-ant-oat01-made-up"):
        response = httpx.post(f"{anthropic_api.url}/v1/messages", headers={"Authorization": f"Bearer {bearer}"},
                              json={"model": MODEL, "max_tokens": 1, "messages": []})
        assert response.status_code == 401
