"""CI tokens exchanged through a real chit server with the presets (keys by discovery)
and the shipped policy: the protected branch may deploy, a pull request or a fork may not."""

from __future__ import annotations

import pytest

from tests.attestors.oidc.conftest import DEPLOY, CiIssuer
from tests.factories import ChitServer, assert_issued, assert_refused


def scopes(chit: ChitServer, token: str, scope: str | None = None) -> list[str]:
    body = assert_issued(chit.exchange(token, scope=scope, audience=DEPLOY))
    return body["scope"].split()


def test_a_push_to_main_may_deploy(ci_chit: ChitServer, github: CiIssuer) -> None:
    body = assert_issued(ci_chit.exchange(github.token(), scope="deploy:write", audience=DEPLOY))
    _, claims = ci_chit.verify_issued(body["access_token"], DEPLOY)
    assert claims["sub"] == "spiffe://example.org/oidc/github/65/74"
    assert claims["att"] == {"kind": "oidc", "issuer_name": "github", "workload": "65/74"}
    assert body["expires_in"] <= 300  # never longer than the CI token it came from


def test_a_pull_request_run_may_only_read(ci_chit: ChitServer, github: CiIssuer) -> None:
    # A pull request from a branch that is even named main: its ref is the merge ref.
    pull_request = {"ref": "refs/pull/7/merge", "event_name": "pull_request", "head_ref": "main", "base_ref": "main"}
    assert_refused(ci_chit.exchange(github.token(**pull_request), scope="deploy:write", audience=DEPLOY), error="invalid_scope")
    assert scopes(ci_chit, github.token(**pull_request)) == ["read"]


def test_pull_request_target_runs_on_main_but_may_only_read(ci_chit: ChitServer, github: CiIssuer) -> None:
    # pull_request_target runs in the base repository on its default branch, for a fork's pull request.
    assert_refused(ci_chit.exchange(github.token(event_name="pull_request_target"), scope="deploy:write", audience=DEPLOY),
                   error="invalid_scope")


def test_a_forks_token_does_not_pass_the_base_repositorys_rule(ci_chit: ChitServer, github: CiIssuer) -> None:
    fork = {"repository": "fork-owner/octo-repo", "repository_id": "991", "repository_owner": "fork-owner",
            "repository_owner_id": "990", "ref": "refs/heads/main", "event_name": "push"}
    body = assert_refused(ci_chit.exchange(github.token(**fork), scope="read", audience=DEPLOY))
    audit = ci_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and audit["subject"] == "spiffe://example.org/oidc/github/990/991"
    # Nor does a fork that reuses the base repository's names: the binding is by id.
    impostor = {**fork, "repository": "octo-org/octo-repo", "repository_owner": "octo-org"}
    assert_refused(ci_chit.exchange(github.token(**impostor), scope="read", audience=DEPLOY))


def test_gitlab_protected_branches_deploy_and_others_read(ci_chit: ChitServer, gitlab: CiIssuer) -> None:
    assert scopes(ci_chit, gitlab.token()) == ["deploy:write", "read"]
    assert scopes(ci_chit, gitlab.token(ref="feature", ref_path="refs/heads/feature", ref_protected="false")) == ["read"]


def test_buildkite_main_deploys(ci_chit: ChitServer, buildkite: CiIssuer) -> None:
    assert scopes(ci_chit, buildkite.token()) == ["deploy:write"]
    assert_refused(ci_chit.exchange(buildkite.token(build_branch="feature"), audience=DEPLOY))


def test_a_token_is_exchanged_once(ci_chit: ChitServer, github: CiIssuer) -> None:
    token = github.token()
    assert_issued(ci_chit.exchange(token, scope="read", audience=DEPLOY))
    body = assert_refused(ci_chit.exchange(token, scope="read", audience=DEPLOY))
    assert "already used" in body["error_description"]


def test_a_refused_exchange_does_not_use_the_token(ci_chit: ChitServer, github: CiIssuer) -> None:
    token = github.token()
    assert_refused(ci_chit.exchange(token, scope="admin", audience=DEPLOY), error="invalid_scope")
    assert_issued(ci_chit.exchange(token, scope="read", audience=DEPLOY))


@pytest.mark.parametrize("claim", [{"repository_id": 74}, {"aud": "https://github.com/octo-org"}, {"iss": "https://token.actions.githubusercontent.com"}])
def test_refusals_are_oauth_errors(ci_chit: ChitServer, github: CiIssuer, claim: dict) -> None:
    body = assert_refused(ci_chit.exchange(github.token(**claim), audience=DEPLOY))
    assert ci_chit.audit_for(body["decision_id"])["outcome"] == "invalid"


def test_discovery_naming_another_issuer_fails_closed(tmp_path, documents, github: CiIssuer) -> None:
    from tests.factories import copy_policy

    documents.serve("/mismatch/.well-known/openid-configuration", {"issuer": github.issuer, "jwks_uri": github.jwks_uri})
    issuer = documents.url("/mismatch")
    config = {"policy": {"dir": str(copy_policy(tmp_path / "policies"))},
              "attestors": {"oidc": {"issuers": [{"name": "ghes", "preset": "github", "issuer": issuer, "audiences": ["https://chit.example.test"]}]}}}
    server = ChitServer(tmp_path, config).start()
    try:
        assert_refused(server.exchange(github.token(iss=issuer)), status=503, error="temporarily_unavailable")
    finally:
        server.stop()
