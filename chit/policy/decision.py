"""The policy's decision, validated strictly.

docs/reference/policy-contract.md "Policy contract": `allow` must be the boolean `true`; anything
malformed is a deny whose reason names the fault. What a decision grants for a
request is the server's to apply (`chit.server.grant`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

DECISION_KEYS = frozenset({"allow", "scope", "audience", "ttl", "reasons", "aws"})
AWS_KEYS = frozenset({"role_arn", "session_policy", "tags"})
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


class MalformedDecision(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AwsGrant:
    role_arn: str
    session_policy: Mapping[str, Any] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    scope: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    ttl: int | None = None
    reasons: tuple[str, ...] = ()
    aws: AwsGrant | None = None

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(allow=False, reasons=(reason,))


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedDecision(f"decision.{name} must be an array of strings")
    return tuple(value)


def _aws(value: Any) -> AwsGrant:
    if not isinstance(value, dict):
        raise MalformedDecision("decision.aws must be an object")
    unknown = set(value) - AWS_KEYS
    if unknown:
        raise MalformedDecision(f"decision.aws has unknown keys: {', '.join(sorted(unknown))}")
    role_arn = value.get("role_arn")
    if not isinstance(role_arn, str) or not _ROLE_ARN.fullmatch(role_arn):
        raise MalformedDecision("decision.aws.role_arn must be an IAM role ARN")
    session_policy = value.get("session_policy")
    if session_policy is not None and not isinstance(session_policy, dict):
        raise MalformedDecision("decision.aws.session_policy must be an object")
    tags = value.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise MalformedDecision("decision.aws.tags must map strings to strings")
    return AwsGrant(role_arn, session_policy or None, tags)


def parse_decision(value: Any) -> Decision:
    """Validate the policy's result; anything but a well-formed allow is a deny."""
    if value is None:
        return Decision.deny("decision undefined")
    try:
        if not isinstance(value, dict):
            raise MalformedDecision("decision is not an object")
        unknown = set(value) - DECISION_KEYS
        if unknown:
            raise MalformedDecision(f"decision has unknown keys: {', '.join(sorted(unknown))}")
        reasons = _strings(value.get("reasons", []), "reasons")
        allow = value.get("allow")
        if not isinstance(allow, bool):
            raise MalformedDecision("decision.allow is not a boolean")
        if not allow:
            return Decision(allow=False, reasons=reasons or ("denied by policy",))
        ttl = value.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise MalformedDecision("decision.ttl must be a positive integer")
        return Decision(
            allow=True,
            scope=_strings(value.get("scope", []), "scope"),
            audience=_strings(value.get("audience", []), "audience"),
            ttl=ttl,
            reasons=reasons,
            aws=_aws(value["aws"]) if value.get("aws") is not None else None,
        )
    except MalformedDecision as fault:
        return Decision.deny(f"malformed decision: {fault}")


