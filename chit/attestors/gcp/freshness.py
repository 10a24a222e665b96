"""How long a response of Google's certificate endpoint stays fresh (RFC 9111 §4.2)."""

from __future__ import annotations

import email.utils
import time

import httpx

from chit.attestors.jwks import REFRESH_AFTER


MAX_CERTIFICATE_FRESHNESS = 24 * 3600.0  # a removed key is forgotten within a day, whatever the headers say


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
