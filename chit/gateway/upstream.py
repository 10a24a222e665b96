"""Calling the upstreams: one aiohttp client session per route, created in the event loop
on first use.

Each session verifies TLS (the system's CAs, and the route's `ca_file`), never
follows a redirect (a redirect is answered 502: neither followed nor handed to
the client, whose SDK would follow it with the chit token), never takes a proxy
from the environment, sends the path exactly as checked (`chit.gateway.routes`:
no re-quoting), and bounds the connect and each read. aiohttp rather than httpx
here: forwarding costs it about a quarter of the CPU (docs/operators/gateway.md
"Performance").
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from chit.gateway.config import Route
from chit.gateway.errors import BadGateway, GatewayTimeout

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_CONNECTIONS_PER_ROUTE = 512


class Upstreams:
    def __init__(self, routes: list[Route]):
        self.routes = {route.name: route for route in routes}
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, route: Route) -> aiohttp.ClientSession:
        session = self._sessions.get(route.name)
        if session is None:
            context = ssl.create_default_context()
            if route.ca_file is not None:
                context.load_verify_locations(cafile=str(route.ca_file))
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=MAX_CONNECTIONS_PER_ROUTE),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=route.connect_timeout_seconds, sock_read=route.read_timeout_seconds),
                trust_env=False,
                skip_auto_headers=("User-Agent", "Content-Type"),  # only what the client sent
            )
            self._sessions[route.name] = session
        return session

    async def send(self, route: Route, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> aiohttp.ClientResponse:
        """The upstream's answer, its body not read yet; BadGateway or GatewayTimeout."""
        try:
            answer = await self._session(route).request(
                method, URL(url, encoded=True), headers=CIMultiDict(headers), data=body or None, allow_redirects=False
            )
        except asyncio.TimeoutError:  # aiohttp's timeouts are asyncio's
            raise GatewayTimeout(f"the upstream of route {route.name} did not answer in time") from None
        except aiohttp.ClientError as error:
            raise BadGateway(f"the upstream of route {route.name} cannot be reached", detail=f"upstream: {type(error).__name__}") from None
        if answer.status in REDIRECTS:
            answer.close()
            raise BadGateway(
                f"the upstream of route {route.name} answered a redirect, which the gateway does not follow",
                detail=f"upstream answered {answer.status}",
            )
        return answer

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
