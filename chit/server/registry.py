"""A minimal OCI distribution client: manifests by tag, blobs by digest.

Only what signature lookup needs (OCI distribution spec, "Pulling
manifests" and "Pulling blobs"). Every fetch is bounded in time and size; a
blob is accepted only if its bytes hash to the digest it was asked for, so a
registry cannot substitute content. Registries are reached over HTTPS, plain
HTTP only on this machine (the tests' registry), like every other fetch in chit.

Registries that answer 401 with a `Bearer realm=…,service=…,scope=…`
challenge (Docker Hub, ghcr.io, distribution's token auth) get the anonymous
token flow of the Docker token authentication spec: an unauthenticated GET
of the realm for that service and scope, and one retry with the token. chit
has no registry credentials: images a registry serves only to logged-in
clients count as unsigned.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Iterable

import httpcore
import httpx

from chit.bounded import BodyTooLarge, read_bounded
from chit.urls import is_loopback_host, require_safe_url

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
DEFAULT_REGISTRY = "registry-1.docker.io"  # Docker Hub's API host for references without a registry
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')
TOKEN_SECONDS = 60  # an anonymous token is reused this long at most (or its expires_in, if shorter)
_REGISTRY = re.compile(r"(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?")


class RegistryError(Exception):
    """The registry did not answer usefully (unreachable, error, oversized, wrong content)."""


@dataclass(frozen=True, slots=True)
class Repository:
    registry: str  # host[:port] of the registry's API
    name: str  # repository path, e.g. library/nginx

    @property
    def base_url(self) -> str:
        host = self.registry[1 : self.registry.index("]")] if self.registry.startswith("[") else self.registry.split(":")[0]
        scheme = "http" if is_loopback_host(host) else "https"
        return f"{scheme}://{self.registry}/v2/{self.name}"


def repository_of(ref: str) -> Repository | None:
    """The repository of an image reference `[registry/]path[:tag][@digest]`, or None if malformed."""
    name = ref.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
        if "/" not in path:
            path = f"library/{path}"
    if registry == "docker.io":
        registry = DEFAULT_REGISTRY
    last = path.rsplit("/", 1)[-1]
    if ":" in last:  # a tag
        path = path[: len(path) - len(last)] + last.split(":", 1)[0]
    if not _REGISTRY.fullmatch(registry) or not _REPOSITORY.fullmatch(path):
        return None
    return Repository(registry, path)


def is_digest(value: str | None) -> bool:
    return value is not None and bool(_DIGEST.fullmatch(value))


def may_connect(host: str, port: int, addresses: Iterable[str], allowed: frozenset[str] | None) -> bool:
    """Whether chit may open a connection to `host`:`port`, which resolved to `addresses`.

    An allowlisted registry (`image_signatures.registries`, host:port or, for
    ports 80 and 443, host alone) may be anywhere; any other host — a
    registry, a redirect target, a token realm — only at public addresses,
    every one of them.
    """
    if allowed is not None and (f"{host}:{port}" in allowed or (port in (80, 443) and host in allowed)):
        return True
    if host == "localhost":
        return False
    try:
        return all(ipaddress.ip_address(address).is_global for address in addresses)
    except ValueError:  # e.g. a scoped IPv6 address "fe80::1%eth0"
        return False


class _CheckedConnections(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, refuses what `may_connect` refuses, and connects to
    the very addresses it checked (a second DNS answer cannot swap them)."""

    def __init__(self, allowed: frozenset[str] | None):
        self._allowed = allowed
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options=None):  # type: ignore[no-untyped-def]
        try:
            answers = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (OSError, asyncio.TimeoutError) as error:
            raise httpcore.ConnectError(f"{host}: cannot resolve ({type(error).__name__})") from None
        addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
        if not addresses or not may_connect(host, port, addresses, self._allowed):
            raise httpcore.ConnectError(f"{host}:{port} is not a host chit may contact (not allowlisted, not public)")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise httpcore.ConnectError("registries are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _RegistryTransport(httpx.AsyncHTTPTransport):
    """Every request — the registry's, each redirect hop's, the token realm's —
    over HTTPS (plain HTTP on loopback), through `_CheckedConnections`."""

    def __init__(self, allowed: frozenset[str] | None):
        super().__init__(trust_env=False)
        # httpx's transport takes no network backend: its pool is replaced by one
        # built as httpx builds it, with the checking backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_CheckedConnections(allowed),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https" and not is_loopback_host(request.url.host):
            raise httpx.UnsupportedProtocol(f"{request.url.host}: plain HTTP only on loopback")
        return await super().handle_async_request(request)


class RegistryClient:
    def __init__(self, timeout: float, allowed: frozenset[str] | None = None, max_bytes: int = 256 * 1024):
        """`allowed`: `image_signatures.registries` (None: public hosts only, see `may_connect`)."""
        self.max_bytes = max_bytes
        self._client = httpx.AsyncClient(
            transport=_RegistryTransport(allowed),
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,  # registries serve blobs from storage redirects; each hop is checked
            max_redirects=3,
            headers={"User-Agent": "chit"},
        )
        self._tokens: dict[str, tuple[float, str]] = {}  # challenge -> (expires, anonymous token)

    async def _fetch(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                body = await read_bounded(response.aiter_bytes(), self.max_bytes, url) if response.status_code == 200 else b""
                return response, body
        except BodyTooLarge as error:
            raise RegistryError(str(error)) from None
        except httpx.HTTPError as error:
            raise RegistryError(f"{url}: {type(error).__name__}") from None

    async def _anonymous_token(self, challenge: str) -> str:
        """The Docker token flow without credentials, for a `Bearer realm=…` challenge."""
        cached = self._tokens.get(challenge)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        scheme, _, parameters = challenge.partition(" ")
        values = dict(_CHALLENGE_PARAM.findall(parameters))
        if scheme.lower() != "bearer" or "realm" not in values:
            raise RegistryError("the registry requires credentials")
        try:
            realm = require_safe_url(values["realm"], "token realm")
        except ValueError as error:
            raise RegistryError(str(error)) from None
        query = {k: values[k] for k in ("service", "scope") if k in values}
        response, body = await self._fetch(str(httpx.URL(realm, params=query)), {"Accept": "application/json"})
        if response.status_code != 200:
            raise RegistryError(f"token realm {realm}: HTTP {response.status_code}")
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            lifetime = min(float(document.get("expires_in", TOKEN_SECONDS)), TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"token realm {realm}: not a token response") from None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token realm {realm}: no token")
        if len(self._tokens) >= 1000:
            self._tokens.clear()
        self._tokens[challenge] = (time.monotonic() + lifetime, token)
        return token

    async def _get(self, url: str, accept: str) -> bytes | None:
        """The body, None on 404; RegistryError on anything else that is not 200."""
        response, body = await self._fetch(url, {"Accept": accept})
        challenge = response.headers.get("WWW-Authenticate")
        if response.status_code == 401 and challenge:
            token = await self._anonymous_token(challenge)
            response, body = await self._fetch(url, {"Accept": accept, "Authorization": f"Bearer {token}"})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"{url}: HTTP {response.status_code}")
        return body

    async def manifest(self, repository: Repository, reference: str) -> bytes | None:
        """The manifest a tag (or digest) names; None when there is none."""
        return await self._get(f"{repository.base_url}/manifests/{reference}", MANIFEST_TYPES)

    async def blob(self, repository: Repository, digest: str) -> bytes:
        """The blob with this digest, its content checked against the digest."""
        if not is_digest(digest):
            raise RegistryError(f"not a sha256 digest: {digest!r}")
        body = await self._get(f"{repository.base_url}/blobs/{digest}", "*/*")
        if body is None:
            raise RegistryError(f"blob {digest} missing")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(f"blob {digest}: content does not match its digest")
        return body

    async def close(self) -> None:
        await self._client.aclose()
