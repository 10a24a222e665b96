"""`GET /readyz` (docs/reference/http-api.md "Health"): can this process issue tokens now,
and if not, why.

Three checks: a signing key of each configured series is active, the policy engine answers (OPA's own
health), the state store answers. Each failing check has a reason, in the
answer and in the log; the log says it once when a check starts failing and
once when it passes again, never on every probe (the kubelet asks every few
seconds). A reason names the dependency and what went wrong, never a
password (Redis's are not in its error messages, and URLs are shown without
credentials).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from chit.state import StateUnavailable

if TYPE_CHECKING:
    from chit.server.exchange import TokenExchange

log = logging.getLogger("chit.readiness")


class Readiness:
    def __init__(self, exchange: TokenExchange):
        self.exchange = exchange
        self._reasons: dict[str, str | None] = {}  # as of the last probe: check -> reason it fails (None: passes)

    async def signing_key(self) -> str | None:
        now = time.time()
        missing = [algorithm for algorithm in self.exchange.config.signing.series if self.exchange.keys.signing_key(now, algorithm) is None]
        if missing:
            return f"no active {', '.join(missing)} signing key in {self.exchange.keys.keys_dir}"
        return None

    async def policy(self) -> str | None:
        return await self.exchange.policy.unready_reason()

    async def state(self) -> str | None:
        try:
            if await self.exchange.state.ping():
                return None
            return "the state store did not answer PING"
        except StateUnavailable as error:
            return str(error)

    async def check(self) -> dict[str, str | None]:
        """Each check's reason to fail (None: it passes), logged when it changes."""
        reasons = {"signing_key": await self.signing_key(), "policy": await self.policy(), "state": await self.state()}
        for check, reason in reasons.items():
            before = self._reasons.get(check)
            if reason is not None and reason != before:
                log.warning("not ready: %s: %s", check, reason)
            elif reason is None and before is not None:
                log.info("ready again: %s", check)
        self._reasons = reasons
        return reasons
