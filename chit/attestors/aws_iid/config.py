"""The `attestors.aws_iid` section of chit's configuration."""

from __future__ import annotations

import re

from pydantic import field_validator

from chit.aws import AWS_ACCOUNT_ID, AccountIds
from chit.section import FilePath, PositiveInt, Section


AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
AWS_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")


class AwsIidSettings(Section):
    enabled: bool = True
    certificates_dir: FilePath | None = None  # None: the AWS certificates shipped with chit
    regions: list[str] | None = None  # allowlist; None: every region with a certificate
    account_ids: AccountIds | None = None  # allowlist
    verify_instance: bool = False
    # Roles chit assumes to call DescribeInstances in other accounts (account id -> role ARN);
    # an account not listed is described with chit's own AWS credentials.
    describe_roles: dict[str, str] = {}
    # How long an instance's nonce binding outlives its last successful exchange.
    binding_ttl_seconds: PositiveInt = 365 * 86400

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str] | None) -> list[str] | None:
        for region in value or []:
            if not AWS_REGION.fullmatch(region):
                raise ValueError(f"{region!r} is not an AWS region name")
        return value

    @field_validator("describe_roles")
    @classmethod
    def _describe_roles(cls, value: dict[str, str]) -> dict[str, str]:
        for account, role_arn in value.items():
            match = AWS_ROLE_ARN.fullmatch(role_arn)
            if not AWS_ACCOUNT_ID.fullmatch(account) or match is None:
                raise ValueError(f"{account!r}: {role_arn!r} must map a 12-digit account id to an IAM role ARN")
        return value
