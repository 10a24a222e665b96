"""The instance identity document: its JSON (duplicate members refused) and the fields that name the instance."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from chit.attestors.aws_iid.config import AWS_ACCOUNT_ID, AWS_REGION
from chit.attestors.base import InvalidEvidence, evidence_object


INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
# The availability zone is the region plus a letter, or plus a Local Zone / Wavelength suffix.
_ZONE_SUFFIX = re.compile(r"(?:-[a-z0-9]+)*[a-z]")
_PENDING_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """The fields of a document chit relies on (every field stays in `claims`)."""

    account_id: str
    region: str
    availability_zone: str
    instance_id: str
    image_id: str
    instance_type: str
    pending_time: int
    claims: Mapping[str, Any]


def _field(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidEvidence(f"document {name} missing or malformed")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidEvidence(f"document {name} malformed")
    return value


def parse_document(document: bytes) -> InstanceIdentity:
    """The document's JSON (duplicate members refused) and the fields that name the instance."""
    claims = evidence_object(document, "document")
    region = _field(claims, "region", AWS_REGION)
    zone = _field(claims, "availabilityZone")
    if not (zone.startswith(region) and _ZONE_SUFFIX.fullmatch(zone[len(region) :])):
        raise InvalidEvidence("document availabilityZone is not in its region")
    pending = _field(claims, "pendingTime", _PENDING_TIME)
    try:
        pending_time = calendar.timegm(time.strptime(pending, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise InvalidEvidence("document pendingTime malformed") from None
    return InstanceIdentity(
        account_id=_field(claims, "accountId", AWS_ACCOUNT_ID),
        region=region,
        availability_zone=zone,
        instance_id=_field(claims, "instanceId", INSTANCE_ID),
        image_id=_field(claims, "imageId"),
        instance_type=_field(claims, "instanceType"),
        pending_time=pending_time,
        claims=claims,
    )
