"""The SDKs agents already use, pointed at chit with configuration alone: an AWS
SDK profile whose credential_process is `chit exchange`, and Google's client
libraries with an external_account credential whose token_url is chit's /token."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import boto3
import botocore.exceptions
import google.auth.transport.requests
import pytest
from google.auth import identity_pool

from chit.server.sts import role_session_name
from tests.agent.conftest import DB
from tests.conftest import ROLE_AGENT
from tests.factories import (
    CLIENT_ENV_VARIABLES,
    MOTO_ACCOUNT,
    AgentProcess,
    ChitServer,
    ClusterIssuer,
    ImdsStandIn,
    MotoServer,
    wait_until,
)


def installed_chit() -> Path:
    """The `chit` console script a user's profile names (./test.sh installs it)."""
    script = Path(sys.executable).parent / "chit"
    assert script.exists(), f"{script} is missing: install chit into this environment (pip install -e .)"
    return script


def aws_profile(command: list[str], directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.aws/config with profile `chit` running `command`, and nothing else AWS SDKs could use."""
    config = directory / "aws-config"
    config.write_text(f"[profile chit]\nregion = us-east-1\ncredential_process = {shlex.join(command)}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", *CLIENT_ENV_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_boto3_profile_with_chit_as_credential_process_calls_sts(
    aws_chit: ChitServer, imds: ImdsStandIn, ec2_instance: dict, moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = [str(installed_chit()), "exchange", "--server", aws_chit.url, "--aws", "--imds-url", imds.url,
               "--nonce-file", str(tmp_path / "nonce"), "--output", "credential-process"]
    aws_profile(command, tmp_path, monkeypatch)

    session = boto3.Session(profile_name="chit")
    identity = session.client("sts", endpoint_url=moto.url).get_caller_identity()

    subject = f"spiffe://example.org/aws/{MOTO_ACCOUNT}/us-east-1/{ec2_instance['InstanceId']}"
    assert identity["Arn"] == f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/agent/{role_session_name(subject)}"
    assert session.get_credentials().method == "custom-process"
    assert [r.form["RoleSessionName"] for r in moto.requests("AssumeRole") if r.form["RoleArn"] == ROLE_AGENT][-1] == role_session_name(subject)


def test_boto3_reads_the_credentials_the_sidecar_keeps(
    aws_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's advice for busy SDK users: credential_process = cat FILE."""
    (tmp_path / "token").write_text(prod_issuer.token(service_account="deployer"))
    credentials = tmp_path / "aws.json"
    agent = AgentProcess(tmp_path, "--server", aws_chit.url, "--subject-token-file", str(tmp_path / "token"),
                  "--file", f"{credentials},token-type=aws-credentials")
    try:
        wait_until(credentials.exists, 30, "the credentials file", agent)
        aws_profile(["cat", str(credentials)], tmp_path, monkeypatch)
        identity = boto3.Session(profile_name="chit").client("sts", endpoint_url=moto.url).get_caller_identity()
        assert identity["Arn"].startswith(f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/deployer/k8s.prod.ns.payments.sa.deployer.")
        assert agent.terminate() == 0
    finally:
        agent.kill()
    # No agent, no file: the SDK gets no credentials rather than stale ones.
    with pytest.raises(botocore.exceptions.CredentialRetrievalError):
        boto3.Session(profile_name="chit").client("sts", endpoint_url=moto.url).get_caller_identity()


def test_google_auth_external_account_refreshes_from_chit(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(prod_issuer.token())
    external_account = tmp_path / "external_account.json"
    external_account.write_text(json.dumps({
        "type": "external_account",
        "audience": DB,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{chit.url}/token",
        "credential_source": {"file": str(token_file)},
    }))
    credentials = identity_pool.Credentials.from_file(str(external_account), scopes=["read:db"])
    credentials.refresh(google.auth.transport.requests.Request())

    _, claims = chit.verify_issued(credentials.token, DB)
    assert claims["sub"] == "spiffe://example.org/k8s/prod/ns/payments/sa/agent" and claims["scope"] == "read:db"
    assert credentials.valid and credentials.expiry is not None
    audit = [line for line in chit.audit_lines() if line["jti"] == claims["jti"]][0]
    assert audit["audience"] == [DB] and audit["scope"] == ["read:db"]
