"""POST /token as an HTTP endpoint: form parsing, limits, and RFC 6749 errors."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlencode

import httpx
import pytest

from tests.factories import JWT_TYPE, TOKEN_EXCHANGE, ChitServer, ClusterIssuer, assert_issued, assert_refused

DB = "https://db.internal"


def form(token: str, **extra: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": token, **extra}


def raw_request(chit: ChitServer, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", chit.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_missing_grant_type(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    fields = form(prod_issuer.token())
    del fields["grant_type"]
    assert_refused(chit.client.post("/token", data=fields))


@pytest.mark.parametrize("grant_type", ["client_credentials", "authorization_code", "urn:ietf:params:oauth:grant-type:jwt-bearer"])
def test_wrong_grant_type(chit: ChitServer, prod_issuer: ClusterIssuer, grant_type: str) -> None:
    assert_refused(chit.client.post("/token", data=form(prod_issuer.token(), grant_type=grant_type)), error="unsupported_grant_type")


@pytest.mark.parametrize("field", ["subject_token", "subject_token_type"])
def test_missing_subject_fields(chit: ChitServer, prod_issuer: ClusterIssuer, field: str) -> None:
    fields = form(prod_issuer.token())
    del fields[field]
    assert_refused(chit.client.post("/token", data=fields))


def test_empty_value_counts_as_missing(chit: ChitServer) -> None:
    assert_refused(chit.client.post("/token", data=form("")))


def test_unsupported_token_types(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.client.post("/token", data=form(prod_issuer.token(), subject_token_type="urn:ietf:params:oauth:token-type:saml2")))
    assert_refused(chit.client.post("/token", data=form(prod_issuer.token(), requested_token_type="urn:ietf:params:oauth:token-type:refresh_token")))


@pytest.mark.parametrize("field", ["grant_type", "subject_token", "subject_token_type", "scope", "requested_token_type"])
def test_duplicate_parameters_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer, field: str) -> None:
    fields = form(prod_issuer.token(), scope="read:db", requested_token_type="urn:ietf:params:oauth:token-type:access_token")
    body = urlencode(fields) + "&" + urlencode({field: fields[field]})
    response = chit.client.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response)


def test_audience_and_resource_may_repeat(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = urlencode(form(prod_issuer.token())) + "&audience=https%3A%2F%2Fdb.internal&resource=https%3A%2F%2Fcache.internal"
    response = chit.client.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_issued(response)


@pytest.mark.parametrize(
    "field, value",
    [
        ("audience", "sts.amazonaws.com"),
        ("audience", "STS.amazonaws.com"),
        ("audience", "sts.amazonaws.com/"),
        ("audience", "https://sts.amazonaws.com"),
        ("audience", "sts.us-east-1.amazonaws.com"),
        ("resource", "https://sts.amazonaws.com"),
        ("resource", "https://sts.amazonaws.com/"),
    ],
)
def test_the_reserved_sts_audience_cannot_be_requested(chit: ChitServer, prod_issuer: ClusterIssuer, field: str, value: str) -> None:
    """docs/reference/http-api.md "Reserved audience": "an ordinary exchange can neither request it nor be granted it" (400 invalid_target)."""
    body = assert_refused(chit.exchange(prod_issuer.token(), **{field: [DB, value]}), error="invalid_target")
    audit = chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "invalid" and audit["error"] == "invalid_target"
    assert audit["subject"] is None  # refused while parsing: nothing was verified
    # Whatever the subject token: the request is refused before it is looked at.
    assert_refused(chit.exchange("not-a-token", **{field: value}), error="invalid_target")


def test_json_body_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.client.post("/token", json=form(prod_issuer.token())))


def test_multipart_body_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_refused(chit.client.post("/token", files={"subject_token": ("t", prod_issuer.token())}, data={"grant_type": TOKEN_EXCHANGE}))


def test_missing_content_type_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.client.post("/token", content=urlencode(form(prod_issuer.token())), headers={"Content-Type": ""})
    assert_refused(response)


def test_non_utf8_charset_is_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = chit.client.post(
        "/token",
        content=urlencode(form(prod_issuer.token())),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=iso-8859-1"},
    )
    assert_refused(response)
    response = chit.client.post(
        "/token",
        content=urlencode(form(prod_issuer.token())),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
    )
    assert_issued(response)


@pytest.mark.parametrize("body", [b"grant_type", b"a=1&&b=2", b"%ff%fe=1", b"\xff\xfe", b"x=%zz"], ids=["no-equals", "empty-pair", "bad-utf8-escape", "raw-bytes", "bad-escape"])
def test_malformed_form_bodies_are_refused(chit: ChitServer, body: bytes) -> None:
    response = chit.client.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response)


def test_more_than_100_fields_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    fields = urlencode(form(prod_issuer.token()))
    padding = "&".join(f"x{i}=1" for i in range(98))
    response = chit.client.post("/token", content=f"{fields}&{padding}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response)
    padding = "&".join(f"x{i}=1" for i in range(96))  # 100 fields in all: accepted
    response = chit.client.post("/token", content=f"{fields}&{padding}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_issued(response)


def test_body_over_64_kb_is_413(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    big = form(prod_issuer.token(), padding="x" * (64 * 1024))
    assert_refused(chit.client.post("/token", data=big), status=413)


def test_body_over_64_kb_without_content_length_is_413(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    def chunks():
        yield urlencode(form(prod_issuer.token())).encode()
        for _ in range(20):
            yield b"&p=" + b"x" * 4096

    response = chit.client.post("/token", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response, status=413)


def test_parameters_in_the_query_string_are_refused(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    token = prod_issuer.token()
    response = chit.client.post("/token", params={"subject_token": token}, data=form(token))
    assert_refused(response)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(chit: ChitServer, method: str) -> None:
    response = chit.client.request(method, "/token")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def test_header_block_over_16_kb_is_431(chit: ChitServer) -> None:
    headers = "".join(f"X-Filler-{i}: {'y' * 1000}\r\n" for i in range(17))
    reply = raw_request(chit, f"POST /token HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 431")


def test_header_block_under_16_kb_is_served(chit: ChitServer) -> None:
    headers = "".join(f"X-Filler-{i}: {'y' * 1000}\r\n" for i in range(14))
    reply = raw_request(chit, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200")


def _seconds_until_closed(chit: ChitServer, chunks: list[bytes], pause: float) -> float:
    """Send `chunks` `pause` seconds apart, then wait; how long until chit closes the connection."""
    import select

    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", chit.port), timeout=40) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if select.select([sock], [], [], pause)[0] and not sock.recv(65536):
                    return time.monotonic() - started
            while sock.recv(65536):  # the server may answer before closing; what matters is that it closes
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass
    return time.monotonic() - started


def test_slow_clients_are_disconnected(chit: ChitServer) -> None:
    """Idle for 10 s mid-request, or before the first byte, or a request still
    incomplete 20 s after its first byte (a byte every 3 s): disconnected.
    The three clients run together (20 s, not 40)."""
    from concurrent.futures import ThreadPoolExecutor

    head = b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\ngrant_type="
    trickle = [bytes([byte]) for byte in b"POST /token HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n"]  # 14 × 3 s > 20 s
    with ThreadPoolExecutor(3) as pool:
        idle = pool.submit(_seconds_until_closed, chit, [head], 0)
        silent = pool.submit(_seconds_until_closed, chit, [], 0)
        trickling = pool.submit(_seconds_until_closed, chit, trickle, 3)
    assert 9 <= idle.result() < 15
    assert 9 <= silent.result() < 15
    assert 19.5 <= trickling.result() < 24  # the server's 20 s run from its first byte, a moment after this clock started


def test_error_responses_never_carry_a_traceback(chit: ChitServer) -> None:
    for body in (b"\x00" * 100, b"grant_type=" + b"%00" * 100, json.dumps({"a": 1}).encode()):
        response = chit.client.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 400
        assert "Traceback" not in response.text and "File \"" not in response.text


def test_unknown_parameters_are_ignored(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    """RFC 6749 §3.2: "The authorization server MUST ignore unrecognized request parameters." """
    assert_issued(chit.client.post("/token", data=form(prod_issuer.token(), client_id="whoever", foo="bar")))


def test_keep_alive_connection_serves_many_exchanges(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    with httpx.Client(base_url=chit.url) as client:
        for _ in range(5):
            assert_issued(client.post("/token", data=form(prod_issuer.token())))
