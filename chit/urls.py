"""Which URLs chit and its agent may talk to: HTTPS anywhere, plain HTTP only to this machine."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_safe_url(url: str, what: str) -> str:
    """HTTPS anywhere, plain HTTP only to this machine (tests and local stand-ins); ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ValueError(f"{what} must be an https:// URL (http:// only on loopback), got {url!r}")
