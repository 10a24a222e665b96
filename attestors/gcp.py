"""GCP: Compute Engine instance identity tokens, verified against Google's certificates.

Server side: a VM asks its metadata server for an identity token with chit's
audience and `format=full`; Google signs it (RS256) with one of the keys it
publishes at `gcp.certs_url` as `{kid: PEM certificate}`. chit fetches and
caches those certificates itself (per their HTTP cache headers), has
google-auth check the signature, and adds what google-auth leaves to the
caller: the issuer, the algorithm, an audience that is always given, the
validity window and lifetime cap, and the `google.compute_engine` claims that
name the instance. With `verify_instance`, the Compute Engine API's
instances.get (with chit's Application Default Credentials, via google-auth)
confirms the instance exists, is the one the token names, and is running, and
adds its labels, machine type, network and service accounts to the facts
(`GcpVerifier.enrich`, `ComputeEngine`).

Client side (`GcpCollector`, the collector an agent runs): a GET of
`http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUDIENCE&format=full`
with the header `Metadata-Flavor: Google`; the answer is the identity token,
sent as subject_token with subject_token_type
urn:ietf:params:oauth:token-type:jwt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.utils
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.jwt
import google.auth.transport.requests
import httpx
from cryptography import x509

from attestors import (
    TOKEN_TYPE_JWT,
    Attestation,
    CollectionFailed,
    Collector,
    EvidenceUnavailable,
    InvalidEvidence,
    JwtVerifier,
    PlatformAbsent,
    SubjectToken,
    metadata_client,
    printable,
)
from attestors.jose import LEEWAY_SECONDS, CompactJws, algorithm_for_key, check_validity_window, unusable_key_reason
from attestors.jwks import (
    REFRESH_AFTER,
    DocumentNotFound,
    RemoteKeySource,
    SkippedKeys,
    VerificationKey,
    fetch_json_response,
    http_client,
)
from server import metrics
from server.config import GCP_PROJECT_ID, GcpAttestor
from server.state import StateStore, StateUnavailable

log = logging.getLogger("chit.gcp")

KIND = "gcp"

# DESIGN.md "GCP issuer": Google writes both forms.
ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
ALGORITHM = "RS256"  # the only algorithm Google signs identity tokens with
MAX_TOKEN_LIFETIME = 3600  # DESIGN.md "Leeway": GCP subject JWTs live at most 1 h
MAX_CERTIFICATE_FRESHNESS = 24 * 3600.0  # a removed key is forgotten within a day, whatever the headers say

# Names Google itself issues; they become SPIFFE path segments, so nothing else
# (no '/', no '..') may pass. Zones look like us-central1-a: the region is the
# zone without its last part.
_ZONE = re.compile(r"(?P<region>[a-z]+(?:-[a-z]+)*[0-9]+)-[a-z0-9]{1,10}")
_INSTANCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1035 label
_INSTANCE_ID = re.compile(r"[0-9]{1,20}")  # an unsigned 64-bit integer, as a string
_SUBJECT = re.compile(r"[0-9]{1,64}")  # the service account's unique id
# Only service accounts are workloads: a person's Google account is not.
_SERVICE_ACCOUNT_EMAIL = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}@[a-z0-9][a-z0-9.-]{0,200}\.gserviceaccount\.com")


# --- Google's certificates -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoogleCertificate(VerificationKey):
    """A verification key together with the PEM certificate google-auth verifies with."""

    pem: str


def _directives(cache_control: str) -> dict[str, str]:
    directives = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name.lower()] = value.strip().strip('"')
    return directives


def _is_digits(value: str) -> bool:
    """RFC 9111 delta-seconds: ASCII digits only (str.isdigit also accepts '²')."""
    return value.isascii() and value.isdigit()


def freshness_lifetime(headers: httpx.Headers, default: float = REFRESH_AFTER) -> float:
    """How long a response stays fresh, in seconds (RFC 9111 §4.2).

    §4.2.1: `max-age`, else `Expires` minus `Date`; §4.2.3: minus `Age`.
    `no-store`/`no-cache` (and an unusable `max-age` or `Expires`, §5.3) make
    it stale at once. No freshness information at all: `default`. Capped at
    `MAX_CERTIFICATE_FRESHNESS`.
    """
    directives = _directives(headers.get("cache-control", ""))
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    if "max-age" in directives:
        value = directives["max-age"]
        lifetime = float(value) if _is_digits(value) else 0.0
    elif "expires" in headers:
        expires = _http_date(headers["expires"])
        date = _http_date(headers.get("date", "")) or time.time()
        lifetime = 0.0 if expires is None else expires - date
    else:
        return default
    age = headers.get("age", "")
    if _is_digits(age):
        lifetime -= float(age)
    return min(max(lifetime, 0.0), MAX_CERTIFICATE_FRESHNESS)


def _http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_certificates(document: Any, source: str, skipped: SkippedKeys | None = None) -> dict[str | None, VerificationKey]:
    """Google's v1 format, `{kid: PEM certificate}`: every certificate whose key is
    for RS256 (`algorithm_for_key`: RSA ≥ 2048 bits, exponent 65537), by kid; the
    others are skipped and logged through `skipped`, and the good ones keep working."""
    if not isinstance(document, dict):
        raise ValueError("not a {kid: certificate} object")
    if skipped is None:
        skipped = SkippedKeys()
    certificates: dict[str | None, VerificationKey] = {}
    for kid, pem in document.items():
        if not isinstance(pem, str) or not kid:
            skipped.skip(source, kid, "not a PEM certificate under a kid")
            continue
        try:
            key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        except ValueError:
            skipped.skip(source, kid, "the certificate cannot be read")
            continue
        if algorithm_for_key(key) != ALGORITHM:
            skipped.skip(source, kid, unusable_key_reason(key, (ALGORITHM,)))
            continue
        certificates[kid] = GoogleCertificate(kid, key, ALGORITHM, pem)
    skipped.parsed()
    return certificates


class GoogleCertificates(RemoteKeySource):
    """Google's signing certificates from `certs_url`, cached as the response's
    cache headers say; an unknown kid refetches at most once per 30 s, and when
    the endpoint is down the cached certificates keep working (attestors.jwks)."""

    def __init__(self, certs_url: str, client: httpx.AsyncClient):
        super().__init__(jwks_uri=certs_url, client=client, label="Google's certificates")
        self.certs_url = certs_url

    async def _fetch(self) -> None:
        self.fetch_count += 1
        document, headers = await fetch_json_response(self._client, self.certs_url)
        try:
            self._keys = parse_certificates(document, self.certs_url, self._skipped)
        except ValueError as error:
            raise EvidenceUnavailable(f"{self.certs_url}: {error}") from None
        self._fresh_for = freshness_lifetime(headers)

    async def certificate(self, kid: str) -> GoogleCertificate:
        found = await self.key(kid)
        assert isinstance(found, GoogleCertificate)
        return found


def verify_with_google_auth(token: str, certificate: GoogleCertificate, audiences: tuple[str, ...]) -> Mapping[str, Any]:
    """google-auth's check of the signature, `iat`/`exp` and `aud`.

    google-auth skips the audience check when `audience` is None
    (`google.auth.jwt.decode`: "If None then the JWT's 'aud' parameter is not
    verified"); this is the one call into it, and it never passes None.
    """
    if not audiences:
        raise InvalidEvidence("no audience configured")
    try:
        return google.auth.jwt.decode(
            token,
            certs={certificate.kid: certificate.pem},
            verify=True,
            audience=list(audiences),
            clock_skew_in_seconds=LEEWAY_SECONDS,
        )
    except (google.auth.exceptions.GoogleAuthError, ValueError, TypeError) as error:
        raise InvalidEvidence(f"rejected by google-auth ({type(error).__name__}): signature does not verify") from None


# --- the verified identity -----------------------------------------------------------


def _string(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str], where: str = "claim") -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidEvidence(f"{where} {name} missing or malformed")
    return value


def _integer(claims: Mapping[str, Any], name: str, where: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvidence(f"{where} {name} missing or not a non-negative integer")
    return value


def service_account(claims: Mapping[str, Any]) -> tuple[str, str]:
    """The service account the token speaks for: (email, sub)."""
    if "email" not in claims:
        # The metadata server's format=standard tokens name no account at all.
        raise InvalidEvidence("claim email missing: request the token with format=full")
    email_address = _string(claims, "email", _SERVICE_ACCOUNT_EMAIL)
    if claims.get("email_verified") is not True:
        raise InvalidEvidence("claim email_verified is not true")
    return email_address, _string(claims, "sub", _SUBJECT)


def compute_engine_facts(claims: Mapping[str, Any]) -> dict[str, Any] | None:
    """The instance a full-format token names (`google.compute_engine`), or None for a
    standard token. A `google.compute_engine` claim that is there but malformed is refused."""
    google = claims.get("google")
    if google is None or (isinstance(google, dict) and "compute_engine" not in google):
        return None
    engine = google.get("compute_engine") if isinstance(google, dict) else None
    if not isinstance(engine, dict):
        raise InvalidEvidence("claim google.compute_engine malformed")
    where = "claim google.compute_engine."
    project_id = _string(engine, "project_id", GCP_PROJECT_ID, where)
    zone = _string(engine, "zone", _ZONE, where)
    instance_id = _string(engine, "instance_id", _INSTANCE_ID, where)
    if int(instance_id) >= 2**64:
        raise InvalidEvidence(f"{where}instance_id out of range")
    project_number = _integer(engine, "project_number", where)
    if project_number == 0:
        raise InvalidEvidence(f"{where}project_number must be positive")
    return {
        "project_id": project_id,
        "project_number": project_number,
        "zone": zone,
        "region": _ZONE.fullmatch(zone)["region"],  # type: ignore[index]
        "instance_id": instance_id,
        "instance_name": _string(engine, "instance_name", _INSTANCE_NAME, where),
        "instance_creation_timestamp": _integer(engine, "instance_creation_timestamp", where),
    }


def claims_digest(claims: Mapping[str, Any]) -> str:
    """A token's identity for single use: the hash of its verified claims, not of its
    encoding (so no re-encoding of the same signed claims counts as another token)."""
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SingleUse:
    """`single_use: true`: remember an accepted token until it expires (DESIGN.md
    "GCP"); committed only once a credential is issued, so a failure uses nothing."""

    state: StateStore
    key: str
    ttl: float

    async def commit(self) -> None:
        try:
            first = await self.state.add(self.key, "1", self.ttl)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None
        if not first:
            raise InvalidEvidence("token already used (single_use)")


# --- the verifier --------------------------------------------------------------------


class GcpVerifier(JwtVerifier):
    """Verifies Google-signed Compute Engine identity tokens (`iss` accounts.google.com)."""

    kind = KIND

    def __init__(self, config: GcpAttestor, *, trust_domain: str, issuer: str, state: StateStore):
        self.config = config
        self.trust_domain = trust_domain
        # No configured audience means chit's own issuer URL, never "any audience".
        self.audiences: tuple[str, ...] = tuple(config.audiences) or (issuer,)
        self.project_ids = None if config.project_ids is None else frozenset(config.project_ids)
        self.state = state
        self.certificates = GoogleCertificates(config.certs_url, http_client())
        # Credentials are found now, so that a server that could never look an
        # instance up does not start; the access token is fetched on first use.
        self.compute = ComputeEngine.with_default_credentials(config) if config.verify_instance else None

    @property
    def issuers(self) -> frozenset[str]:
        return ISSUERS

    async def verify_jws(self, jws: CompactJws, now: float) -> Attestation:
        claims = jws.claims
        if claims.get("iss") not in ISSUERS:
            raise InvalidEvidence("issuer not trusted")
        if jws.alg != ALGORITHM:
            # Before any key is looked at: alg none, HS256 with the certificate as
            # secret, ES256 — Google signs identity tokens with RS256 only.
            raise InvalidEvidence(f"algorithm {jws.alg!r} is not accepted for Google tokens (RS256 only)")
        if jws.kid is None:
            raise InvalidEvidence("header kid missing")
        # Claims are checked before the certificates are fetched, so that a token
        # that could never be accepted costs no request to Google.
        expires_at = check_validity_window(claims, now, MAX_TOKEN_LIFETIME, require_nbf=False)
        if claims.get("aud") not in self.audiences:
            # Exactly one configured audience, as a string; `azp` never stands in for it.
            raise InvalidEvidence("audience not accepted")

        certificate = await self.certificates.certificate(jws.kid)
        verify_with_google_auth(jws.raw, certificate, self.audiences)

        # What the token says about the workload is read only once it is verified
        # (nor does an unsigned token learn anything about the allowlist).
        email_address, sub = service_account(claims)
        instance = compute_engine_facts(claims)
        if instance is None and self.config.require_full_format:
            raise InvalidEvidence("claim google.compute_engine missing: request the token with format=full")
        if self.project_ids is not None and (instance is None or instance["project_id"] not in self.project_ids):
            raise InvalidEvidence("project not allowed on this server")

        replay_guard = None
        if self.config.single_use:
            key = f"gcp:once:{claims_digest(claims)}"
            try:
                used = await self.state.get(key)
            except StateUnavailable as error:
                raise EvidenceUnavailable(f"state store: {error}") from None
            if used is not None:
                raise InvalidEvidence("token already used (single_use)")
            replay_guard = SingleUse(self.state, key, max(1.0, expires_at - now + LEEWAY_SECONDS))

        facts: dict[str, Any] = {"issuer": claims["iss"], **(instance or {}), "email": email_address, "sub": sub}
        if instance is None:
            subject = f"spiffe://{self.trust_domain}/gcp/sa/{email_address}"
            att: dict[str, Any] = {"email": email_address}
        else:
            subject = f"spiffe://{self.trust_domain}/gcp/{instance['project_id']}/{instance['zone']}/{instance['instance_id']}"
            att = {k: instance[k] for k in ("project_id", "zone", "instance_id")}
        return Attestation(
            kind=KIND,
            subject=subject,
            facts=facts,
            claims=claims,
            att=att,
            expires_at=expires_at,
            replay_guard=replay_guard,
        )

    async def enrich(self, attestation: Attestation) -> Attestation:
        """`verify_instance`: the Compute Engine API must show the instance the token
        names — same id, name and creation time — provisioning, staging or running."""
        if self.compute is None:
            return attestation
        facts = attestation.facts
        if "instance_id" not in facts:
            # The config refuses verify_instance without require_full_format; never skip the check.
            raise InvalidEvidence("claim google.compute_engine missing: verify_instance needs a format=full token")
        try:
            instance = await self.compute.instance(facts["project_id"], facts["zone"], facts["instance_id"])
            extra = instance_facts(instance, facts)
        except InvalidEvidence:
            metrics.INSTANCE_LOOKUPS.labels(KIND, "invalid").inc()
            raise
        except EvidenceUnavailable:
            metrics.INSTANCE_LOOKUPS.labels(KIND, "error").inc()
            raise
        metrics.INSTANCE_LOOKUPS.labels(KIND, "ok").inc()
        return dataclasses.replace(attestation, facts={**facts, **extra})

    async def close(self) -> None:
        await self.certificates.close()
        if self.compute is not None:
            await self.compute.close()


# --- the Compute Engine API (verify_instance) -------------------------------------------

COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute.readonly"
# instances.get `status`: an instance that is (about to be) running; STOPPING,
# STOPPED, SUSPENDING, SUSPENDED, REPAIRING and TERMINATED are not.
_LIVE_STATUSES = frozenset({"PROVISIONING", "STAGING", "RUNNING"})
_STATUS = re.compile(r"[A-Z_]{1,32}")


class _BoundedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with every request bounded in time
    (its own default waits up to 120 s)."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        bounded = self.timeout if timeout is None else min(float(timeout), self.timeout)
        return super().__call__(url, method=method, body=body, headers=headers, timeout=bounded, **kwargs)


class ComputeEngine:
    """instances.get of the Compute Engine API
    (`GET {endpoint}/compute/v1/projects/P/zones/Z/instances/ID`, which takes the
    numeric id in place of the name), authorized with chit's Application Default
    Credentials: the metadata server's on GCE/GKE, or the file
    GOOGLE_APPLICATION_CREDENTIALS names. google-auth obtains and refreshes the
    access token (blocking: in a worker thread, one refresh at a time) and keeps
    it until shortly before it expires."""

    def __init__(self, endpoint: str, timeout: float, credentials: google.auth.credentials.Credentials):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.credentials = credentials
        self._transport = _BoundedRequest(timeout)
        self._client = http_client(timeout=timeout)
        self._refreshing: asyncio.Future[None] | None = None

    @classmethod
    def with_default_credentials(cls, config: GcpAttestor) -> ComputeEngine:
        """Application Default Credentials, or ValueError (chit does not start) if there are none."""
        try:
            credentials, _ = google.auth.default(scopes=[COMPUTE_SCOPE])
        except google.auth.exceptions.GoogleAuthError as error:
            raise ValueError(
                "attestors.gcp.verify_instance needs Google Application Default Credentials to call the Compute "
                "Engine API (run on GCE/GKE with a service account, or set GOOGLE_APPLICATION_CREDENTIALS to a "
                f"credentials file): {error}"
            ) from None
        return cls(config.compute_endpoint, config.compute_timeout_ms / 1000, credentials)

    def _refreshed(self, task: asyncio.Future[None]) -> None:
        self._refreshing = None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.warning("Google credentials could not be refreshed: %s", error)

    async def authorization(self) -> dict[str, str]:
        """The request headers that carry a current access token."""
        if not self.credentials.valid:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(asyncio.to_thread(self.credentials.refresh, self._transport))
                self._refreshing.add_done_callback(self._refreshed)
            try:
                # Shielded: an exchange that gives up leaves the one refresh running for the next.
                await asyncio.wait_for(asyncio.shield(self._refreshing), self.timeout)
            except TimeoutError:
                raise EvidenceUnavailable("Google credentials: no access token in time") from None
            except (google.auth.exceptions.GoogleAuthError, ValueError, OSError) as error:
                # The token endpoint's own words go to the log (_refreshed), not to the caller.
                raise EvidenceUnavailable(f"Google credentials cannot be refreshed ({type(error).__name__})") from None
        headers: dict[str, str] = {}
        self.credentials.apply(headers)
        return headers

    async def instance(self, project_id: str, zone: str, instance_id: str) -> Mapping[str, Any]:
        """The instance resource; InvalidEvidence if there is none (404), else
        EvidenceUnavailable for any answer that is not a JSON object (401, 403, 429,
        5xx, timeout, oversized). The URL's parts are names compute_engine_facts has
        checked against Google's patterns: nothing in them can change the path."""
        url = f"{self.endpoint}/compute/v1/projects/{project_id}/zones/{zone}/instances/{instance_id}"
        headers = await self.authorization()
        try:
            document, _ = await fetch_json_response(self._client, url, headers)
        except DocumentNotFound:
            raise InvalidEvidence("instance not found") from None
        if not isinstance(document, dict):
            raise EvidenceUnavailable(f"{url} did not answer with an instance")
        return document

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._client.aclose()


def _last_segment(value: Any) -> str | None:
    """`…/machineTypes/e2-medium` → `e2-medium` (the API names resources by URL)."""
    if not isinstance(value, str):
        return None
    return value.rstrip("/").rsplit("/", 1)[-1] or None


def _creation_time(value: Any) -> int | None:
    """RFC 3339 (`2026-11-20T20:40:00.123-08:00`) to whole unix seconds, as the token has it."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp() // 1)


def instance_facts(instance: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts instances.get adds, once it agrees with the verified token."""
    if instance.get("id") != facts["instance_id"]:
        raise InvalidEvidence("the instance found has another id")
    if instance.get("name") != facts["instance_name"]:
        raise InvalidEvidence("the instance has another name than the token says")
    if _creation_time(instance.get("creationTimestamp")) != facts["instance_creation_timestamp"]:
        # To the second (the token's is in whole seconds): the token's VM, not one made since under its name.
        raise InvalidEvidence("the instance was created at another time than the token says")
    status = instance.get("status")
    if status not in _LIVE_STATUSES:
        shown = status if isinstance(status, str) and _STATUS.fullmatch(status) else "in an unknown state"
        raise InvalidEvidence(f"the instance is {shown}, not provisioning, staging or running")
    labels = instance.get("labels", {})
    interfaces = instance.get("networkInterfaces")
    first = interfaces[0] if isinstance(interfaces, list) and interfaces and isinstance(interfaces[0], dict) else {}
    accounts = instance.get("serviceAccounts")
    extra: dict[str, Any] = {
        "status": status,
        "labels": {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(labels, dict) else {},
        "service_accounts": [
            a["email"] for a in accounts if isinstance(a, dict) and isinstance(a.get("email"), str)
        ] if isinstance(accounts, list) else [],
    }
    for fact, value in (
        ("machine_type", instance.get("machineType")),
        ("network", first.get("network")),
        ("subnetwork", first.get("subnetwork")),
    ):
        segment = _last_segment(value)
        if segment is not None:
            extra[fact] = segment
    return extra


# --- the collector (client side) -----------------------------------------------------

METADATA_URL = "http://metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
# Google's metadata server answers with this header; a server that does not is not it.
METADATA_FLAVOR = "Google"


class GcpCollector(Collector):
    """A Compute Engine identity token for `audience` (chit's: by default its issuer URL,
    see `gcp.audiences`), in the full format that names the instance."""

    kind = KIND

    def __init__(self, audience: str, metadata_url: str = METADATA_URL):
        self.audience = audience
        self.metadata_url = metadata_url.rstrip("/")

    def collect(self) -> SubjectToken:
        url = self.metadata_url + IDENTITY_PATH
        try:
            with metadata_client() as client:
                response = client.get(
                    url,
                    params={"audience": self.audience, "format": "full"},
                    headers={"Metadata-Flavor": METADATA_FLAVOR},
                )
        except httpx.TransportError as error:
            raise PlatformAbsent(f"no GCP metadata server at {self.metadata_url} ({type(error).__name__})") from None
        if response.headers.get("Metadata-Flavor") != METADATA_FLAVOR:
            raise PlatformAbsent(f"{self.metadata_url} answered, but not as Google's metadata server (no Metadata-Flavor: Google)")
        if response.status_code != 200:
            # e.g. 404 when the VM has no service account: the body is Google's explanation.
            raise CollectionFailed(f"the GCP metadata server refused an identity token: HTTP {response.status_code} {printable(response.text)}")
        token = response.text.strip()
        if token.count(".") != 2 or not token.isascii() or not token.isprintable():
            raise CollectionFailed("the GCP metadata server's answer is not an identity token")
        return SubjectToken(token, TOKEN_TYPE_JWT)
