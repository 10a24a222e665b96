"""`chit doctor` asks each STS endpoint of attestors.aws_iam for an answer (docs/operators/doctor.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chit.server import doctor
from chit.server.config import parse_config
from tests.attestors.aws_iam.conftest import RecordingSts, sts_error
from tests.factories import closed_port_url


def check(directory: Path, endpoints: list[str], enabled: bool = True) -> list[tuple[str, str, str]]:
    settings = parse_config({"issuer": "https://chit.corp.test", "trust_domain": "corp.test", "signing": {"keys_dir": "keys"},
                             "attestors": {"aws_iid": {"enabled": False}, "gcp": {"enabled": False},
                                           "aws_iam": {"enabled": enabled, "sts_endpoints": endpoints, "timeout_ms": 1000}}},
                            "(test)", directory)
    return [(f.check, f.status, f.detail) for f in asyncio.run(doctor.aws_iam(settings))]


def test_each_sts_endpoint_answers_or_fails(tmp_path: Path, recording_sts: RecordingSts) -> None:
    assert check(tmp_path, [recording_sts.url], enabled=False) == []
    recording_sts.reset(403, sts_error("MissingAuthenticationToken", "Request is missing Authentication Token"))
    down = closed_port_url() + "/"
    found = check(tmp_path, [recording_sts.url, down])
    assert [(name, status) for name, status, _ in found] == [("aws_iam sts", "ok"), ("aws_iam sts", "fail")]
    assert "HTTP 403 MissingAuthenticationToken" in found[0][2] and "ConnectError" in found[1][2]
    assert recording_sts.received[-1].body == "Action=GetCallerIdentity&Version=2011-06-15"
    assert "authorization" not in recording_sts.received[-1].headers  # chit has no credentials to sign with, and needs none
    recording_sts.reset(503, b"")
    assert check(tmp_path, [recording_sts.url])[0][1] == "fail"
