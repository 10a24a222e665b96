"""The OIDC verifier in process (keys from a JWKS file): every check a CI token must
pass, each refusal on its own, and the facts and subject the presets make."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chit.attestors.base import Attestation, EvidenceUnavailable, InvalidEvidence
from chit.attestors.oidc.config import OidcSettings
from chit.attestors.oidc.verifier import OidcVerifier
from chit.attestors.routing import AttestorRouter
from chit.protocol import TOKEN_TYPE_JWT
from chit.state import MemoryStore
from tests.attestors.oidc.conftest import AUDIENCE, CiIssuer
from tests.factories import DROP, b64url


@pytest.fixture(scope="module")
def jwks_files(tmp_path_factory: pytest.TempPathFactory, github: CiIssuer, gitlab: CiIssuer, buildkite: CiIssuer) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("oidc-jwks")
    files = {}
    for name, issuer in (("github", github), ("gitlab", gitlab), ("buildkite", buildkite)):
        files[name] = directory / f"{name}.json"
        files[name].write_text(json.dumps({"keys": [issuer.jwk]}))
    return files


def settings(jwks_files: dict[str, Path], github: CiIssuer, gitlab: CiIssuer, buildkite: CiIssuer, **github_overrides: Any) -> OidcSettings:
    return OidcSettings.model_validate({"issuers": [
        {"name": "github", "preset": "github", "issuer": github.issuer, "jwks_file": str(jwks_files["github"]), "audiences": [AUDIENCE],
         **github_overrides},
        {"name": "gitlab", "preset": "gitlab", "issuer": gitlab.issuer, "jwks_file": str(jwks_files["gitlab"]), "audiences": [AUDIENCE]},
        {"name": "buildkite", "preset": "buildkite", "issuer": buildkite.issuer, "jwks_file": str(jwks_files["buildkite"]),
         "audiences": [AUDIENCE], "required_claims": {"organization_slug": ["acme"]}},
    ]})


class Verify:
    """The router and verifier as chit builds them, with a state store of their own."""

    def __init__(self, config: OidcSettings):
        self.state = MemoryStore()
        self.router = AttestorRouter([OidcVerifier(config, trust_domain="example.org", state=self.state)], [],
                                     own_issuer="https://chit.example.test", is_own_kid=lambda kid: False)

    def __call__(self, token: str, now: float | None = None) -> Attestation:
        return asyncio.run(self.router.verify(TOKEN_TYPE_JWT, token, time.time() if now is None else now))

    def refuses(self, token: str, reason: str) -> None:
        with pytest.raises(InvalidEvidence, match=reason):
            self(token)


@pytest.fixture
def verify(jwks_files: dict[str, Path], github: CiIssuer, gitlab: CiIssuer, buildkite: CiIssuer) -> Verify:
    return Verify(settings(jwks_files, github, gitlab, buildkite))


# --- the presets' facts and subjects ------------------------------------------------------


def test_a_github_token_names_the_repository_by_its_ids(verify: Verify, github: CiIssuer) -> None:
    attestation = verify(github.token())
    assert attestation.kind == "oidc"
    assert attestation.subject == "spiffe://example.org/oidc/github/65/74"
    facts = attestation.facts
    assert facts["issuer"] == github.issuer and facts["issuer_name"] == "github" and facts["preset"] == "github"
    assert facts["workload"] == "65/74"
    assert facts["repository"] == "octo-org/octo-repo" and facts["repository_id"] == "74" and facts["repository_owner_id"] == "65"
    assert facts["ref"] == "refs/heads/main" and facts["event_name"] == "push" and facts["runner_environment"] == "github-hosted"
    assert facts["head_ref"] == ""  # GitHub writes "" outside pull requests: a string, kept as it is
    assert "environment" not in facts  # facts a token does not carry are absent, never null
    assert attestation.att == {"issuer_name": "github", "workload": "65/74"}
    assert attestation.claims["sub"] == "repo:octo-org/octo-repo:ref:refs/heads/main"


def test_a_renamed_repository_keeps_its_subject(verify: Verify, github: CiIssuer) -> None:
    renamed = verify(github.token(repository="octo-org/new-name", repository_owner="octo-renamed"))
    assert renamed.subject == "spiffe://example.org/oidc/github/65/74"


def test_a_gitlab_token_with_its_string_booleans(verify: Verify, gitlab: CiIssuer) -> None:
    attestation = verify(gitlab.token())
    assert attestation.subject == "spiffe://example.org/oidc/gitlab/99/4242"
    assert attestation.facts["ref_protected"] is True and attestation.facts["runner_id"] == 12270835
    assert attestation.facts["groups_direct"] == ["acme"]
    assert verify(gitlab.token(ref_protected="false")).facts["ref_protected"] is False


def test_a_buildkite_token_with_null_claims(verify: Verify, buildkite: CiIssuer) -> None:
    attestation = verify(buildkite.token())
    assert attestation.subject == "spiffe://example.org/oidc/buildkite/acme/deploy"
    assert attestation.facts["build_number"] == 5
    assert "build_tag" not in attestation.facts and "step_key" not in attestation.facts


def test_buildkite_tokens_of_another_organization_are_refused(verify: Verify, buildkite: CiIssuer) -> None:
    # Every Buildkite organization shares the issuer: required_claims pins ours.
    verify.refuses(buildkite.token(organization_slug="other-org"), "claim organization_slug is not one this server accepts")
    verify.refuses(buildkite.token(organization_slug=DROP), "claim organization_slug is not one this server accepts")


# --- signature and algorithm ---------------------------------------------------------------


def test_a_bad_signature_is_refused(verify: Verify, github: CiIssuer) -> None:
    head, body, signature = github.token().split(".")
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[7] ^= 0x01
    verify.refuses(f"{head}.{body}.{b64url(bytes(flipped))}", "signature does not verify")


def test_claims_changed_after_signing_are_refused(verify: Verify, github: CiIssuer) -> None:
    head, _, signature = github.token().split(".")
    forged = b64url(json.dumps(github.claims(repository_id="1", repository_owner_id="1")).encode())
    verify.refuses(f"{head}.{forged}.{signature}", "signature does not verify")


def test_another_issuers_key_does_not_verify(verify: Verify, github: CiIssuer, gitlab: CiIssuer) -> None:
    # GitLab's key, GitHub's kid and iss: each issuer's own keys alone verify its tokens.
    verify.refuses(github.token(key=gitlab.private_key), "signature does not verify")


@pytest.mark.parametrize("alg", ["none", "NONE"])
def test_alg_none_is_refused(verify: Verify, github: CiIssuer, alg: str) -> None:
    head = b64url(json.dumps({"alg": alg, "kid": github.kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps(github.claims()).encode())
    verify.refuses(f"{head}.{body}.{b64url(b'x')}", f"algorithm '{alg}' is not the one")


def test_hs256_with_the_public_key_as_secret_is_refused(verify: Verify, github: CiIssuer) -> None:
    import hashlib
    import hmac

    public_pem = github.private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64url(json.dumps({"alg": "HS256", "kid": github.kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps(github.claims()).encode())
    signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    verify.refuses(f"{head}.{body}.{b64url(signature)}", "algorithm 'HS256' is not the one")


def test_es256_signed_by_another_key_is_refused(verify: Verify, github: CiIssuer) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    verify.refuses(github.token(key=other, algorithm="ES256"), "algorithm 'ES256' is not the one")


def test_a_key_named_in_the_header_is_refused(verify: Verify, github: CiIssuer) -> None:
    verify.refuses(github.token(headers={"jku": "https://attacker.example/jwks"}), "header jku not accepted")


def test_an_unknown_kid_is_refused(verify: Verify, github: CiIssuer) -> None:
    verify.refuses(github.token(headers={"kid": "rotated-away"}), "signing key not known")


# --- issuer, audience, lifetime -------------------------------------------------------------


def test_an_unconfigured_issuer_is_refused(verify: Verify, github: CiIssuer) -> None:
    verify.refuses(github.token(iss="https://token.actions.githubusercontent.com"), "issuer not trusted")
    verify.refuses(github.token(iss=github.issuer + "/"), "issuer not trusted")  # exact, not a prefix or a normal form


@pytest.mark.parametrize("aud", ["https://github.com/octo-org", ["https://other.example"], [], 7, None])
def test_a_wrong_or_missing_audience_is_refused(verify: Verify, github: CiIssuer, aud: Any) -> None:
    verify.refuses(github.token(aud=DROP if aud is None else aud), "aud")


def test_one_accepted_audience_among_several_is_enough(verify: Verify, github: CiIssuer) -> None:
    assert verify(github.token(aud=["https://other.example", AUDIENCE])).subject.endswith("/65/74")


def test_an_expired_token_is_refused(verify: Verify, github: CiIssuer) -> None:
    now = int(time.time())
    verify.refuses(github.token(iat=now - 600, nbf=now - 600, exp=now - 1), "token expired")


def test_a_token_not_yet_valid_is_refused(verify: Verify, github: CiIssuer) -> None:
    now = int(time.time())
    verify.refuses(github.token(nbf=now + 600, exp=now + 900), "token not yet valid")


def test_a_lifetime_over_the_preset_cap_is_refused(verify: Verify, github: CiIssuer) -> None:
    now = int(time.time())
    verify.refuses(github.token(iat=now, exp=now + 3601), "token lifetime over 3600 s")


def test_the_lifetime_cap_is_the_operators(jwks_files, github: CiIssuer, gitlab: CiIssuer, buildkite: CiIssuer) -> None:
    verify = Verify(settings(jwks_files, github, gitlab, buildkite, max_token_lifetime_seconds=60))
    verify.refuses(github.token(), "token lifetime over 60 s")


def test_the_minted_lifetime_is_capped_by_the_token(verify: Verify, github: CiIssuer) -> None:
    now = int(time.time())
    assert verify(github.token(exp=now + 120)).expires_at == now + 120


# --- claims of the wrong type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("repository_id", 74, "claim repository_id is not a string"),  # GitHub writes ids as strings
        ("repository_owner_id", ["65"], "claim repository_owner_id is not a string"),
        ("ref", {"name": "main"}, "claim ref is not a string"),
        ("event_name", True, "claim event_name is not a string"),
        ("repository", DROP, "claim repository missing"),
        ("repository_id", None, "claim repository_id missing"),
    ],
)
def test_github_claims_of_the_wrong_type_are_refused(verify: Verify, github: CiIssuer, claim: str, value: Any, reason: str) -> None:
    verify.refuses(github.token(**{claim: value}), reason)


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("ref_protected", True, 'claim ref_protected is not "true" or "false"'),  # GitLab writes a string
        ("ref_protected", "yes", 'claim ref_protected is not "true" or "false"'),
        ("runner_id", "12270835", "claim runner_id is not an integer"),
        ("groups_direct", "acme", "claim groups_direct is not a list of strings"),
        ("project_id", 4242, "claim project_id is not a string"),
    ],
)
def test_gitlab_claims_of_the_wrong_type_are_refused(verify: Verify, gitlab: CiIssuer, claim: str, value: Any, reason: str) -> None:
    verify.refuses(gitlab.token(**{claim: value}), reason)


@pytest.mark.parametrize(("value", "reason"), [("5", "is not an integer"), (True, "is not an integer"), (5.5, "is not an integer")])
def test_buildkite_build_number_must_be_a_number(verify: Verify, buildkite: CiIssuer, value: Any, reason: str) -> None:
    verify.refuses(buildkite.token(build_number=value), f"claim build_number {reason}")


@pytest.mark.parametrize("value", ["..", "65/../1", "6 5", "65\u2215", ""])
def test_a_value_that_is_no_path_segment_never_becomes_a_subject(verify: Verify, github: CiIssuer, value: str) -> None:
    verify.refuses(github.token(repository_owner_id=value), "cannot be part of a subject")


def test_the_claims_the_policy_reads_are_the_verified_ones(verify: Verify, github: CiIssuer) -> None:
    attestation = verify(github.token(environment="production"))
    assert attestation.policy_view()["environment"] == "production"
    assert attestation.policy_view()["claims"]["environment"] == "production"


# --- replay -----------------------------------------------------------------------------------


def test_a_jti_is_accepted_once_once_a_credential_is_issued(verify: Verify, github: CiIssuer) -> None:
    token = github.token()
    first = verify(token)
    # Verified but not used (the exchange failed later): the token may be tried again.
    second = verify(token)
    asyncio.run(second.replay_guard.commit())
    verify.refuses(token, r"token already used \(jti\)")
    with pytest.raises(InvalidEvidence, match="already used"):
        asyncio.run(first.replay_guard.commit())  # a concurrent exchange of the same token loses


def test_the_jti_is_remembered_until_the_token_expires(verify: Verify, github: CiIssuer) -> None:
    now = int(time.time())
    attestation = verify(github.token(exp=now + 200))
    assert 200 < attestation.replay_guard.ttl <= 260 + 1  # exp - now + the leeway


def test_a_token_without_jti_has_no_replay_guard(verify: Verify, buildkite: CiIssuer) -> None:
    assert verify(buildkite.token(jti=DROP)).replay_guard is None


@pytest.mark.parametrize("jti", [7, "", ["a"], "x" * 257])
def test_a_malformed_jti_is_refused(verify: Verify, github: CiIssuer, jti: Any) -> None:
    verify.refuses(github.token(jti=jti), "claim jti is not a string")


def test_the_same_jti_of_another_issuer_is_another_token(verify: Verify, github: CiIssuer, gitlab: CiIssuer) -> None:
    asyncio.run(verify(github.token(jti="shared-id")).replay_guard.commit())
    assert verify(gitlab.token(jti="shared-id")).replay_guard is not None


def test_a_silent_state_store_fails_closed(verify: Verify, github: CiIssuer) -> None:
    async def silent(key: str) -> None:
        from chit.state import StateUnavailable

        raise StateUnavailable("no answer")

    verify.state.get = silent  # type: ignore[method-assign]
    with pytest.raises(EvidenceUnavailable, match="state store"):
        verify(github.token())


# --- an issuer described in full ------------------------------------------------------------


def test_any_issuer_by_configuration(tmp_path: Path, github: CiIssuer) -> None:
    jwks = tmp_path / "corp.json"
    jwks.write_text(json.dumps({"keys": [github.jwk]}))
    config = OidcSettings.model_validate({"issuers": [{
        "name": "corp-ci", "issuer": github.issuer, "jwks_file": str(jwks), "audiences": [AUDIENCE],
        "subject": "team/{team}/{service}",
        "facts": {"team": {"required": True}, "service": {"claim": "svc", "required": True}, "tier": {"type": "integer"}},
    }]})
    verify = Verify(config)
    token = jwt.encode({**github.claims(), "team": "payments", "svc": "api", "tier": 2}, github.private_key, algorithm="RS256",
                       headers={"kid": github.kid})
    attestation = verify(token)
    assert attestation.subject == "spiffe://example.org/oidc/corp-ci/team/payments/api"
    assert {k: attestation.facts[k] for k in ("team", "service", "tier")} == {"team": "payments", "service": "api", "tier": 2}
    assert "preset" not in attestation.facts and "repository" not in attestation.facts
