"""`chit doctor` fetches each OIDC issuer's keys as chit does (docs/operators/doctor.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chit.server import doctor
from chit.server.config import Config, parse_config
from tests.attestors.oidc.conftest import GITHUB_CLAIMS, CiIssuer
from tests.factories import DocumentServer


def config(directory: Path, issuer: dict[str, Any]) -> Config:
    return parse_config({"issuer": "https://chit.corp.test", "trust_domain": "corp.test", "signing": {"keys_dir": "keys"},
                         "attestors": {"aws_iid": {"enabled": False}, "gcp": {"enabled": False}, "oidc": {"issuers": [issuer]}}},
                        "(test)", directory)


def check(directory: Path, issuer: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f.check, f.status, f.detail) for f in asyncio.run(doctor.oidc_issuers(config(directory, issuer)))]


def test_each_issuers_keys_are_fetched_as_chit_fetches_them(tmp_path: Path, documents: DocumentServer) -> None:
    ci = CiIssuer(documents, "doctor-ci", GITHUB_CLAIMS)
    base = {"name": "ci", "preset": "github", "issuer": ci.issuer, "audiences": ["chit"]}
    [(name, status, detail)] = check(tmp_path, base)  # discovery, the preset's default
    assert (name, status) == ("oidc issuer ci keys", "ok") and "(discovery): 1 usable key(s)" in detail
    [(_, status, detail)] = check(tmp_path, {**base, "jwks_uri": ci.jwks_uri + "-gone"})
    assert status == "fail" and "404" in detail
    # Discovery must name the configured issuer, as in an exchange.
    [(_, status, _)] = check(tmp_path, {**base, "issuer": ci.issuer + "-other"})
    assert status == "fail"
