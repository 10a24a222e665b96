"""Revocation: one token by its holder (RFC 7009, POST /revoke) and a whole workload
by an operator (`chit revoke --subject`), honoured by introspection and by the
exchange (docs/reference/http-api.md "Revocation").

Two kinds of record in the state store:

- `revoked:jti:JTI`: one token, kept until the token would have expired.
- `revoked:subjects`: one JSON document, `{SUBJECT: {"at": T, "lifted": L}}`,
  written only by `chit revoke`, so it cannot grow with traffic and is kept
  until deleted. While an entry is not lifted the subject's exchanges are
  refused; its tokens issued up to T + MAX_AGE (the moment every replica has
  seen the entry) stay inactive. A lifted entry is dropped by the next change
  once every token it revoked has expired.

Resource servers verify chit's tokens offline; only introspection, the
gateway (`chit.gateway.revocations`, on the same state store) and the
exchange (for subjects) can honour a revocation.

Every process caches the subjects document: it is re-read in the background
once it is REFRESH_AFTER old, and an exchange waits for a fresh read once it
is MAX_AGE old; if that read fails, the exchange fails closed (503). So a
subject revoked anywhere is refused everywhere within about a second, and an
exchange costs a state store round trip at most once per REFRESH_AFTER per
process, not every time.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

from chit.protocol import MAX_TOKEN_TTL
from chit.state import StateStore, StateUnavailable

JTI_PREFIX = "revoked:jti:"
SUBJECTS_KEY = "revoked:subjects"
REFRESH_AFTER = 0.5
MAX_AGE = 1.0  # DESIGN: a revocation holds on every replica within one second


@dataclass(frozen=True, slots=True)
class SubjectRevocation:
    at: float
    lifted: float | None = None

    def revokes_token_issued_at(self, iat: float) -> bool:
        # Tokens minted until every replica has seen the revocation are revoked too.
        return iat <= self.at + MAX_AGE

    def expired(self, now: float) -> bool:
        return self.lifted is not None and now - self.lifted > MAX_TOKEN_TTL + MAX_AGE


def _parse_subjects(value: str | None) -> dict[str, SubjectRevocation]:
    if value is None:
        return {}
    try:
        document = json.loads(value)
        return {subject: SubjectRevocation(float(e["at"]), None if e.get("lifted") is None else float(e["lifted"]))
                for subject, e in document.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise StateUnavailable(f"{SUBJECTS_KEY} is unreadable") from None


def _dump_subjects(entries: dict[str, SubjectRevocation]) -> str:
    return json.dumps({s: {"at": e.at, "lifted": e.lifted} for s, e in sorted(entries.items())}, separators=(",", ":"))


def _parties(claims: dict[str, Any], depth: int = 8) -> Iterator[dict[str, Any]]:
    """The token's own claims, then each `act` of the delegation chain (RFC 8693 §4.1)."""
    while isinstance(claims, dict) and depth > 0:
        yield claims
        claims, depth = claims.get("act"), depth - 1


class Revocations:
    def __init__(self, state: StateStore):
        self.state = state
        self._subjects: dict[str, SubjectRevocation] = {}
        self._read_at = -math.inf  # monotonic start of the read the cached subjects came from
        self._reading: asyncio.Task[None] | None = None

    # --- one token (RFC 7009) -------------------------------------------------------

    async def revoke_token(self, jti: str, expires_at: float, now: float) -> None:
        await self.state.set(JTI_PREFIX + jti, "1", max(1.0, expires_at - now + MAX_AGE))

    async def token_revoked(self, claims: dict[str, Any]) -> bool:
        """A verified chit token's jti, its subject or its actor (RFC 8693 `act`) is revoked
        (for introspection and the gateway): a revoked workload's delegated tokens die with it."""
        if await self.subject_revokes(claims):
            return True
        jti = claims.get("jti")
        return isinstance(jti, str) and await self.state.get(JTI_PREFIX + jti) is not None

    async def subject_revokes(self, claims: dict[str, Any]) -> bool:
        """The token's subject, or an actor of its chain, is revoked as of its `iat`."""
        revoked = await self.subjects()
        for party in _parties(claims):
            sub = party.get("sub")
            entry = revoked.get(sub) if isinstance(sub, str) else None
            if entry is not None and entry.revokes_token_issued_at(claims.get("iat", 0)):
                return True
        return False

    # --- whole subjects: the operator's kill switch -----------------------------------

    async def subject_revoked(self, subject: str) -> bool:
        """New exchanges of `subject` are refused (not lifted)."""
        entry = (await self.subjects()).get(subject)
        return entry is not None and entry.lifted is None

    async def subjects(self) -> dict[str, SubjectRevocation]:
        """The cached subjects document, never older than MAX_AGE; raises StateUnavailable."""
        age = time.monotonic() - self._read_at
        if age >= MAX_AGE:
            await asyncio.shield(self._start_read())
        elif age >= REFRESH_AFTER:
            self._start_read()
        return self._subjects

    def _start_read(self) -> asyncio.Task[None]:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(time.monotonic()))
            self._reading.add_done_callback(self._read_done)
        return self._reading

    async def _read(self, started: float) -> None:
        self._subjects = _parse_subjects(await self.state.get(SUBJECTS_KEY))
        self._read_at = started

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reading = None
        if not task.cancelled():
            task.exception()  # retrieved here; a waiting exchange gets it too

    async def change_subject(self, subject: str, *, lift: bool, now: float) -> bool:
        """`chit revoke --subject [--lift]`; False when there was nothing to change."""
        for _ in range(10):
            current = await self.state.get(SUBJECTS_KEY)
            entries = {s: e for s, e in _parse_subjects(current).items() if not e.expired(now)}
            entry = entries.get(subject)
            if lift:
                if entry is None or entry.lifted is not None:
                    return False
                entries[subject] = SubjectRevocation(entry.at, lifted=now)
            else:
                entries[subject] = SubjectRevocation(now)
            value = _dump_subjects(entries)
            if current is None:
                if await self.state.add(SUBJECTS_KEY, value, None):
                    return True
            elif await self.state.replace(SUBJECTS_KEY, current, value, None):
                return True
        raise StateUnavailable(f"{SUBJECTS_KEY} changed concurrently too often")
