"""Budgets per identity (the token's `sub`) and route, in the state store so that every
gateway replica draws from the same ones (docs/operators/gateway.md "Budgets").

- Requests per minute: a token bucket refilled at the per-minute figure with a
  burst of it (the state store's `take`, as chit's own rate limits).
- LLM tokens per UTC day: a counter per day, read before a request and charged
  after it with the usage the provider reported. A request is admitted while the
  day's count is under the budget, so one that starts under it may end over it
  (by at most what the requests in flight then use); the next one is refused
  until the day ends.

Over a budget: 429 with `Retry-After`. A budget that cannot be checked (the
state store does not answer) fails closed: 503.
"""

from __future__ import annotations

import hashlib
import logging
import math

from chit.gateway.config import Route
from chit.gateway.errors import OverBudget, TemporarilyUnavailable
from chit.state import StateStore, StateUnavailable

log = logging.getLogger("chit.gateway.budgets")

DAY = 86400


def _subject_key(subject: str) -> str:
    # Subjects are long and caller-influenced; their hash keeps keys short and plain.
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


def _day(now: float) -> int:
    return int(now // DAY)


class Budgets:
    def __init__(self, state: StateStore):
        self.state = state

    def _tokens_key(self, route: Route, subject: str, now: float) -> str:
        return f"gateway:tokens:{route.name}:{_subject_key(subject)}:{_day(now)}"

    async def admit(self, route: Route, subject: str, now: float) -> None:
        """Count this request against the route's budgets for `subject`, or refuse it: the
        day's tokens first (a request refused for them does not spend one of the minute's
        requests), in one round trip to the state store."""
        budgets = route.budgets
        if not budgets.requests_per_minute and not budgets.tokens_per_day:
            return
        try:
            wait, used = await self.state.take_unless_spent(
                f"gateway:rpm:{route.name}:{_subject_key(subject)}", budgets.requests_per_minute,
                self._tokens_key(route, subject, now), budgets.tokens_per_day, now,
            )
        except StateUnavailable as error:
            raise TemporarilyUnavailable("the budget cannot be checked right now", detail=f"budgets: {error}") from None
        except ValueError:
            raise TemporarilyUnavailable("the budget cannot be checked right now", detail="budgets: a counter is unreadable") from None
        if budgets.tokens_per_day and used >= budgets.tokens_per_day:
            raise OverBudget(
                f"over the budget of {budgets.tokens_per_day} tokens per day on route {route.name}",
                detail=f"{used} tokens used today (UTC) of {budgets.tokens_per_day}",
                headers={"Retry-After": str(max(1, math.ceil((_day(now) + 1) * DAY - now)))},
            )
        if wait > 0:
            raise OverBudget(
                f"over the budget of {budgets.requests_per_minute} requests per minute on route {route.name}",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def charge(self, route: Route, subject: str, tokens: int | None, now: float) -> str | None:
        """Add what a finished response used to the day's count; the reason it was not
        charged, when it could not be (the answer has left: it is logged and audited)."""
        if not route.budgets.tokens_per_day or not tokens:
            return None
        try:
            # Kept a day past its own: a replica whose clock is a little behind still reads it.
            await self.state.increment(self._tokens_key(route, subject, now), tokens, 2 * DAY)
        except StateUnavailable as error:
            log.error("route %s: %d tokens could not be charged: %s", route.name, tokens, error)
            return f"{tokens} tokens not charged: the state store did not answer"
        return None
