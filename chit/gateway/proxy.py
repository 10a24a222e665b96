"""One proxied call, whole: route → token → revocation → allowlists → model → budget →
key → forward → relay (usage, redaction) → charge → audit.

`Gateway.handle` is the pipeline; every refusal is a `GatewayError`
(`chit.gateway.errors`) raised before the upstream is called. Once the
upstream answers, its status and body go to the client as they arrive; the
audit line is written when the answer has ended (or the client has gone), with
the tokens the provider reported. Never in an answer, a log line or an audit
line: the upstream key (redacted wherever the upstream echoes it) and the chit
token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp
import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from chit.audit import AuditLog, audit_timestamp, new_decision_id
from chit.bounded import BodyTooLarge, read_bounded
from chit.gateway.budgets import Budgets
from chit.gateway.config import GatewayConfig, Route
from chit.gateway.errors import (
    GatewayError,
    InvalidRequest,
    InsufficientScope,
    InvalidToken,
    RequestTooLarge,
    TemporarilyUnavailable,
)
from chit.gateway import metrics
from chit.gateway.forwarding import client_headers, upstream_headers
from chit.gateway.redaction import Redactor
from chit.gateway.revocations import TokenRevocations
from chit.gateway.routes import RouteTable, UpstreamRequest, requested_model
from chit.gateway.tokens import AccessToken, AccessTokenVerifier, presented_token
from chit.gateway.upstream import Upstreams
from chit.gateway.upstream_keys import KeyUnavailable, UpstreamKey
from chit.gateway.usage import JsonUsage, SseUsage, UsageMeter
from chit.serving.logs import DECISION_ID
from chit.state import StateUnavailable

log = logging.getLogger("chit.gateway")

DECISION_HEADER = "x-chit-decision-id"
# Answers up to this size with a Content-Length (JSON completions) are read whole and
# sent in one piece; streams and longer answers pass through as they arrive.
MAX_WHOLE_ANSWER = 1024 * 1024


@dataclass(slots=True)
class Call:
    """What one call's audit line says, filled in as the pipeline learns it."""

    decision_id: str
    now: float
    started: float
    client: str | None
    method: str
    path: str
    route: str | None = None
    subject: str | None = None
    jti: str | None = None
    model: str | None = None
    upstream_status: int | None = None
    tokens: int | None = None
    reasons: list[str] = field(default_factory=list)

    def record(self, outcome: str, error: str | None) -> dict[str, Any]:
        """The audit line (docs/reference/audit-log.md "Gateway lines"): no token, no key."""
        return {
            "ts": audit_timestamp(self.now),
            "decision_id": self.decision_id,
            "outcome": outcome,
            "error": error,
            "subject": self.subject,
            "jti": self.jti,
            "client": self.client,
            "route": self.route,
            "method": self.method,
            "path": self.path[:256],
            "model": self.model,
            "upstream_status": self.upstream_status,
            "tokens": self.tokens,
            "reasons": self.reasons,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        verifier: AccessTokenVerifier,
        revocations: TokenRevocations,
        budgets: Budgets,
        keys: dict[str, UpstreamKey],
        upstreams: Upstreams,
        audit: AuditLog,
    ):
        self.config = config
        self.table = RouteTable(config.routes)
        self.verifier = verifier
        self.revocations = revocations
        self.budgets = budgets
        self.keys = keys
        self.upstreams = upstreams
        self.audit = audit
        self.clock = time.time  # tests set their own

    async def handle(self, request: Request) -> Response:
        call = Call(
            decision_id=new_decision_id(),
            now=self.clock(),
            started=time.perf_counter(),
            client=request.client.host if request.client else None,
            method=request.method,
            path=request.scope.get("raw_path", b"").decode("latin-1") or request.url.path,
        )
        # Every log line of this call, the stream and its charge after the answer included, carries
        # the call's decision_id. Not reset: each request runs in its own task, with its own context.
        DECISION_ID.set(call.decision_id)
        try:
            route = self.table.route(call.path)
            call.route = route.name
            token = await self.authenticate(request, route, call)
            query = request.scope.get("query_string", b"").decode("latin-1")
            upstream = self.table.admit(route, request.method, call.path, query)
            body = await self.read_body(request, route)
            call.model, document = requested_model(route, upstream.path, body)
            body = with_usage_reported(route, upstream, document, body)
            await self.budgets.admit(route, token.subject, call.now)
            key = await self.upstream_key(route)
            answer = await self.forward(upstream, request, body, key)
        except GatewayError as error:
            return self.refuse(call, error)
        call.upstream_status = answer.status
        headers = [(name.encode("latin-1"), value.encode("latin-1"))
                   for name, value in [*client_headers(list(answer.headers.items()), key), (DECISION_HEADER, call.decision_id)]]
        if is_small_answer(answer):
            response: Response = await self.answer_whole(call, route, token.subject, answer, key)
        else:
            response = StreamingResponse(self.relay(call, route, token.subject, answer, key), status_code=answer.status)
        response.raw_headers = headers + [h for h in response.raw_headers if h[0] == b"content-length"]
        return response

    # --- the checks, in order -------------------------------------------------------

    async def authenticate(self, request: Request, route: Route, call: Call) -> AccessToken:
        """A chit token for this gateway, with the route's scope, not revoked."""
        token = await self.verifier.verify(presented_token(request.headers, route.inject.header), call.now)
        call.subject, call.jti = token.subject, token.jti
        if route.scope not in token.scope:
            raise InsufficientScope(f"route {route.name} needs scope {route.scope}", route.scope)
        try:
            revoked = await self.revocations.token_revoked(token.claims, call.now)
        except StateUnavailable as error:
            raise TemporarilyUnavailable("cannot check revocations right now", detail=f"revocations: {error}") from None
        if revoked:
            raise InvalidToken("the access token has been revoked")
        return token

    async def read_body(self, request: Request, route: Route) -> bytes:
        limit = self.config.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise RequestTooLarge(f"the request body is over {limit} bytes")
        if route.provider is not None and request.headers.get("content-encoding", "identity").lower() != "identity":
            raise InvalidRequest(f"route {route.name} reads the request: send it without Content-Encoding")
        try:
            return await read_bounded(request.stream(), limit, "the request body")
        except BodyTooLarge as error:
            raise RequestTooLarge(str(error)) from None

    async def upstream_key(self, route: Route) -> str:
        try:
            return await self.keys[route.name].current()
        except KeyUnavailable as error:
            raise TemporarilyUnavailable("the upstream cannot be called right now", detail=f"upstream key: {error}") from None

    async def forward(self, upstream: UpstreamRequest, request: Request, body: bytes, key: str) -> aiohttp.ClientResponse:
        route = upstream.route
        headers = upstream_headers(request.headers.items(), route, key)
        return await self.upstreams.send(route, request.method, upstream.url, headers, body)

    async def answer_whole(self, call: Call, route: Route, subject: str, answer: aiohttp.ClientResponse, key: str) -> Response:
        """A small answer that is not a stream (a JSON completion): read whole, then sent
        with its length, in one piece."""
        outcome = "forwarded"
        try:
            body = await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            body, outcome = b"", "upstream_error"
            call.reasons.append(f"the upstream's answer broke off: {type(error).__name__}")
        finally:
            answer.release()
        usage = usage_reader(route, answer)
        if usage is not None:
            usage.feed(body)
        redactor = Redactor(key)
        body = redactor.feed(body) + redactor.flush()
        # Charged and audited once the answer has been sent: the client does not wait for it.
        finish = BackgroundTask(self.finish, call, route, subject, usage, outcome)
        return Response(body, status_code=answer.status, background=finish)

    async def relay(self, call: Call, route: Route, subject: str, answer: aiohttp.ClientResponse, key: str) -> AsyncIterator[bytes]:
        """The upstream's body as it arrives, redacted; then the charge and the audit line."""
        usage = usage_reader(route, answer)
        redactor = Redactor(key)
        outcome = "forwarded"
        try:
            async for chunk in answer.content.iter_any():
                if usage is not None:
                    usage.feed(chunk)
                sendable = redactor.feed(chunk)
                if sendable:
                    yield sendable
            rest = redactor.flush()
            if rest:
                yield rest
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            outcome = "upstream_error"
            call.reasons.append(f"the upstream's answer broke off: {type(error).__name__}")
        finally:
            # The client may have gone (the task is cancelled): the charge and the audit still happen.
            with anyio.CancelScope(shield=True):
                answer.close()
                await self.finish(call, route, subject, usage, outcome)

    async def finish(self, call: Call, route: Route, subject: str, usage: JsonUsage | SseUsage | None, outcome: str) -> None:
        """Once the answer has ended: its usage charged, counted and audited."""
        if usage is not None:
            usage.end()
            call.tokens = usage.meter.tokens
        note = await self.budgets.charge(route, subject, call.tokens, self.clock())
        if note:
            call.reasons.append(note)
        if call.tokens:
            metrics.GATEWAY_TOKENS.labels(route.name).inc(call.tokens)
        self.write_audit(call, outcome, None)

    def refuse(self, call: Call, error: GatewayError) -> Response:
        if error.detail != error.description:
            call.reasons.append(error.detail)
        self.write_audit(call, error.outcome, error.error)
        status, body, headers = error.answer(call.decision_id)
        return JSONResponse(body, status_code=status, headers={**headers, DECISION_HEADER: call.decision_id})

    def write_audit(self, call: Call, outcome: str, error: str | None) -> None:
        record = call.record(outcome, error)
        self.audit.write(record)
        route = call.route or "none"
        metrics.GATEWAY_REQUESTS.labels(route, outcome).inc()
        metrics.GATEWAY_SECONDS.labels(route).observe(record["latency_ms"] / 1000)


def is_small_answer(answer: aiohttp.ClientResponse) -> bool:
    """An answer with a length, of at most MAX_WHOLE_ANSWER bytes, and not a stream."""
    length = answer.headers.get("content-length", "")
    return (length.isdigit() and int(length) <= MAX_WHOLE_ANSWER
            and not answer.headers.get("content-type", "").startswith("text/event-stream"))


def usage_reader(route: Route, answer: aiohttp.ClientResponse) -> JsonUsage | SseUsage | None:
    """What reads the usage of an LLM route's answer: its events, or its JSON body."""
    if route.provider is None:
        return None
    content_type = answer.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        return SseUsage(UsageMeter(route.provider))
    return JsonUsage(UsageMeter(route.provider)) if "json" in content_type else None


def with_usage_reported(route: Route, upstream: UpstreamRequest, document: dict[str, Any] | None, body: bytes) -> bytes:
    """The body to forward. OpenAI reports a streamed chat completion's usage only when
    asked (`stream_options.include_usage`): on a route with a token budget the gateway
    asks, so that the stream can be charged. The client then gets one more chunk, with
    empty `choices` and the usage, as OpenAI documents it."""
    if route.provider != "openai" or not route.budgets.tokens_per_day or document is None:
        return body
    if document.get("stream") is not True or not upstream.path.endswith("/chat/completions"):
        return body
    options = document.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object")
    if options.get("include_usage") is True:
        return body
    document = {**document, "stream_options": {**options, "include_usage": True}}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
