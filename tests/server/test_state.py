"""The state store interface, held to the same behaviour by every backend."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from server.state import MemoryStore, StateStore


@pytest.fixture(params=["memory"])
def store(request: pytest.FixtureRequest) -> StateStore:
    return MemoryStore()


def run(coroutine):
    return asyncio.run(coroutine)


def test_values_expire(store: StateStore) -> None:
    async def scenario() -> None:
        await store.set("k", "v", 0.2)
        assert await store.get("k") == "v"
        await asyncio.sleep(0.3)
        assert await store.get("k") is None

    run(scenario())


def test_add_sets_only_once(store: StateStore) -> None:
    async def scenario() -> None:
        assert await store.add("once", "a", 10) is True
        assert await store.add("once", "b", 10) is False
        assert await store.get("once") == "a"
        assert await store.delete("once") is True
        assert await store.delete("once") is False
        assert await store.add("once", "c", 10) is True

    run(scenario())


def test_replace_is_compare_and_set(store: StateStore) -> None:
    async def scenario() -> None:
        await store.set("cas", "1", 10)
        assert await store.replace("cas", "0", "2", 10) is False
        assert await store.replace("cas", "1", "2", 10) is True
        assert await store.get("cas") == "2"
        assert await store.replace("absent", "1", "2", 10) is False

    run(scenario())


def test_token_bucket_allows_the_burst_then_refills(store: StateStore) -> None:
    async def scenario() -> None:
        now = 1000.0
        assert [await store.take("b", 3, now) for _ in range(3)] == [0.0, 0.0, 0.0]
        wait = await store.take("b", 3, now)
        assert 19.9 < wait <= 20.0  # 3 per minute: one token every 20 s
        assert await store.take("b", 3, now + 20.0) == 0.0
        assert await store.take("other", 3, now) == 0.0  # buckets are per key

    run(scenario())


def test_ping(store: StateStore) -> None:
    assert run(store.ping()) is True
