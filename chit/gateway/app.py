"""The gateway's HTTP surface: every route's prefix goes to `Gateway.handle`; beside them
`/healthz`, `/readyz` and `/metrics` (docs/reference/gateway-configuration.md "Endpoints").

`build_gateway` builds everything once from the configuration; it raises on
anything unusable (a key file that cannot be read), so that `chit gateway`
fails at start with the reason rather than at the first call.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chit import metrics
from chit.attestors.jwks import RemoteKeySource, http_client
from chit.audit import AuditLog
from chit.aws import AwsClients
from chit.gateway.budgets import Budgets
from chit.gateway.config import RESOLVED_CONFIG_ENV, GatewayConfig
from chit.gateway.proxy import Gateway
from chit.gateway.upstream import Upstreams
from chit.gateway.tokens import AccessTokenVerifier
from chit.gateway.upstream_keys import FileKey, KeyUnavailable, SecretsManagerKey, UpstreamKey
from chit.gateway.revocations import TokenRevocations
from chit.state import StateUnavailable, build_state_store

log = logging.getLogger("chit.gateway")

STATE_POOL_SIZE = 256  # Redis connections per worker
PROXIED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def build_gateway(config: GatewayConfig) -> Gateway:
    """Everything a call needs, built once; KeyUnavailable when a key file is unusable."""
    # Every call reads and writes budgets: a burst of calls must not wait for a connection.
    state = build_state_store(config.state, pool_size=STATE_POOL_SIZE)
    aws = AwsClients(config.aws)  # boto3 is loaded only when a secret is first read
    keys: dict[str, UpstreamKey] = {}
    for route in config.routes:
        if route.key.file is not None:
            source = FileKey(Path(route.key.file))
            source.load()
            keys[route.name] = source
        else:
            assert route.key.aws_secret is not None
            keys[route.name] = SecretsManagerKey(route.key.aws_secret, aws)
    chit_keys = RemoteKeySource(
        jwks_uri=config.chit.keys_url, client=http_client(config.chit.ca_file), label="chit"
    )
    return Gateway(
        config,
        AccessTokenVerifier(config.chit.issuer, config.audience, chit_keys),
        TokenRevocations(state),
        Budgets(state),
        keys,
        Upstreams(config.routes),
        AuditLog(config.audit.sink),
    )


class Endpoints:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the state store answers and every route has its key."""
        checks: dict[str, bool] = {}
        try:
            checks["state"] = await self.gateway.budgets.state.ping()
        except StateUnavailable:
            checks["state"] = False
        for name, source in self.gateway.keys.items():
            try:
                checks[f"key:{name}"] = bool(await source.current())
            except KeyUnavailable:
                checks[f"key:{name}"] = False
        ready = all(checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            # Every method: the route's allowlist decides (Starlette's default would be GET).
            Route("/{path:path}", self.gateway.handle, methods=list(PROXIED_METHODS)),
        ]


def create_app(config: GatewayConfig) -> Starlette:
    gateway = build_gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.upstreams.close()
        await gateway.verifier.keys.close()
        await gateway.budgets.state.close()
        gateway.audit.close()

    app = Starlette(routes=Endpoints(gateway).routes(), lifespan=lifespan)
    app.state.gateway = gateway
    return app


def app_from_environment() -> Starlette:
    """uvicorn's factory in each worker process: the configuration `chit gateway` validated."""
    return create_app(GatewayConfig.model_validate_json(os.environ[RESOLVED_CONFIG_ENV]))
