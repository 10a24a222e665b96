"""AWS API calls: boto3 clients with explicit timeouts and bounded retries, run off
the event loop.

boto3 blocks, so every call runs in a worker thread (`asyncio.to_thread`). An
answer chit cannot use — no connection, a timeout, a 5xx, throttling, no
credentials — is `AwsUnavailable` (the check cannot be made: 503); an API that
answered "no" (access denied, not found, invalid parameter) is `AwsRefused`
with AWS's error code.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from chit.section import Section
from chit.urls import require_safe_url

AWS_ACCOUNT_ID = re.compile(r"\d{12}")


def _account_ids(value: list[str]) -> list[str]:
    for account in value:
        if not AWS_ACCOUNT_ID.fullmatch(account):
            raise ValueError(f"{account!r} is not a 12-digit AWS account id")
    return value


# An allowlist of AWS accounts in a configuration section.
AccountIds = Annotated[list[str], AfterValidator(_account_ids)]

# Retrying a throttled or failed call once keeps the worst case bounded:
# 2 attempts × (connect + read timeout).
MAX_ATTEMPTS = 2
_THROTTLING = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"})
ASSUMED_ROLE_SECONDS = 900
_REFRESH_BEFORE_SECONDS = 120


class Aws(Section):
    """The `aws` section of chit's configuration: how chit reaches AWS's APIs."""

    region: str = "us-east-1"
    endpoint_url: str | None = None  # one endpoint for STS and EC2 (a local stand-in); None: AWS's own
    sts_mode: Literal["assume_role", "web_identity"] = "assume_role"
    timeout_seconds: Annotated[float, Field(gt=0, le=60, strict=False)] = 5.0  # connect and read, per attempt

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "endpoint_url")


class AwsUnavailable(Exception):
    """The AWS API could not be asked, or could not answer: fail closed."""


class AwsRefused(Exception):
    """The AWS API answered with a client error (the request itself was refused)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AwsClients:
    """boto3 clients per (service, region, identity), created on first use in a
    worker thread and shared: botocore clients are thread-safe, creating them is
    not (hence the lock). boto3 is imported then too: a server that never calls
    AWS pays nothing for it."""

    def __init__(self, config: Aws):
        self.config = config
        self._lock = threading.Lock()
        self._session: Any = None
        # (service, region, role, unsigned) -> (client, the access key it was made with)
        self._clients: dict[tuple[str, str, str | None, bool], tuple[Any, str | None]] = {}
        self._roles: dict[str, dict[str, Any]] = {}  # role ARN -> credentials chit assumed

    def _client(self, service: str, region: str, role_arn: str | None, unsigned: bool) -> Any:
        key = (service, region, role_arn, unsigned)
        with self._lock:
            credentials = self._roles.get(role_arn) if role_arn else None
            access_key = None if credentials is None else credentials["AccessKeyId"]
            cached = self._clients.get(key)
            if cached is not None and cached[1] == access_key:
                return cached[0]
            import boto3.session
            from botocore import UNSIGNED
            from botocore.config import Config as BotocoreConfig

            if self._session is None:
                self._session = boto3.session.Session()
            config = BotocoreConfig(
                connect_timeout=self.config.timeout_seconds,
                read_timeout=self.config.timeout_seconds,
                retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                user_agent_extra="chit",
                **({"signature_version": UNSIGNED} if unsigned else {}),
            )
            extra: dict[str, Any] = {}
            if credentials is not None:
                extra = {
                    "aws_access_key_id": credentials["AccessKeyId"],
                    "aws_secret_access_key": credentials["SecretAccessKey"],
                    "aws_session_token": credentials["SessionToken"],
                }
            client = self._session.client(
                service, region_name=region, endpoint_url=self.config.endpoint_url, config=config, **extra
            )
            self._clients[key] = (client, access_key)
            return client

    async def call(
        self,
        service: str,
        region: str,
        operation: str,
        parameters: dict[str, Any],
        *,
        role_arn: str | None = None,
        unsigned: bool = False,
    ) -> dict[str, Any]:
        """One API operation in a worker thread, with chit's own credentials, as
        `role_arn` (assumed with them), or `unsigned` (for calls that carry their own
        proof: AssumeRoleWithWebIdentity). Failures: see the module docstring."""
        from botocore.exceptions import BotoCoreError, ClientError

        if role_arn is not None:
            await self._assume(role_arn)

        def run() -> dict[str, Any]:
            return getattr(self._client(service, region, role_arn, unsigned), operation)(**parameters)

        name = f"{service} {operation}"
        try:
            return await asyncio.to_thread(run)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "Unknown"))
            message = str(error.response.get("Error", {}).get("Message", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
            if status >= 500 or code in _THROTTLING:
                raise AwsUnavailable(f"{name}: {code}") from None
            raise AwsRefused(code, message) from None
        except BotoCoreError as error:
            # Connection refused, timeouts, no credentials, unparseable answers.
            raise AwsUnavailable(f"{name}: {type(error).__name__}") from None

    async def _assume(self, role_arn: str) -> None:
        """Credentials for `role_arn`, assumed with chit's own and kept until shortly before they expire."""
        credentials = self._roles.get(role_arn)
        if credentials is not None and credentials["Expiration"].timestamp() > time.time() + _REFRESH_BEFORE_SECONDS:
            return
        parameters = {"RoleArn": role_arn, "RoleSessionName": "chit", "DurationSeconds": ASSUMED_ROLE_SECONDS}
        try:
            answer = await self.call("sts", self.config.region, "assume_role", parameters)
        except AwsRefused as error:
            # chit's own setup is wrong (trust policy, permissions): nothing a caller can fix.
            raise AwsUnavailable(f"sts AssumeRole {role_arn}: {error.code}") from None
        self._roles[role_arn] = answer["Credentials"]
