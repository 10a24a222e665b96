"""`chit policy eval` on an aws-iam subject token: the server's verification, STS
included, but never a request to AWS unless --network is given."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from chit.server.config import Config, load_config
from chit.server.policy_eval import EvalRequest, evaluate_exchange
from tests.attestors.aws_iam.conftest import AWS_IAM_TYPE, DB, IAM_BINDINGS, signed_token
from tests.factories import MotoServer, copy_policy

SERVER_ID = "https://chit.example.org"


def config_for(tmp_path: Path, endpoint: str) -> Config:
    path = tmp_path / "chit.yaml"
    path.write_text(yaml.safe_dump({
        "issuer": SERVER_ID,
        "signing": {"keys_dir": "keys"},
        "policy": {"dir": str(copy_policy(tmp_path / "policies", IAM_BINDINGS))},
        "attestors": {"aws_iid": {"enabled": False}, "gcp": {"enabled": False},
                      "aws_iam": {"enabled": True, "sts_endpoints": [endpoint], "timeout_ms": 1000}},
    }))
    return load_config(path)


def test_eval_sends_no_signed_request_to_aws_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = signed_token(monkeypatch, SERVER_ID, "https://sts.amazonaws.com/")
    request = EvalRequest(subject_token=token, subject_token_type=AWS_IAM_TYPE, audience=(DB,))
    answer = asyncio.run(evaluate_exchange(config_for(tmp_path, "https://sts.amazonaws.com/"), request, time.time()))
    assert (answer.status, answer.audit["error"]) == (503, "temporarily_unavailable")
    assert answer.refused_hosts == ("sts.amazonaws.com",) and answer.policy_input is None


def test_eval_decides_on_stss_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: MotoServer, role_credentials: dict) -> None:
    token = signed_token(monkeypatch, SERVER_ID, moto.url + "/", role_credentials)
    request = EvalRequest(subject_token=token, subject_token_type=AWS_IAM_TYPE, audience=(DB,))
    answer = asyncio.run(evaluate_exchange(config_for(tmp_path, moto.url + "/"), request, time.time()))
    assert answer.status == 200, answer.error_description
    assert answer.policy_input["attestation"]["role_name"] == "report-builder"
