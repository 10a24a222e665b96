"""chit's HTTP surface (docs/reference/http-api.md "HTTP endpoints"): one method per endpoint, adapting HTTP to chit.

`Endpoints.token` hands the request's parts to the exchange
(`chit.server.exchange`, where the whole pipeline is) and answers with its
outcome; the other endpoints are as small. `create_app` builds everything once
and routes to the methods, which tests may also call in process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chit import metrics
from chit.attestors.aws_iam.verifier import AwsIamVerifier
from chit.attestors.aws_iid.verifier import AwsIidVerifier
from chit.attestors.base import DocumentVerifier, JwtVerifier
from chit.attestors.gcp.verifier import GcpVerifier
from chit.attestors.kubernetes.verifier import KubernetesVerifier
from chit.attestors.oidc.verifier import OidcVerifier
from chit.attestors.routing import AttestorRouter
from chit.aws import AwsClients
from chit.policy import build_engine
from chit.protocol import GRANT_TYPE_TOKEN_EXCHANGE
from chit.audit import AuditLog
from chit.server import tracing
from chit.server.config import Config
from chit.server.errors import NO_STORE, InvalidRequest, OAuthError, TemporarilyUnavailable
from chit.server.exchange import HttpRequest, TokenExchange
from chit.server.introspection import active_claims, bearer_token, introspection_response, require_introspect_scope, verify_own_token
from chit.server.keys import KeySeries, KeyStore, ensure_signing_keys
from chit.server.readiness import Readiness
from chit.server.signatures import ImageSignatures
from chit.server.sts import StsIssuer
from chit.server.token_request import parse_token_parameter, read_form_body
from chit.state import StateUnavailable, build_state_store

log = logging.getLogger("chit.app")


def build_attestors(config: Config, state: StateStore, aws: AwsClients, is_own_kid: Callable[[str | None], bool]) -> AttestorRouter:
    """The verifiers the configuration enables, routed by token type and issuer."""
    jwt_verifiers: list[JwtVerifier] = []
    if config.attestors.kubernetes.clusters:
        jwt_verifiers.append(KubernetesVerifier(config.attestors.kubernetes, config.trust_domain))
    if config.attestors.gcp.enabled:
        jwt_verifiers.append(GcpVerifier(config.attestors.gcp, trust_domain=config.trust_domain, issuer=config.issuer, state=state))
    if config.attestors.oidc.issuers:
        jwt_verifiers.append(OidcVerifier(config.attestors.oidc, trust_domain=config.trust_domain, state=state))
    document_verifiers: list[DocumentVerifier] = []
    if config.attestors.aws_iid.enabled:
        document_verifiers.append(AwsIidVerifier(config.attestors.aws_iid, config.trust_domain, state, aws))
    if config.attestors.aws_iam.enabled:
        document_verifiers.append(AwsIamVerifier(config.attestors.aws_iam, trust_domain=config.trust_domain, issuer=config.issuer, state=state))
    return AttestorRouter(jwt_verifiers, document_verifiers, own_issuer=config.issuer, is_own_kid=is_own_kid)


def build_signatures(config: Config) -> ImageSignatures:
    return ImageSignatures(config.image_signatures.keys, config.image_signatures.timeout_ms / 1000, config.image_signatures.registries)


def build_exchange(config: Config) -> TokenExchange:
    """Everything an exchange needs, built once; raises on any unusable configuration."""
    series = KeySeries(config.signing.series)
    ensure_signing_keys(config.signing.keys_dir, series)
    keys = KeyStore(config.signing.keys_dir, series)
    state = build_state_store(config.state)
    aws = AwsClients(config.aws)  # boto3 is loaded only when AWS is first called
    router = build_attestors(config, state, aws, keys.is_own_kid)
    return TokenExchange(
        config, keys, router, build_engine(config.policy), AuditLog(config.audit.sink), state, StsIssuer(config.aws, aws), build_signatures(config)
    )


def error_response(error: OAuthError) -> JSONResponse:
    status, body, headers = error.answer()
    return JSONResponse(body, status_code=status, headers=headers)


class Endpoints:
    """Every endpoint of chit, as a method taking a Starlette request."""

    def __init__(self, config: Config, exchange: TokenExchange):
        self.config = config
        self.exchange = exchange
        self.metadata = json.dumps(server_metadata(config, exchange.keys)).encode()
        self.readiness = Readiness(exchange)

    async def token(self, request: Request) -> Response:
        """RFC 8693 token exchange: the pipeline is `TokenExchange.handle`."""
        outcome = await self.exchange.handle(
            HttpRequest(
                client=request.client.host if request.client else None,
                query=request.url.query,
                content_type=request.headers.get("content-type"),
                content_length=request.headers.get("content-length"),
                body=request.stream(),
                traceparent=request.headers.get("traceparent"),
                tracestate=request.headers.get("tracestate"),
            ),
            time.time(),
        )
        return JSONResponse(outcome.body, status_code=outcome.status, headers=dict(outcome.headers))

    async def form_token(self, request: Request) -> str:
        """The `token` parameter of /revoke and /introspect, from the body only."""
        if request.url.query:
            raise InvalidRequest("parameters must be sent in the request body")
        body = await read_form_body(request.headers.get("content-length"), request.stream())
        return parse_token_parameter(request.headers.get("content-type"), body)

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 §2.2: "The authorization server responds with HTTP status code 200
        if the token has been revoked successfully or if the client submitted an
        invalid token." The token is its own authorization (docs/reference/http-api.md "Authentication")."""
        now = time.time()
        try:
            claims = verify_own_token(self.exchange.keys, self.config.issuer, await self.form_token(request), now)
            if claims is not None and isinstance(claims.get("jti"), str):
                await self.exchange.revocations.revoke_token(claims["jti"], claims["exp"], now)
                log.info("token %s of %s revoked by its holder", claims["jti"], claims["sub"])
        except StateUnavailable as error:
            # RFC 7009 §2.2.1: on a 503 "the client must assume the token still exists".
            return error_response(TemporarilyUnavailable("cannot record the revocation right now", cause="state", detail=str(error)))
        except OAuthError as error:
            return error_response(error)
        return Response(status_code=200, headers=NO_STORE)

    async def introspect(self, request: Request) -> Response:
        """RFC 7662 §2: the caller authenticates with its own chit:introspect token."""
        now, keys, issuer, revocations = time.time(), self.exchange.keys, self.config.issuer, self.exchange.revocations
        try:
            caller = bearer_token(request.headers.get("authorization"))
            require_introspect_scope(await active_claims(keys, issuer, revocations, caller, now), issuer)
            token = await self.form_token(request)
            body = introspection_response(await active_claims(keys, issuer, revocations, token, now))
        except OAuthError as error:
            return error_response(error)
        return JSONResponse(body, headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        now = time.time()
        for algorithm in self.config.signing.series:
            active = self.exchange.keys.signing_key(now, algorithm)
            if active is not None:
                metrics.SIGNING_KEY_ACTIVATED.labels(algorithm=algorithm).set(active.activates_at)
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def discovery(self, request: Request) -> Response:
        return Response(self.metadata, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    async def jwks(self, request: Request) -> Response:
        return Response(
            self.exchange.keys.jwks_json(time.time()),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=60"},
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Each check passes or not; `reasons` says why for each one that does not."""
        reasons = await self.readiness.check()
        checks = {check: reason is None for check, reason in reasons.items()}
        ready = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        if not ready:
            body["reasons"] = {check: reason for check, reason in reasons.items() if reason is not None}
        return JSONResponse(body, status_code=200 if ready else 503)

    def routes(self) -> list[Route]:
        return [
            Route("/token", self.token, methods=["POST"]),
            Route("/.well-known/openid-configuration", self.discovery, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", self.discovery, methods=["GET"]),
            Route("/.well-known/jwks.json", self.jwks, methods=["GET"]),
            Route("/revoke", self.revoke, methods=["POST"]),
            Route("/introspect", self.introspect, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]


def create_app(config: Config) -> Starlette:
    tracing.start(config.tracing)
    exchange = build_exchange(config)
    endpoints = Endpoints(config, exchange)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await exchange.close()
        tracing.shutdown()

    app = Starlette(routes=endpoints.routes(), lifespan=lifespan)
    app.state.exchange = exchange
    app.state.endpoints = endpoints
    return app


def server_metadata(config: Config, keys: KeyStore) -> dict[str, Any]:
    """RFC 8414 / OpenID Connect Discovery metadata; the same document at both paths."""
    algorithms = sorted(set(config.signing.series) | {k.algorithm for k in keys.keys})
    return {
        "issuer": config.issuer,
        "token_endpoint": config.token_endpoint,
        "jwks_uri": f"{config.issuer}/.well-known/jwks.json",
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint": f"{config.issuer}/revoke",  # RFC 8414 §2; RFC 7009
        "revocation_endpoint_auth_methods_supported": ["none"],  # the token is its own authorization
        # RFC 7662: callers authenticate with a chit:introspect bearer token, which has no
        # registered client authentication method name, so none is listed.
        "introspection_endpoint": f"{config.issuer}/introspect",
        # OpenID Connect Discovery requires these three; cloud IAM OIDC federation reads them.
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
    }


def app_from_environment() -> Starlette:
    """uvicorn's factory in each worker process: the config `chit serve` validated."""
    import os

    from chit.server.config import RESOLVED_CONFIG_ENV

    return create_app(Config.model_validate_json(os.environ[RESOLVED_CONFIG_ENV]))
