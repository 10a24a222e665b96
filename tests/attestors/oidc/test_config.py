"""The `attestors.oidc` section: presets fill in what an operator leaves out; anything
that could make a subject ambiguous or trust the wrong keys stops the start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chit.server.config import ConfigError, parse_config
from tests.factories import ROOT

BASE = {"issuer": "https://chit.example.org"}


def config(*issuers: dict):
    return parse_config({**BASE, "attestors": {"oidc": {"issuers": list(issuers)}}}, "chit.yaml", Path("/etc/chit"))


def test_a_preset_fills_in_the_issuer_keys_subject_and_cap() -> None:
    (github,) = config({"name": "github", "preset": "github", "audiences": ["https://chit.example.org"]}).attestors.oidc.issuers
    assert github.issuer_url == "https://token.actions.githubusercontent.com"
    assert github.uses_discovery and github.subject_template == "{repository_owner_id}/{repository_id}"
    assert github.lifetime_cap == 3600
    assert github.fact_claims["repository_id"].required and github.fact_claims["environment"].required is False


def test_an_operator_adds_and_replaces_facts() -> None:
    (gitlab,) = config({"name": "gitlab", "preset": "gitlab", "audiences": ["a"], "jwks_uri": "https://gitlab.example/oauth/discovery/keys",
                        "facts": {"team": {"claim": "namespace_path"}, "pipeline_source": {"required": False}}}).attestors.oidc.issuers
    assert not gitlab.uses_discovery
    assert gitlab.fact_claims["team"].claim == "namespace_path" and not gitlab.fact_claims["pipeline_source"].required


@pytest.mark.parametrize(("issuer", "key", "message"), [
    ({"name": "corp", "issuer": "https://ci.corp.example", "audiences": ["a"]}, "oidc.issuers[0]", "subject is required without a preset"),
    ({"name": "corp", "subject": "{sub}", "audiences": ["a"]}, "oidc.issuers[0]", "issuer is required without a preset"),
    ({"name": "github", "preset": "github"}, "oidc.issuers[0].audiences", "Field required"),
    ({"name": "github", "preset": "github", "audiences": []}, "oidc.issuers[0].audiences", "at least 1"),
    ({"name": "GitHub", "preset": "github", "audiences": ["a"]}, "oidc.issuers[0].name", "DNS label"),
    ({"name": "github", "preset": "gitHub", "audiences": ["a"]}, "oidc.issuers[0].preset", "github"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "subject": "{workflow}"}, "oidc.issuers[0]", "must be a required string"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "subject": "{environment}"}, "oidc.issuers[0]", "must be a required string"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "subject": "all"}, "oidc.issuers[0]", "names no fact"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "subject": "../{repository_id}"}, "oidc.issuers[0]", "segments of letters"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "facts": {"workload": {}}}, "oidc.issuers[0].facts", "cannot be a fact name"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "jwks_uri": "https://x.example/jwks", "discovery": True},
     "oidc.issuers[0]", "at most one of"),
    ({"name": "corp", "issuer": "http://ci.corp.example", "subject": "{sub}", "facts": {"sub": {"required": True}}, "audiences": ["a"]},
     "oidc.issuers[0]", "https"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "jwks_uri": "http://jwks.example/"}, "oidc.issuers[0].jwks_uri", "https"),
    ({"name": "github", "preset": "github", "audiences": ["a"], "required_claims": {"repository_owner_id": []}},
     "oidc.issuers[0].required_claims", "at least 1"),
])
def test_invalid_issuers_name_the_key(issuer: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(issuer)
    assert f"attestors.{key}" in str(raised.value) and message in str(raised.value)


def test_names_and_issuers_are_unique() -> None:
    with pytest.raises(ConfigError, match="issuer name must be unique, repeated: ci"):
        config({"name": "ci", "preset": "github", "audiences": ["a"]}, {"name": "ci", "preset": "gitlab", "audiences": ["a"]})
    with pytest.raises(ConfigError, match="issuer issuer must be unique"):
        config({"name": "a", "preset": "github", "audiences": ["a"]}, {"name": "b", "preset": "github", "audiences": ["a"]})


def test_chits_own_issuer_is_never_trusted() -> None:
    with pytest.raises(ConfigError, match="chit's own issuer"):
        config({"name": "self", "issuer": "https://chit.example.org/", "subject": "{sub}", "facts": {"sub": {"required": True}}, "audiences": ["a"]})


def test_an_issuer_that_is_also_a_cluster_stops_the_start(tmp_path: Path) -> None:
    document = {**BASE, "attestors": {
        "kubernetes": {"clusters": [{"name": "prod", "issuer": "https://gitlab.com", "jwks_uri": "https://gitlab.com/oauth/discovery/keys", "audiences": ["chit"]}]},
        "oidc": {"issuers": [{"name": "gitlab", "preset": "gitlab", "audiences": ["chit"]}]}}}
    (tmp_path / "chit.yaml").write_text(yaml.safe_dump(document))
    result = subprocess.run([sys.executable, "-m", "chit", "serve", "--config", str(tmp_path / "chit.yaml")], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "issuer 'https://gitlab.com' is configured twice" in result.stderr
    assert "Traceback" not in result.stderr
