"""Minting chit's JWT access tokens (RFC 9068 profile, docs/reference/http-api.md "Minted JWT access token")."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Mapping

import jwt

from chit.server.keys import SigningKey

TYP_ACCESS_TOKEN = "at+jwt"  # RFC 9068 §2.1
TYP_JWT = "JWT"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    expires_in: int


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def mint_jwt(
    key: SigningKey,
    *,
    issuer: str,
    subject: str,
    audience: tuple[str, ...],
    scope: tuple[str, ...],
    ttl: int,
    now: float,
    att: Mapping[str, Any],
    actor: str | None = None,
    typ: str = TYP_ACCESS_TOKEN,
    extra_claims: Mapping[str, Any] | None = None,
) -> IssuedToken:
    """Sign a token for `subject`; `ttl` has already been capped by the caller."""
    issued_at = int(now)
    jti = new_jti()
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience[0] if len(audience) == 1 else list(audience),
        "exp": issued_at + ttl,
        "iat": issued_at,
        "nbf": issued_at,
        "jti": jti,
        "client_id": subject,  # RFC 9068 §2.2: the workload is its own client
        "att": dict(att),
    }
    if scope:
        claims["scope"] = " ".join(scope)
    if actor is not None:
        claims["act"] = {"sub": actor}  # RFC 8693 §4.1
    if extra_claims:
        claims.update(extra_claims)
    token = jwt.encode(
        claims,
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": typ},
    )
    return IssuedToken(token=token, jti=jti, expires_in=ttl)
