"""The RFC 8693 token exchange request, parsed and checked before anything is verified."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AsyncIterable
from urllib.parse import parse_qsl, urlsplit

from chit.bounded import BodyTooLarge, read_bounded

from chit.protocol import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    JWT_TOKEN_TYPES,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_AWS_CREDENTIALS,
    TOKEN_TYPE_AWS_IAM,
    TOKEN_TYPE_AWS_IID,
    TOKEN_TYPE_JWT,
)
from chit.server.errors import InvalidRequest, InvalidScope, InvalidTarget, RequestTooLarge, UnsupportedGrantType
from chit.server.reserved_audience import is_reserved_audience


SUBJECT_TOKEN_TYPES = JWT_TOKEN_TYPES | {TOKEN_TYPE_AWS_IID, TOKEN_TYPE_AWS_IAM}
REQUESTED_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_AWS_CREDENTIALS})

MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 100
MAX_TARGETS = 16
REPEATABLE = frozenset({"audience", "resource"})  # RFC 8693 §2.1, RFC 8707 §2
SINGLE = frozenset(
    {
        "grant_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "scope",
        "actor_token",
        "actor_token_type",
    }
)
# RFC 6749 Appendix A.4: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# RFC 3986 §2: a URI is made of unreserved, reserved and percent-encoded characters only;
# docs/reference holds `audience` to the same grammar as `resource`. Neither a quote, a
# backslash, a space nor a control character can pass (nor reach the policy).
_URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    subject_token: str
    subject_token_type: str
    requested_token_type: str
    audience: tuple[str, ...]
    resource: tuple[str, ...]
    scope: tuple[str, ...]
    actor_token: str | None
    actor_token_type: str | None

    @property
    def targets(self) -> tuple[str, ...]:
        return self.audience + self.resource


async def read_form_body(content_length: str | None, body: AsyncIterable[bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (413) once over `limit`, before it is all in memory."""
    if content_length is not None:
        if not (content_length.isascii() and content_length.isdigit()):
            raise InvalidRequest("invalid Content-Length")
        if int(content_length) > limit:
            raise RequestTooLarge(f"request body over {limit} bytes")
    try:
        return await read_bounded(body, limit)
    except BodyTooLarge:
        raise RequestTooLarge(f"request body over {limit} bytes") from None


def _form_fields(content_type: str | None, body: bytes) -> dict[str, list[str]]:
    """application/x-www-form-urlencoded only (RFC 6749 §3.2)."""
    media_type, _, parameters = (content_type or "").partition(";")
    if media_type.strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest("the request body must be application/x-www-form-urlencoded")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidRequest("the request body must be UTF-8")
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=bool(text), encoding="utf-8", errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise InvalidRequest("the form is not valid UTF-8 / percent-encoding") from None
    except ValueError as error:
        if "Max number of fields" in str(error):
            raise InvalidRequest(f"more than {MAX_FORM_FIELDS} form fields") from None
        raise InvalidRequest("malformed form body") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        # RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once."
        raise InvalidRequest(f"parameter {name} repeated")
    # RFC 6749 §3.2: "Parameters sent without a value MUST be treated as if they were omitted."
    return values[0] or None


def _targets(fields: dict[str, list[str]], name: str) -> tuple[str, ...]:
    values = tuple(v for v in fields.get(name, []) if v)
    if len(values) > MAX_TARGETS:
        raise InvalidTarget(f"more than {MAX_TARGETS} {name} values")
    for value in values:
        if len(value) > 1024 or not _URI_CHARACTERS.fullmatch(value):
            raise InvalidTarget(f"malformed {name}: not an RFC 3986 URI")
        if name == "resource":
            try:
                parts = urlsplit(value)
            except ValueError:  # e.g. an unbalanced IPv6 bracket: "http://[x"
                raise InvalidTarget("malformed resource") from None
            # RFC 8707 §2: "MUST be an absolute URI ... MUST NOT include a fragment component."
            if not parts.scheme or parts.fragment or "#" in value:
                raise InvalidTarget("resource must be an absolute URI without a fragment")
        if is_reserved_audience(value):
            # docs/reference/http-api.md "Reserved audience": "an ordinary exchange can neither request it nor be granted it".
            raise InvalidTarget(f"{name} {value!r} is reserved for chit's own calls to AWS STS")
    return values


def parse_token_request(content_type: str | None, body: bytes) -> TokenRequest:
    fields = _form_fields(content_type, body)
    for name in SINGLE:
        _single(fields, name)  # refuses repeats before anything else is looked at
    grant_type = _single(fields, "grant_type")
    if grant_type is None:
        raise InvalidRequest("missing grant_type")
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise UnsupportedGrantType(f"grant_type must be {GRANT_TYPE_TOKEN_EXCHANGE}")

    subject_token = _single(fields, "subject_token")
    subject_token_type = _single(fields, "subject_token_type")
    if subject_token is None:
        raise InvalidRequest("missing subject_token")
    if subject_token_type is None:
        raise InvalidRequest("missing subject_token_type")
    if subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("unsupported subject_token_type")

    requested_token_type = _single(fields, "requested_token_type") or TOKEN_TYPE_ACCESS_TOKEN
    if requested_token_type not in REQUESTED_TOKEN_TYPES:
        raise InvalidRequest("unsupported requested_token_type")

    actor_token = _single(fields, "actor_token")
    actor_token_type = _single(fields, "actor_token_type")
    # RFC 8693 §2.1: actor_token_type "is REQUIRED when the actor_token parameter is
    # present in the request but MUST NOT be included otherwise."
    if (actor_token is None) != (actor_token_type is None):
        raise InvalidRequest("actor_token and actor_token_type go together")
    if actor_token_type is not None and actor_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("unsupported actor_token_type")

    scope_text = _single(fields, "scope")
    scope: tuple[str, ...] = ()
    if scope_text is not None:
        scope = tuple(dict.fromkeys(scope_text.split(" ")))
        if not all(_SCOPE_TOKEN.fullmatch(s) for s in scope) or len(scope) > 64:
            raise InvalidScope("malformed scope")

    return TokenRequest(
        subject_token=subject_token,
        subject_token_type=subject_token_type,
        requested_token_type=requested_token_type,
        audience=_targets(fields, "audience"),
        resource=_targets(fields, "resource"),
        scope=scope,
        actor_token=actor_token,
        actor_token_type=actor_token_type,
    )


def parse_token_parameter(content_type: str | None, body: bytes) -> str:
    """The `token` of a revocation (RFC 7009 §2.1) or introspection (RFC 7662 §2.1)
    request: "REQUIRED. The token that the client wants to get revoked" / "the string
    value of the token". `token_type_hint` is optional and chit has one kind of token."""
    fields = _form_fields(content_type, body)
    token = _single(fields, "token")
    _single(fields, "token_type_hint")
    if token is None:
        raise InvalidRequest("missing token")
    return token
