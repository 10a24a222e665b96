"""Stand-ins for the LLM providers' APIs, shaped from their API references, in one process:

- OpenAI: `POST /v1/chat/completions` (JSON, or SSE chunks with `stream: true`,
  the usage chunk only with `stream_options.include_usage`), `POST /v1/responses`;
  the key in `Authorization: Bearer`.
- Anthropic: `POST /v1/messages` (JSON, or its SSE events `message_start` …
  `message_stop` with `stream: true`); the key in `x-api-key`.
- Gemini: `POST /v1beta/models/{model}:generateContent` and
  `:streamGenerateContent?alt=sse` (and the same under `/v1`, which google-genai 3
  calls by default); the key in `x-goog-api-key`.

Each accepts only its configured key and answers anything else the way the
provider does (401 with its error shape; Gemini 400 "API key not valid"). Usage:
10 input tokens, and `max_tokens` (or 20) output tokens. Streams send
`STREAM_EVENTS` events, `--delay` seconds apart. The model `echo-key` makes the
answer quote the key it received, in a header and in the body (split across
two chunks when streamed): what a careless upstream might do.

Test hooks: `POST /_standin/keys` sets the accepted keys, `GET /_standin/requests`
lists what was received (method, path, query, headers), `DELETE` forgets it;
`/v1/redirect` answers 302.

Run: `python -m tests.gateway.upstreams --port PORT [--delay S] [--keys JSON]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STREAM_EVENTS = 5
INPUT_TOKENS = 10


def split(text: str, count: int) -> list[str]:
    """`text` in `count` consecutive pieces (the last ones may be empty)."""
    size = -(-len(text) // count)
    return [text[i * size:(i + 1) * size] for i in range(count)]


class StandIn:
    def __init__(self, keys: dict[str, str], delay: float):
        self.keys = keys
        self.delay = delay
        self.requests: list[dict[str, Any]] = []

    def record(self, request: Request) -> None:
        self.requests.append({
            "method": request.method,
            "path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "headers": [[k, v] for k, v in request.headers.items()],
        })
        del self.requests[:-1000]

    async def events(self, events: list[bytes], key: str | None = None) -> AsyncIterator[bytes]:
        for index, event in enumerate(events):
            if index:
                await asyncio.sleep(self.delay)
            if key is not None and key.encode() in event:
                head, tail = event.split(key.encode(), 1)
                yield head + key.encode()[:5]  # the key across two chunks
                await asyncio.sleep(0.01)
                yield key.encode()[5:] + tail
            else:
                yield event

    # --- OpenAI --------------------------------------------------------------------

    async def openai_chat(self, request: Request) -> Response:
        self.record(request)
        given = request.headers.get("authorization", "")
        if given != f"Bearer {self.keys['openai']}":
            return JSONResponse({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}}, status_code=401)
        body = json.loads(await request.body())
        model, output = body["model"], int(body.get("max_completion_tokens") or body.get("max_tokens") or 20)
        usage = {"prompt_tokens": INPUT_TOKENS, "completion_tokens": output, "total_tokens": INPUT_TOKENS + output}
        echo = model == "echo-key"
        text = f"your key is {given[7:]}" if echo else "hello from the stand-in"
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {"id": "chatcmpl-standin", "object": "chat.completion", "created": created, "model": model,
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                              "logprobs": None, "finish_reason": "stop"}], "usage": usage},
                headers={"x-echo-key": given[7:]} if echo else {})

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                                           "model": model, "choices": choices, **extra}).encode() + b"\n\n"

        pieces = split(text, STREAM_EVENTS) if not echo else [text] + [""] * (STREAM_EVENTS - 1)
        events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]) for piece in pieces]
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return StreamingResponse(self.events(events, given[7:] if echo else None), media_type="text/event-stream")

    async def openai_responses(self, request: Request) -> Response:
        self.record(request)
        if request.headers.get("authorization") != f"Bearer {self.keys['openai']}":
            return JSONResponse({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}}, status_code=401)
        body = json.loads(await request.body())
        output = int(body.get("max_output_tokens") or 20)
        return JSONResponse({
            "id": "resp_standin", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": body["model"], "output": [{"type": "message", "id": "msg_standin", "status": "completed", "role": "assistant",
                                                "content": [{"type": "output_text", "text": "hello", "annotations": []}]}],
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": output, "total_tokens": INPUT_TOKENS + output,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        })

    # --- Anthropic ---------------------------------------------------------------------

    async def anthropic_messages(self, request: Request) -> Response:
        self.record(request)
        given = request.headers.get("x-api-key", "")
        if given != self.keys["anthropic"]:
            return JSONResponse({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
                                status_code=401)
        body = json.loads(await request.body())
        model, output = body["model"], int(body.get("max_tokens") or 20)
        echo = model == "echo-key"
        text = f"your key is {given}" if echo else "hello from the stand-in"
        message = {"id": "msg_standin", "type": "message", "role": "assistant", "model": model}
        if not body.get("stream"):
            return JSONResponse({**message, "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                 "stop_sequence": None, "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": output}},
                                headers={"x-echo-key": given} if echo else {})

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        events = [event("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                  "stop_sequence": None, "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}}),
                  event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
        pieces = [text] if echo else split(text, STREAM_EVENTS - 3)
        events += [event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
                   for p in pieces]
        events += [event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                           "usage": {"output_tokens": output}}),
                   event("message_stop", {"type": "message_stop"})]
        return StreamingResponse(self.events(events, given if echo else None), media_type="text/event-stream")

    # --- Gemini --------------------------------------------------------------------------

    async def gemini(self, request: Request) -> Response:
        self.record(request)
        given = request.headers.get("x-goog-api-key", "")
        if given != self.keys["gemini"]:
            return JSONResponse({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                           "status": "INVALID_ARGUMENT"}}, status_code=400)
        model, _, method = request.path_params["call"].partition(":")
        body = json.loads(await request.body())
        output = int((body.get("generationConfig") or {}).get("maxOutputTokens") or 20)
        echo = model == "echo-key"
        text = f"your key is {given}" if echo else "hello from the stand-in"

        def answer(part: str, done: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": [{"text": part}], "role": "model"}, "index": 0}
            if done:
                candidate["finishReason"] = "STOP"
            used = output if done else 1
            return {"candidates": [candidate], "usageMetadata": {"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": used,
                    "totalTokenCount": INPUT_TOKENS + used}, "modelVersion": model}

        if method == "generateContent":
            return JSONResponse(answer(text, True), headers={"x-echo-key": given} if echo else {})
        if method != "streamGenerateContent" or request.query_params.get("alt") != "sse":
            return JSONResponse({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}, status_code=404)
        pieces = [text] + [""] * (STREAM_EVENTS - 1) if echo else split(text, STREAM_EVENTS)
        events = [b"data: " + json.dumps(answer(p, i == len(pieces) - 1)).encode() + b"\r\n\r\n" for i, p in enumerate(pieces)]
        return StreamingResponse(self.events(events, given if echo else None), media_type="text/event-stream")

    # --- test hooks ----------------------------------------------------------------------

    async def redirect(self, request: Request) -> Response:
        self.record(request)
        return Response(status_code=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})

    async def set_keys(self, request: Request) -> Response:
        self.keys.update(json.loads(await request.body()))
        return JSONResponse(self.keys)

    async def received(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.requests.clear()
            return JSONResponse([])
        return JSONResponse(self.requests)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.openai_chat, methods=["POST"]),
            Route("/v1/responses", self.openai_responses, methods=["POST"]),
            Route("/v1/messages", self.anthropic_messages, methods=["POST"]),
            Route("/v1beta/models/{call}", self.gemini, methods=["POST"]),
            Route("/v1/models/{call}", self.gemini, methods=["POST"]),
            Route("/v1/redirect", self.redirect, methods=["GET", "POST"]),
            Route("/_standin/keys", self.set_keys, methods=["POST"]),
            Route("/_standin/requests", self.received, methods=["GET", "DELETE"]),
        ])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--keys", default='{"openai": "", "anthropic": "", "gemini": ""}')
    args = parser.parse_args()
    stand_in = StandIn(json.loads(args.keys), args.delay)
    loop = "uvloop"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        loop = "asyncio"
    uvicorn.run(stand_in.app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False, loop=loop, http="httptools")


if __name__ == "__main__":
    main()
