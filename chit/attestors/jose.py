"""Strict parsing and verification of compact JWS subject tokens (RFC 7515, RFC 7519, RFC 8725).

Shared by every JWT-based attestor. The structural checks here run before any
key is chosen; the signature is checked with PyJWT's algorithm objects, with
the algorithm pinned by the type of the key that is trusted for the issuer,
never taken from the token (RFC 8725 §3.1).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, RSAAlgorithm

from chit.attestors.base import InvalidEvidence, evidence_object

MAX_TOKEN_LENGTH = 16 * 1024
LEEWAY_SECONDS = 60  # docs/reference: leeway on nbf/iat only; exp must be in the future.

# Headers that would let the token name its own key or extend the rules
# (RFC 7515 §4.1.3-4.1.6, §4.1.11); RFC 7797 `b64` only works with `crit`.
# A token carrying any of them is refused, signed correctly or not.
FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64"})

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

# The `typ` values of a plain JWT (RFC 7519 §5.1), the only ones accepted as evidence.
EVIDENCE_TYPES = frozenset({"jwt", "application/jwt"})

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_ALGORITHMS: dict[str, Algorithm] = {
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
}
MIN_RSA_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
# What `algorithm_for_key` accepts, in words for the log line of a key it refuses.
KEY_REQUIREMENTS = {"RS256": "RSA of at least 2048 bits, exponent 65537", "ES256": "EC P-256"}


def algorithm_for_key(key: object) -> str | None:
    """The one algorithm a verification key may be used with (RS256 or ES256), or None.

    RFC 7518 §3.3 (RS256): "A key of size 2048 bits or larger MUST be used with
    these algorithms"; the exponent is pinned to 65537, the value issuers use
    (NIST, FIPS 186-5 A.1.1: e > 2^16; e = 3 is what Bleichenbacher's forgery
    against lax PKCS#1 v1.5 verifiers needs). RFC 7518 §3.4: ES256 is "ECDSA
    using P-256 and SHA-256", so an EC key on another curve is used with nothing.
    """
    if isinstance(key, rsa.RSAPublicKey):
        strong = key.key_size >= MIN_RSA_BITS and key.public_numbers().e == RSA_PUBLIC_EXPONENT
        return "RS256" if strong else None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def unusable_key_reason(key: object, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> str:
    """Why `algorithm_for_key` gives none of `algorithms` for a key, naming what it is."""
    if isinstance(key, rsa.RSAPublicKey):
        what = f"RSA-{key.key_size} with exponent {key.public_numbers().e}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        what = f"EC on {key.curve.name}"
    else:
        what = type(key).__name__
    wanted = " or ".join(f"{algorithm} ({KEY_REQUIREMENTS[algorithm]})" for algorithm in algorithms)
    return f"{what} is not a key for {wanted}"


def base64url_decode(segment: str, what: str) -> bytes:
    """RFC 7515 §2: base64url without padding; any other character is refused."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidEvidence(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidEvidence(f"{what} is not base64url") from None


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A structurally valid JWS whose signature has not been checked yet."""

    raw: str
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")


def parse_compact_jws(token: str, types: frozenset[str] = EVIDENCE_TYPES) -> CompactJws:
    """Split and decode a compact JWS, applying every check that needs no key.

    An absent `typ`, or one of `types` (lowercase), is accepted; a resource server
    of chit's access tokens passes its own (`at+jwt`) and requires it."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidEvidence(f"token longer than {MAX_TOKEN_LENGTH} characters")
    segments = token.split(".")
    if len(segments) == 5:
        raise InvalidEvidence("encrypted tokens (JWE) are not accepted")
    if len(segments) != 3 or not all(segments):
        raise InvalidEvidence("not a compact JWS (three non-empty base64url segments)")
    header = evidence_object(base64url_decode(segments[0], "header"), "header")
    claims = evidence_object(base64url_decode(segments[1], "payload"), "claims")
    signature = base64url_decode(segments[2], "signature")

    alg = header.get("alg")
    if not isinstance(alg, str):
        raise InvalidEvidence("header alg missing")
    forbidden = FORBIDDEN_HEADERS.intersection(header)
    if forbidden:
        raise InvalidEvidence(f"header {', '.join(sorted(forbidden))} not accepted")
    if "cty" in header:
        raise InvalidEvidence("nested tokens (cty) are not accepted")
    kid = header.get("kid")
    if "kid" in header and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise InvalidEvidence("header kid must be a non-empty string")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in types):
        # Explicit typing (RFC 8725 §3.11): access tokens (at+jwt), chit's own
        # included, and other typed JWTs are not workload identity evidence.
        raise InvalidEvidence(f"token type {typ!r} is not accepted" + (" as evidence" if types is EVIDENCE_TYPES else ""))
    return CompactJws(
        raw=token,
        header=header,
        claims=claims,
        signing_input=f"{segments[0]}.{segments[1]}".encode("ascii"),
        signature=signature,
    )


def verify_signature(jws: CompactJws, key: PublicKey, algorithm: str) -> None:
    """Check the signature with `algorithm`, which the caller pinned from the key."""
    if jws.alg != algorithm:
        # Catches alg "none" in any casing, HS256 with a public key as secret, and
        # any other switch: the algorithm is the key's, not the token's.
        raise InvalidEvidence(f"algorithm {jws.alg!r} is not the one this issuer's key is used with")
    if not _ALGORITHMS[algorithm].verify(jws.signing_input, key, jws.signature):
        raise InvalidEvidence("signature does not verify")


def numeric_date(claims: Mapping[str, Any], name: str) -> float:
    """RFC 7519 §2 NumericDate; a claim chit requires."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvidence(f"claim {name} missing or not a NumericDate")
    if not 0 <= value < 2**53:
        raise InvalidEvidence(f"claim {name} out of range")
    return value


def check_validity_window(claims: Mapping[str, Any], now: float, max_lifetime: int, *, require_nbf: bool) -> float:
    """exp in the future; iat and nbf not after now + leeway; exp - iat within the cap.

    Returns exp. RFC 7519 §4.1.4: "the current date/time MUST be before the
    expiration date/time"; chit gives no leeway there (docs/reference/http-api.md "Leeway").
    """
    exp = numeric_date(claims, "exp")
    iat = numeric_date(claims, "iat")
    if exp <= now:
        raise InvalidEvidence("token expired")
    if iat > now + LEEWAY_SECONDS:
        raise InvalidEvidence("token issued in the future")
    if require_nbf or "nbf" in claims:
        if numeric_date(claims, "nbf") > now + LEEWAY_SECONDS:
            raise InvalidEvidence("token not yet valid")
    if exp <= iat:
        raise InvalidEvidence("token expires before it was issued")
    if exp - iat > max_lifetime:
        raise InvalidEvidence(f"token lifetime over {max_lifetime} s")
    return exp


def audiences(claims: Mapping[str, Any]) -> list[str]:
    """RFC 7519 §4.1.3: aud is a string or an array of strings."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return aud
    raise InvalidEvidence("claim aud missing or malformed")
