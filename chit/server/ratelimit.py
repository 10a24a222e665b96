"""Rate limits (docs/reference/http-api.md "Rate limits"): token buckets per minute with a burst of
the per-minute figure, kept in the state store so that every replica draws from
the same bucket. Every /token request counts against its client address; an
exchange whose subject is attested counts against that subject too.

A limit of 0 is off and costs nothing; a limit that cannot be checked (the
state store does not answer) fails closed (503).
"""

from __future__ import annotations

import hashlib
import math

from chit.server.config import RateLimits as RateLimitsConfig
from chit.server.errors import SlowDown, TemporarilyUnavailable
from chit.state import StateStore, StateUnavailable


class RateLimits:
    def __init__(self, config: RateLimitsConfig, state: StateStore):
        self.per_client = config.per_client_per_minute
        self.per_subject = config.per_subject_per_minute
        self.state = state

    async def count_client(self, address: str | None, now: float) -> None:
        if self.per_client:
            await self._take(f"rate:client:{address or 'unknown'}", self.per_client, now, "client address")

    async def count_subject(self, subject: str, now: float) -> None:
        if self.per_subject:
            # Subjects are long; their hash keeps keys short.
            digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
            await self._take(f"rate:subject:{digest}", self.per_subject, now, "subject")

    async def _take(self, key: str, per_minute: int, now: float, what: str) -> None:
        try:
            wait = await self.state.take(key, per_minute, now)
        except StateUnavailable as error:
            raise TemporarilyUnavailable("the rate limit cannot be checked right now", cause="state", detail=f"rate limit: {error}") from None
        if wait > 0:
            raise SlowDown(
                f"over the rate limit of {per_minute} exchanges per minute for this {what}",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
