"""HTTP for the agent side, with the standard library only (`http.client`, `ssl`).

What runs in an AI agent's environment pulls no third-party package (each one is
attack surface where supply-chain incidents hit), so the few requests the agent
makes — chit's `/token`, a platform's metadata service — go through this small
client, which does exactly what they need and nothing implicit:

- no proxy unless one is given (`http.client` reads no environment variable;
  HTTP_PROXY and the like would carry the subject token to whoever set them);
- no redirects (a 3xx is an answer like any other);
- TLS verified with the CA certificates given, else the system's (OpenSSL's
  default paths, which honour SSL_CERT_FILE and SSL_CERT_DIR);
- a connect timeout and a read timeout (a metadata service off its platform
  does not answer: giving up after a second says "not here");
- the body read up to a bound.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1024 * 1024


class TransportError(Exception):
    """No answer: the connection failed, timed out, or TLS refused it (`tls` then holds why)."""

    def __init__(self, message: str, tls: ssl.SSLError | None = None):
        super().__init__(message)
        self.tls = tls


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str] = field(repr=False)  # names lower-cased
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _connection(url: str, *, connect_timeout: float, context: ssl.SSLContext | None, proxy: str | None) -> tuple[http.client.HTTPConnection, str]:
    """A connection for `url` and the request target to send on it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname, parts.port
    if proxy is None:
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=connect_timeout, context=context or ssl.create_default_context()), target
        return http.client.HTTPConnection(host, port, timeout=connect_timeout), target
    via = urlsplit(proxy)
    if parts.scheme == "https":  # a CONNECT tunnel: the proxy sees the host name, never the request
        connection = http.client.HTTPSConnection(via.hostname, via.port or 80, timeout=connect_timeout, context=context or ssl.create_default_context())
        connection.set_tunnel(host, port)
        return connection, target
    return http.client.HTTPConnection(via.hostname, via.port or 80, timeout=connect_timeout), url  # absolute URI, RFC 9112 §3.2.2


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
    proxy: str | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Response:
    """One request on a new connection; raises TransportError when there is no answer,
    ValueError for a body over `max_bytes`."""
    connection, target = _connection(url, connect_timeout=connect_timeout, context=context, proxy=proxy)
    try:
        connection.connect()
        connection.sock.settimeout(read_timeout)
        connection.request(method, target, body=body, headers=dict(headers or {}))
        answer = connection.getresponse()
        data = answer.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"{url} answered more than {max_bytes} bytes")
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
    except ssl.SSLError as error:
        raise TransportError(f"TLS: {error.reason or type(error).__name__}", tls=error) from None
    except (OSError, http.client.HTTPException) as error:
        kind = "timed out" if isinstance(error, (socket.timeout, TimeoutError)) else type(error).__name__
        raise TransportError(kind) from None
    finally:
        connection.close()
