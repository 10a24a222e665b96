"""Gemini on Vertex AI with no key: google-auth's `identity_pool` credentials (a file
credential_source kept by the sidecar, or chit.agent.providers as the subject token
supplier) exchange at a stand-in of Google's STS, and google-genai calls generateContent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.auth import identity_pool
from google.genai import types

from chit.agent.providers import ChitTokenSource
from tests.factories import AgentProcess, ChitServer, wait_until
from tests.providers.conftest import GOOGLE, SUBJECT_PREFIX
from tests.providers.standins import GoogleStandIn

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def external_account(stand_in: GoogleStandIn, **source: Any) -> dict[str, Any]:
    """The credential configuration `gcloud iam workload-identity-pools create-cred-config` writes,
    with the stand-in's STS as token_url."""
    return {
        "type": "external_account",
        "audience": stand_in.provider,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{stand_in.url}/v1/token",
        **source,
    }


def generate(stand_in: GoogleStandIn, credentials: Any) -> str:
    client = genai.Client(vertexai=True, project="chit-test", location="us-central1", credentials=credentials,
                          http_options=types.HttpOptions(base_url=stand_in.url))
    return client.models.generate_content(model="gemini-2.5-flash", contents="hello").text


@pytest.fixture(autouse=True)
def no_ambient_google_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)


def test_genai_calls_vertex_through_the_sidecars_file(llm_chit: ChitServer, google_api: GoogleStandIn, pod, tmp_path: Path) -> None:
    token_file = tmp_path / "google" / "token"
    agent = AgentProcess(tmp_path, "--server", llm_chit.url, "--kubernetes", "--subject-token-file", str(pod()),
                         "--file", f"{token_file},audience={GOOGLE},token-type=jwt")
    try:
        wait_until(token_file.exists, 30, "the token file", agent)
        info = external_account(google_api, credential_source={"file": str(token_file), "format": {"type": "text"}})
        credentials = identity_pool.Credentials.from_info(info, scopes=[CLOUD_PLATFORM])
        assert generate(google_api, credentials) == "hello from the stand-in"
        claims = google_api.exchanges[-1]
        assert claims["sub"] == SUBJECT_PREFIX + "agent" and claims["aud"] == GOOGLE
        assert google_api.api_calls[-1] == SUBJECT_PREFIX + "agent"
        audit = next(line for line in llm_chit.audit_lines() if line["jti"] == claims["jti"])
        assert audit["granted_audience"] == [GOOGLE]
    finally:
        agent.kill()


def test_without_a_sidecar_the_agent_package_supplies_the_subject_token(llm_chit: ChitServer, google_api: GoogleStandIn, pod) -> None:
    source = ChitTokenSource(llm_chit.url, GOOGLE, platform="kubernetes", subject_token_file=pod())
    info = external_account(google_api, subject_token_supplier=source)
    credentials = identity_pool.Credentials.from_info(info, scopes=[CLOUD_PLATFORM])
    assert generate(google_api, credentials) == "hello from the stand-in"


def test_no_file_no_call(google_api: GoogleStandIn, tmp_path: Path) -> None:
    """A workload whose sidecar wrote no file (denied, or stopped) fails at the token refresh."""
    import google.auth.exceptions

    info = external_account(google_api, credential_source={"file": str(tmp_path / "absent")})
    credentials = identity_pool.Credentials.from_info(info, scopes=[CLOUD_PLATFORM])
    with pytest.raises(google.auth.exceptions.RefreshError, match="File"):
        generate(google_api, credentials)
