"""The `attestors.aws_iam` section of chit's configuration."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from chit.attestors.aws_iam import DEFAULT_STS_ENDPOINT
from chit.aws import AccountIds
from chit.section import Milliseconds, Section
from chit.urls import require_safe_url

_SERVER_ID = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: a header value, no space or control


class AwsIamSettings(Section):
    # Off unless enabled: with it on, anyone can have chit call STS (at chit's endpoints only).
    enabled: bool = False
    # The value of X-Chit-Server-Id a request must be signed with; None: chit's issuer URL.
    server_id: str | None = None
    # The STS endpoints a request may name, exactly as written (scheme, host, path "/").
    sts_endpoints: Annotated[list[str], Field(min_length=1)] = [DEFAULT_STS_ENDPOINT]
    account_ids: Annotated[AccountIds, Field(min_length=1)] | None = None  # allowlist
    # IAM users hold long-lived keys and are people as often as workloads: refused unless allowed.
    allow_iam_users: bool = False
    timeout_ms: Milliseconds = 3000  # each call to STS, in total

    @field_validator("server_id")
    @classmethod
    def _server_id(cls, value: str | None) -> str | None:
        if value is not None and not _SERVER_ID.fullmatch(value):
            raise ValueError("must be 1-256 visible ASCII characters (it is a header value)")
        return value

    @field_validator("sts_endpoints")
    @classmethod
    def _sts_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            require_safe_url(endpoint, "sts_endpoints")
            parts = urlsplit(endpoint)
            if parts.path != "/" or parts.query or parts.fragment or parts.username or parts.password:
                raise ValueError(f"{endpoint!r}: an STS endpoint is scheme://host[:port]/ (path '/', nothing else)")
        return value
