"""Verification keys of one issuer, from a JWKS URL, OIDC discovery or a file.

Keys are cached. An unknown `kid` triggers a refetch at most once per
`REFETCH_INTERVAL` per source (a negative cache in between), so a flood of
forged kids costs the issuer one request per 30 s. When the source is down,
cached keys keep working; an unknown kid then cannot be checked and fails
closed (`EvidenceUnavailable`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import httpx
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence, printable
from chit.attestors.jose import PublicKey, algorithm_for_key, unusable_key_reason
from chit import metrics
from chit.bounded import BodyTooLarge, read_bounded
from chit.urls import require_safe_url

log = logging.getLogger("chit.jwks")

# The key sources' clock: refetch intervals and freshness are measured on it (tests advance it).
_clock = time.monotonic

REFETCH_INTERVAL = 30.0  # at most one fetch per source per 30 s on unknown kids or failures
REFRESH_AFTER = 300.0  # known keys are refreshed in the background after 5 minutes
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    key: PublicKey
    algorithm: str


class SkippedKeys:
    """Logs each key a source does not use, naming its kid, once while it stays published.

    One per source: a weak key left in a JWKS is one warning, not one per refetch
    or per request. A key the source drops is forgotten, so what is remembered
    never outgrows one document.
    """

    def __init__(self) -> None:
        self._logged: frozenset[tuple[str, str]] = frozenset()
        self._current: set[tuple[str, str]] = set()

    def skip(self, source: str, kid: object, why: str, level: int = logging.WARNING) -> None:
        entry = (printable(repr(kid), 100), why)
        if entry not in self._logged and entry not in self._current:
            log.log(level, "%s: key with kid %s not used: %s", source, *entry)
        self._current.add(entry)

    def parsed(self) -> None:
        """A whole document was read: what it skipped is what has been logged."""
        self._logged, self._current = frozenset(self._current), set()


class UnusableKey(ValueError):
    """Why one entry of a key document is not used; the other entries are."""

    def __init__(self, why: str, level: int = logging.WARNING):
        super().__init__(why)
        self.level = level


def jwk_verification_key(entry: Any) -> VerificationKey:
    """The verification key of one JWK (RFC 7517 §4), or UnusableKey.

    The key must meet `algorithm_for_key` (RS256: RSA ≥ 2048 bits, exponent
    65537; ES256: P-256). RFC 7517 §4.4: "alg" "identifies the algorithm
    intended for use with the key": a JWK whose `alg` is not the algorithm of
    its key (an RSA key labelled ES256, a P-256 key labelled ES384) is not used.
    """
    if not isinstance(entry, dict):
        raise UnusableKey("not a JSON object")
    if entry.get("use", "sig") != "sig":
        raise UnusableKey(f"use {printable(repr(entry.get('use')), 100)} is not sig")
    if "d" in entry:
        # A private key in a public key set is a serious misconfiguration; never use it.
        raise UnusableKey("a private key, published in a public key set", logging.ERROR)
    loader = {"RSA": RSAAlgorithm, "EC": ECAlgorithm}.get(entry.get("kty"))
    if loader is None:
        raise UnusableKey(f"key type {printable(repr(entry.get('kty')), 100)} is neither RSA nor EC")
    try:
        key = loader.from_jwk(entry)
    except (InvalidKeyError, ValueError, TypeError, KeyError):
        raise UnusableKey("the key cannot be read") from None
    algorithm = algorithm_for_key(key)
    if algorithm is None:
        raise UnusableKey(unusable_key_reason(key))
    if entry.get("alg", algorithm) != algorithm:
        raise UnusableKey(f"alg {printable(repr(entry.get('alg')), 100)} contradicts its key, which is for {algorithm}")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise UnusableKey("kid is not a string")
    return VerificationKey(kid, key, algorithm)


def parse_jwks(document: Any, source: str, skipped: SkippedKeys | None = None) -> dict[str | None, VerificationKey]:
    """The usable signing keys of a JWKS (RFC 7517), by kid.

    Every other entry is skipped and logged through `skipped`; one bad key never
    makes the set unusable, the good keys in it keep working.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS (no keys array)")
    if skipped is None:
        skipped = SkippedKeys()
    keys: dict[str | None, VerificationKey] = {}
    duplicate_kids: set[str | None] = set()
    for entry in document["keys"]:
        try:
            found = jwk_verification_key(entry)
        except UnusableKey as error:
            skipped.skip(source, entry.get("kid") if isinstance(entry, dict) else None, str(error), error.level)
            continue
        if found.kid in keys:
            duplicate_kids.add(found.kid)
        keys[found.kid] = found
    for kid in duplicate_kids:
        # Two keys under one kid: which one is meant is ambiguous, so neither is used.
        skipped.skip(source, kid, "the kid appears more than once; those keys are not used")
        del keys[kid]
    skipped.parsed()
    return keys


def select_key(keys: Mapping[str | None, VerificationKey], kid: str | None) -> VerificationKey | None:
    if kid is not None:
        return keys.get(kid)
    # A token without kid is only matched when the issuer has exactly one key.
    return next(iter(keys.values())) if len(keys) == 1 else None


class KeySource(ABC):
    @abstractmethod
    async def key(self, kid: str | None) -> VerificationKey:
        """The key for `kid`, or InvalidEvidence (unknown) / EvidenceUnavailable (cannot tell)."""

    @abstractmethod
    async def refresh(self) -> int:
        """Read or fetch the keys now, whatever is cached (`chit doctor`): the number of
        usable keys, or EvidenceUnavailable naming what went wrong."""

    async def close(self) -> None:
        return None


class FileKeySource(KeySource):
    """A JWKS file, re-read when it changes (checked at most every few seconds)."""

    CHECK_INTERVAL = 5.0

    def __init__(self, path: Path):
        self.path = path
        self._keys: dict[str | None, VerificationKey] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._skipped = SkippedKeys()

    def _load(self) -> None:
        try:
            stat = os.stat(self.path)
            if stat.st_mtime_ns == self._mtime:
                return
            if stat.st_size > MAX_DOCUMENT_BYTES:
                raise ValueError("file too large")
            document = json.loads(self.path.read_bytes())
            self._keys = parse_jwks(document, str(self.path), self._skipped)
            self._mtime = stat.st_mtime_ns
        except (OSError, ValueError) as error:
            log.error("cannot read JWKS file %s: %s", self.path, error)
            if self._mtime is None:
                raise EvidenceUnavailable("issuer keys cannot be read") from None

    async def refresh(self) -> int:
        try:
            if os.stat(self.path).st_size > MAX_DOCUMENT_BYTES:
                raise ValueError("file too large")
            self._keys = parse_jwks(json.loads(self.path.read_bytes()), str(self.path), self._skipped)
        except OSError as error:
            raise EvidenceUnavailable(f"{self.path}: {error.strerror}") from None
        except ValueError as error:
            raise EvidenceUnavailable(f"{self.path}: {error}") from None
        return len(self._keys)

    async def key(self, kid: str | None) -> VerificationKey:
        now = _clock()
        if self._mtime is None or now - self._checked >= self.CHECK_INTERVAL:
            self._checked = now
            self._load()
        found = select_key(self._keys, kid)
        if found is None:
            raise InvalidEvidence("signing key not known for this issuer")
        return found


def http_client(ca_file: Path | None = None, timeout: float = FETCH_TIMEOUT) -> httpx.AsyncClient:
    """An HTTP client for key material (and platform APIs): TLS verified, bounded in
    time, no redirects."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return httpx.AsyncClient(
        verify=context,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"Accept": "application/json", "User-Agent": "chit"},
        trust_env=False,
    )


class DocumentNotFound(EvidenceUnavailable):
    """The URL answered 404: a caller for whom absence is an answer (an instance that
    does not exist) catches this; for every other caller it is one more failure."""


async def fetch_json_response(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str] | None = None
) -> tuple[Any, httpx.Headers]:
    """GET a JSON document of bounded size, with the response headers; any failure
    raises EvidenceUnavailable (404: its subclass DocumentNotFound)."""
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 404:
                raise DocumentNotFound(f"{url} answered HTTP 404")
            if response.status_code != 200:
                raise EvidenceUnavailable(f"{url} answered HTTP {response.status_code}")
            body = await read_bounded(response.aiter_bytes(), MAX_DOCUMENT_BYTES, url)
        return json.loads(body), response.headers
    except BodyTooLarge as error:
        raise EvidenceUnavailable(str(error)) from None
    except httpx.HTTPError as error:
        raise EvidenceUnavailable(f"{url}: {type(error).__name__}") from None
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
        raise EvidenceUnavailable(f"{url} did not send JSON") from None


async def fetch_json(client: httpx.AsyncClient, url: str) -> Any:
    """GET a JSON document of bounded size; any failure raises EvidenceUnavailable."""
    return (await fetch_json_response(client, url))[0]


class RemoteKeySource(KeySource):
    """Keys fetched over HTTP(S), directly from `jwks_uri` or via OIDC discovery.

    With discovery, the document's `issuer` must equal the configured issuer
    exactly (OpenID Connect Discovery §4.3), or it is never used.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None = None,
        discovery_issuer: str | None = None,
        client: httpx.AsyncClient,
        label: str,
    ):
        if (jwks_uri is None) == (discovery_issuer is None):
            raise ValueError("give exactly one of jwks_uri and discovery_issuer")
        self.jwks_uri = jwks_uri
        self.discovery_issuer = discovery_issuer
        self.label = label
        self._client = client
        self._keys: dict[str | None, VerificationKey] | None = None
        self._fetched_at = 0.0  # monotonic time of the last successful fetch
        self._attempted_at = -REFETCH_INTERVAL  # of the last attempt, successful or not
        self._last_failed = False
        self._last_error = ""
        # How long fetched keys count as fresh; a source that says so (HTTP cache
        # headers) sets it in its _fetch.
        self._fresh_for = REFRESH_AFTER
        self._inflight: asyncio.Task[None] | None = None
        self._skipped = SkippedKeys()
        self.fetch_count = 0

    async def _fetch(self) -> None:
        self.fetch_count += 1
        uri = self.jwks_uri
        if self.discovery_issuer is not None:
            url = self.discovery_issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await fetch_json(self._client, url)
            if not isinstance(document, dict) or document.get("issuer") != self.discovery_issuer:
                raise EvidenceUnavailable(f"discovery document at {url} names another issuer")
            uri = document.get("jwks_uri")
            if not isinstance(uri, str):
                raise EvidenceUnavailable(f"discovery document at {url} has no jwks_uri")
            try:
                require_safe_url(uri, "jwks_uri")
            except ValueError as error:
                raise EvidenceUnavailable(str(error)) from None
        assert uri is not None
        document = await fetch_json(self._client, uri)
        try:
            self._keys = parse_jwks(document, uri, self._skipped)
        except ValueError as error:
            raise EvidenceUnavailable(f"{uri}: {error}") from None

    async def _guarded_fetch(self) -> None:
        """`_fetch`, whose every failure is EvidenceUnavailable: keys that cannot be
        had are a 503, whatever went wrong while getting them."""
        try:
            await self._fetch()
        except EvidenceUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 — a malformed answer must not become a 500
            log.exception("fetching the keys of %s failed unexpectedly", self.label)
            raise EvidenceUnavailable(f"unexpected {type(error).__name__}") from None

    def _start_fetch(self) -> asyncio.Future[None]:
        if self._inflight is None:
            self._attempted_at = _clock()
            self._inflight = asyncio.ensure_future(self._guarded_fetch())
            self._inflight.add_done_callback(self._fetched)
        return self._inflight

    def _fetched(self, task: asyncio.Future[None]) -> None:
        self._inflight = None
        error = None if task.cancelled() else task.exception()
        self._last_failed = task.cancelled() or error is not None
        metrics.KEY_FETCHES.labels(self.label, "error" if self._last_failed else "ok").inc()
        if self._last_failed:
            self._last_error = str(error or "cancelled")
            log.warning("keys of %s could not be fetched: %s", self.label, self._last_error)
        else:
            self._fetched_at = _clock()

    async def _await_fetch(self) -> None:
        """Wait for the (single, shared) fetch; its failure is recorded, not raised."""
        try:
            await asyncio.shield(self._start_fetch())
        except EvidenceUnavailable:
            pass

    async def refresh(self) -> int:
        await self._guarded_fetch()
        return len(self._keys or {})

    async def key(self, kid: str | None) -> VerificationKey:
        now = _clock()
        may_fetch = now - self._attempted_at >= REFETCH_INTERVAL
        known = self._keys is not None and select_key(self._keys, kid) is not None
        if self._inflight is not None and not known:
            await self._await_fetch()
        elif not known and may_fetch:
            await self._await_fetch()
        elif known and may_fetch and now - self._fetched_at >= self._fresh_for:
            self._start_fetch()  # answer from the cache now, refresh in the background
        found = None if self._keys is None else select_key(self._keys, kid)
        if found is not None:
            return found
        if self._keys is None or self._last_failed:
            raise EvidenceUnavailable(f"keys of {self.label} cannot be fetched: {self._last_error}")
        raise InvalidEvidence("signing key not known for this issuer")

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        await self._client.aclose()


def issuer_key_source(
    *,
    issuer: str,
    jwks_uri: str | None,
    jwks_file: Path | None,
    discovery: bool,
    ca_file: Path | None,
    label: str,
) -> KeySource:
    """The keys of one configured issuer: a JWKS file, a JWKS URL, or OIDC discovery
    from the issuer itself (the configuration sets exactly one)."""
    if jwks_file is not None:
        return FileKeySource(jwks_file)
    client = http_client(ca_file)
    if discovery:
        return RemoteKeySource(discovery_issuer=issuer, client=client, label=label)
    return RemoteKeySource(jwks_uri=jwks_uri, client=client, label=label)
