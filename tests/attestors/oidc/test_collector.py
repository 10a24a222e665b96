"""`chit exchange` in a CI job: the runner's token, collected with no extra step."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chit.attestors.base import CollectionFailed, PlatformAbsent
from chit.attestors.oidc.collector import BuildkiteCollector, GitHubActionsCollector, GitLabCollector
from tests.attestors.oidc.conftest import AUDIENCE, DEPLOY, CiIssuer
from tests.factories import ChitServer, MetadataRequest, MetadataStandIn, run_chit

REQUEST_TOKEN = "runtime-request-token-3f9a"


class ActionsTokenService(MetadataStandIn):
    """GitHub's ID token endpoint of a job (`ACTIONS_ID_TOKEN_REQUEST_URL`, which already
    has `?api-version=…`): a GET with `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`
    and `&audience=` answers `{"value": token}` for that audience; else 401."""

    def __init__(self, issuer: CiIssuer):
        self.issuer = issuer
        super().__init__()
        self.request_url = f"{self.url}/_apis/distributedtask/hubs/Actions/plans/p/jobs/j/idtoken?api-version=2.0"

    def answer(self, request: MetadataRequest) -> tuple[int, dict[str, str], bytes]:
        import json

        if request.headers.get("authorization") != f"bearer {REQUEST_TOKEN}":
            return 401, {"Content-Type": "application/json"}, b'{"message": "unauthorized"}'
        audience = request.query.get("audience", ["https://github.com/octo-org"])[0]
        return 200, {"Content-Type": "application/json"}, json.dumps({"value": self.issuer.token(aud=audience)}).encode()


@pytest.fixture(scope="module")
def actions(github: CiIssuer) -> ActionsTokenService:
    service = ActionsTokenService(github)
    yield service
    service.stop()


def github_env(actions: ActionsTokenService) -> dict[str, str]:
    return {"ACTIONS_ID_TOKEN_REQUEST_URL": actions.request_url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN}


def test_chit_exchange_in_a_github_actions_job(ci_chit: ChitServer, actions: ActionsTokenService) -> None:
    result = run_chit("exchange", "--github-actions", "--server", ci_chit.url, "--oidc-audience", AUDIENCE,
                      "--audience", DEPLOY, "--scope", "read", env=github_env(actions))
    assert result.returncode == 0, result.stderr
    _, claims = ci_chit.verify_issued(result.stdout.strip(), DEPLOY)
    assert claims["sub"] == "spiffe://example.org/oidc/github/65/74"
    request = actions.requests[-1]
    assert request.query["api-version"] == ["2.0"] and request.query["audience"] == [AUDIENCE]
    assert REQUEST_TOKEN not in result.stderr + result.stdout


def test_auto_finds_the_github_job(ci_chit: ChitServer, actions: ActionsTokenService, tmp_path: Path) -> None:
    result = run_chit("exchange", "--server", ci_chit.url, "--oidc-audience", AUDIENCE, "--subject-token-file", str(tmp_path / "none"),
                      "--audience", DEPLOY, "--scope", "read", env=github_env(actions))
    assert result.returncode == 0, result.stderr


def test_auto_in_a_kubernetes_pod_never_takes_the_ci_token(ci_chit: ChitServer, actions: ActionsTokenService, tmp_path: Path) -> None:
    # An Actions runner in a pod (ARC): the pod's projected token or nothing, as before.
    before = len(actions.requests)
    result = run_chit("exchange", "--server", ci_chit.url, "--subject-token-file", str(tmp_path / "none"),
                      env={**github_env(actions), "KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert result.returncode == 1 and "inside a Kubernetes pod" in result.stderr
    assert len(actions.requests) == before


def test_the_audience_defaults_to_chits_url(actions: ActionsTokenService) -> None:
    GitHubActionsCollector("https://chit.internal:8443", actions.request_url, REQUEST_TOKEN).collect()
    assert actions.requests[-1].query["audience"] == ["https://chit.internal:8443"]


def test_a_job_without_id_token_permission_is_no_github_job() -> None:
    with pytest.raises(PlatformAbsent, match="id-token: write"):
        GitHubActionsCollector(AUDIENCE, None, None).collect()


def test_a_refused_request_token_says_so(actions: ActionsTokenService) -> None:
    with pytest.raises(CollectionFailed, match="HTTP 401"):
        GitHubActionsCollector(AUDIENCE, actions.request_url, "wrong").collect()


def test_chit_exchange_in_a_gitlab_job(ci_chit: ChitServer, gitlab: CiIssuer) -> None:
    env = {"DEPLOY_ID_TOKEN": gitlab.token()}
    result = run_chit("exchange", "--gitlab-ci", "--gitlab-token-variable", "DEPLOY_ID_TOKEN", "--server", ci_chit.url,
                      "--audience", DEPLOY, "--scope", "deploy:write", env=env)
    assert result.returncode == 0, result.stderr
    _, claims = ci_chit.verify_issued(result.stdout.strip(), DEPLOY)
    assert claims["sub"] == "spiffe://example.org/oidc/gitlab/99/4242" and claims["scope"] == "deploy:write"


def test_a_gitlab_job_without_the_variable() -> None:
    with pytest.raises(PlatformAbsent, match=r"\$CHIT_ID_TOKEN"):
        GitLabCollector("CHIT_ID_TOKEN", None).collect()
    with pytest.raises(CollectionFailed, match="not an OIDC token"):
        GitLabCollector("CHIT_ID_TOKEN", "not a token").collect()


def fake_buildkite_agent(directory: Path, token: str) -> Path:
    """`buildkite-agent` as a job finds it on its PATH: prints a token, records its arguments."""
    agent = directory / "buildkite-agent"
    (directory / "token").write_text(token + "\n")
    agent.write_text(f'#!/bin/sh\necho "$@" > "{directory}/arguments"\ncat "{directory}/token"\n')
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR)
    return agent


def test_chit_exchange_in_a_buildkite_job(ci_chit: ChitServer, buildkite: CiIssuer, tmp_path: Path) -> None:
    fake_buildkite_agent(tmp_path, buildkite.token())
    env = {"BUILDKITE_AGENT_ACCESS_TOKEN": "agent-token", "PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = run_chit("exchange", "--buildkite", "--server", ci_chit.url, "--oidc-audience", AUDIENCE, "--audience", DEPLOY, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "arguments").read_text().split() == ["oidc", "request-token", "--audience", AUDIENCE]


def test_a_failing_buildkite_agent(tmp_path: Path) -> None:
    agent = tmp_path / "buildkite-agent"
    agent.write_text("#!/bin/sh\necho 'agent: not allowed' >&2\nexit 3\n")
    agent.chmod(0o755)
    with pytest.raises(CollectionFailed, match="exited with 3: agent: not allowed"):
        BuildkiteCollector(AUDIENCE, {"BUILDKITE_AGENT_ACCESS_TOKEN": "t"}, str(agent)).collect()
    with pytest.raises(PlatformAbsent):
        BuildkiteCollector(AUDIENCE, {}, str(agent)).collect()
