"""The AWS IAM collector (agent side): a GetCallerIdentity request signed with the
credentials the AWS SDK finds — Lambda's environment, ECS and EKS Pod Identity
container credentials, IRSA's web identity, a profile — and not sent: it is the
subject token.

botocore resolves the credentials and signs (SigV4); it is the agent's one
optional dependency (`pip install 'chit[aws]'`), imported here, when an
aws-iam exchange is made, so that `pip install chit` stays the standard
library only.
"""

from __future__ import annotations

import re
from types import ModuleType
from urllib.parse import urlsplit

from chit.attestors.aws_iam import DEFAULT_STS_ENDPOINT, GET_CALLER_IDENTITY, KIND, SERVER_ID_HEADER
from chit.attestors.aws_iam.envelope import SignedRequest, encode_subject_token
from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent, SubjectToken
from chit.protocol import TOKEN_TYPE_AWS_IAM

INSTALL_AWS = "pip install 'chit[aws]'"
_REGIONAL = re.compile(r"sts(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")


def signing_region(endpoint: str) -> str:
    """The region of a regional STS endpoint; us-east-1 for the global one (and others)."""
    match = _REGIONAL.fullmatch(urlsplit(endpoint).hostname or "")
    return match.group(1) if match else "us-east-1"


def _botocore() -> ModuleType:
    """botocore, with the submodules used here loaded; CollectionFailed naming the extra without it."""
    try:
        import botocore.auth
        import botocore.awsrequest
        import botocore.exceptions
        import botocore.session
    except ImportError:
        raise CollectionFailed(f"--aws-iam needs botocore, which this installation does not have: {INSTALL_AWS}") from None
    return botocore


class AwsIamCollector(Collector):
    kind = KIND

    def __init__(self, server_id: str, sts_endpoint: str = DEFAULT_STS_ENDPOINT, region: str | None = None):
        self.server_id = server_id
        self.sts_endpoint = sts_endpoint
        self.region = region or signing_region(sts_endpoint)

    def collect(self) -> SubjectToken:
        botocore = _botocore()
        try:
            credentials = botocore.session.get_session().get_credentials()
            frozen = None if credentials is None else credentials.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as error:
            raise CollectionFailed(f"the AWS SDK could not load credentials: {type(error).__name__}") from None
        if frozen is None or not frozen.access_key:
            raise PlatformAbsent("no AWS credentials found (none in the environment, the container credentials endpoint, a profile or IMDS)")
        request = botocore.awsrequest.AWSRequest(
            method="POST",
            url=self.sts_endpoint,
            data=GET_CALLER_IDENTITY,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", SERVER_ID_HEADER: self.server_id},
        )
        botocore.auth.SigV4Auth(frozen, "sts", self.region).add_auth(request)
        headers = {name: value.decode() if isinstance(value, bytes) else value for name, value in request.headers.items()}
        signed = SignedRequest(method="POST", url=self.sts_endpoint, headers=headers, body=GET_CALLER_IDENTITY)
        return SubjectToken(encode_subject_token(signed), TOKEN_TYPE_AWS_IAM)
