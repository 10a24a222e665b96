"""Signed GetCallerIdentity requests exchanged through a real chit server: moto answers
as STS (moto does not check signatures; STS does), a recording stand-in proves what chit
sends where, and nothing is sent for a request chit refuses."""

from __future__ import annotations

import time

import pytest

from chit.attestors.aws_iam.envelope import parse_subject_token
from tests.attestors.aws_iam.conftest import (
    AWS_IAM_TYPE,
    DB,
    ROLE,
    RecordingSts,
    caller_xml,
    rewrite,
    sdk_env,
    signed_token,
    sts_error,
)
from tests.factories import MOTO_ACCOUNT, ChitServer, MotoServer, assert_issued, assert_refused, closed_port_url, copy_policy, run_chit

SUBJECT = f"spiffe://example.org/aws-iam/{MOTO_ACCOUNT}/role/{ROLE}"


def exchange(chit: ChitServer, token: str, **fields: str):
    return chit.exchange(token, subject_token_type=AWS_IAM_TYPE, audience=DB, **fields)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch, iam_chit: ChitServer, recording_sts: RecordingSts) -> str:
    """A request signed for the recording stand-in, naming iam_chit."""
    return signed_token(monkeypatch, iam_chit.url, recording_sts.url)


# --- moto as STS ------------------------------------------------------------------------------


def test_chit_exchange_with_a_lambda_functions_role(iam_chit: ChitServer, moto: MotoServer, role_credentials: dict) -> None:
    result = run_chit("exchange", "--aws-iam", "--server", iam_chit.url, "--aws-sts-endpoint", moto.url + "/",
                      "--audience", DB, "--scope", "read:db", env=sdk_env(role_credentials))
    assert result.returncode == 0, result.stderr
    _, claims = iam_chit.verify_issued(result.stdout.strip(), DB)
    assert claims["sub"] == SUBJECT
    assert claims["att"] == {"kind": "aws_iam", "account_id": MOTO_ACCOUNT, "role": ROLE}
    # What moto received is the signed request, naming this chit server in a signed header.
    received = moto.requests("GetCallerIdentity")[-1]
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["x-chit-server-id"] == iam_chit.url and "x-chit-server-id" in headers["authorization"]
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={role_credentials['AccessKeyId']}/")


def test_an_iam_user_is_refused(monkeypatch: pytest.MonkeyPatch, iam_chit: ChitServer, moto: MotoServer) -> None:
    # An IAM user's long-lived keys are not a workload's (attestors.aws_iam.allow_iam_users).
    iam = moto.client("iam")
    iam.create_user(UserName="ci-bot")
    key = iam.create_access_key(UserName="ci-bot")["AccessKey"]
    token = signed_token(monkeypatch, iam_chit.url, moto.url + "/", {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]})
    assert "X-Amz-Security-Token" not in parse_subject_token(token).headers
    body = assert_refused(exchange(iam_chit, token))
    assert "IAM users are not accepted" in body["error_description"]


# --- what chit sends, and where ---------------------------------------------------------------


def test_chit_sends_the_signed_request_to_the_configured_endpoint_only(iam_chit: ChitServer, recording_sts: RecordingSts, token: str) -> None:
    before = len(recording_sts.received)
    body = assert_issued(exchange(iam_chit, token))
    _, claims = iam_chit.verify_issued(body["access_token"], DB)
    assert claims["sub"] == SUBJECT
    (received,) = recording_sts.received[before:]
    sent = parse_subject_token(token)
    assert (received.method, received.path, received.body) == ("POST", "/", "Action=GetCallerIdentity&Version=2011-06-15")
    for name, value in sent.headers.items():
        assert received.headers[name.lower()] == value
    assert received.headers["host"] == recording_sts.url.split("/")[2]
    assert set(received.headers) - {h.lower() for h in sent.headers} <= {"host", "content-length", "user-agent", "accept",
                                                                         "accept-encoding", "connection"}


def test_the_minted_token_lives_no_longer_than_the_signed_request(iam_chit: ChitServer, token: str) -> None:
    signed_at = time.mktime(time.strptime(parse_subject_token(token).headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")) - time.timezone
    body = assert_issued(exchange(iam_chit, token))
    assert body["expires_in"] <= signed_at + 900 - time.time() + 2


def test_a_signed_request_is_accepted_once(iam_chit: ChitServer, recording_sts: RecordingSts, token: str) -> None:
    assert_issued(exchange(iam_chit, token))
    before = len(recording_sts.received)
    body = assert_refused(exchange(iam_chit, token))
    assert "already used" in body["error_description"]
    assert len(recording_sts.received) == before  # refused before anything is sent


def test_a_refused_exchange_leaves_the_request_usable(iam_chit: ChitServer, token: str) -> None:
    assert_refused(exchange(iam_chit, token, scope="admin"), error="invalid_scope")
    assert_issued(exchange(iam_chit, token))


def _dated(token: str, seconds: float) -> str:
    headers = parse_subject_token(token).headers
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + seconds))
    authorization = headers["Authorization"].replace(f"/{headers['X-Amz-Date'][:8]}/", f"/{date[:8]}/")
    return rewrite(token, headers={"X-Amz-Date": date, "Authorization": authorization})


REFUSALS = {
    "GET": (lambda t: rewrite(t, method="GET"), "the method must be POST"),
    "another host": (lambda t: rewrite(t, url="http://127.0.0.1:9/"), "not an STS endpoint"),
    "another body": (lambda t: rewrite(t, body="Action=GetCallerIdentity&Version=2011-06-15&X=1"), "the body must be exactly"),
    "another server's id": (lambda t: rewrite(t, headers={"X-Chit-Server-Id": "https://other-chit.example"}), "names another server"),
    "no server id": (lambda t: rewrite(t, headers={"X-Chit-Server-Id": None}), "X-Chit-Server-Id is missing"),
    "unsigned server id": (lambda t: rewrite(t, headers={"Authorization": parse_subject_token(t).headers["Authorization"].replace(";x-chit-server-id", "")}),
                           "x-chit-server-id not signed"),
    "signed 16 minutes ago": (lambda t: _dated(t, -16 * 60), "more than 15 minutes"),
    "dated 16 minutes ahead": (lambda t: _dated(t, 16 * 60), "more than 15 minutes"),
    "another header": (lambda t: rewrite(t, headers={"Accept": "application/json"}), "is not accepted"),
    "another host header": (lambda t: rewrite(t, headers={"Host": "sts.amazonaws.com"}), "Host header"),
    "oversized": (lambda t: t + "A" * 17000, "longer than"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_every_refusal_sends_nothing(iam_chit: ChitServer, recording_sts: RecordingSts, token: str, refusal: str) -> None:
    change, reason = REFUSALS[refusal]
    before = len(recording_sts.received)
    body = assert_refused(exchange(iam_chit, change(token)))
    assert reason in body["error_description"]
    assert iam_chit.audit_for(body["decision_id"])["outcome"] == "invalid"
    assert len(recording_sts.received) == before


# --- STS's answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["SignatureDoesNotMatch", "ExpiredToken", "InvalidClientTokenId"])
def test_sts_refusing_the_signature_is_invalid_evidence(iam_chit: ChitServer, recording_sts: RecordingSts, token: str, code: str) -> None:
    recording_sts.reset(403, sts_error(code, "refused"))
    body = assert_refused(exchange(iam_chit, token))
    assert f"STS refused the signed request: HTTP 403 {code}" in body["error_description"]


@pytest.mark.parametrize("answer", [
    {"status": 500, "body": sts_error("InternalFailure", "x")},
    {"status": 503, "body": b""},
    {"status": 302, "body": b"", "location": "http://127.0.0.1:9/"},  # never followed
    {"status": 200, "body": b'<!DOCTYPE x [<!ENTITY e "e">]>' + caller_xml()},
    {"status": 200, "body": b'{"Arn": "arn:aws:sts::123456789012:assumed-role/report-builder/x"}'},
    {"status": 200, "body": caller_xml() + b" " * 20000},
    {"status": 200, "body": caller_xml(), "delay": 1.5},  # past attestors.aws_iam.timeout_ms
])
def test_an_answer_chit_cannot_use_fails_closed(iam_chit: ChitServer, recording_sts: RecordingSts, token: str, answer: dict) -> None:
    recording_sts.reset(**answer)
    body = assert_refused(exchange(iam_chit, token), status=503, error="temporarily_unavailable")
    assert iam_chit.audit_for(body["decision_id"])["outcome"] == "unavailable"


def test_stss_caller_must_be_consistent(iam_chit: ChitServer, recording_sts: RecordingSts, token: str) -> None:
    recording_sts.reset(body=caller_xml(account="210987654321"))
    assert "Account is not the ARN's" in assert_refused(exchange(iam_chit, token))["error_description"]


def test_an_unbound_role_is_denied(iam_chit: ChitServer, recording_sts: RecordingSts, token: str) -> None:
    recording_sts.reset(body=caller_xml(arn=f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/admin/s1", user_id="AROAEXAMPLEROLEID9999:s1"))
    body = assert_refused(exchange(iam_chit, token))
    assert iam_chit.audit_for(body["decision_id"])["outcome"] == "denied"


def test_nothing_secret_reaches_the_audit_line_or_the_log(iam_chit: ChitServer, recording_sts: RecordingSts, token: str) -> None:
    recording_sts.reset(403, sts_error("SignatureDoesNotMatch", "x"))
    body = assert_refused(exchange(iam_chit, token))
    headers = parse_subject_token(token).headers
    secrets = [headers["X-Amz-Security-Token"], headers["Authorization"].rsplit("Signature=", 1)[1], token]
    text = str(iam_chit.audit_for(body["decision_id"])) + iam_chit.log() + body["error_description"]
    assert not [s for s in secrets if s in text]


def test_sts_unreachable_is_503(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = closed_port_url() + "/"
    config = {"policy": {"dir": str(copy_policy(tmp_path / "policies"))},
              "attestors": {"aws_iam": {"enabled": True, "sts_endpoints": [endpoint]}}}
    server = ChitServer(tmp_path, config).start()
    try:
        assert_refused(exchange(server, signed_token(monkeypatch, server.url, endpoint)), status=503, error="temporarily_unavailable")
    finally:
        server.stop()


def test_disabled_by_default(chit: ChitServer, monkeypatch: pytest.MonkeyPatch) -> None:
    body = assert_refused(exchange(chit, signed_token(monkeypatch, chit.url, "https://sts.amazonaws.com/")))
    assert body["error_description"] == "subject_token_type not enabled on this server"
