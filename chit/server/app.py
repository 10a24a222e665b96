"""chit's HTTP surface: the Starlette application and its endpoints (DESIGN.md "HTTP endpoints")."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chit.attestors.base import DocumentVerifier, JwtVerifier
from chit.attestors.aws_iid.verifier import AwsIidVerifier
from chit.attestors.gcp.verifier import GcpVerifier
from chit.attestors.kubernetes.verifier import KubernetesVerifier
from chit.attestors.routing import AttestorRouter
from chit import metrics
from chit.server.audit import AuditLog
from chit.aws import AwsClients
from chit.server.config import Config
from chit.server.errors import InvalidRequest, OAuthError, RequestTooLarge, TemporarilyUnavailable
from chit.server.exchange import AuditEntry, TokenExchange
from chit.server.introspection import active_claims, bearer_token, introspection_response, require_introspect_scope, verify_own_token
from chit.server.keys import KeyStore, ensure_signing_key
from chit.policy import build_engine
from chit.server.signatures import ImageSignatures
from chit.state import StateStore, StateUnavailable, build_state_store
from chit.server.sts import StsIssuer
from chit.server.token_request import GRANT_TYPE_TOKEN_EXCHANGE, MAX_BODY_BYTES, parse_token_parameter, parse_token_request

log = logging.getLogger("chit.app")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


def oauth_error_response(error: OAuthError, decision_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error.error, "error_description": error.description}
    if decision_id is not None:
        body["decision_id"] = decision_id
    headers = {**NO_STORE, **error.headers}
    if error.status_code == 401:
        headers.setdefault("WWW-Authenticate", f'Bearer error="{error.error}"')
    if error.status_code == 413:
        headers["Connection"] = "close"  # the rest of the body is not read
    return JSONResponse(body, status_code=error.status_code, headers=headers)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing anything over `limit` before it is all in memory."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length")
        if int(declared) > limit:
            raise RequestTooLarge(f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(f"request body over {limit} bytes")
    return bytes(body)


def build_exchange(config: Config) -> TokenExchange:
    """Everything an exchange needs, built once; raises on any unusable configuration."""
    ensure_signing_key(config.signing.keys_dir, config.signing.algorithm)
    keys = KeyStore(config.signing.keys_dir)
    state = build_state_store(config.state)
    aws = AwsClients(config.aws)  # boto3 is loaded only when AWS is first called
    jwt_verifiers: list[JwtVerifier] = []
    if config.attestors.kubernetes.clusters:
        jwt_verifiers.append(KubernetesVerifier(config.attestors.kubernetes, config.trust_domain))
    if config.attestors.gcp.enabled:
        jwt_verifiers.append(GcpVerifier(config.attestors.gcp, trust_domain=config.trust_domain, issuer=config.issuer, state=state))
    document_verifiers: list[DocumentVerifier] = []
    if config.attestors.aws_iid.enabled:
        document_verifiers.append(AwsIidVerifier(config.attestors.aws_iid, config.trust_domain, state, aws))
    router = AttestorRouter(jwt_verifiers, document_verifiers, own_issuer=config.issuer, is_own_kid=keys.is_own_kid)
    signatures = ImageSignatures(
        config.image_signatures.keys, config.image_signatures.timeout_ms / 1000, config.image_signatures.registries
    )
    return TokenExchange(
        config, keys, router, build_engine(config.policy), AuditLog(config.audit.sink), state, StsIssuer(config.aws, aws), signatures
    )


async def form_token(request: Request) -> str:
    """The `token` parameter of /revoke and /introspect, from the body only."""
    if request.url.query:
        raise InvalidRequest("parameters must be sent in the request body")
    return parse_token_parameter(request.headers.get("content-type"), await read_body(request))


async def state_ready(state: StateStore) -> bool:
    try:
        return await state.ping()
    except StateUnavailable:
        return False


def create_app(config: Config) -> Starlette:
    exchange = build_exchange(config)
    metadata = json.dumps(server_metadata(config, exchange.keys)).encode()

    async def token(request: Request) -> Response:
        now = time.time()
        entry = AuditEntry(client=request.client.host if request.client else None)
        try:
            await exchange.limits.count_client(entry.client, now)
            if request.url.query:
                # RFC 6749 §3.2 puts the parameters in the body; tokens in URLs end up in logs.
                raise InvalidRequest("parameters must be sent in the request body")
            body = await read_body(request)
            token_request = parse_token_request(request.headers.get("content-type"), body)
            response = JSONResponse(await exchange.exchange(token_request, entry, now), headers=NO_STORE)
        except OAuthError as error:
            entry.refused(error)
            response = oauth_error_response(error, entry.decision_id)
        except Exception:
            log.exception("exchange %s failed unexpectedly", entry.decision_id)
            entry.outcome, entry.error = "unavailable", "server_error"
            response = JSONResponse(
                {"error": "server_error", "error_description": "internal error", "decision_id": entry.decision_id},
                status_code=500,
                headers=NO_STORE,
            )
        record = entry.record(now)
        exchange.audit.write(record)
        metrics.EXCHANGES.labels(entry.outcome, entry.kind or "none", entry.error or "none").inc()
        metrics.EXCHANGE_SECONDS.observe(record["latency_ms"] / 1000)
        return response

    async def revoke(request: Request) -> Response:
        """RFC 7009 §2.2: "The authorization server responds with HTTP status code 200
        if the token has been revoked successfully or if the client submitted an
        invalid token." The token is its own authorization (DESIGN.md "Authentication")."""
        now = time.time()
        try:
            claims = verify_own_token(exchange.keys, config.issuer, await form_token(request), now)
            if claims is not None and isinstance(claims.get("jti"), str):
                await exchange.revocations.revoke_token(claims["jti"], claims["exp"], now)
                log.info("token %s of %s revoked by its holder", claims["jti"], claims["sub"])
        except StateUnavailable as error:
            # RFC 7009 §2.2.1: on a 503 "the client must assume the token still exists".
            return oauth_error_response(TemporarilyUnavailable("cannot record the revocation right now", detail=str(error)))
        except OAuthError as error:
            return oauth_error_response(error)
        return Response(status_code=200, headers=NO_STORE)

    async def introspect(request: Request) -> Response:
        """RFC 7662 §2: the caller authenticates with its own chit:introspect token."""
        now = time.time()
        try:
            caller = bearer_token(request.headers.get("authorization"))
            require_introspect_scope(await active_claims(exchange.keys, config.issuer, exchange.revocations, caller, now), config.issuer)
            token = await form_token(request)
            body = introspection_response(await active_claims(exchange.keys, config.issuer, exchange.revocations, token, now))
        except OAuthError as error:
            return oauth_error_response(error)
        return JSONResponse(body, headers=NO_STORE)

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def discovery(request: Request) -> Response:
        return Response(metadata, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    async def jwks(request: Request) -> Response:
        return Response(
            exchange.keys.jwks_json(time.time()),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=60"},
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = {
            "signing_key": exchange.keys.signing_key(time.time()) is not None,
            "policy": await exchange.policy.ready(),
            "state": await state_ready(exchange.state),
        }
        ready = all(checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await exchange.close()

    app = Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", discovery, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
            Route("/revoke", revoke, methods=["POST"]),
            Route("/introspect", introspect, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.exchange = exchange
    return app


def server_metadata(config: Config, keys: KeyStore) -> dict[str, Any]:
    """RFC 8414 / OpenID Connect Discovery metadata; the same document at both paths."""
    algorithms = sorted({k.algorithm for k in keys.keys}) or [config.signing.algorithm]
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
