"""`chit exchange --aws-iam`: botocore finds the workload's credentials wherever its
platform puts them, signs, and nothing is sent to STS by the agent."""

from __future__ import annotations

import json
import sys

import pytest

from chit.attestors.aws_iam.collector import AwsIamCollector, signing_region
from chit.attestors.base import CollectionFailed, PlatformAbsent
from tests.attestors.aws_iam.conftest import DB, ROLE
from tests.factories import AWS_TEST_ENV, MOTO_ACCOUNT, ROOT, ChitServer, MetadataRequest, MetadataStandIn, MotoServer, run_chit

AUTHORIZATION = "container-authorization-token"


class ContainerCredentials(MetadataStandIn):
    """The container credentials endpoint ECS and EKS Pod Identity give a task or pod
    (`AWS_CONTAINER_CREDENTIALS_FULL_URI` with `AWS_CONTAINER_AUTHORIZATION_TOKEN`)."""

    def __init__(self, credentials: dict):
        self.credentials = credentials
        super().__init__()

    def answer(self, request: MetadataRequest) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("authorization") != AUTHORIZATION:
            return 401, {}, b""
        body = {"AccessKeyId": self.credentials["AccessKeyId"], "SecretAccessKey": self.credentials["SecretAccessKey"],
                "Token": self.credentials["SessionToken"], "Expiration": self.credentials["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def test_an_eks_pod_identity_or_ecs_task(iam_chit: ChitServer, moto: MotoServer, role_credentials: dict) -> None:
    endpoint = ContainerCredentials(role_credentials)
    try:
        env = {**AWS_TEST_ENV, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{endpoint.url}/v1/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN": AUTHORIZATION}
        before = len(moto.requests("GetCallerIdentity"))
        result = run_chit("exchange", "--aws-iam", "--server", iam_chit.url, "--aws-sts-endpoint", moto.url + "/", "--audience", DB, env=env)
        assert result.returncode == 0, result.stderr
        _, claims = iam_chit.verify_issued(result.stdout.strip(), DB)
        assert claims["sub"] == f"spiffe://example.org/aws-iam/{MOTO_ACCOUNT}/role/{ROLE}"
        assert endpoint.requests[-1].path == "/v1/credentials"
        assert len(moto.requests("GetCallerIdentity")) == before + 1  # chit's call, none by the agent
    finally:
        endpoint.stop()


def test_no_credentials_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_TEST_ENV.items():
        if not name.startswith("AWS_ACCESS") and not name.startswith("AWS_SECRET"):
            monkeypatch.setenv(name, value)
    with pytest.raises(PlatformAbsent, match="no AWS credentials found"):
        AwsIamCollector("https://chit.example.test").collect()


def test_without_botocore_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "botocore" or m.startswith("botocore.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "botocore", None)
    with pytest.raises(CollectionFailed, match=r"pip install 'chit\[aws\]'"):
        AwsIamCollector("https://chit.example.test").collect()


def test_without_botocore_the_command_says_how_to_get_it(iam_chit: ChitServer, tmp_path) -> None:
    # botocore made unimportable for the command, as on `pip install chit` alone.
    (tmp_path / "botocore").mkdir()
    (tmp_path / "botocore" / "__init__.py").write_text("raise ImportError('botocore is not installed')\n")
    result = run_chit("exchange", "--aws-iam", "--server", iam_chit.url, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result.returncode == 1 and "pip install 'chit[aws]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("endpoint", "region"), [
    ("https://sts.amazonaws.com/", "us-east-1"), ("https://sts.eu-west-1.amazonaws.com/", "eu-west-1"),
    ("https://sts-fips.us-gov-west-1.amazonaws.com/", "us-gov-west-1"), ("https://sts.cn-north-1.amazonaws.com.cn/", "cn-north-1"),
    ("http://127.0.0.1:5000/", "us-east-1"),
])
def test_the_signing_region_is_the_endpoints(endpoint: str, region: str) -> None:
    assert signing_region(endpoint) == region
