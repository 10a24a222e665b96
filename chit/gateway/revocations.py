"""Revocations as the gateway checks them, on every call: chit's own records
(`chit.revocation`: a token by its `jti`, a whole subject with `chit revoke --subject`),
read from the state store the token server writes them to.

The subjects are cached by `chit.revocation.Revocations` (never older than a second).
A token found not revoked is remembered for NOT_REVOKED_FOR seconds, so an agent
calling many times a second costs the state store one read per token twice a second,
not one per call; a token revoked at chit is refused by every replica within that.
"""

from __future__ import annotations

from typing import Any, Mapping

from chit.revocation import REFRESH_AFTER, Revocations
from chit.state import StateStore

NOT_REVOKED_FOR = REFRESH_AFTER
CACHE_SIZE = 10_000


class TokenRevocations:
    def __init__(self, state: StateStore):
        self.records = Revocations(state)
        self._not_revoked: dict[str, float] = {}  # jti -> when it was found not revoked

    async def token_revoked(self, claims: Mapping[str, Any], now: float) -> bool:
        """Raises StateUnavailable when it cannot tell."""
        jti = claims.get("jti")
        checked = self._not_revoked.get(jti) if isinstance(jti, str) else None
        if checked is not None and 0 <= now - checked < NOT_REVOKED_FOR:
            # The jti was not revoked a moment ago; the subject is checked on its own cache.
            return await self.records.subject_revokes(dict(claims))
        revoked = await self.records.token_revoked(dict(claims))
        if not revoked and isinstance(jti, str):
            if len(self._not_revoked) >= CACHE_SIZE:
                del self._not_revoked[next(iter(self._not_revoked))]
            self._not_revoked[jti] = now
        return revoked
