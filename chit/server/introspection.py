"""Token introspection (RFC 7662, POST /introspect) and the checks of chit's own tokens
that introspection and revocation share.

Only callers holding a chit token with scope `chit:introspect` whose audience is
chit's issuer may introspect (docs/reference/http-api.md "Authentication"); resource servers get
such a token by exchange, like any workload.
"""

from __future__ import annotations

from typing import Any

import jwt

from chit.server.errors import InvalidClient, TemporarilyUnavailable
from chit.server.keys import KeyStore
from chit.revocation import Revocations
from chit.state import StateUnavailable

INTROSPECT_SCOPE = "chit:introspect"
LEEWAY_SECONDS = 60  # docs/reference/http-api.md "Leeway": on nbf/iat only; replicas' clocks differ a little
# RFC 7662 §2.2 members, and chit's own claims a resource server may decide on.
_RESPONSE_CLAIMS = ("scope", "client_id", "exp", "iat", "nbf", "sub", "aud", "iss", "jti", "att", "act", "cnf")


def verify_own_token(keys: KeyStore, issuer: str, token: str, now: float) -> dict[str, Any] | None:
    """The claims of a token chit signed with a key it still publishes, not expired; else None.

    The algorithm is the key's, never the token's (RFC 8725 §3.1)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    key = next((k for k in keys.published(now) if k.kid == kid), None)
    if key is None:
        return None
    try:
        claims = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=[key.algorithm],
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "sub"], "verify_aud": False, "verify_exp": False},
        )
    except jwt.PyJWTError:
        return None
    exp = claims["exp"]
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now:
        return None
    return claims


async def active_claims(keys: KeyStore, issuer: str, revocations: Revocations, token: str, now: float) -> dict[str, Any] | None:
    """RFC 7662 §2.2 "active": chit's, unexpired, and neither its jti nor its subject revoked.
    When revocations cannot be checked, no token is active and none inactive: 503."""
    claims = verify_own_token(keys, issuer, token, now)
    if claims is None:
        return None
    try:
        revoked = await revocations.token_revoked(claims)
    except StateUnavailable as error:
        raise TemporarilyUnavailable("cannot check revocations right now", cause="state", detail=str(error)) from None
    return None if revoked else claims


def introspection_response(claims: dict[str, Any] | None) -> dict[str, Any]:
    """RFC 7662 §2.2; an inactive token gets `active: false` and nothing else, as it SHOULD."""
    if claims is None:
        return {"active": False}
    response: dict[str, Any] = {"active": True, "token_type": "Bearer"}
    response.update((name, claims[name]) for name in _RESPONSE_CLAIMS if name in claims)
    return response


def bearer_token(authorization: str | None) -> str:
    """RFC 6750 §2.1: `Authorization: Bearer TOKEN`; anything else is no credential."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # RFC 6750 §3.1: a request without credentials gets a challenge without an error code.
        raise InvalidClient("introspection needs Authorization: Bearer with a chit:introspect token",
                            headers={"WWW-Authenticate": 'Bearer realm="chit"'})
    return token.strip()


def require_introspect_scope(claims: dict[str, Any] | None, issuer: str) -> None:
    """The caller's token must be active, for chit's issuer, with scope chit:introspect."""
    audience = claims.get("aud") if claims else None
    audiences = audience if isinstance(audience, list) else [audience]
    scope = claims.get("scope") if claims else None
    if claims is None or issuer not in audiences or not isinstance(scope, str) or INTROSPECT_SCOPE not in scope.split(" "):
        raise InvalidClient(
            "the bearer token is not an active chit token with scope chit:introspect for this issuer",
            headers={"WWW-Authenticate": f'Bearer realm="chit", error="invalid_token", scope="{INTROSPECT_SCOPE}"'},
        )
