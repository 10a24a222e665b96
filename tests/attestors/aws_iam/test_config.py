"""The `attestors.aws_iam` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from chit.server.config import ConfigError, parse_config


def aws_iam(**section: object):
    return parse_config({"issuer": "https://chit.example.org", "attestors": {"aws_iam": section}}, "chit.yaml", Path("/etc/chit")).attestors.aws_iam


def test_off_by_default_and_the_global_endpoint() -> None:
    section = aws_iam()
    assert not section.enabled and section.server_id is None and not section.allow_iam_users
    assert section.sts_endpoints == ["https://sts.amazonaws.com/"] and section.account_ids is None and section.timeout_ms == 3000


@pytest.mark.parametrize(("section", "key", "message"), [
    ({"sts_endpoints": ["https://sts.amazonaws.com"]}, "sts_endpoints", "path '/'"),
    ({"sts_endpoints": ["https://sts.amazonaws.com/?Action=x"]}, "sts_endpoints", "path '/'"),
    ({"sts_endpoints": ["http://sts.amazonaws.com/"]}, "sts_endpoints", "https"),
    ({"sts_endpoints": []}, "sts_endpoints", "at least 1"),
    ({"account_ids": ["12345"]}, "account_ids", "12-digit"),
    ({"server_id": "chit prod"}, "server_id", "visible ASCII"),
    ({"allow_iam_user": True}, "allow_iam_user", "unknown key"),
])
def test_invalid_settings_name_the_key(section: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        aws_iam(**section)
    assert f"attestors.aws_iam.{key}" in str(raised.value) and message in str(raised.value)
