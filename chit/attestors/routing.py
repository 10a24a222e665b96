"""Which verifier looks at a subject token.

JWTs are routed by their `iss` to exactly one verifier (and, inside the
Kubernetes verifier, to exactly one cluster): a token naming an issuer nobody
configured is refused without any network request. chit's own tokens are never
evidence, whichever way they come back.
"""

from __future__ import annotations

from typing import Callable

from chit.attestors.base import (
    Attestation,
    DocumentVerifier,
    InvalidEvidence,
    JwtVerifier,
    Verifier,
)
from chit.attestors.jose import parse_compact_jws
from chit.protocol import JWT_TOKEN_TYPES


class AttestorRouter:
    def __init__(
        self,
        jwt_verifiers: list[JwtVerifier],
        document_verifiers: list[DocumentVerifier],
        *,
        own_issuer: str,
        is_own_kid: Callable[[str | None], bool],
    ):
        self._by_issuer: dict[str, JwtVerifier] = {}
        for verifier in jwt_verifiers:
            for issuer in verifier.issuers:
                if issuer in self._by_issuer:
                    raise ValueError(f"issuer {issuer!r} is configured twice")
                self._by_issuer[issuer] = verifier
        self._by_token_type = {v.token_type: v for v in document_verifiers}
        self._by_kind: dict[str, Verifier] = {v.kind: v for v in [*jwt_verifiers, *document_verifiers]}
        self._own_issuer = own_issuer
        self._is_own_kid = is_own_kid

    @property
    def verifiers(self) -> list[Verifier]:
        return list(self._by_kind.values())

    def accepts(self, token_type: str) -> bool:
        return token_type in self._by_token_type or (token_type in JWT_TOKEN_TYPES and bool(self._by_issuer))

    async def verify(self, token_type: str, token: str, now: float) -> Attestation:
        if token_type in JWT_TOKEN_TYPES:
            jws = parse_compact_jws(token)
            issuer = jws.claims.get("iss")
            if not isinstance(issuer, str):
                raise InvalidEvidence("claim iss missing")
            if issuer.rstrip("/") == self._own_issuer or self._is_own_kid(jws.kid):
                raise InvalidEvidence("tokens issued by chit are not accepted as evidence")
            verifier = self._by_issuer.get(issuer)
            if verifier is None:
                raise InvalidEvidence("issuer not trusted")
            return await verifier.verify_jws(jws, now)
        document_verifier = self._by_token_type.get(token_type)
        if document_verifier is None:
            raise InvalidEvidence("token type not enabled on this server")
        return await document_verifier.verify(token, now)

    async def enrich(self, attestation: Attestation) -> Attestation:
        return await self._by_kind[attestation.kind].enrich(attestation)

    async def close(self) -> None:
        for verifier in self._by_kind.values():
            await verifier.close()
