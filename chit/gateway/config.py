"""The gateway's configuration: its own YAML file, parsed once at start into frozen sections.

The keys are the contract (docs/reference/gateway-configuration.md). The
gateway never reads the token server's file: it holds upstream API keys, chit
holds signing keys, and each file names only what its process needs. An
unknown key, a wrong type or an unsafe value stops the start with a message
naming the key and the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from chit.audit import AuditSink
from chit.aws import Aws
from chit.section import ConfigError, FilePath, Section, read_yaml_file, validate_section  # noqa: F401 (ConfigError: raised by the loaders)
from chit.serving.listen import Listen
from chit.serving.logs import Log
from chit.state import State
from chit.urls import require_safe_url

CONFIG_ENV = "CHIT_GATEWAY_CONFIG"
RESOLVED_CONFIG_ENV = "CHIT_GATEWAY_RESOLVED_CONFIG"  # set by `chit gateway` for its uvicorn workers
DEFAULT_PORT = 8410

# The gateway's own endpoints: no route may take these paths.
RESERVED_PATHS = ("/healthz", "/readyz", "/metrics")

# RFC 9110 §5.1: field-name = token.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_ROUTE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# A prefix: one or more segments of unreserved characters (RFC 3986 §2.3).
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")
# An allowed path below the upstream: segments of the characters `chit.gateway.routes`
# accepts in a request path, where `*` stands for the rest of one segment and a
# final `/**` for any further segments.
_PATH_PATTERN = re.compile(r"(/[A-Za-z0-9._~:@!$&'()+,;=*-]+)+(/\*\*)?|/\*\*")
_METHOD = re.compile(r"[A-Z]{1,20}")

# Headers the gateway sets or removes itself: a route cannot inject its key into them.
NOT_INJECTABLE = frozenset({
    "host", "content-length", "content-type", "content-encoding", "transfer-encoding", "connection", "keep-alive",
    "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding", "cookie",
})


class TokenIssuer(Section):
    """The chit token server whose access tokens the gateway accepts."""

    issuer: str  # chit's `issuer`, exactly: the `iss` of its tokens
    jwks_uri: str | None = None  # None: ISSUER/.well-known/jwks.json
    ca_file: FilePath | None = None  # CA of chit's HTTPS certificate, added to the system's

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        require_safe_url(value, "issuer")
        return value.rstrip("/")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "jwks_uri")

    @property
    def keys_url(self) -> str:
        return self.jwks_uri or f"{self.issuer}/.well-known/jwks.json"


class Injection(Section):
    """How the upstream key goes into each forwarded request: `header: VALUE`, where VALUE
    is the key, or `scheme KEY` (`Authorization: Bearer KEY`)."""

    header: str
    scheme: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _FIELD_NAME.fullmatch(value):
            raise ValueError("must be an HTTP header name (RFC 9110 §5.1)")
        if value.lower() in NOT_INJECTABLE:
            raise ValueError(f"{value} is set by the gateway itself; name the header the upstream reads its key from")
        return value.lower()

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not _FIELD_NAME.fullmatch(value):
            raise ValueError("must be an authentication scheme name such as Bearer (RFC 9110 §11.1)")
        return value


class AwsSecret(Section):
    """A key in AWS Secrets Manager, read with the gateway's own AWS credentials (`aws`)."""

    secret_id: Annotated[str, Field(min_length=1, max_length=2048)]  # its name or ARN
    json_key: str | None = None  # the secret is a JSON object: the key is this member
    cache_seconds: Annotated[int, Field(ge=1, le=86400)] = 300


class KeySource(Section):
    """Where a route's upstream key comes from: exactly one of `file` and `aws_secret`."""

    file: FilePath | None = None  # re-read when it changes (a mounted Kubernetes Secret)
    aws_secret: AwsSecret | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        if (self.file is None) == (self.aws_secret is None):
            raise ValueError("set exactly one of file and aws_secret")
        return self


class Budgets(Section):
    """Per subject (the token's `sub`) and route, shared by every replica (the state store)."""

    requests_per_minute: Annotated[int, Field(ge=0)] = 0  # 0: unlimited
    tokens_per_day: Annotated[int, Field(ge=0)] = 0  # LLM tokens per UTC day, from the upstream's usage; 0: unlimited


class Route(Section):
    name: str
    prefix: str
    upstream: str
    inject: Injection
    key: KeySource
    scope: str
    methods: list[str] = ["POST"]
    paths: Annotated[list[str], Field(min_length=1)]
    provider: Literal["openai", "anthropic", "gemini"] | None = None
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = None
    budgets: Budgets = Budgets()
    ca_file: FilePath | None = None  # CA of the upstream's certificate, added to the system's
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60, strict=False)] = 10.0
    # Between two reads of the upstream's answer: a model may think for minutes before its first byte.
    read_timeout_seconds: Annotated[float, Field(gt=0, le=3600, strict=False)] = 600.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ROUTE_NAME.fullmatch(value):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-', at most 63")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value) or any(s in (".", "..") for s in value.split("/")):
            raise ValueError("must be a path such as /openai: '/'-separated segments of letters, digits, '.', '_', '~', '-'")
        if any(value == reserved or value.startswith(reserved + "/") for reserved in RESERVED_PATHS):
            raise ValueError(f"{value} is one of the gateway's own paths ({', '.join(RESERVED_PATHS)})")
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        require_safe_url(value, "upstream")
        parts = urlsplit(value)
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be a base URL without query, fragment or credentials")
        return value.rstrip("/")

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if not _SCOPE_TOKEN.fullmatch(value):
            raise ValueError("must be one scope token (RFC 6749 §3.3), e.g. llm:openai")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        if not value or not all(_METHOD.fullmatch(m) for m in value):
            raise ValueError("must be a non-empty list of HTTP methods in capitals (POST, GET)")
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not _PATH_PATTERN.fullmatch(pattern) or any(s in (".", "..") for s in pattern.split("/")):
                raise ValueError(f"{pattern!r} is not a path pattern such as /v1/chat/completions, /v1beta/models/*, /v1/**")
        return value

    @model_validator(mode="after")
    def _llm_only(self) -> Route:
        if self.provider is None and self.models is not None:
            raise ValueError("models needs provider (openai, anthropic or gemini): it says where the model is named")
        if self.provider is None and self.budgets.tokens_per_day:
            raise ValueError("budgets.tokens_per_day needs provider (openai, anthropic or gemini): it says where usage is reported")
        return self


class GatewayConfig(Section):
    chit: TokenIssuer
    audience: str  # the gateway's own name: the `aud` its tokens must carry
    routes: Annotated[list[Route], Field(min_length=1)]
    listen: Listen = Listen(port=DEFAULT_PORT)
    state: State = State()
    aws: Aws = Aws()  # for keys in AWS Secrets Manager
    audit: AuditSink = AuditSink()
    log: Log = Log()  # operational logs on stderr: JSON lines (or text), as the token server's
    max_request_bytes: Annotated[int, Field(ge=1024, le=32 * 1024 * 1024)] = 4 * 1024 * 1024

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str) -> str:
        if not value or not value.isprintable():
            raise ValueError("must be a non-empty string, the audience chit mints the gateway's tokens for")
        return value

    @model_validator(mode="after")
    def _unique_routes(self) -> GatewayConfig:
        names = [r.name for r in self.routes]
        prefixes = [r.prefix for r in self.routes]
        for what, values in (("name", names), ("prefix", prefixes)):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"routes: {what} {', '.join(duplicates)} given more than once")
        return self


def parse_gateway_config(document: object, source: str, base: Path) -> GatewayConfig:
    """Validate a gateway config mapping; `source` names it in errors, `base` anchors relative paths."""
    return validate_section(GatewayConfig, document, source, base)


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """The gateway's configuration file; ConfigError names the file and every bad key."""
    path = Path(path)
    return parse_gateway_config(read_yaml_file(path), str(path), path.resolve().parent)
