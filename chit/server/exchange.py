"""The token exchange, whole: parse → attest → enrich → decide → mint → audit.

`TokenExchange.handle` is the pipeline, one call per step, each into its own
module: the request parser (`chit.server.token_request`), the attestors
(`chit.attestors`), the policy (`chit.policy`) and the grant
(`chit.server.grant`), the minting of a JWT (`chit.server.mint`) or of STS
credentials (`chit.server.sts`). It returns an `Outcome`: the response, and
the audit line built once, at the end, from what the steps returned (docs/reference
"Audit log"). Any refusal is an `OAuthError` (`chit.server.errors`); an audit
line never carries a token.

The HTTP layer (`chit.server.app`) only adapts: it hands over the request's
parts and answers with the outcome.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterable, Mapping

from chit import metrics
from chit.audit import AuditLog, audit_timestamp, new_decision_id
from chit.attestors.base import Attestation, EvidenceUnavailable, InvalidEvidence
from chit.attestors.routing import AttestorRouter
from chit.policy import (
    PolicyEngine,
    PolicyEvaluationError,
    PolicyInputUnrepresentable,
    PolicyUnavailable,
    parse_decision,
    policy_input,
)
from chit.policy.decision import Decision
from chit.server import tracing
from chit.server.audiences import token_profile
from chit.server.config import MAX_TOKEN_TTL, Config
from chit.server.errors import NO_STORE, InvalidRequest, OAuthError, PolicyDenied, ServerError, TemporarilyUnavailable
from chit.server.grant import Grant, grant
from chit.server.keys import KeyStore, SigningKey
from chit.server.logs import DECISION_ID
from chit.server.mint import TYP_ACCESS_TOKEN, TYP_JWT, mint_jwt
from chit.server.ratelimit import RateLimits
from chit.server.reserved_audience import WEB_IDENTITY_AUDIENCE, refuse_reserved_grant
from chit.revocation import Revocations
from chit.server.signatures import ImageSignatures
from chit.server.sts import STS_DURATION_SECONDS, WEB_IDENTITY_TOKEN_TTL, StsIssuer
from chit.server.token_request import (
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_AWS_CREDENTIALS,
    TokenRequest,
    parse_token_request,
    read_form_body,
)
from chit.state import StateStore, StateUnavailable

log = logging.getLogger("chit.exchange")

@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the HTTP layer hands over of a POST /token: nothing parsed yet."""

    client: str | None  # the remote address
    query: str
    content_type: str | None
    content_length: str | None
    body: AsyncIterable[bytes]
    # W3C Trace Context: the caller's trace, continued when tracing is on.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """A minted credential: the RFC 8693 §2.2.1 response, its lifetime and its id."""

    response: dict[str, Any]
    ttl: int
    jti: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one exchange and the audit line written for it."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]
    audit: dict[str, Any]


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

    async def handle(self, http: HttpRequest, now: float) -> Outcome:
        """One POST /token: every log line meanwhile carries its decision_id, and with
        tracing on it is one span, continuing the caller's trace."""
        decision_id = new_decision_id()
        logged = DECISION_ID.set(decision_id)
        try:
            with tracing.exchange_span(http.traceparent, http.tracestate) as span:
                outcome = await self.pipeline(http, now, decision_id)
                audit = outcome.audit
                tracing.annotate(
                    span,
                    {"chit.decision_id": decision_id, "chit.outcome": audit["outcome"], "chit.kind": audit["kind"],
                     "oauth.error": audit["error"], "http.response.status_code": outcome.status},
                    failed=outcome.status >= 500,
                )
                return outcome
        finally:
            DECISION_ID.reset(logged)

    async def pipeline(self, http: HttpRequest, now: float, decision_id: str) -> Outcome:
        """One POST /token, from its raw parts to the response and the audit line."""
        started = time.perf_counter()
        request: TokenRequest | None = None
        subject: Attestation | None = None
        decision: Decision | None = None
        granted: Grant | None = None
        issued: Issued | None = None
        error: OAuthError | None = None
        try:
            await self.limits.count_client(http.client, now)
            request = await self.parse(http)
            subject = await self.attest("subject_token", request.subject_token_type, request.subject_token, now)
            await self.admit("subject", subject, now)
            actor = await self.attest_actor(request, now)
            subject, actor = await self.enrich(subject, actor)
            decision = await self.decide(subject, actor, request, now)
            granted = self.grant(decision, request)
            issued = await self.mint(request, subject, actor, decision, granted, now)
            await self.commit_replay_guards(subject, actor)
        except OAuthError as refusal:
            error, issued = refusal, None
        except Exception:  # noqa: BLE001 — an answer is owed: a 500 without a traceback, logged here
            log.exception("exchange %s failed unexpectedly", decision_id)
            error, issued = ServerError("internal error"), None
        record = audit_record(decision_id, now, started, http.client, request, subject, decision, granted, issued, error)
        self.audit.write(record)
        metrics.EXCHANGES.labels(record["outcome"], record["kind"] or "none", record["error"] or "none").inc()
        if isinstance(error, TemporarilyUnavailable):
            metrics.UNAVAILABLE.labels(error.cause).inc()
        metrics.EXCHANGE_SECONDS.observe(record["latency_ms"] / 1000)
        if error is not None:
            return Outcome(*error.answer(decision_id), audit=record)
        assert issued is not None
        return Outcome(200, issued.response, NO_STORE, record)

    # --- parse ------------------------------------------------------------------------------

    async def parse(self, http: HttpRequest) -> TokenRequest:
        if http.query:
            # RFC 6749 §3.2 puts the parameters in the body; tokens in URLs end up in logs.
            raise InvalidRequest("parameters must be sent in the request body")
        request = parse_token_request(http.content_type, await read_form_body(http.content_length, http.body))
        if not self.attestors.accepts(request.subject_token_type):
            raise InvalidRequest("subject_token_type not enabled on this server")
        return request

    # --- attest -----------------------------------------------------------------------------

    @tracing.step("chit.attest")
    async def attest(self, parameter: str, token_type: str, token: str, now: float) -> Attestation:
        """A subject or actor token verified by its attestor: the facts where the workload runs."""
        started = time.perf_counter()
        try:
            return await self.attestors.verify(token_type, token, now)
        except InvalidEvidence as error:
            raise InvalidRequest(f"{parameter} invalid: {error}") from None
        except EvidenceUnavailable as error:
            raise TemporarilyUnavailable(f"cannot verify the {parameter} right now", cause="attestation", detail=f"{parameter}: {error}") from None
        finally:
            metrics.ATTEST_SECONDS.observe(metrics.since(started))

    @tracing.step("chit.admit")
    async def admit(self, role: str, attestation: Attestation, now: float) -> None:
        """The subject's rate limit (docs/reference/http-api.md "Rate limits": requests that attest count
        against their subject), and the operator's revocations for subject and actor."""
        if role == "subject":
            await self.limits.count_subject(attestation.subject, now)
        await self.refuse_revoked(role, attestation.subject)

    async def attest_actor(self, request: TokenRequest, now: float) -> Attestation | None:
        """RFC 8693 §2.1 `actor_token`: the party acting for the subject (delegation)."""
        if request.actor_token is None:
            return None
        assert request.actor_token_type is not None
        actor = await self.attest("actor_token", request.actor_token_type, request.actor_token, now)
        await self.admit("actor", actor, now)
        return actor

    async def refuse_revoked(self, role: str, subject: str) -> None:
        """`chit revoke --subject`: the operator's kill switch holds until lifted."""
        try:
            revoked = await self.revocations.subject_revoked(subject)
        except StateUnavailable as error:
            raise TemporarilyUnavailable("cannot check revocations right now", cause="state", detail=f"revocations: {error}") from None
        if revoked:
            raise PolicyDenied("the exchange is not permitted", detail=f"{role} {subject} is revoked (chit revoke --subject)")

    # --- enrich -----------------------------------------------------------------------------

    @tracing.step("chit.enrich")
    async def enrich(self, subject: Attestation, actor: Attestation | None) -> tuple[Attestation, Attestation | None]:
        """Platform API checks and facts (pod lookup, instance state); for the actor too:
        a leaked token of a deleted pod is no actor."""
        return await self._enrich("subject_token", subject), None if actor is None else await self._enrich("actor_token", actor)

    async def _enrich(self, parameter: str, attestation: Attestation) -> Attestation:
        try:
            return await self.attestors.enrich(attestation)
        except InvalidEvidence as error:
            raise InvalidRequest(f"{parameter} invalid: {error}") from None
        except EvidenceUnavailable as error:
            raise TemporarilyUnavailable("cannot verify the workload right now", cause="platform_api", detail=f"{parameter}: {error}") from None

    # --- decide -----------------------------------------------------------------------------

    @tracing.step("chit.decide")
    async def decide(self, subject: Attestation, actor: Attestation | None, request: TokenRequest, now: float) -> Decision:
        """The policy's decision on the verified facts and the request: evaluation errors
        and malformed decisions are denials, an engine that cannot answer a 503."""
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
            raise TemporarilyUnavailable("the policy engine is unavailable", cause="policy", detail=str(error)) from None
        finally:
            metrics.POLICY_SECONDS.observe(metrics.since(started))
        return parse_decision(value)

    def grant(self, decision: Decision, request: TokenRequest) -> Grant:
        """What the decision grants for this request (chit.server.grant)."""
        aws_credentials = request.requested_token_type == TOKEN_TYPE_AWS_CREDENTIALS
        granted = grant(decision, request.scope, request.targets, require_audience=not aws_credentials)
        if not aws_credentials:
            # STS credentials carry no audience: the reservation is about JWTs for STS.
            refuse_reserved_grant(granted.audience)
        return granted

    # --- mint -------------------------------------------------------------------------------

    @tracing.step("chit.mint")
    async def mint(
        self,
        request: TokenRequest,
        subject: Attestation,
        actor: Attestation | None,
        decision: Decision,
        granted: Grant,
        now: float,
    ) -> Issued:
        if request.requested_token_type == TOKEN_TYPE_AWS_CREDENTIALS:
            return await self.mint_aws_credentials(subject, actor, decision, now)
        profile = token_profile(granted.audience, self.config.tokens.audiences, self.config.signing.algorithm)
        ttl = min(self.lifetime(decision, subject, actor, now=now), profile.ttl_seconds)
        started = time.perf_counter()
        token = mint_jwt(
            self.signing_key(now, profile.algorithm),
            issuer=self.config.issuer,
            subject=subject.subject,
            audience=granted.audience,
            scope=granted.scope,
            ttl=ttl,
            now=now,
            att=subject.att_claim(),
            actor=None if actor is None else actor.subject,
            typ=TYP_JWT if request.requested_token_type != TOKEN_TYPE_ACCESS_TOKEN else TYP_ACCESS_TOKEN,
        )
        metrics.SIGN_SECONDS.observe(metrics.since(started))
        response: dict[str, Any] = {
            "access_token": token.token,
            "issued_token_type": request.requested_token_type,
            "token_type": "Bearer",
            "expires_in": ttl,
        }
        if granted.scope:
            response["scope"] = " ".join(granted.scope)
        return Issued(response, ttl, token.jti)

    def lifetime(self, decision: Decision, *evidence: Attestation | None, now: float) -> int:
        """min(decision ttl, configured ttl, 900, the evidence's remaining lifetime)."""
        ttl = min(decision.ttl or MAX_TOKEN_TTL, self.config.tokens.ttl_seconds, MAX_TOKEN_TTL)
        for attestation in evidence:
            if attestation is not None and attestation.expires_at is not None:
                ttl = min(ttl, int(attestation.expires_at - now))
        if ttl < 1:
            raise InvalidRequest("subject_token expires too soon to back a credential")
        return ttl

    def signing_key(self, now: float, algorithm: str | None = None) -> SigningKey:
        key = self.keys.signing_key(now, algorithm)
        if key is None:
            algorithm = algorithm or self.keys.series.default
            raise TemporarilyUnavailable(
                "no signing key is active", cause="signing_key", detail=f"no active {algorithm} key in {self.keys.keys_dir}"
            )
        return key

    async def mint_aws_credentials(self, subject: Attestation, actor: Attestation | None, decision: Decision, now: float) -> Issued:
        """STS credentials for the decision's role; they last 900 s (docs/reference "Minted
        lifetime": AWS's minimum is chit's maximum), so a shorter decision ttl refuses them."""
        if decision.aws is None:
            raise PolicyDenied("the exchange is not permitted", detail="aws-credentials requested; decision.aws.role_arn absent")
        if decision.ttl is not None and decision.ttl < STS_DURATION_SECONDS:
            raise PolicyDenied(
                "the exchange is not permitted", detail=f"decision.ttl {decision.ttl} s is under the 900 s AWS credentials last"
            )
        if self.config.tokens.ttl_seconds < STS_DURATION_SECONDS:
            # The operator's cap holds for every credential chit hands out.
            raise InvalidRequest("aws-credentials are not available: tokens.ttl_seconds is under 900")
        session = self.sts.session(decision.aws, subject, actor)
        web_identity_token = None
        if session.web_identity_claims is not None:
            # chit's own JWT for STS: the only token ever minted for the reserved audience.
            web_identity_token = mint_jwt(
                self.signing_key(now),
                issuer=self.config.issuer,
                subject=subject.subject,
                audience=(WEB_IDENTITY_AUDIENCE,),
                scope=(),
                ttl=WEB_IDENTITY_TOKEN_TTL,
                now=now,
                att=subject.att_claim(),
                typ=TYP_JWT,
                extra_claims=session.web_identity_claims,
            ).token
        credentials = await self.sts.assume(session, web_identity_token)
        expires_in = max(1, min(STS_DURATION_SECONDS, round(credentials.expiration.timestamp() - now)))
        response = {
            "access_token": credentials.session_token,
            "issued_token_type": TOKEN_TYPE_AWS_CREDENTIALS,
            "token_type": "N_A",
            "expires_in": expires_in,
            "aws_credentials": credentials.credential_process(),
        }
        # The access key id is not secret (CloudTrail logs it with every call made
        # with these credentials): as the credential's id it links audit and CloudTrail.
        return Issued(response, expires_in, credentials.access_key_id)

    @tracing.step("chit.state")
    async def commit_replay_guards(self, *attestations: Attestation | None) -> None:
        for attestation in attestations:
            if attestation is not None and attestation.replay_guard is not None:
                try:
                    await attestation.replay_guard.commit()
                except InvalidEvidence as error:
                    raise InvalidRequest(f"subject_token invalid: {error}") from None
                except EvidenceUnavailable as error:
                    raise TemporarilyUnavailable("cannot record the exchange right now", cause="state", detail=str(error)) from None

    async def close(self) -> None:
        await self.attestors.close()
        await self.policy.close()
        await self.signatures.close()
        await self.state.close()
        self.audit.close()


# --- audit --------------------------------------------------------------------------------------


def audit_record(
    decision_id: str,
    now: float,
    started: float,
    client: str | None,
    request: TokenRequest | None,
    subject: Attestation | None,
    decision: Decision | None,
    granted: Grant | None,
    issued: Issued | None,
    error: OAuthError | None,
) -> dict[str, Any]:
    """The audit line of one exchange (docs/reference/audit-log.md "Audit log"), from what its steps
    returned before it ended: never a token, a signature or an AWS secret."""
    reasons = decision.reasons if decision is not None else ()
    if error is not None and error.detail != error.description and error.detail not in reasons:
        reasons = (*reasons, error.detail)
    return {
        "ts": audit_timestamp(now),
        "decision_id": decision_id,
        "outcome": "issued" if error is None else error.outcome,
        "error": None if error is None else error.error,
        "subject": None if subject is None else subject.subject,
        "kind": None if subject is None else subject.kind,
        "region": None if subject is None else subject.region,
        "client": client,
        "audience": [] if request is None else list(request.audience),
        "resource": [] if request is None else list(request.resource),
        "scope": [] if request is None else list(request.scope),
        "granted_audience": [] if granted is None else list(granted.audience),
        "granted_scope": [] if granted is None else list(granted.scope),
        "ttl": None if issued is None else issued.ttl,
        "jti": None if issued is None else issued.jti,
        "reasons": list(reasons),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }
