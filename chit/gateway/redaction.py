"""Keeping the upstream key out of everything the client receives, as it streams.

An upstream that echoes the key (an error message quoting the credential it
refused, a debugging header) must not hand it to the agent. The key is
replaced wherever it appears, even split across two chunks of a stream: the
redactor holds back only the end of a chunk that could be the start of the
key, and sends it with the next chunk once it is known not to be. A key is
visible ASCII without spaces or line breaks (`chit.gateway.upstream_keys`), so an
event that ends a chunk with a line break is never held back.
"""

from __future__ import annotations

REDACTED = "[REDACTED]"


class Redactor:
    def __init__(self, secret: str):
        self._secret = secret.encode("ascii")
        self._replacement = REDACTED.encode("ascii")
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """What can be sent of `chunk` now, redacted."""
        data = (self._pending + chunk).replace(self._secret, self._replacement)
        held = self._held_back(data)
        self._pending = data[len(data) - held:] if held else b""
        return data[: len(data) - held]

    def flush(self) -> bytes:
        """The end of the stream: what was held back was not the key."""
        rest, self._pending = self._pending, b""
        return rest

    def _held_back(self, data: bytes) -> int:
        """The length of the longest end of `data` that is a proper start of the secret."""
        first = self._secret[:1]
        position = data.find(first, max(0, len(data) - len(self._secret) + 1))
        while position != -1:  # earliest candidate first: the longest end
            if self._secret.startswith(data[position:]):
                return len(data) - position
            position = data.find(first, position + 1)
        return 0
