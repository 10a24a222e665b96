"""The headers of a forwarded request and of the answer the client gets.

RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection header
field before a message is forwarded and, for each connection-option in this
field, remove any header or trailer field(s) from the message with the same
name as the connection-option, and then remove the Connection header field
itself"; the hop-by-hop fields it lists (Proxy-Connection, Keep-Alive, TE,
Transfer-Encoding, Upgrade) go too.

On the way up, the client's own credentials never leave the gateway: every
header an SDK puts its API key in (`Authorization`, `x-api-key`,
`x-goog-api-key`) and the route's own key header are removed, then the route's
key is set. `Host` is the upstream's (the HTTP client sets it from the URL),
and the answer is asked for unencoded, so that the gateway can read its usage
and redact it. On the way down, a header carrying the key is redacted.
"""

from __future__ import annotations

from typing import Iterable

from chit.gateway.config import Route
from chit.gateway.redaction import REDACTED
from chit.gateway.tokens import CREDENTIAL_HEADERS

HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade", "trailer"})
# Set by the gateway or its HTTP client for the upstream, whatever the client sent.
_REPLACED_UPSTREAM = frozenset({"host", "content-length", "accept-encoding", "proxy-authorization", "expect"})
# Recomputed for the client: the gateway decodes what it reads and may redact it.
_REPLACED_DOWNSTREAM = frozenset({"content-length", "content-encoding"})


def _connection_options(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {option.strip().lower() for name, value in headers if name.lower() == "connection" for option in value.split(",")}


def upstream_headers(received: list[tuple[str, str]], route: Route, key: str) -> list[tuple[str, str]]:
    dropped = HOP_BY_HOP | _REPLACED_UPSTREAM | set(CREDENTIAL_HEADERS) | {route.inject.header} | _connection_options(received)
    headers = [(name, value) for name, value in received if name.lower() not in dropped]
    headers.append(("accept-encoding", "identity"))
    headers.append((route.inject.header, key if route.inject.scheme is None else f"{route.inject.scheme} {key}"))
    return headers


def client_headers(received: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
    dropped = HOP_BY_HOP | _REPLACED_DOWNSTREAM | _connection_options(received)
    return [(name, value.replace(key, REDACTED)) for name, value in received if name.lower() not in dropped]
