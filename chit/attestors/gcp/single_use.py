"""`single_use: true`: an accepted token is remembered until it expires (docs/operators/gcp.md "GCP")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.state import StateStore, StateUnavailable


def claims_digest(claims: Mapping[str, Any]) -> str:
    """A token's identity for single use: the hash of its verified claims, not of its
    encoding (so no re-encoding of the same signed claims counts as another token)."""
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SingleUse:
    """`single_use: true`: remember an accepted token until it expires (docs/reference
    "GCP"); committed only once a credential is issued, so a failure uses nothing."""

    state: StateStore
    key: str
    ttl: float

    async def commit(self) -> None:
        try:
            first = await self.state.add(self.key, "1", self.ttl)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None
        if not first:
            raise InvalidEvidence("token already used (single_use)")
