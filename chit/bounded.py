"""One bounded read of a streamed body: a request's, or a dependency's answer.

A body is read chunk by chunk and refused as soon as it is over its limit,
before it is all in memory: a client's 10 GB POST, a JWKS endpoint or an OPA
that answers without end, cost chit at most the limit.
"""

from __future__ import annotations

from typing import AsyncIterable


class BodyTooLarge(Exception):
    """More than `limit` bytes; the message says so, naming what was read."""

    def __init__(self, what: str, limit: int):
        super().__init__(f"{what}: more than {limit} bytes")
        self.limit = limit


async def read_bounded(chunks: AsyncIterable[bytes], limit: int, what: str = "the body") -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(what, limit)
    return bytes(body)
