"""Google's signing certificates, fetched from `certs_url` and cached as its cache headers
say, and google-auth's check of a token's signature with one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import google.auth.exceptions
import google.auth.jwt
import httpx
from cryptography import x509

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.attestors.gcp.freshness import freshness_lifetime
from chit.attestors.jose import LEEWAY_SECONDS, algorithm_for_key, unusable_key_reason
from chit.attestors.jwks import RemoteKeySource, SkippedKeys, VerificationKey, fetch_json_response

log = logging.getLogger("chit.gcp")
ALGORITHM = "RS256"  # the only algorithm Google signs identity tokens with


@dataclass(frozen=True, slots=True)
class GoogleCertificate(VerificationKey):
    """A verification key together with the PEM certificate google-auth verifies with."""

    pem: str


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
