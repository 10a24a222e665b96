"""The `policy` section of chit's configuration: which engine decides, and over which policy."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from chit.section import FilePath, Milliseconds, Section
from chit.urls import require_safe_url


class PolicySettings(Section):
    engine: Literal["embedded", "opa"] = "embedded"
    dir: FilePath | None = None  # None: the policies shipped with chit
    # More directories whose modules join the policy and whose data merges into its data
    # (adding keys, never changing one): local bindings and rules beside the shipped ones.
    extra_dirs: list[FilePath] = []
    opa_url: str = "http://127.0.0.1:8181"
    timeout_ms: Milliseconds = 500

    @field_validator("opa_url")
    @classmethod
    def _opa_url(cls, value: str) -> str:
        return require_safe_url(value, "opa_url")
