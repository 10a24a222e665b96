"""What chit checks of a signed GetCallerIdentity request before sending it anywhere:
each refusal on its own, in process, on requests botocore signed."""

from __future__ import annotations

import base64
import json
import time

import pytest

from chit.attestors.aws_iam.envelope import parse_subject_token
from chit.attestors.aws_iam.request import check_request
from chit.attestors.base import InvalidEvidence
from tests.attestors.aws_iam.conftest import rewrite, signed_token

SERVER = "https://chit.example.test"
STS = "https://sts.amazonaws.com/"
ENDPOINTS = frozenset({STS, "https://sts.eu-west-1.amazonaws.com/"})


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    return signed_token(monkeypatch, SERVER, STS)


def check(token: str, now: float | None = None, server_id: str = SERVER):
    return check_request(parse_subject_token(token), ENDPOINTS, server_id, time.time() if now is None else now)


def refused(token: str, reason: str, **kwargs) -> None:
    with pytest.raises(InvalidEvidence, match=reason):
        check(token, **kwargs)


def test_a_request_botocore_signed_is_fit_to_forward(token: str) -> None:
    request = check(token)
    sent = parse_subject_token(token)
    assert request.endpoint == STS and request.body == "Action=GetCallerIdentity&Version=2011-06-15"
    assert request.headers == sent.headers and "Host" not in request.headers  # chit's client sets the endpoint's host
    assert len(request.signature) == 64 and abs(request.signed_at - time.time()) < 60


def test_a_regional_endpoint_is_signed_for_its_region(monkeypatch: pytest.MonkeyPatch) -> None:
    token = signed_token(monkeypatch, SERVER, "https://sts.eu-west-1.amazonaws.com/")
    assert "/eu-west-1/sts/aws4_request" in parse_subject_token(token).headers["Authorization"]
    assert check(token).endpoint == "https://sts.eu-west-1.amazonaws.com/"


def test_only_post(token: str) -> None:
    refused(rewrite(token, method="GET"), "the method must be POST")


@pytest.mark.parametrize("url", ["https://sts.attacker.example/", "http://sts.amazonaws.com/", "https://sts.amazonaws.com",
                                 "https://sts.amazonaws.com/?Action=GetCallerIdentity", "https://sts.us-east-2.amazonaws.com/",
                                 "https://sts.amazonaws.com@attacker.example/"])
def test_only_a_configured_sts_endpoint(token: str, url: str) -> None:
    refused(rewrite(token, url=url), "not an STS endpoint this server accepts")


@pytest.mark.parametrize("body", ["", "Action=GetCallerIdentity&Version=2011-06-15&", "Version=2011-06-15&Action=GetCallerIdentity",
                                  "Action=AssumeRole&Version=2011-06-15&RoleArn=arn:aws:iam::123456789012:role/admin"])
def test_only_get_caller_identity(token: str, body: str) -> None:
    refused(rewrite(token, body=body), "the body must be exactly")


def test_the_server_id_must_name_this_server(token: str) -> None:
    refused(token, "X-Chit-Server-Id is missing or names another server", server_id="https://other-chit.example.test")
    refused(rewrite(token, headers={"X-Chit-Server-Id": None}), "X-Chit-Server-Id is missing")


def test_the_server_id_must_be_signed(token: str) -> None:
    authorization = parse_subject_token(token).headers["Authorization"]
    unsigned = authorization.replace(";x-chit-server-id", "")
    refused(rewrite(token, headers={"Authorization": unsigned}), "x-chit-server-id not signed")


def test_a_signed_header_must_be_sent(token: str) -> None:
    refused(rewrite(token, headers={"X-Amz-Security-Token": None}), "signed headers not sent: x-amz-security-token")


@pytest.mark.parametrize("minutes", [-16, 16])
def test_x_amz_date_within_15_minutes(token: str, minutes: int) -> None:
    signed_at = check(token).signed_at
    refused(token, "more than 15 minutes from now", now=signed_at - minutes * 60)
    check(token, now=signed_at - (minutes - (1 if minutes > 0 else -1)) * 60)  # inside the window


@pytest.mark.parametrize("date", ["2026-12-06T03:07:15Z", "20261306T030715Z", ""])
def test_x_amz_date_must_be_one(token: str, date: str) -> None:
    refused(rewrite(token, headers={"X-Amz-Date": date}), "X-Amz-Date")


def test_the_credential_scope_is_x_amz_dates_day(token: str) -> None:
    headers = parse_subject_token(token).headers
    moved = headers["Authorization"].replace(f"/{headers['X-Amz-Date'][:8]}/", "/20200101/")
    refused(rewrite(token, headers={"Authorization": moved}), "credential scope's date")


@pytest.mark.parametrize(("old", "new", "reason"), [
    ("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512", "not an AWS4-HMAC-SHA256 signature"),
    ("/sts/aws4_request", "/s3/aws4_request", "signed for another service"),
    ("Signature=", "Signature=00", "not an AWS4-HMAC-SHA256 signature"),
])
def test_the_authorization_is_a_sigv4_signature_for_sts(token: str, old: str, new: str, reason: str) -> None:
    authorization = parse_subject_token(token).headers["Authorization"]
    refused(rewrite(token, headers={"Authorization": authorization.replace(old, new)}), reason)
    refused(rewrite(token, headers={"Authorization": None}), "not an AWS4-HMAC-SHA256 signature")


@pytest.mark.parametrize("header", [{"Accept": "application/json"}, {"X-Forwarded-Host": "sts.attacker.example"},
                                    {"Transfer-Encoding": "chunked"}, {"Content-Length": "0"}])
def test_no_other_header(token: str, header: dict) -> None:
    refused(rewrite(token, headers=header), "is not accepted")


def test_no_control_character_in_a_header(token: str) -> None:
    refused(rewrite(token, headers={"X-Amz-Security-Token": "token\r\nX-Injected: 1"}), "control character")


def test_host_must_be_the_endpoints(token: str) -> None:
    refused(rewrite(token, headers={"Host": "sts.attacker.example"}), "Host header is not the endpoint's")
    assert "Host" not in check(rewrite(token, headers={"Host": "sts.amazonaws.com"})).headers


def test_content_type_is_a_form(token: str) -> None:
    refused(rewrite(token, headers={"Content-Type": "application/x-amz-json-1.1"}), "Content-Type")


# --- the envelope ---------------------------------------------------------------------


def envelope(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(("token", "reason"), [
    ("not base64!", "not base64url"),
    (envelope(["POST"]), "not a JSON object|must be an object"),
    (envelope({"method": "POST", "url": "u", "headers": {}}), "exactly the members"),
    (envelope({"method": "POST", "url": "u", "headers": {}, "body": "b", "extra": 1}), "exactly the members"),
    (envelope({"method": "POST", "url": "u", "headers": {"a": 1}, "body": "b"}), "header values must be strings"),
    (envelope({"method": "POST", "url": "u", "headers": {"Host": "a", "host": "b"}, "body": "b"}), "a header is named twice"),
    (envelope({"method": "POST", "url": 7, "headers": {}, "body": "b"}), "must be strings"),
    (envelope({"method": "POST", "url": "u", "headers": {str(i): "v" for i in range(17)}, "body": "b"}), "at most 16"),
    ("A" * 17000, "longer than"),
])
def test_the_envelope_is_parsed_strictly(token: str, reason: str) -> None:
    with pytest.raises(InvalidEvidence, match=reason):
        parse_subject_token(token)


def test_a_member_twice_is_refused() -> None:
    text = '{"method": "POST", "method": "GET", "url": "u", "headers": {}, "body": "b"}'
    with pytest.raises(InvalidEvidence, match="duplicate"):
        parse_subject_token(base64.urlsafe_b64encode(text.encode()).decode())
