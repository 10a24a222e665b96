"""The revocation records (chit/revocation.py) on a state store: which tokens a
subject's revocation covers, how long lifted entries stay, and that a list
which cannot be read or refreshed fails closed."""

from __future__ import annotations

import asyncio

import pytest

from chit.server.config import MAX_TOKEN_TTL
from chit.revocation import MAX_AGE, SUBJECTS_KEY, Revocations
from chit.state import MemoryStore, StateStore, StateUnavailable

SUBJECT = "spiffe://example.org/k8s/prod/ns/payments/sa/agent"


def test_a_revocation_covers_tokens_minted_until_every_replica_has_seen_it() -> None:
    async def scenario() -> None:
        revocations = Revocations(MemoryStore())
        await revocations.change_subject(SUBJECT, lift=False, now=1000.0)
        assert await revocations.subject_revoked(SUBJECT)
        assert not await revocations.subject_revoked(SUBJECT + "-other")
        claims = {"sub": SUBJECT, "jti": "j"}
        assert await revocations.token_revoked({**claims, "iat": 900})
        assert await revocations.token_revoked({**claims, "iat": 1000 + MAX_AGE})  # minted during propagation
        assert not await revocations.token_revoked({**claims, "iat": 1002})

    asyncio.run(scenario())


def test_lifting_allows_exchanges_and_keeps_revoked_tokens_revoked_until_they_expire() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = Revocations(store)
        assert await writer.change_subject(SUBJECT, lift=False, now=1000.0)
        assert await writer.change_subject(SUBJECT, lift=True, now=1100.0)
        assert not await writer.change_subject(SUBJECT, lift=True, now=1101.0)  # nothing left to lift
        reader = Revocations(store)
        assert not await reader.subject_revoked(SUBJECT)
        assert await reader.token_revoked({"sub": SUBJECT, "iat": 999})
        # Once every token it revoked has expired, the next change drops the lifted entry.
        await writer.change_subject("spiffe://example.org/other", lift=False, now=1100.0 + MAX_TOKEN_TTL + 5)
        assert SUBJECT not in (await Revocations(store).subjects())

    asyncio.run(scenario())


def test_a_revoked_jti_is_revoked_until_the_token_expires() -> None:
    async def scenario() -> None:
        revocations = Revocations(MemoryStore())
        await revocations.revoke_token("jti-1", expires_at=1e12, now=1000.0)
        assert await revocations.token_revoked({"sub": SUBJECT, "iat": 1000, "jti": "jti-1"})
        assert not await revocations.token_revoked({"sub": SUBJECT, "iat": 1000, "jti": "jti-2"})

    asyncio.run(scenario())


def test_an_unreadable_list_fails_closed() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.set(SUBJECTS_KEY, "{not json", None)
        with pytest.raises(StateUnavailable):
            await Revocations(store).subject_revoked(SUBJECT)

    asyncio.run(scenario())


class FailingAfterFirstRead(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, key: str) -> str | None:
        self.reads += 1
        if self.reads > 1:
            raise StateUnavailable("down")
        return await super().get(key)


def test_a_list_that_cannot_be_refreshed_fails_closed_once_it_is_max_age_old() -> None:
    async def scenario(store: StateStore) -> None:
        revocations = Revocations(store)
        assert not await revocations.subject_revoked(SUBJECT)  # read once
        assert not await revocations.subject_revoked(SUBJECT)  # from the cache: no read
        assert store.reads == 1  # type: ignore[attr-defined]
        revocations._read_at -= MAX_AGE  # the cached copy is now too old to answer from
        with pytest.raises(StateUnavailable):
            await revocations.subject_revoked(SUBJECT)

    asyncio.run(scenario(FailingAfterFirstRead()))
