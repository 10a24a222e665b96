"""The token exchange pipeline: parse → attest → enrich → decide → mint → audit.

`TokenExchange.exchange` is the whole of it, one step per call; each step
lives in its own module. Any refusal is an `OAuthError` (server.errors); the
audit entry records what was decided and why, never a token.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from chit.attestors.base import Attestation, EvidenceUnavailable, InvalidEvidence
from chit.attestors.routing import AttestorRouter
from chit import metrics
from chit.server.audit import AuditLog
from chit.server.config import MAX_TOKEN_TTL, Config
from chit.server.errors import InvalidRequest, OAuthError, PolicyDenied, TemporarilyUnavailable
from chit.server.keys import KeyStore, SigningKey
from chit.server.mint import TYP_ACCESS_TOKEN, TYP_JWT, mint_jwt
from chit.policy import (
    PolicyEngine,
    PolicyEvaluationError,
    PolicyInputUnrepresentable,
    PolicyUnavailable,
    parse_decision,
    policy_input,
)
from chit.policy.decision import Decision
from chit.server.grant import Grant, grant
from chit.server.ratelimit import RateLimits
from chit.server.reserved_audience import WEB_IDENTITY_AUDIENCE, refuse_reserved_grant
from chit.server.revocation import Revocations
from chit.server.signatures import ImageSignatures
from chit.state import StateStore, StateUnavailable
from chit.server.sts import STS_DURATION_SECONDS, WEB_IDENTITY_TOKEN_TTL, StsIssuer
from chit.server.token_request import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_AWS_CREDENTIALS, TokenRequest

log = logging.getLogger("chit.exchange")

# Decision ids: a random per-process prefix and a counter, in UUID form. Unique
# across workers and replicas without a system call per request.
_DECISION_PREFIX = uuid.uuid4().int >> 64 << 64
_decision_counter = itertools.count()


def new_decision_id() -> str:
    return str(uuid.UUID(int=_DECISION_PREFIX | next(_decision_counter), version=4))


@functools.lru_cache(maxsize=4)
def _second_rfc3339(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def audit_timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-22T01:46:40.123Z."""
    second = int(now)
    return f"{_second_rfc3339(second)}.{int((now - second) * 1000):03d}Z"


@dataclass
class AuditEntry:
    """One audit line in the making (DESIGN.md "Audit log")."""

    client: str | None
    started: float = field(default_factory=time.perf_counter)
    decision_id: str = field(default_factory=new_decision_id)
    outcome: str = "invalid"
    error: str | None = None
    subject: str | None = None
    kind: str | None = None
    region: str | None = None
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    granted_audience: tuple[str, ...] = ()
    granted_scope: tuple[str, ...] = ()
    ttl: int | None = None
    jti: str | None = None
    reasons: tuple[str, ...] = ()

    def refused(self, error: OAuthError) -> None:
        self.outcome = error.outcome
        self.error = error.error
        if error.detail and error.detail != error.description:
            self.reasons = self.reasons + (error.detail,) if error.detail not in self.reasons else self.reasons

    def record(self, now: float) -> dict[str, Any]:
        return {
            "ts": audit_timestamp(now),
            "decision_id": self.decision_id,
            "outcome": self.outcome,
            "error": self.error,
            "subject": self.subject,
            "kind": self.kind,
            "region": self.region,
            "client": self.client,
            "audience": list(self.audience),
            "resource": list(self.resource),
            "scope": list(self.scope),
            "granted_audience": list(self.granted_audience),
            "granted_scope": list(self.granted_scope),
            "ttl": self.ttl,
            "jti": self.jti,
            "reasons": list(self.reasons),
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }


class TokenExchange:
    def __init__(
        self,
        config: Config,
        keys: KeyStore,
        attestors: AttestorRouter,
        policy: PolicyEngine,
        audit: AuditLog,
        state: StateStore,
        sts: StsIssuer,
        signatures: ImageSignatures | None = None,
    ):
        self.config = config
        self.keys = keys
        self.attestors = attestors
        self.policy = policy
        self.audit = audit
        self.state = state
        self.sts = sts
        self.signatures = signatures or ImageSignatures({})
        self.revocations = Revocations(state)
        self.limits = RateLimits(config.rate_limits, state)

    async def exchange(self, request: TokenRequest, entry: AuditEntry, now: float) -> dict[str, Any]:
        """Run one exchange; returns the RFC 8693 §2.2.1 response body or raises OAuthError."""
        entry.audience, entry.resource, entry.scope = request.audience, request.resource, request.scope
        if not self.attestors.accepts(request.subject_token_type):
            raise InvalidRequest("subject_token_type not enabled on this server")

        subject = await self.attest("subject_token", request.subject_token_type, request.subject_token, now)
        entry.subject, entry.kind, entry.region = subject.subject, subject.kind, subject.region
        await self.limits.count_subject(subject.subject, now)
        await self.refuse_revoked("subject", subject.subject)
        actor = None
        if request.actor_token is not None:
            assert request.actor_token_type is not None
            actor = await self.attest("actor_token", request.actor_token_type, request.actor_token, now)
            await self.refuse_revoked("actor", actor.subject)

        subject = await self.enrich("subject_token", subject)
        if actor is not None:
            # The actor's pod must exist and run too: a leaked token of a deleted pod is no actor.
            actor = await self.enrich("actor_token", actor)
        decision = await self.decide(subject, actor, request, now)
        entry.reasons = decision.reasons
        aws_credentials = request.requested_token_type == TOKEN_TYPE_AWS_CREDENTIALS
        granted = grant(decision, request.scope, request.targets, require_audience=not aws_credentials)
        if not aws_credentials:  # STS credentials carry no audience; a JWT's is never the reserved one
            refuse_reserved_grant(granted.audience)
        entry.granted_scope, entry.granted_audience = granted.scope, granted.audience

        if aws_credentials:
            response = await self.mint_aws_credentials(subject, actor, decision, entry, now)
        else:
            response = self.mint(request, subject, actor, decision, granted, entry, now)
        await self.commit_replay_guards(subject, actor)
        entry.outcome = "issued"
        return response

    async def attest(self, parameter: str, token_type: str, token: str, now: float) -> Attestation:
        started = time.perf_counter()
        try:
            return await self.attestors.verify(token_type, token, now)
        except InvalidEvidence as error:
            raise InvalidRequest(f"{parameter} invalid: {error}") from None
        except EvidenceUnavailable as error:
            raise TemporarilyUnavailable(
                f"cannot verify the {parameter} right now", detail=f"{parameter}: {error}"
            ) from None
        finally:
            metrics.ATTEST_SECONDS.observe(metrics.since(started))

    async def refuse_revoked(self, role: str, subject: str) -> None:
        """`chit revoke --subject`: the operator's kill switch holds until lifted."""
        try:
            revoked = await self.revocations.subject_revoked(subject)
        except StateUnavailable as error:
            raise TemporarilyUnavailable("cannot check revocations right now", detail=f"revocations: {error}") from None
        if revoked:
            raise PolicyDenied("the exchange is not permitted", detail=f"{role} {subject} is revoked (chit revoke --subject)")

    async def enrich(self, parameter: str, attestation: Attestation) -> Attestation:
        try:
            return await self.attestors.enrich(attestation)
        except InvalidEvidence as error:
            raise InvalidRequest(f"{parameter} invalid: {error}") from None
        except EvidenceUnavailable as error:
            raise TemporarilyUnavailable("cannot verify the workload right now", detail=f"{parameter}: {error}") from None

    async def decide(
        self, subject: Attestation, actor: Attestation | None, request: TokenRequest, now: float
    ) -> Decision:
        request_view = {
            "audience": list(request.audience),
            "resource": list(request.resource),
            "scope": list(request.scope),
            "requested_token_type": request.requested_token_type,
            "actor": None if actor is None else {"subject": actor.subject, "attestation": actor.policy_view()},
        }
        images = None
        if subject.images is not None:
            images = await self.signatures.describe(subject.images)
        started = time.perf_counter()
        try:
            value = await self.policy.decide(policy_input(subject.subject, subject.policy_view(), request_view, now, images))
        except PolicyEvaluationError as error:
            return Decision.deny(f"policy error: {error}")
        except PolicyInputUnrepresentable as error:
            # A fact the engine would mangle is refused, never decided on in another form.
            raise InvalidRequest("the workload's facts cannot be evaluated by this server's policy engine", detail=str(error)) from None
        except PolicyUnavailable as error:
            raise TemporarilyUnavailable("the policy engine is unavailable", detail=str(error)) from None
        finally:
            metrics.POLICY_SECONDS.observe(metrics.since(started))
        return parse_decision(value)

    def lifetime(self, decision: Decision, *evidence: Attestation | None, now: float) -> int:
        """min(decision ttl, configured ttl, 900, the evidence's remaining lifetime)."""
        ttl = min(decision.ttl or MAX_TOKEN_TTL, self.config.tokens.ttl_seconds, MAX_TOKEN_TTL)
        for attestation in evidence:
            if attestation is not None and attestation.expires_at is not None:
                ttl = min(ttl, int(attestation.expires_at - now))
        if ttl < 1:
            raise InvalidRequest("subject_token expires too soon to back a credential")
        return ttl

    def mint(
        self,
        request: TokenRequest,
        subject: Attestation,
        actor: Attestation | None,
        decision: Decision,
        granted: Grant,
        entry: AuditEntry,
        now: float,
    ) -> dict[str, Any]:
        ttl = self.lifetime(decision, subject, actor, now=now)
        key = self.signing_key(now)
        jwt_requested = request.requested_token_type != TOKEN_TYPE_ACCESS_TOKEN
        started = time.perf_counter()
        issued = mint_jwt(
            key,
            issuer=self.config.issuer,
            subject=subject.subject,
            audience=granted.audience,
            scope=granted.scope,
            ttl=ttl,
            now=now,
            att=subject.att_claim(),
            actor=None if actor is None else actor.subject,
            typ=TYP_JWT if jwt_requested else TYP_ACCESS_TOKEN,
        )
        metrics.SIGN_SECONDS.observe(metrics.since(started))
        entry.ttl, entry.jti = ttl, issued.jti
        response: dict[str, Any] = {
            "access_token": issued.token,
            "issued_token_type": request.requested_token_type,
            "token_type": "Bearer",
            "expires_in": ttl,
        }
        if granted.scope:
            response["scope"] = " ".join(granted.scope)
        return response

    def signing_key(self, now: float) -> SigningKey:
        key = self.keys.signing_key(now)
        if key is None:
            raise TemporarilyUnavailable("no signing key is active", detail=f"no active key in {self.keys.keys_dir}")
        return key

    async def mint_aws_credentials(
        self, subject: Attestation, actor: Attestation | None, decision: Decision, entry: AuditEntry, now: float
    ) -> dict[str, Any]:
        """STS credentials for the decision's role; they last 900 s (DESIGN.md "Minted
        lifetime": AWS's minimum is chit's maximum), so a shorter decision ttl refuses them."""
        if decision.aws is None:
            raise PolicyDenied("the exchange is not permitted", detail="aws-credentials requested; decision.aws.role_arn absent")
        if decision.ttl is not None and decision.ttl < STS_DURATION_SECONDS:
            raise PolicyDenied(
                "the exchange is not permitted",
                detail=f"decision.ttl {decision.ttl} s is under the 900 s AWS credentials last",
            )
        if self.config.tokens.ttl_seconds < STS_DURATION_SECONDS:
            # The operator's cap holds for every credential chit hands out.
            raise InvalidRequest("aws-credentials are not available: tokens.ttl_seconds is under 900")

        def web_identity_token(claims: dict[str, Any]) -> str:
            return mint_jwt(
                self.signing_key(now),
                issuer=self.config.issuer,
                subject=subject.subject,
                audience=(WEB_IDENTITY_AUDIENCE,),
                scope=(),
                ttl=WEB_IDENTITY_TOKEN_TTL,
                now=now,
                att=subject.att_claim(),
                typ=TYP_JWT,
                extra_claims=claims,
            ).token

        credentials = await self.sts.credentials(decision.aws, subject, actor, web_identity_token)
        expires_in = max(1, min(STS_DURATION_SECONDS, round(credentials.expiration.timestamp() - now)))
        # The access key id is not secret (CloudTrail logs it with every call made
        # with these credentials): as the credential's id it links audit and CloudTrail.
        entry.ttl, entry.jti = expires_in, credentials.access_key_id
        return {
            "access_token": credentials.session_token,
            "issued_token_type": TOKEN_TYPE_AWS_CREDENTIALS,
            "token_type": "N_A",
            "expires_in": expires_in,
            "aws_credentials": credentials.credential_process(),
        }

    async def commit_replay_guards(self, *attestations: Attestation | None) -> None:
        for attestation in attestations:
            if attestation is not None and attestation.replay_guard is not None:
                try:
                    await attestation.replay_guard.commit()
                except InvalidEvidence as error:
                    raise InvalidRequest(f"subject_token invalid: {error}") from None
                except EvidenceUnavailable as error:
                    raise TemporarilyUnavailable("cannot record the exchange right now", detail=str(error)) from None

    async def close(self) -> None:
        await self.attestors.close()
        await self.policy.close()
        await self.signatures.close()
        await self.state.close()
        self.audit.close()
