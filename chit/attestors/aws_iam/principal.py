"""What the caller's ARN (from STS's answer) names: a role's session, or an IAM user.

IAM identifiers ("IAM identifiers", AWS IAM User Guide): an assumed-role session is
`arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE-NAME/ROLE-SESSION-NAME` and its role
`arn:PARTITION:iam::ACCOUNT:role/ROLE-NAME` (STS's answer omits the role's path);
a user is `arn:PARTITION:iam::ACCOUNT:user/PATH/USER-NAME`. The root user and
federated users are never workloads. A name that goes into a SPIFFE subject must
be a path segment as it is (role names may also hold `+=,@`, which cannot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chit.attestors.base import InvalidEvidence

_ASSUMED_ROLE = re.compile(r"arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<role>[\w+=,.@-]{1,64})/(?P<session>[\w+=,.@-]{2,64})")
_USER = re.compile(r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):user/(?:[\x21-\x7e]{0,510}/)?(?P<user>[\w+=,.@-]{1,64})")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_USER_ID = re.compile(r"[A-Za-z0-9]{12,128}(?::[\w+=,.@-]{2,64})?")


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    principal_type: str  # "assumed-role" or "user"
    name: str  # the role's or the user's
    facts: dict[str, str]


def principal(arn: str, account: str, user_id: str) -> Principal:
    if (match := _ASSUMED_ROLE.fullmatch(arn)) is not None:
        kind, name = "assumed-role", match["role"]
        facts = {
            "role_arn": f"arn:{match['partition']}:iam::{match['account']}:role/{name}",
            "role_name": name,
            "session_name": match["session"],
        }
    elif (match := _USER.fullmatch(arn)) is not None:
        kind, name = "user", match["user"]
        facts = {"user_arn": arn, "user_name": name}
    else:
        raise InvalidEvidence("the caller is neither an assumed role nor an IAM user (root and federated users are not workloads)")
    if not _USER_ID.fullmatch(user_id):
        raise InvalidEvidence("STS's UserId is not an IAM unique id")
    if match["account"] != account:
        raise InvalidEvidence("STS's Account is not the ARN's")
    if not _SEGMENT.fullmatch(name) or name in (".", ".."):
        raise InvalidEvidence(f"the {'role' if kind == 'assumed-role' else 'user'} name cannot be part of a subject (letters, digits, '.', '-', '_' only)")
    return Principal(account, kind, name, {"account_id": account, "arn": arn, "user_id": user_id, "principal_type": kind, **facts})
