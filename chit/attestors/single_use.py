"""Evidence accepted once: a key in the state store, written only when a credential is
issued (the Attestation's replay guard), kept until the evidence could no longer be valid.

GCP's `single_use`, OIDC tokens with a `jti` and signed AWS `GetCallerIdentity`
requests all use it; each names its own key.
"""

from __future__ import annotations

from dataclasses import dataclass

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.state import StateStore, StateUnavailable


@dataclass(frozen=True, slots=True)
class SingleUse:
    """Remember accepted evidence until it expires; committed only once a credential is
    issued, so a failed exchange uses nothing. `what` names the rule in refusals."""

    state: StateStore
    key: str
    ttl: float
    what: str = "single_use"

    async def commit(self) -> None:
        try:
            first = await self.state.add(self.key, "1", self.ttl)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None
        if not first:
            raise InvalidEvidence(f"token already used ({self.what})")


async def unused(state: StateStore, key: str, ttl: float, what: str) -> SingleUse:
    """Refuse now evidence already used (InvalidEvidence), or the state store's silence
    (EvidenceUnavailable); the returned guard records this use later."""
    try:
        used = await state.get(key)
    except StateUnavailable as error:
        raise EvidenceUnavailable(f"state store: {error}") from None
    if used is not None:
        raise InvalidEvidence(f"token already used ({what})")
    return SingleUse(state, key, max(1.0, ttl), what)
