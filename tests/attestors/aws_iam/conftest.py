"""Helpers of the AWS IAM tests: a recording STS stand-in, signed requests made with
botocore (as the collector makes them), and a chit server sending them to moto and
to the stand-in (package scope)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from chit.attestors.aws_iam.collector import AwsIamCollector
from chit.attestors.aws_iam.envelope import SignedRequest, encode_subject_token, parse_subject_token
from tests.factories import AWS_TEST_ENV, MOTO_ACCOUNT, ChitServer, MotoServer, copy_policy

AWS_IAM_TYPE = "urn:chit:params:oauth:token-type:aws-iam"
ROLE = "report-builder"  # a Lambda function's execution role; its sessions are named after the function
DB = "https://db.internal"
IAM_BINDINGS = {"bindings": {"aws_iam": {MOTO_ACCOUNT: {ROLE: {"scope": ["read:db"], "audience": [DB]}}}}}

CALLER = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>{user_id}</UserId><Account>{account}</Account></GetCallerIdentityResult>"
    "<ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>"
    "</GetCallerIdentityResponse>"
)


def caller_xml(arn: str = f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/{ROLE}/{ROLE}", user_id: str = f"AROAEXAMPLEROLEID1234:{ROLE}",
               account: str = MOTO_ACCOUNT) -> bytes:
    return CALLER.format(arn=arn, user_id=user_id, account=account).encode()


def sts_error(code: str, message: str) -> bytes:
    return (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>0</RequestId></ErrorResponse>").encode()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: str


class RecordingSts:
    """An STS endpoint on 127.0.0.1 that records every request exactly as received and
    answers `status` with `body` (a GetCallerIdentityResponse unless told otherwise);
    `delay` makes it slow, `location` answers 302 there."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.reset()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                stand_in.received.append(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(stand_in.delay)
                self.send_response(stand_in.status)
                if stand_in.location:
                    self.send_header("Location", stand_in.location)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(stand_in.body)))
                self.end_headers()
                self.wfile.write(stand_in.body)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self, status: int = 200, body: bytes | None = None, delay: float = 0.0, location: str | None = None) -> None:
        self.status, self.body, self.delay, self.location = status, caller_xml() if body is None else body, delay, location

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="package")
def recording_sts() -> Iterator[RecordingSts]:
    server = RecordingSts()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_answers(recording_sts: RecordingSts) -> None:
    recording_sts.reset()


@pytest.fixture(scope="package")
def role_credentials(moto: MotoServer) -> dict[str, str]:
    """Credentials of the role's session, as Lambda hands its function (moto's AssumeRole)."""
    moto.client("iam").create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    answer = moto.client("sts").assume_role(RoleArn=f"arn:aws:iam::{MOTO_ACCOUNT}:role/{ROLE}", RoleSessionName=ROLE)
    return answer["Credentials"]


EXAMPLE_CREDENTIALS = {"AccessKeyId": "ASIAIOSFODNN7EXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                       "SessionToken": "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN"}


def sdk_env(credentials: dict[str, str]) -> dict[str, str]:
    """The environment Lambda gives a function: its role's credentials, nothing else to find."""
    env = {**AWS_TEST_ENV, "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"]}
    if "SessionToken" in credentials:
        env["AWS_SESSION_TOKEN"] = credentials["SessionToken"]
    return env


def signed_token(monkeypatch: pytest.MonkeyPatch, server_id: str, endpoint: str, credentials: dict[str, str] | None = None) -> str:
    """A subject token as `chit exchange --aws-iam` makes it (botocore's credentials and SigV4)."""
    assert monkeypatch is not None
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # A session token of its own: the same credentials sign the same request identically within a second.
    unique = {**EXAMPLE_CREDENTIALS, "SessionToken": EXAMPLE_CREDENTIALS["SessionToken"] + uuid.uuid4().hex}
    for name, value in sdk_env(credentials or unique).items():
        monkeypatch.setenv(name, value)
    return AwsIamCollector(server_id, endpoint).collect().value


def rewrite(token: str, **changes: Any) -> str:
    """The token with its method, url, body or headers (a dict merged; None removes a header) changed."""
    request = parse_subject_token(token)
    headers = dict(request.headers)
    for name, value in changes.pop("headers", {}).items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    fields = {"method": request.method, "url": request.url, "body": request.body, **changes}
    return encode_subject_token(SignedRequest(fields["method"], fields["url"], headers, fields["body"]))


@pytest.fixture(scope="package")
def iam_chit(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer, recording_sts: RecordingSts) -> Iterator[ChitServer]:
    """chit accepting signed requests for moto (the real answers) and the recording stand-in."""
    directory = tmp_path_factory.mktemp("iam-chit")
    config = {
        "trust_domain": "example.org",
        "policy": {"dir": str(copy_policy(directory / "policies", IAM_BINDINGS))},
        "attestors": {"aws_iid": {"enabled": False}, "gcp": {"enabled": False},
                      "aws_iam": {"enabled": True, "sts_endpoints": [moto.url + "/", recording_sts.url], "timeout_ms": 1000}},
    }
    server = ChitServer(directory, config).start()
    yield server
    server.stop()
