"""What a verified Google identity token says: the service account, and the instance a
full-format token names. Names Google itself issues become SPIFFE path segments,
so nothing else (no '/', no '..') may pass.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from chit.attestors.base import InvalidEvidence
from chit.attestors.gcp.config import GCP_PROJECT_ID


# Names Google itself issues; they become SPIFFE path segments, so nothing else
# (no '/', no '..') may pass. Zones look like us-central1-a: the region is the
# zone without its last part.
_ZONE = re.compile(r"(?P<region>[a-z]+(?:-[a-z]+)*[0-9]+)-[a-z0-9]{1,10}")
_INSTANCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1035 label
_INSTANCE_ID = re.compile(r"[0-9]{1,20}")  # an unsigned 64-bit integer, as a string
_SUBJECT = re.compile(r"[0-9]{1,64}")  # the service account's unique id
# Only service accounts are workloads: a person's Google account is not.
_SERVICE_ACCOUNT_EMAIL = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}@[a-z0-9][a-z0-9.-]{0,200}\.gserviceaccount\.com")


def _string(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str], where: str = "claim") -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidEvidence(f"{where} {name} missing or malformed")
    return value


def _integer(claims: Mapping[str, Any], name: str, where: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvidence(f"{where} {name} missing or not a non-negative integer")
    return value


def service_account(claims: Mapping[str, Any]) -> tuple[str, str]:
    """The service account the token speaks for: (email, sub)."""
    if "email" not in claims:
        # The metadata server's format=standard tokens name no account at all.
        raise InvalidEvidence("claim email missing: request the token with format=full")
    email_address = _string(claims, "email", _SERVICE_ACCOUNT_EMAIL)
    if claims.get("email_verified") is not True:
        raise InvalidEvidence("claim email_verified is not true")
    return email_address, _string(claims, "sub", _SUBJECT)


def compute_engine_facts(claims: Mapping[str, Any]) -> dict[str, Any] | None:
    """The instance a full-format token names (`google.compute_engine`), or None for a
    standard token. A `google.compute_engine` claim that is there but malformed is refused."""
    google = claims.get("google")
    if google is None or (isinstance(google, dict) and "compute_engine" not in google):
        return None
    engine = google.get("compute_engine") if isinstance(google, dict) else None
    if not isinstance(engine, dict):
        raise InvalidEvidence("claim google.compute_engine malformed")
    where = "claim google.compute_engine."
    project_id = _string(engine, "project_id", GCP_PROJECT_ID, where)
    zone = _string(engine, "zone", _ZONE, where)
    instance_id = _string(engine, "instance_id", _INSTANCE_ID, where)
    if int(instance_id) >= 2**64:
        raise InvalidEvidence(f"{where}instance_id out of range")
    project_number = _integer(engine, "project_number", where)
    if project_number == 0:
        raise InvalidEvidence(f"{where}project_number must be positive")
    return {
        "project_id": project_id,
        "project_number": project_number,
        "zone": zone,
        "region": _ZONE.fullmatch(zone)["region"],  # type: ignore[index]
        "instance_id": instance_id,
        "instance_name": _string(engine, "instance_name", _INSTANCE_NAME, where),
        "instance_creation_timestamp": _integer(engine, "instance_creation_timestamp", where),
    }
