"""Which route a request takes, and whether the route allows it: the path prefix, the
methods, the paths below the upstream, and for LLM routes the model.

The upstream of a route is fixed in the configuration: a request only chooses the
path below it, and that path is checked before anything else reads it. It is
taken as the client sent it (the raw path, not a decoded one), and refused if it
could mean one thing here and another upstream: dot segments, empty segments,
percent-encoded `/`, `\\` or `.`, or characters outside RFC 3986's path characters.
What is checked is exactly what is forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from chit.gateway.config import Route
from chit.gateway.errors import AccessDenied, InvalidRequest, MethodNotAllowed, NotFound
from chit.strictjson import StrictJSONError, strict_json_object

# RFC 3986 §3.3 pchar and "/", with percent-encodings checked apart.
_RAW_PATH = re.compile(r"(/[A-Za-z0-9._~:@!$&'()*+,;=%-]*)+")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNSAFE_ENCODED = frozenset({"2f", "5c", "2e", "00"})  # / \ . and NUL
# Gemini names the model in the path: /v1beta/models/{model}:generateContent.
_GEMINI_MODEL = re.compile(r"/models/([^/:]+):[A-Za-z]+$")


def _pattern(allowed: str) -> re.Pattern[str]:
    """`*` is the rest of one segment; a final `/**` any further segments."""
    tail = ""
    if allowed.endswith("/**"):
        allowed, tail = allowed[:-3], "(/[^/]+)*"
    return re.compile("".join("[^/]*" if c == "*" else re.escape(c) for c in allowed) + tail)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Where a checked request goes: the URL below the route's upstream."""

    route: Route
    path: str  # below the prefix, as sent
    query: str  # as sent, less what must not reach the upstream

    @property
    def url(self) -> str:
        return self.route.upstream + self.path + (f"?{self.query}" if self.query else "")


class RouteTable:
    def __init__(self, routes: list[Route]):
        # Longest prefix first: /openai/v2 wins over /openai.
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self._paths = {r.name: [_pattern(p) for p in r.paths] for r in routes}

    def route(self, raw_path: str) -> Route:
        """The route whose prefix is a whole-segment prefix of the path; NotFound otherwise."""
        for route in self.routes:
            if raw_path == route.prefix or raw_path.startswith(route.prefix + "/"):
                return route
        raise NotFound("no route for this path")

    def admit(self, route: Route, method: str, raw_path: str, query: str) -> UpstreamRequest:
        """The method and the path below the prefix must be on the route's allowlists."""
        if method not in route.methods:
            raise MethodNotAllowed(f"method {method} is not allowed on route {route.name}", headers={"Allow": ", ".join(route.methods)})
        path = raw_path[len(route.prefix):]
        refuse_ambiguous_path(path)
        if not any(pattern.fullmatch(path) for pattern in self._paths[route.name]):
            raise AccessDenied(f"path {path[:200]} is not allowed on route {route.name}")
        return UpstreamRequest(route, path, upstream_query(route, query))


def refuse_ambiguous_path(path: str) -> None:
    if not _RAW_PATH.fullmatch(path):
        raise InvalidRequest("the path has characters a path does not carry, or an empty segment")
    segments = path.split("/")[1:]
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidRequest("the path has an empty, '.' or '..' segment")
    for encoded in _PERCENT.findall(path):
        if encoded.lower() in _UNSAFE_ENCODED:
            raise InvalidRequest("the path has a percent-encoded '/', '\\', '.' or NUL")
    if path.count("%") != len(_PERCENT.findall(path)):
        raise InvalidRequest("the path has a '%' that is not a percent-encoding")


def upstream_query(route: Route, query: str) -> str:
    """The query as sent, except Gemini's `key` parameter: the Gemini API takes an API key
    there too, and the upstream must only ever see the key the gateway injects."""
    if route.provider != "gemini" or not query:
        return query
    parameters = parse_qsl(query, keep_blank_values=True)
    if not any(name == "key" for name, _ in parameters):
        return query
    return urlencode([(name, value) for name, value in parameters if name != "key"])


def requested_model(route: Route, path: str, body: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The model a request asks for, and its JSON body when the route needed to read it.

    OpenAI and Anthropic name the model in the body (`model`); Gemini in the path.
    A route with a model allowlist refuses a request whose model cannot be read
    (a body that is not strict JSON, a `model` that is not a string) and one whose
    model is not on the list; a route with a token budget, a body that is not
    strict JSON (what it asks for decides how its usage is reported)."""
    document: dict[str, Any] | None = None
    model: Any = None
    if route.provider == "gemini":
        found = _GEMINI_MODEL.search(path)
        model = found.group(1) if found else None
    elif route.provider is not None and body:
        try:
            document = strict_json_object(body, "the request body")
        except StrictJSONError as error:
            if route.models is not None or route.budgets.tokens_per_day:
                raise InvalidRequest(f"{error}: route {route.name} reads the request") from None
        else:
            model = document.get("model")
    if route.models is None:
        return (model if isinstance(model, str) else None), document
    if not isinstance(model, str):
        raise InvalidRequest(f"route {route.name} allows only some models, and this request names none")
    if model not in route.models:
        raise AccessDenied(f"model {model[:256]!r} is not allowed on route {route.name}")
    return model, document
