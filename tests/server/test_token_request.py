"""The RFC 8693 request parser, in process (the HTTP round trip adds nothing to a parser):
every malformed request is a typed RFC 6749 error, never anything else."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chit.protocol import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_AWS_IID, TOKEN_TYPE_JWT
from chit.server.errors import InvalidRequest, InvalidScope, InvalidTarget, OAuthError, RequestTooLarge, UnsupportedGrantType
from chit.server.token_request import MAX_BODY_BYTES, TokenRequest, parse_token_request, read_form_body

FORM = "application/x-www-form-urlencoded"


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": "a.b.c", "subject_token_type": TOKEN_TYPE_JWT}
    base.update(fields)
    return urlencode({k: v for k, v in base.items() if v is not None}, doseq=True).encode()


def test_a_minimal_request() -> None:
    request = parse_token_request(FORM, body())
    assert request == TokenRequest("a.b.c", TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS_TOKEN, (), (), (), None, None)


def test_everything_a_request_may_carry() -> None:
    request = parse_token_request(
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        body(audience=["https://a.internal", "https://b.internal"], resource="https://c.internal/x", scope="read write read",
             actor_token="x.y.z", actor_token_type=TOKEN_TYPE_AWS_IID),
    )
    assert request.targets == ("https://a.internal", "https://b.internal", "https://c.internal/x")
    assert request.scope == ("read", "write")  # repeats collapse, order kept
    assert (request.actor_token, request.actor_token_type) == ("x.y.z", TOKEN_TYPE_AWS_IID)


REFUSED = {
    "no grant_type": (body(grant_type=None), InvalidRequest),
    "another grant_type": (body(grant_type="client_credentials"), UnsupportedGrantType),
    "no subject_token": (body(subject_token=None), InvalidRequest),
    "empty subject_token": (body(subject_token=""), InvalidRequest),
    "unknown subject_token_type": (body(subject_token_type="urn:ietf:params:oauth:token-type:saml2"), InvalidRequest),
    "unknown requested_token_type": (body(requested_token_type="urn:x"), InvalidRequest),
    "subject_token twice": (body() + b"&subject_token=x.y.z", InvalidRequest),
    "scope twice": (body(scope="a") + b"&scope=b", InvalidRequest),
    "actor_token alone": (body(actor_token="x.y.z"), InvalidRequest),
    "actor_token_type alone": (body(actor_token_type=TOKEN_TYPE_JWT), InvalidRequest),
    "scope with a quote": (body(scope='read"'), InvalidScope),
    "scope with a backslash": (body(scope="read\\"), InvalidScope),
    "scope with a control character": (body(scope="read\x01"), InvalidScope),
    "65 scopes": (body(scope=" ".join(f"s{i}" for i in range(65))), InvalidScope),
    "audience with a quote": (body(audience='https://x"'), InvalidTarget),
    "audience with a backslash": (body(audience="https://x\\"), InvalidTarget),
    "audience with a space": (body(audience="https://x y"), InvalidTarget),
    "audience with a non-ASCII character": (body(audience="https://é.internal"), InvalidTarget),
    "audience with a broken percent-encoding": (body(audience="https://x/%zz"), InvalidTarget),
    "17 audiences": (body(audience=[f"https://{i}.internal" for i in range(17)]), InvalidTarget),
    "relative resource": (body(resource="/x"), InvalidTarget),
    "resource with a fragment": (body(resource="https://x/#f"), InvalidTarget),
    "the reserved STS audience": (body(audience="sts.amazonaws.com"), InvalidTarget),
    "101 fields": (body() + b"".join(b"&x%d=1" % i for i in range(98)), InvalidRequest),
    "bytes that are not UTF-8": (body() + b"&scope=%FF", InvalidRequest),
    "not a form": (b"{not: a form}", InvalidRequest),
}


@pytest.mark.parametrize("raw, error", REFUSED.values(), ids=REFUSED.keys())
def test_malformed_requests_are_typed_rfc_6749_errors(raw: bytes, error: type[OAuthError]) -> None:
    with pytest.raises(error) as refusal:
        parse_token_request(FORM, raw)
    assert type(refusal.value) is error and refusal.value.status_code == 400


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data; boundary=x", "text/plain",
                                          f"{FORM}; charset=latin-1"])
def test_only_utf8_forms_are_read(content_type: str | None) -> None:
    with pytest.raises(InvalidRequest):
        parse_token_request(content_type, body())


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=512) | st.text(max_size=256).map(str.encode), content_type=st.sampled_from([FORM, None, "text/plain"]))
def test_any_body_is_a_request_or_an_oauth_error(raw: bytes, content_type: str | None) -> None:
    """Fuzzed: nothing but a TokenRequest or a typed OAuth error comes out (never a 500)."""
    try:
        assert isinstance(parse_token_request(content_type, raw), TokenRequest)
    except OAuthError as error:
        assert error.status_code == 400 and error.error in ("invalid_request", "invalid_scope", "invalid_target", "unsupported_grant_type")


async def chunks(*parts: bytes):
    for part in parts:
        yield part


def read(content_length: str | None, *parts: bytes) -> bytes:
    return asyncio.run(read_form_body(content_length, chunks(*parts)))


def test_the_body_is_read_up_to_64_kb_and_no_further() -> None:
    assert read(None, b"a" * MAX_BODY_BYTES) == b"a" * MAX_BODY_BYTES
    with pytest.raises(RequestTooLarge):
        read(None, b"a" * MAX_BODY_BYTES, b"a")  # no Content-Length: counted while read
    with pytest.raises(RequestTooLarge):
        read(str(MAX_BODY_BYTES + 1))  # refused before anything is read
    with pytest.raises(InvalidRequest, match="Content-Length"):
        read("12a")
    with pytest.raises(InvalidRequest, match="Content-Length"):
        read("١٢")  # digits, but not ASCII ones
