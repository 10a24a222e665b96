"""AWS STS credentials for the role a decision grants (`requested_token_type`
`urn:chit:params:oauth:token-type:aws-credentials`, docs/reference/http-api.md "POST /token — success").

Two ways to get them (`aws.sts_mode`):

- `assume_role`: chit calls `sts:AssumeRole` with its own AWS credentials;
  chit's facts about the workload go in as session tags, transitive so that a
  role chained from the session keeps them.
- `web_identity`: chit holds no AWS credentials at all. It mints a short JWT
  for audience `sts.amazonaws.com` (its issuer is registered in IAM as an
  OIDC provider) and calls `sts:AssumeRoleWithWebIdentity`; the same tags
  travel in the token's `https://aws.amazon.com/tags` claim. No other token
  chit mints may carry that audience (server.reserved_audience).

Either way: DurationSeconds is 900 (AWS's minimum is chit's maximum, docs/reference
"Minted lifetime"), the RoleSessionName is derived from the subject, and the
decision's session policy narrows the role. Tags chit sets itself (`chit:*`)
cannot be set or overridden by the policy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from chit.attestors.base import Attestation
from chit.aws import AwsClients, AwsRefused, AwsUnavailable
from chit.server.config import Aws
from chit.server import tracing
from chit.server.errors import InvalidRequest, PolicyDenied, TemporarilyUnavailable
from chit.policy.decision import AwsGrant

STS_DURATION_SECONDS = 900
WEB_IDENTITY_TOKEN_TTL = 300
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"
CHIT_TAG_PREFIX = "chit:"

# RoleSessionName: [\w+=,.@-]{2,64} (ASCII \w).
_SESSION_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_+=,.@-]+")
_SESSION_NAME_HASH_CHARS = 20  # 100 bits of SHA-256: distinct subjects get distinct names
# Session tags: key 1-128, value 0-256 of letters, digits, spaces and _.:/=+-@; at most 50.
_TAG_TEXT = re.compile(r"[\w .:/=+@-]*")
MAX_SESSION_TAGS = 50


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime

    def credential_process(self) -> dict[str, Any]:
        """The JSON AWS SDKs read from a `credential_process` command."""
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": self.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def role_session_name(subject: str) -> str:
    """A RoleSessionName that names the workload in CloudTrail: the readable end of
    its SPIFFE path, then a hash of the whole subject, so no two subjects share one."""
    digest = base64.b32encode(hashlib.sha256(subject.encode()).digest()).decode().lower()
    suffix = digest[:_SESSION_NAME_HASH_CHARS]
    path = subject.split("://", 1)[-1].partition("/")[2]
    readable = _SESSION_NAME_UNSAFE.sub("-", path.replace("/", "."))
    readable = readable[-(64 - 1 - _SESSION_NAME_HASH_CHARS) :].strip(".-")
    return f"{readable}.{suffix}" if readable else suffix


def _valid_tag(key: str, value: str) -> bool:
    return 1 <= len(key) <= 128 and len(value) <= 256 and bool(_TAG_TEXT.fullmatch(key)) and bool(_TAG_TEXT.fullmatch(value))


def chit_tags(subject: Attestation, actor: Attestation | None) -> dict[str, str]:
    """The tags chit sets: the subject, its kind, the string facts of its `att` claim."""
    tags = {f"{CHIT_TAG_PREFIX}subject": subject.subject, f"{CHIT_TAG_PREFIX}kind": subject.kind}
    for name, value in subject.att.items():
        if isinstance(value, str):
            tags[f"{CHIT_TAG_PREFIX}{name}"] = value
    if actor is not None:
        tags[f"{CHIT_TAG_PREFIX}actor"] = actor.subject
    for key, value in tags.items():
        if not _valid_tag(key, value):
            raise InvalidRequest("the workload's identity cannot be expressed as AWS session tags", detail=f"tag {key}")
    return tags


def session_tags(grant: AwsGrant, own: Mapping[str, str]) -> dict[str, str]:
    """The decision's tags beside chit's own, which the policy can neither set nor override."""
    for key, value in grant.tags.items():
        if key.lower().startswith(CHIT_TAG_PREFIX):
            raise PolicyDenied("the exchange is not permitted", detail=f"decision.aws.tags may not set {key!r}: chit: tags are chit's")
        if key.lower().startswith("aws:") or not _valid_tag(key, value):
            raise PolicyDenied("the exchange is not permitted", detail=f"decision.aws.tags: {key!r} is not a valid session tag")
    tags = {**grant.tags, **own}
    if len(tags) > MAX_SESSION_TAGS:
        raise PolicyDenied("the exchange is not permitted", detail=f"more than {MAX_SESSION_TAGS} session tags")
    return tags


def web_identity_claims(tags: Mapping[str, str], transitive: list[str]) -> dict[str, Any]:
    """Session tags as AssumeRoleWithWebIdentity reads them from the token."""
    return {
        AWS_TAGS_CLAIM: {
            "principal_tags": {key: [value] for key, value in tags.items()},
            "transitive_tag_keys": transitive,
        }
    }


@dataclass(frozen=True, slots=True)
class StsSession:
    """One AssumeRole (or AssumeRoleWithWebIdentity) call: its parameters, and in
    web_identity mode the claims of the JWT chit signs for STS to read."""

    operation: str
    parameters: dict[str, Any]
    web_identity_claims: dict[str, Any] | None = None


class StsIssuer:
    """Calls STS; every failure becomes the OAuth error the exchange answers with."""

    def __init__(self, config: Aws, clients: AwsClients):
        self.config = config
        self.clients = clients

    def session(self, grant: AwsGrant, subject: Attestation, actor: Attestation | None) -> StsSession:
        """The call for `grant.role_arn`, named and tagged after `subject`."""
        own = chit_tags(subject, actor)
        tags = session_tags(grant, own)
        transitive = list(own)  # chit's tags survive role chaining; the policy's are its business
        parameters: dict[str, Any] = {
            "RoleArn": grant.role_arn,
            "RoleSessionName": role_session_name(subject.subject),
            "DurationSeconds": STS_DURATION_SECONDS,
        }
        if grant.session_policy is not None:
            parameters["Policy"] = json.dumps(grant.session_policy, separators=(",", ":"))
        if self.config.sts_mode == "web_identity":
            return StsSession("assume_role_with_web_identity", parameters, web_identity_claims(tags, transitive))
        parameters["Tags"] = [{"Key": key, "Value": value} for key, value in tags.items()]
        parameters["TransitiveTagKeys"] = transitive
        return StsSession("assume_role", parameters)

    @tracing.step("chit.sts")
    async def assume(self, session: StsSession, web_identity_token: str | None = None) -> AwsCredentials:
        """Credentials from STS; `web_identity_token` is chit's JWT carrying the session's
        web-identity claims (web_identity mode, where the call is unsigned)."""
        if session.web_identity_claims is None:
            return await self._call(session.operation, session.parameters)
        assert web_identity_token is not None, "web_identity mode needs chit's JWT for STS"
        return await self._call(session.operation, {**session.parameters, "WebIdentityToken": web_identity_token}, unsigned=True)

    async def _call(self, operation: str, parameters: dict[str, Any], *, unsigned: bool = False) -> AwsCredentials:
        try:
            answer = await self.clients.call("sts", self.config.region, operation, parameters, unsigned=unsigned)
        except AwsUnavailable as error:
            raise TemporarilyUnavailable("AWS STS is unavailable", cause="sts", detail=str(error)) from None
        except AwsRefused as error:
            # The policy granted a role AWS will not hand over (trust policy, session
            # policy, tags): a refusal of this exchange, not an outage.
            raise PolicyDenied(
                "AWS refused the role this exchange was granted", detail=f"sts {operation}: {error.code}: {error.message}"
            ) from None
        credentials = answer.get("Credentials") or {}
        try:
            return AwsCredentials(
                access_key_id=credentials["AccessKeyId"],
                secret_access_key=credentials["SecretAccessKey"],
                session_token=credentials["SessionToken"],
                expiration=credentials["Expiration"],
            )
        except KeyError:
            raise TemporarilyUnavailable("AWS STS is unavailable", cause="sts", detail=f"sts {operation}: incomplete answer") from None
