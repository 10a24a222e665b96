"""The `attestors.gcp` section of chit's configuration."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from chit.section import Milliseconds, Section
from chit.urls import require_safe_url


# A Google Cloud project id: 6-30 lowercase letters, digits, hyphens, starting with
# a letter (legacy domain-scoped ids, "example.com:project", are not accepted).
GCP_PROJECT_ID = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")


class GcpSettings(Section):
    enabled: bool = True
    # Empty: chit's own `issuer` URL is the one audience accepted (never "any").
    audiences: list[Annotated[str, Field(min_length=1)]] = []
    certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    require_full_format: bool = True
    project_ids: Annotated[list[str], Field(min_length=1)] | None = None
    single_use: bool = False
    # Look the instance up in the Compute Engine API (instances.get) with chit's
    # Application Default Credentials: it must exist, match the token, and run.
    verify_instance: bool = False
    compute_endpoint: str = "https://compute.googleapis.com"
    compute_timeout_ms: Milliseconds = 3000  # each instances.get, and each wait for an access token

    @field_validator("certs_url")
    @classmethod
    def _certs_url(cls, value: str) -> str:
        return require_safe_url(value, "certs_url")

    @field_validator("compute_endpoint")
    @classmethod
    def _compute_endpoint(cls, value: str) -> str:
        require_safe_url(value, "compute_endpoint")
        parts = urlsplit(value)
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"compute_endpoint must be a scheme and host only (chit adds /compute/v1/…), got {value!r}")
        return value.rstrip("/")

    @field_validator("project_ids")
    @classmethod
    def _project_ids(cls, value: list[str] | None) -> list[str] | None:
        for project_id in value or []:
            if not GCP_PROJECT_ID.fullmatch(project_id):
                raise ValueError(f"{project_id!r} is not a Google Cloud project id")
        return value

    @model_validator(mode="after")
    def _instance_to_verify(self) -> GcpSettings:
        # A standard-format token names no instance: there would be nothing to look up.
        if self.verify_instance and not self.require_full_format:
            raise ValueError("verify_instance: true needs require_full_format: true (a standard-format token names no instance to look up)")
        return self
