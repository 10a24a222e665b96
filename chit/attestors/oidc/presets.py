"""What the CI platforms issue, from their own documentation: the issuer, the claims
worth a policy's attention with their JSON types, and a subject made of ids.

- GitHub Actions ("OpenID Connect reference", docs.github.com): issuer
  `https://token.actions.githubusercontent.com`; every id is a JSON string
  (`"repository_id": "74"`). GitHub's immutable subject format pins "both the
  owner ID and repository ID" because "if a namespace was recycled, a different
  owner could create the same subject value": chit's default subject is those
  two ids, never the names.
- GitLab CI ("OpenID Connect (OIDC) Authentication Using ID Tokens",
  docs.gitlab.com): issuer the GitLab instance, `https://gitlab.com`; ids are
  strings, `ref_protected` is the string "true" or "false"; a token lives as
  long as its job's timeout.
- Buildkite ("OIDC with Buildkite", buildkite.com/docs): issuer
  `https://agent.buildkite.com`, shared by every organization; `build_number` is
  a number; `build_tag` and `step_key` are `null` when the build has none;
  `organization_id` and `pipeline_id` only when requested with `--claim`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

ClaimType = Literal["string", "integer", "boolean", "string_boolean", "string_list"]


@dataclass(frozen=True, slots=True)
class FactClaim:
    """One fact: the claim it is read from, the JSON type that claim must have, and
    whether a token without it (or with it `null`) is refused."""

    claim: str
    type: ClaimType = "string"
    required: bool = False


@dataclass(frozen=True, slots=True)
class Preset:
    issuer: str
    subject: str  # the template of the SPIFFE ID's path after /oidc/NAME/
    max_token_lifetime_seconds: int
    facts: Mapping[str, FactClaim] = field(default_factory=dict)


def _facts(required: tuple[str, ...], optional: tuple[str, ...], **typed: FactClaim) -> dict[str, FactClaim]:
    facts = {name: FactClaim(name, required=True) for name in required}
    facts.update({name: FactClaim(name) for name in optional})
    facts.update(typed)
    return facts


GITHUB = Preset(
    issuer="https://token.actions.githubusercontent.com",
    subject="{repository_owner_id}/{repository_id}",
    # GitHub's tokens live minutes; an hour leaves room for clock skew and slow runners.
    max_token_lifetime_seconds=3600,
    facts=_facts(
        ("repository", "repository_id", "repository_owner", "repository_owner_id", "ref", "event_name"),
        ("ref_type", "sha", "environment", "job_workflow_ref", "job_workflow_sha", "workflow_ref", "workflow_sha",
         "workflow", "runner_environment", "repository_visibility", "actor", "actor_id", "base_ref", "head_ref",
         "run_id", "run_number", "run_attempt", "enterprise", "enterprise_id"),
    ),
)

GITLAB = Preset(
    issuer="https://gitlab.com",
    subject="{namespace_id}/{project_id}",
    # A GitLab ID token expires with its job's timeout (up to a day here; raise it for longer jobs).
    max_token_lifetime_seconds=86400,
    facts=_facts(
        ("project_id", "project_path", "namespace_id", "namespace_path", "ref", "ref_type", "pipeline_source"),
        ("ref_path", "sha", "environment", "deployment_tier", "user_id", "user_login", "pipeline_id", "job_id",
         "runner_environment", "project_visibility", "ci_config_ref_uri", "ci_config_sha", "user_access_level"),
        ref_protected=FactClaim("ref_protected", "string_boolean", required=True),
        environment_protected=FactClaim("environment_protected", "string_boolean"),
        runner_id=FactClaim("runner_id", "integer"),
        groups_direct=FactClaim("groups_direct", "string_list"),
    ),
)

BUILDKITE = Preset(
    issuer="https://agent.buildkite.com",
    subject="{organization_slug}/{pipeline_slug}",
    # Buildkite's default lifetime is minutes; `--lifetime` may ask for more.
    max_token_lifetime_seconds=3600,
    facts=_facts(
        ("organization_slug", "pipeline_slug", "build_branch", "build_commit", "job_id", "agent_id"),
        ("build_tag", "step_key", "build_source", "runner_environment", "organization_id", "pipeline_id"),
        build_number=FactClaim("build_number", "integer", required=True),
    ),
)

PRESETS: Mapping[str, Preset] = {"github": GITHUB, "gitlab": GITLAB, "buildkite": BUILDKITE}
PresetName = Literal["github", "gitlab", "buildkite"]
