"""Who may call through the gateway, and what: every refusal happens before any upstream
call (the stand-in receives nothing), is a clear RFC 6750 / RFC 6749 error with the
decision id of its audit line, and never a 500.

Tokens: chit's own, verified offline from its JWKS; wrong audience, expired, revoked,
under-scoped, forged (another key, alg none, HS256 with the public key), of another
issuer or another type are refused. Requests: only the route's methods, paths and
models; paths that could mean something else upstream are refused; the client's own
credential headers never reach the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from typing import Any, Callable, Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chit.gateway.revocations import NOT_REVOKED_FOR
from chit.server.keys import KeyStore
from chit.server.mint import mint_jwt
from tests.factories import ChitServer
from tests.gateway.conftest import subject_of
from tests.gateway.servers import GATEWAY_AUDIENCE, KEYS, GatewayServer, UpstreamStandIn

CHAT = "/openai/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def quiet_upstream(upstream: UpstreamStandIn) -> Iterator[UpstreamStandIn]:
    """The stand-in with no request recorded; the test asserts on what reached it."""
    upstream.forget()
    yield upstream


def forged(token_server: ChitServer, *, now: float | None = None, typ: str = "at+jwt", issuer: str | None = None,
           audience: str = GATEWAY_AUDIENCE, scope: tuple[str, ...] = ("llm:openai",), ttl: int = 300) -> str:
    """A token signed with chit's real signing key, with whatever claims a test needs."""
    now = time.time() if now is None else now
    key = KeyStore(token_server.directory / "keys").signing_key(time.time())
    assert key is not None
    return mint_jwt(key, issuer=issuer or token_server.url, subject=subject_of("coder"), audience=(audience,), scope=scope,
                    ttl=ttl, now=now, att={"kind": "kubernetes"}, typ=typ).token


def call(gateway: GatewayServer, token: str | None, path: str = CHAT, body: Any = BODY, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kwargs.pop("headers", {}))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return gateway.client.request(kwargs.pop("method", "POST"), path, content=content, headers=headers, **kwargs)


def assert_refused(gateway: GatewayServer, response: httpx.Response, status: int, error: str, outcome: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert response.headers["x-chit-decision-id"] == body["decision_id"]
    line = gateway.audit_for(body["decision_id"])
    assert (line["outcome"], line["error"], line["upstream_status"]) == (outcome, error, None)
    return body


def test_a_good_token_is_forwarded(gateway: GatewayServer, quiet_upstream: UpstreamStandIn, access_token: Callable[..., str]) -> None:
    """The control case: what the refusals below change is all that makes them fail."""
    response = call(gateway, access_token())
    assert response.status_code == 200, response.text
    assert len(quiet_upstream.requests()) == 1


def test_no_token_gets_a_challenge(gateway: GatewayServer, quiet_upstream: UpstreamStandIn) -> None:
    response = call(gateway, None)
    assert_refused(gateway, response, 401, "invalid_token", "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="chit-gateway"'  # RFC 6750 §3.1: no error code
    assert quiet_upstream.requests() == []


@pytest.mark.parametrize("service_account, fields, status, error", [
    ("elsewhere", {}, 401, "invalid_token"),  # a chit token for another audience
    ("reader", {}, 403, "insufficient_scope"),  # for the gateway, without llm:openai
    ("coder", {"scope": "llm:anthropic"}, 403, "insufficient_scope"),  # asked for less than the route needs
])
def test_a_token_for_another_audience_or_scope_is_refused(service_account: str, fields: dict[str, str], status: int, error: str,
                                                          gateway: GatewayServer, quiet_upstream: UpstreamStandIn,
                                                          access_token: Callable[..., str]) -> None:
    response = call(gateway, access_token(service_account, **fields))
    assert_refused(gateway, response, status, error, "unauthorized" if status == 401 else "denied")
    if status == 403:
        assert 'scope="llm:openai"' in response.headers["www-authenticate"]
    assert quiet_upstream.requests() == []


def test_forged_and_malformed_tokens_are_refused(gateway: GatewayServer, quiet_upstream: UpstreamStandIn,
                                                 token_server: ChitServer) -> None:
    good = forged(token_server)
    assert call(gateway, good).status_code == 200  # the forging itself is right: only each change below refuses
    header, claims, signature = good.split(".")
    other_key = ec.generate_private_key(ec.SECP256R1())
    kid = jwt.get_unverified_header(good)["kid"]
    signing_key = KeyStore(token_server.directory / "keys").signing_key(time.time())
    assert signing_key is not None
    public_pem = signing_key.private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    hs256_header = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "at+jwt"}).encode())
    tokens = {
        "expired": forged(token_server, now=time.time() - 400, ttl=300),
        "not a JWS": "not-a-token",
        "another issuer": forged(token_server, issuer="https://chit.elsewhere.test"),
        "typ JWT, not at+jwt": forged(token_server, typ="JWT"),
        "no typ": jwt.encode(jwt.decode(good, options={"verify_signature": False}), signing_key.private_key, algorithm="ES256",
                             headers={"kid": kid, "typ": None}),
        "another key, same kid": jwt.encode(jwt.decode(good, options={"verify_signature": False}), other_key, algorithm="ES256",
                                            headers={"kid": kid, "typ": "at+jwt"}),
        "alg none": f"{b64(json.dumps({'alg': 'none', 'kid': kid, 'typ': 'at+jwt'}).encode())}.{claims}.",
        "HS256 keyed with the public key": f"{hs256_header}.{claims}."
        + b64(hmac.new(public_pem, f"{hs256_header}.{claims}".encode(), hashlib.sha256).digest()),
        "signature of another token": f"{header}.{b64(json.dumps({**jwt.decode(good, options={'verify_signature': False}), 'scope': 'llm:openai admin'}).encode())}.{signature}",
        "unknown kid": jwt.encode({"sub": "x"}, other_key, algorithm="ES256", headers={"kid": "unknown", "typ": "at+jwt"}),
    }
    quiet_upstream.forget()
    for what, token in tokens.items():
        response = call(gateway, token)
        assert response.status_code == 401, (what, response.text)
        assert response.json()["error"] == "invalid_token", what
    assert quiet_upstream.requests() == []


def test_two_different_tokens_in_one_request_are_refused(gateway: GatewayServer, quiet_upstream: UpstreamStandIn,
                                                         access_token: Callable[..., str]) -> None:
    response = call(gateway, access_token(), headers={"x-api-key": access_token("reader")})
    assert_refused(gateway, response, 400, "invalid_request", "invalid")
    assert quiet_upstream.requests() == []


def test_a_revoked_token_is_refused(gateway: GatewayServer, quiet_upstream: UpstreamStandIn, token_server: ChitServer,
                                    access_token: Callable[..., str]) -> None:
    token = access_token("revoked-token")
    assert call(gateway, token).status_code == 200
    assert token_server.revoke(token).status_code == 200
    time.sleep(NOT_REVOKED_FOR + 0.1)  # how long a replica may still take it (test_kill_switch.py: every replica, within 1 s)
    quiet_upstream.forget()
    body = assert_refused(gateway, call(gateway, token), 401, "invalid_token", "unauthorized")
    assert "revoked" in body["error_description"]
    assert quiet_upstream.requests() == []


@pytest.mark.parametrize("path, body, status, error", [
    ("/anthropic/v1/messages", {"model": "claude-opus-4-1", "max_tokens": 5, "messages": []}, 403, "access_denied"),
    (CHAT, {"model": "gpt-4.1", "messages": []}, 403, "access_denied"),
    (CHAT, {"messages": []}, 400, "invalid_request"),  # an allowlist, and no model named
    (CHAT, {"model": "gpt-4o-mini", "model ": 1, "messages": []}, 200, None),  # a different member: fine
    (CHAT, b'{"model": "gpt-4o-mini", "model": "gpt-4.1"}', 400, "invalid_request"),  # duplicate members: refused
    (CHAT, b"model=gpt-4o-mini", 400, "invalid_request"),  # not JSON
    ("/gemini/v1beta/models/gemini-2.0-pro:generateContent", {"contents": []}, 403, "access_denied"),
])
def test_only_allowlisted_models_are_forwarded(path: str, body: Any, status: int, error: str | None, gateway: GatewayServer,
                                               quiet_upstream: UpstreamStandIn, access_token: Callable[..., str]) -> None:
    response = call(gateway, access_token(), path, body)
    if error is None:
        assert response.status_code == status, response.text
        return
    assert_refused(gateway, response, status, error, "denied" if status == 403 else "invalid")
    assert quiet_upstream.requests() == []


@pytest.mark.parametrize("method, path, status, error", [
    ("POST", "/openai/v1/files", 403, "access_denied"),  # not on the route's paths
    ("GET", CHAT, 405, "method_not_allowed"),
    ("POST", "/openai/v1/chat/../files", 400, "invalid_request"),
    ("POST", "/openai/v1/chat/%2e%2e/files", 400, "invalid_request"),
    ("POST", "/openai/v1/chat%2fcompletions", 400, "invalid_request"),
    ("POST", "/openai//v1/chat/completions", 400, "invalid_request"),
    ("POST", "/nowhere/v1/chat/completions", 404, "not_found"),
    ("POST", "/openaix/v1/chat/completions", 404, "not_found"),  # a prefix is whole segments
])
def test_only_allowlisted_methods_and_paths_are_forwarded(method: str, path: str, status: int, error: str, gateway: GatewayServer,
                                                          quiet_upstream: UpstreamStandIn, access_token: Callable[..., str]) -> None:
    response = raw_request(gateway, method, path, access_token())
    outcome = {403: "denied", 405: "denied"}.get(status, "invalid")
    assert_refused(gateway, response, status, error, outcome)
    if status == 405:
        assert response.headers["allow"] == "POST"
    assert quiet_upstream.requests() == []


def raw_request(gateway: GatewayServer, method: str, path: str, token: str) -> httpx.Response:
    """The request line exactly as written (HTTP clients normalise dot segments away)."""
    body = json.dumps(BODY).encode()
    request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=content)


def test_a_body_over_the_limit_is_refused(gateway: GatewayServer, quiet_upstream: UpstreamStandIn, access_token: Callable[..., str]) -> None:
    body = json.dumps({**BODY, "padding": "x" * (4 * 1024 * 1024)}).encode()
    response = call(gateway, access_token(), body=body)
    assert_refused(gateway, response, 413, "invalid_request", "invalid")
    assert quiet_upstream.requests() == []


def test_the_upstream_gets_the_injected_key_only(gateway: GatewayServer, quiet_upstream: UpstreamStandIn,
                                                 access_token: Callable[..., str]) -> None:
    """The client's credential headers are removed, whatever they hold; Host is the
    upstream's; hop-by-hop headers and those named in Connection are not forwarded
    (RFC 9110 §7.6.1); Gemini's `key` query parameter never reaches Google."""
    token = access_token()
    response = call(gateway, token, "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=client-chosen&alt=json",
                    {"contents": []}, headers={"x-goog-api-key": token, "x-api-key": token, "Connection": "x-private",
                                               "x-private": "hop", "Keep-Alive": "timeout=5", "x-kept": "end-to-end"})
    assert response.status_code == 200, response.text
    [received] = quiet_upstream.requests()
    headers = dict(received["headers"])
    assert headers["x-goog-api-key"] == KEYS["gemini"]
    assert "authorization" not in headers and "x-api-key" not in headers
    assert token not in json.dumps(received)
    assert headers["host"] == quiet_upstream.url.removeprefix("http://")
    assert "x-private" not in headers and "keep-alive" not in headers
    assert headers["x-kept"] == "end-to-end"
    assert received["query"] == "alt=json"


def test_an_upstream_redirect_is_not_followed_nor_passed_on(gateway: GatewayServer, quiet_upstream: UpstreamStandIn,
                                                            access_token: Callable[..., str]) -> None:
    response = call(gateway, access_token(), "/openai/v1/redirect", {"model": "gpt-4o-mini"})
    assert_refused(gateway, response, 502, "bad_gateway", "upstream_error")
    assert "location" not in response.headers
    assert len(quiet_upstream.requests()) == 1  # the redirect itself; nothing went to its Location


def test_upstream_errors_pass_with_their_status(gateway: GatewayServer, upstream: UpstreamStandIn,
                                                access_token: Callable[..., str]) -> None:
    """The stand-in refusing the key (a key revoked at the provider): its 401 and its
    body reach the client as the provider sent them, audited as forwarded."""
    upstream.accept(openai="sk-another-key")
    try:
        response = call(gateway, access_token())
    finally:
        upstream.accept(openai=KEYS["openai"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    line = gateway.audit_for(response.headers["x-chit-decision-id"])
    assert (line["outcome"], line["upstream_status"], line["tokens"]) == ("forwarded", 401, None)
