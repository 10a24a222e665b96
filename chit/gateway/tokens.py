"""Verifying chit's access tokens offline, as a resource server (docs/reference/http-api.md
"The minted JWT"): the keys from chit's JWKS, fetched and cached like any key source
(`chit.attestors.jwks`), every check of `chit.attestors.jose` that needs no key, then:

- the algorithm is the key's, never the token's (RFC 8725 §3.1);
- `typ` is `at+jwt` (RFC 9068 §4: "Resource servers MUST verify that the typ header
  value is "at+jwt" or "application/at+jwt" and reject tokens carrying any other
  value");
- `iss` is chit's issuer exactly (RFC 9068 §4: "The issuer identifier for the
  authorization server ... MUST exactly match the value of the iss claim");
- `aud` holds the gateway's own audience (RFC 9068 §4: "The resource server MUST
  validate that the aud claim contains a resource indicator value corresponding to
  an identifier the resource server expects for itself");
- `exp` is in the future, with no leeway (RFC 7519 §4.1.4); `iat` and `nbf` not
  more than a minute ahead (clocks differ a little between machines);
- `sub` is a string; the route's scope is one of `scope` (checked by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.attestors.jose import audiences, check_validity_window, parse_compact_jws, verify_signature
from chit.attestors.jwks import KeySource
from chit.gateway.errors import InvalidRequest, InvalidToken, TemporarilyUnavailable
from chit.protocol import MAX_TOKEN_TTL

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified chit access token: who holds it and what it may do."""

    subject: str
    jti: str | None
    scope: frozenset[str]
    claims: Mapping[str, Any]


class AccessTokenVerifier:
    """Verifies tokens, and remembers the ones that verified: an agent sends the same token
    for its whole life (up to 15 minutes), so its signature is checked once per process.
    A remembered token is still checked for expiry at every use; the memory holds at most
    CACHE_SIZE tokens (the oldest go first)."""

    CACHE_SIZE = 10_000

    def __init__(self, issuer: str, audience: str, keys: KeySource):
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self._verified: dict[str, AccessToken] = {}

    async def verify(self, token: str, now: float) -> AccessToken:
        """The token's verified facts; InvalidToken (401) or TemporarilyUnavailable (503,
        chit's keys cannot be had). Descriptions say what failed, never the token."""
        known = self._verified.get(token)
        if known is not None:
            try:
                check_validity_window(known.claims, now, MAX_TOKEN_TTL, require_nbf=False)
            except InvalidEvidence as error:
                del self._verified[token]
                raise InvalidToken(f"the access token is not valid: {error}") from None
            return known
        verified = await self._verify(token, now)
        if len(self._verified) >= self.CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = verified
        return verified

    async def _verify(self, token: str, now: float) -> AccessToken:
        try:
            jws = parse_compact_jws(token, ACCESS_TOKEN_TYPES)
            if not isinstance(jws.header.get("typ"), str):
                raise InvalidEvidence("header typ must be at+jwt (RFC 9068)")
            key = await self.keys.key(jws.kid)
            verify_signature(jws, key.key, key.algorithm)
            claims = jws.claims
            if claims.get("iss") != self.issuer:
                raise InvalidEvidence("not issued by the chit this gateway trusts")
            if self.audience not in audiences(claims):
                raise InvalidEvidence("not a token for this gateway (aud)")
            check_validity_window(claims, now, MAX_TOKEN_TTL, require_nbf=False)
        except InvalidEvidence as error:
            raise InvalidToken(f"the access token is not valid: {error}") from None
        except EvidenceUnavailable as error:
            raise TemporarilyUnavailable("cannot verify access tokens right now", detail=f"chit's keys: {error}") from None
        subject, jti, scope = claims.get("sub"), claims.get("jti"), claims.get("scope", "")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the access token is not valid: claim sub missing")
        if jti is not None and not isinstance(jti, str):
            raise InvalidToken("the access token is not valid: claim jti is not a string")
        if not isinstance(scope, str):
            raise InvalidToken("the access token is not valid: claim scope is not a string")
        return AccessToken(subject, jti, frozenset(scope.split()), claims)


# Where an SDK puts what it believes is the API key: the chit token, on the way in.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def presented_token(headers: Mapping[str, str] | Any, extra_header: str | None = None) -> str:
    """The chit token of a request: `Authorization: Bearer TOKEN` (RFC 6750 §2.1), or the
    header the provider's SDK sends its API key in (`x-api-key`, `x-goog-api-key`, the
    route's own). `headers` is a multi-dict (Starlette's): a header given twice is
    refused, and so are two headers with different tokens (RFC 6750 §3.1: more than
    one method for including an access token)."""
    found: set[str] = set()
    for name in (*CREDENTIAL_HEADERS, *((extra_header,) if extra_header and extra_header not in CREDENTIAL_HEADERS else ())):
        values = headers.getlist(name)
        if len(values) > 1:
            raise InvalidRequest(f"{name} given more than once")
        if not values:
            continue
        value = values[0].strip()
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                raise InvalidRequest("Authorization must be Bearer with a chit access token")
            value = value.strip()
        if value:
            found.add(value)
    if len(found) > 1:
        raise InvalidRequest("more than one access token in the request")
    if not found:
        raise InvalidToken("a chit access token is required (Authorization: Bearer, or the provider's API key header)", missing=True)
    return found.pop()
