"""HTTP/1.1 connection limits uvicorn does not enforce by itself (docs/reference/http-api.md "Limits").

- a header block over 16 KB is answered 431 and the connection closed;
- a client that stays idle for 10 s while a request is incomplete (before its
  first byte, mid-headers or mid-body) is disconnected;
- so is one whose request is not complete 20 s after its first byte: a client
  trickling a byte every few seconds would otherwise hold a connection for
  hours (uvicorn's `limit_concurrency`, set by `chit serve`, bounds how many
  connections a worker holds at all).

Body size (64 KB, 413) is checked where the body is read, in `server.app`.

Over TLS, closing a connection sends a close_notify alert and asyncio then waits
up to 30 s for the client's: a client that does not answer (an idle agent's
pooled connection closed at the keep-alive timeout, a slow client disconnected
by the limits above) would hold its connection, and its place under
`limit_concurrency`, that long. chit waits `TLS_CLOSE_GRACE_SECONDS`, then drops it.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 16 * 1024
REQUEST_IDLE_SECONDS = 10.0
REQUEST_DEADLINE_SECONDS = 20.0  # 64 KB of body and 16 KB of headers: at least 4 KB/s
MAX_CONNECTIONS_PER_WORKER = 1000  # beyond it uvicorn answers 503 at once
TLS_CLOSE_GRACE_SECONDS = 1.0  # a response written before the close is in the kernel's buffers by then

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\n"
    b"connection: close\r\n\r\n"
    b"Request header fields too large\n"
)


class HeaderBlockTooLarge(Exception):
    pass


class BoundedTlsClose:
    """A TLS transport whose close() waits at most TLS_CLOSE_GRACE_SECONDS for the client."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._abort: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._transport.close()
        if self._abort is None:
            self._abort = self._loop.call_later(TLS_CLOSE_GRACE_SECONDS, self._transport.abort)

    def closed(self) -> None:
        if self._abort is not None:
            self._abort.cancel()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-size cap, a request idle timeout and
    a bounded TLS close."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if transport.get_extra_info("sslcontext") is not None:
            transport = BoundedTlsClose(transport, self.loop)  # type: ignore[assignment]
        super().connection_made(transport)
        self._header_bytes = 0
        self._too_large = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._awaiting_request = True
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(REQUEST_IDLE_SECONDS, self._idle_timeout)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _disarm_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _idle_timeout(self) -> None:
        self._idle_timer = None
        self._deadline_timer = None
        if self._awaiting_request and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_idle_timer()
        self._disarm_deadline()
        if isinstance(self.transport, BoundedTlsClose):
            self.transport.closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_request:
            self._arm_idle_timer()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._awaiting_request = True
        self._arm_idle_timer()
        self._disarm_deadline()
        self._deadline_timer = self.loop.call_later(REQUEST_DEADLINE_SECONDS, self._idle_timeout)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise HeaderBlockTooLarge()

    def on_url(self, url: bytes) -> None:
        self._count(len(url) + 16)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        # The whole request is in: from here on any wait is chit's, not the client's.
        self._awaiting_request = False
        self._disarm_idle_timer()
        self._disarm_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Between requests uvicorn's keep-alive timeout applies.
        self._awaiting_request = False

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self.transport.write(_431)
            self.transport.close()
            return
        super().send_400_response(msg)
