"""Shared state behind one small interface: instance nonce bindings, single-use
token hashes, revocations and rate-limit buckets.

Every value has a TTL, so nothing grows without bound. A backend that cannot
answer raises `StateUnavailable`; the exchange then fails closed (503).

Backends: `memory` (one process; the default) and `redis` (shared by every
worker and replica).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from server.config import Config


class StateUnavailable(Exception):
    """The state store did not answer; a check that needs it cannot be made."""


class StateStore(ABC):
    """Keys are namespaced by their users ("iid:…", "revoked:jti:…", "rate:client:…")."""

    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl: float) -> None: ...

    @abstractmethod
    async def add(self, key: str, value: str, ttl: float) -> bool:
        """Set `key` only if it is absent; True if this call set it."""

    @abstractmethod
    async def replace(self, key: str, expected: str, value: str, ttl: float) -> bool:
        """Set `key` to `value` only if it currently holds `expected` (compare-and-set)."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed."""

    @abstractmethod
    async def take(self, key: str, per_minute: int, now: float) -> float:
        """Take one token from a bucket refilled at `per_minute` per minute with a burst
        of `per_minute`. Returns 0.0 when taken, else the seconds until one is available."""

    @abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:
        return None


class MemoryStore(StateStore):
    """Process-local state (`state.backend: memory`): for one process only."""

    SWEEP_EVERY = 1024  # operations between sweeps of expired entries

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._operations = 0

    def _live(self, key: str, now: float) -> str | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._values[key]
            return None
        return item[0]

    def _tick(self, now: float) -> None:
        self._operations += 1
        if self._operations % self.SWEEP_EVERY == 0:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
            # A bucket idle for a minute is full again: forgetting it changes nothing.
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}

    async def get(self, key: str) -> str | None:
        now = time.time()
        self._tick(now)
        return self._live(key, now)

    async def set(self, key: str, value: str, ttl: float) -> None:
        now = time.time()
        self._tick(now)
        self._values[key] = (value, now + ttl)

    async def add(self, key: str, value: str, ttl: float) -> bool:
        now = time.time()
        self._tick(now)
        if self._live(key, now) is not None:
            return False
        self._values[key] = (value, now + ttl)
        return True

    async def replace(self, key: str, expected: str, value: str, ttl: float) -> bool:
        now = time.time()
        self._tick(now)
        if self._live(key, now) != expected:
            return False
        self._values[key] = (value, now + ttl)
        return True

    async def delete(self, key: str) -> bool:
        return self._values.pop(key, None) is not None

    async def take(self, key: str, per_minute: int, now: float) -> float:
        self._tick(now)
        rate = per_minute / 60.0
        tokens, updated = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - updated) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    async def ping(self) -> bool:
        return True


def build_state_store(config: Config) -> StateStore:
    if config.state.backend == "memory":
        return MemoryStore()
    raise StateUnavailable("state.backend redis is not available in this build")
