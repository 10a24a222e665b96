"""STS's answer read strictly, and what the caller's ARN names."""

from __future__ import annotations

import pytest

from chit.attestors.aws_iam.caller import error_code, parse_answer
from chit.attestors.aws_iam.principal import principal
from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from tests.attestors.aws_iam.conftest import CALLER, caller_xml, sts_error

NS = 'xmlns="https://sts.amazonaws.com/doc/2011-06-15/"'


def test_a_get_caller_identity_response() -> None:
    caller = parse_answer(caller_xml())
    assert caller.arn == "arn:aws:sts::123456789012:assumed-role/report-builder/report-builder"
    assert caller.account == "123456789012" and caller.user_id == "AROAEXAMPLEROLEID1234:report-builder"
    assert parse_answer(b'<?xml version="1.0" encoding="UTF-8"?>\n' + caller_xml()).account == "123456789012"


@pytest.mark.parametrize("body", [
    # A DTD could define entities that expand (billion laughs) or read files: never parsed.
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]>' + caller_xml().replace(b"123456789012</Account>", b"&a;</Account>"),
    b'<!DOCTYPE r SYSTEM "file:///etc/passwd">' + caller_xml(),
    caller_xml().replace(b"<Account>", b"<!-- x --><Account>"),
    b"",
    b"not xml",
    b'{"GetCallerIdentityResponse": {}}',
    caller_xml().replace(b"GetCallerIdentityResponse", b"AssumeRoleResponse"),
    caller_xml().replace(NS.encode(), b'xmlns="https://sts.attacker.example/"'),
    caller_xml().replace(b"<Arn>", b"<Arn>x</Arn><Arn>"),
    caller_xml().replace(b"<Account>123456789012</Account>", b""),
    caller_xml().replace(b"<Account>123456789012</Account>", b"<Account><b>123456789012</b></Account>"),
    caller_xml().replace(b"<UserId>", b"<UserId>").replace(b"AROAEXAMPLEROLEID1234:report-builder", b""),
    (CALLER * 2).format(arn="a", user_id="u", account="1").encode(),
])
def test_anything_else_fails_closed(body: bytes) -> None:
    with pytest.raises(EvidenceUnavailable):
        parse_answer(body)


def test_stss_error_code_is_read_when_it_is_a_plain_one() -> None:
    assert error_code(sts_error("SignatureDoesNotMatch", "The request signature we calculated does not match")) == "SignatureDoesNotMatch"
    assert error_code(sts_error("Bad code <script>", "x").replace(b"<script>", b"")) == ""
    assert error_code(b"<!DOCTYPE x>") == "" and error_code(b"nothing") == ""


# --- the principal --------------------------------------------------------------------------


def test_an_assumed_role_session() -> None:
    found = principal("arn:aws:sts::123456789012:assumed-role/report-builder/report-builder", "123456789012", "AROAEXAMPLEROLEID1234:report-builder")
    assert (found.principal_type, found.name) == ("assumed-role", "report-builder")
    assert found.facts == {
        "account_id": "123456789012", "arn": "arn:aws:sts::123456789012:assumed-role/report-builder/report-builder",
        "user_id": "AROAEXAMPLEROLEID1234:report-builder", "principal_type": "assumed-role",
        "role_arn": "arn:aws:iam::123456789012:role/report-builder", "role_name": "report-builder", "session_name": "report-builder",
    }


def test_an_eks_pod_identity_session_in_another_partition() -> None:
    found = principal("arn:aws-cn:sts::123456789012:assumed-role/payments/eks-prod-agent-7d9f8-6a1b", "123456789012", "AROAEXAMPLEROLEID1234:eks-prod-agent-7d9f8-6a1b")
    assert found.facts["role_arn"] == "arn:aws-cn:iam::123456789012:role/payments"


def test_an_iam_user_with_a_path() -> None:
    found = principal("arn:aws:iam::123456789012:user/ci/bots/ci-bot", "123456789012", "AIDAEXAMPLEUSERID1234")
    assert (found.principal_type, found.name) == ("user", "ci-bot")
    assert found.facts["user_arn"] == "arn:aws:iam::123456789012:user/ci/bots/ci-bot"


@pytest.mark.parametrize(("arn", "account", "user_id", "reason"), [
    ("arn:aws:iam::123456789012:root", "123456789012", "123456789012", "neither an assumed role nor an IAM user"),
    ("arn:aws:sts::123456789012:federated-user/bob", "123456789012", "123456789012:bob", "neither"),
    ("arn:aws:sts::123456789012:assumed-role/report-builder/s1", "210987654321", "AROAEXAMPLEROLEID1234:s1", "Account is not the ARN's"),
    ("arn:aws:sts::123456789012:assumed-role/deploy@prod/s1", "123456789012", "AROAEXAMPLEROLEID1234:s1", "cannot be part of a subject"),
    ("arn:aws:sts::123456789012:assumed-role/report-builder/s1", "123456789012", "not an id", "not an IAM unique id"),
    ("arn:aws:sts::123456789012:assumed-role/report-builder/s1/extra", "123456789012", "AROAEXAMPLEROLEID1234:s1", "neither"),
])
def test_what_is_not_a_workload(arn: str, account: str, user_id: str, reason: str) -> None:
    with pytest.raises(InvalidEvidence, match=reason):
        principal(arn, account, user_id)
