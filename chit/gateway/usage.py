"""LLM tokens a response used, read from the provider's own `usage` report, in a JSON
answer or in a stream of server-sent events, while it passes through.

Where each provider reports it (their API references):

- OpenAI: `usage.total_tokens` (Chat Completions), `usage.input_tokens` and
  `usage.output_tokens` (Responses). Streamed Chat Completions report it in a
  last chunk only when asked (`stream_options.include_usage`, which the gateway
  sets on routes with a token budget); streamed Responses in the
  `response.completed` event's `response.usage`.
- Anthropic: `usage.input_tokens` + `usage.output_tokens`; streamed, the
  `message_start` event's `message.usage`, then `message_delta` events whose
  `usage` counts are cumulative.
- Gemini: `usageMetadata.totalTokenCount`, in each streamed chunk cumulatively.

Counts are cumulative wherever they repeat, so the meter keeps the largest value
seen of each. What cannot be read (no usage, a malformed event) counts nothing
and is said in the audit line (`tokens: null`).
"""

from __future__ import annotations

from typing import Any

from chit.strictjson import StrictJSONError, strict_json_object

MAX_EVENT_BYTES = 1024 * 1024  # an SSE event, or a JSON answer, read for its usage; larger ones are not
_MAX_COUNT = 2**53


def _count(container: Any, name: str) -> int | None:
    value = container.get(name) if isinstance(container, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNT:
        return None
    return value


class UsageMeter:
    """The tokens one response used, from every JSON object it carried (`observe`)."""

    def __init__(self, provider: str):
        self.provider = provider
        self._counts: dict[str, int] = {}

    def _keep(self, name: str, value: int | None) -> None:
        if value is not None:
            self._counts[name] = max(value, self._counts.get(name, 0))

    def observe(self, document: dict[str, Any]) -> None:
        if self.provider == "openai":
            usage = document.get("usage")
            if document.get("type") == "response.completed" and isinstance(document.get("response"), dict):
                usage = document["response"].get("usage")
            self._keep("total", _count(usage, "total_tokens"))
            # Without a total: Responses' input/output, Chat Completions' prompt/completion.
            for kept, names in (("input", ("input_tokens", "prompt_tokens")), ("output", ("output_tokens", "completion_tokens"))):
                self._keep(kept, next((n for n in (_count(usage, name) for name in names) if n is not None), None))
        elif self.provider == "anthropic":
            usage = document.get("usage")
            if document.get("type") == "message_start" and isinstance(document.get("message"), dict):
                usage = document["message"].get("usage")
            self._keep("input", _count(usage, "input_tokens"))
            self._keep("output", _count(usage, "output_tokens"))
        elif self.provider == "gemini":
            self._keep("total", _count(document.get("usageMetadata"), "totalTokenCount"))

    @property
    def tokens(self) -> int | None:
        """Tokens used, or None when the response reported no usage."""
        if "total" in self._counts:
            return self._counts["total"]
        if "input" in self._counts or "output" in self._counts:
            return self._counts.get("input", 0) + self._counts.get("output", 0)
        return None


class JsonUsage:
    """A JSON answer, kept (up to MAX_EVENT_BYTES) as it passes, read once it has ended."""

    def __init__(self, meter: UsageMeter):
        self.meter = meter
        self._body = bytearray()
        self._too_large = False

    def feed(self, chunk: bytes) -> None:
        if not self._too_large:
            self._body += chunk
            if len(self._body) > MAX_EVENT_BYTES:
                self._too_large, self._body = True, bytearray()

    def end(self) -> None:
        if self._body and not self._too_large:
            try:
                self.meter.observe(strict_json_object(bytes(self._body), "the answer"))
            except StrictJSONError:
                pass


class SseUsage:
    """Server-sent events (WHATWG HTML §9.2.6), read line by line as they pass: each
    event's `data` lines, joined, are one JSON object whose usage is observed."""

    def __init__(self, meter: UsageMeter):
        self.meter = meter
        self._line = bytearray()
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end == -1:
                if len(self._line) <= MAX_EVENT_BYTES:
                    self._line += chunk[start:]
                return
            self._line += chunk[start:end]
            self._take_line(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
            start = end + 1

    def _take_line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"data:"):
            value = line[5:]
            value = value[1:] if value.startswith(b" ") else value
            self._size += len(value)
            self._data.append(value)

    def _dispatch(self) -> None:
        data, size, self._data, self._size = self._data, self._size, [], 0
        if not data or size > MAX_EVENT_BYTES:
            return
        text = b"\n".join(data)
        if text.strip() == b"[DONE]":  # OpenAI's end of stream
            return
        try:
            self.meter.observe(strict_json_object(text, "an event"))
        except StrictJSONError:
            pass

    def end(self) -> None:
        if self._line:
            self._take_line(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
        self._dispatch()
