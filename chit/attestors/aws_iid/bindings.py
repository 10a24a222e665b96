"""Replay binding (docs/operators/aws.md "AWS nonce"): the first successful exchange of an instance
binds a hash of its nonce and the document's `pendingTime`; later exchanges need the
same nonce and a `pendingTime` no older. Failed attempts bind nothing (the binding is
the Attestation's replay guard, committed once a credential is issued).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.state import StateStore, StateUnavailable


@dataclass(frozen=True, slots=True)
class BindingRecord:
    """What the state store keeps per instance: a hash of the nonce, never the nonce."""

    nonce_hash: str
    pending_time: int

    @classmethod
    def of(cls, instance_id: str, nonce: str, pending_time: int) -> BindingRecord:
        digest = hashlib.sha256(f"chit aws-iid nonce\0{instance_id}\0{nonce}".encode()).hexdigest()
        return cls(digest, pending_time)

    @classmethod
    def parse(cls, value: str) -> BindingRecord:
        nonce_hash, _, pending = value.partition(" ")
        if not pending.isdigit():
            raise EvidenceUnavailable("the stored instance binding is unreadable")
        return cls(nonce_hash, int(pending))

    def dump(self) -> str:
        return f"{self.nonce_hash} {self.pending_time}"

    def admits(self, presented: BindingRecord) -> None:
        """docs/operators/aws.md "AWS nonce": the same nonce, and a pendingTime no older than the bound one."""
        if not hmac.compare_digest(self.nonce_hash, presented.nonce_hash):
            raise InvalidEvidence("this instance is bound to another nonce")
        if presented.pending_time < self.pending_time:
            raise InvalidEvidence("document pendingTime is older than the one this instance is bound to")


class InstanceBindings:
    """Nonce bindings in the state store, one key per instance ("iid:INSTANCE_ID")."""

    PREFIX = "iid:"

    def __init__(self, state: StateStore, ttl: float):
        self.state = state
        self.ttl = ttl

    async def _current(self, key: str) -> str | None:
        try:
            return await self.state.get(key)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None

    async def check(self, instance_id: str, nonce: str, pending_time: int) -> NonceBinding:
        """Refuse now what the binding refuses; the returned guard records the use later."""
        key = self.PREFIX + instance_id
        presented = BindingRecord.of(instance_id, nonce, pending_time)
        current = await self._current(key)
        if current is not None:
            BindingRecord.parse(current).admits(presented)
        return NonceBinding(self, key, current, presented)

    async def commit(self, key: str, expected: str | None, presented: BindingRecord) -> None:
        """Bind (add) or refresh (compare-and-set) the record; a concurrent change is re-checked."""
        value = presented.dump()
        try:
            for _ in range(3):
                if expected is None:
                    if await self.state.add(key, value, self.ttl):
                        return
                elif await self.state.replace(key, expected, value, self.ttl):
                    return
                expected = await self.state.get(key)
                if expected is not None:
                    # Another exchange bound or refreshed it meanwhile: the same rules apply.
                    BindingRecord.parse(expected).admits(presented)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None
        raise EvidenceUnavailable("the instance binding changed concurrently too often")

    async def forget(self, instance_id: str) -> bool:
        """`chit aws forget-instance`: the next exchange binds a new nonce."""
        return await self.state.delete(self.PREFIX + instance_id)


@dataclass(slots=True)
class NonceBinding:
    """The Attestation's replay guard: committed only once a credential is issued."""

    bindings: InstanceBindings
    key: str
    expected: str | None
    presented: BindingRecord

    async def commit(self) -> None:
        await self.bindings.commit(self.key, self.expected, self.presented)
