"""The chain keeps working across `chit keys rotate`: a provider that fetches chit's JWKS
meets the new kid and refetches; an inline registration must be exported again after
the rotation, before the new key signs (docs/operators/keys.md "Exporting and publishing the keys")."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import anthropic
import pytest
from anthropic.lib.credentials import WorkloadIdentityCredentials

from chit.agent.providers import ChitTokenSource
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, copy_policy, run_chit, wait_until
from tests.providers.conftest import ANTHROPIC, LLM_BINDINGS, llm_chit_config, trust
from tests.providers.standins import AnthropicStandIn

GRACE = 2


@pytest.fixture(scope="module")
def rotating_chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("rotating-chit")
    config = llm_chit_config(documents, copy_policy(directory / "policies", LLM_BINDINGS))
    config["signing"]["rotation_grace_seconds"] = GRACE
    server = ChitServer(directory, config).start()
    yield server
    server.stop()


def credentials(chit: ChitServer, stand_in: AnthropicStandIn, token_file: Path) -> WorkloadIdentityCredentials:
    return WorkloadIdentityCredentials(
        identity_token_provider=ChitTokenSource(chit.url, ANTHROPIC, platform="kubernetes", subject_token_file=token_file),
        federation_rule_id=stand_in.rule_id, organization_id=stand_in.organization_id, service_account_id=stand_in.service_account_id,
    )


def ask(stand_in: AnthropicStandIn, creds: WorkloadIdentityCredentials) -> str:
    # A new client each time: a new exchange, with a token chit signs now.
    reply = anthropic.Anthropic(base_url=stand_in.url, credentials=creds, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hello"}])
    return reply.content[0].text


def export(chit: ChitServer) -> dict:
    result = run_chit("keys", "export", "--config", str(chit.config_path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_chain_survives_a_rotation(rotating_chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    token_file = tmp_path / "pod.token"
    token_file.write_text(prod_issuer.token())
    discovering = AnthropicStandIn(trust(rotating_chit, ANTHROPIC, max_lifetime=900))
    inline_before = AnthropicStandIn(trust(rotating_chit, ANTHROPIC, max_lifetime=900, inline_jwks=export(rotating_chit)))
    try:
        for stand_in in (discovering, inline_before):
            assert ask(stand_in, credentials(rotating_chit, stand_in, token_file)) == "hello from the stand-in"
        old_kid = discovering.trust.kids[-1]

        rotated = run_chit("keys", "rotate", "--algorithm", "RS256", "--config", str(rotating_chit.config_path))
        assert rotated.returncode == 0, rotated.stderr
        exported = export(rotating_chit)  # right after the rotation: the next key is in it, not signing yet
        new_kid = ({k["kid"] for k in exported["keys"] if k["alg"] == "RS256"} - {old_kid}).pop()
        inline_after = AnthropicStandIn(trust(rotating_chit, ANTHROPIC, max_lifetime=900, inline_jwks=exported))
        try:
            # The running server re-reads keys_dir within 10 s; the new key signs after the grace period.
            wait_until(lambda: new_kid in {k["kid"] for k in rotating_chit.jwks()["keys"]}, 15, "the new key published")
            deadline = time.monotonic() + 15
            while ask(discovering, credentials(rotating_chit, discovering, token_file)) and discovering.trust.kids[-1] != new_kid:
                assert time.monotonic() < deadline, "the new key never signed"
                time.sleep(0.5)
            assert discovering.trust.fetches >= 2  # it met an unknown kid and fetched the JWKS again
            assert ask(inline_after, credentials(rotating_chit, inline_after, token_file)) == "hello from the stand-in"
            assert inline_after.trust.kids[-1] == new_kid
            # A registration not updated since before the rotation no longer verifies.
            with pytest.raises(anthropic.AnthropicError, match="kid not in the registered JWKS"):
                ask(inline_before, credentials(rotating_chit, inline_before, token_file))
        finally:
            inline_after.stop()
    finally:
        discovering.stop()
        inline_before.stop()
