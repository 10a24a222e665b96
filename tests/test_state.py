"""The state store interface, held to the same behaviour by every backend
(the Redis one against a real redis-server, and through Redis Sentinel with
writes acknowledged by a replica), and the Redis backend's failures."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Iterator

import pytest

from chit.state import MemoryStore, RedisStore, Sentinel, State, StateStore, StateUnavailable, build_state_store
from tests.factories import RedisServer, free_port
from tests.conftest import SENTINEL_PASSWORD as PASSWORD
from tests.redis_sentinel import SERVICE, SentinelGroup

Scenario = Callable[[StateStore], Awaitable[None]]


def sentinel_store(group: SentinelGroup, *, wait_for_replicas: int = 1, timeout: float = 2.0, password: str = PASSWORD) -> RedisStore:
    sentinel = Sentinel(addresses=group.addresses, service=SERVICE)
    return RedisStore(None, timeout, sentinel=sentinel, password=password, sentinel_password=password, wait_for_replicas=wait_for_replicas)


@pytest.fixture(params=["memory", "redis", "sentinel"])
def new_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], StateStore]]:
    if request.param == "memory":
        yield MemoryStore
        return
    if request.param == "sentinel":
        group: SentinelGroup = request.getfixturevalue("sentinel_group")
        with group.primary.client() as client:
            client.flushdb()
        yield lambda: sentinel_store(group)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = server.client()
    client.flushdb()
    yield lambda: RedisStore(server.url, timeout=2.0)
    client.close()


def run(new_store: Callable[[], StateStore], scenario: Scenario) -> None:
    """Each scenario in its own event loop, with a store made (and closed) inside it."""

    async def main() -> None:
        store = new_store()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_values_expire(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        await store.set("k", "v", 0.2)
        assert await store.get("k") == "v"
        await asyncio.sleep(0.3)
        assert await store.get("k") is None

    run(new_store, scenario)


def test_add_sets_only_once(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        assert await store.add("once", "a", 10) is True
        assert await store.add("once", "b", 10) is False
        assert await store.get("once") == "a"
        assert await store.delete("once") is True
        assert await store.delete("once") is False
        assert await store.add("once", "c", 10) is True

    run(new_store, scenario)


def test_an_expired_value_is_absent_for_add_and_delete(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        assert await store.add("short", "a", 0.1) is True
        await asyncio.sleep(0.2)
        assert await store.delete("short") is False
        assert await store.add("short", "b", 10) is True

    run(new_store, scenario)


def test_replace_is_compare_and_set(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        await store.set("cas", "1", 10)
        assert await store.replace("cas", "0", "2", 10) is False
        assert await store.replace("cas", "1", "2", 10) is True
        assert await store.get("cas") == "2"
        assert await store.replace("absent", "1", "2", 10) is False

    run(new_store, scenario)


def test_concurrent_adds_let_exactly_one_win(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        results = await asyncio.gather(*(store.add("race", str(i), 10) for i in range(20)))
        assert results.count(True) == 1

    run(new_store, scenario)


def test_values_without_ttl_stay_until_deleted(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        await store.set("operator", "x", None)
        assert await store.replace("operator", "x", "y", None) is True
        assert await store.get("operator") == "y"
        assert await store.delete("operator") is True

    run(new_store, scenario)


def test_token_bucket_allows_the_burst_then_refills(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        now = 1000.0
        assert [await store.take("b", 3, now) for _ in range(3)] == [0.0, 0.0, 0.0]
        wait = await store.take("b", 3, now)
        assert 19.9 < wait <= 20.0  # 3 per minute: one token every 20 s
        assert await store.take("b", 3, now + 20.0) == 0.0
        assert await store.take("other", 3, now) == 0.0  # buckets are per key

    run(new_store, scenario)


def test_counters_add_up_and_keep_their_first_ttl(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        assert await store.increment("spent", 40, 0.3) == 40
        await asyncio.sleep(0.15)
        assert await store.increment("spent", 2, 10) == 42  # the TTL stays the first one's
        assert await store.get("spent") == "42"
        await asyncio.sleep(0.25)
        assert await store.get("spent") is None
        assert await store.increment("spent", 1, 10) == 1

    run(new_store, scenario)


def test_take_unless_spent_reads_the_counter_then_takes(new_store) -> None:
    """The gateway's budget check: a spent counter takes nothing from the bucket."""
    async def scenario(store: StateStore) -> None:
        now = 1000.0
        assert await store.take_unless_spent("rpm", 2, "day", 100, now) == (0.0, 0)
        await store.increment("day", 60, 60)
        assert await store.take_unless_spent("rpm", 2, "day", 100, now) == (0.0, 60)
        wait, used = await store.take_unless_spent("rpm", 2, "day", 100, now)  # the bucket is empty
        assert 29.9 < wait <= 30.0 and used == 60
        await store.increment("day", 40, 60)
        assert await store.take_unless_spent("rpm", 2, "day", 100, now + 30) == (0.0, 100)  # spent: nothing taken
        assert await store.take_unless_spent("rpm", 2, "day", 100, now + 30) == (0.0, 100)
        assert await store.take_unless_spent("rpm", 2, "day", 0, now + 30) == (0.0, 0)  # no limit: the refilled token
        assert (await store.take_unless_spent("rpm", 2, "day", 0, now + 30))[0] > 0
        assert await store.take_unless_spent("other", 0, "day", 1000, now) == (0.0, 100)  # no bucket

    run(new_store, scenario)


def test_ping(new_store) -> None:
    async def scenario(store: StateStore) -> None:
        assert await store.ping() is True

    run(new_store, scenario)


# --- Redis specifics ---------------------------------------------------------------------


def test_every_key_written_for_a_request_expires(redis_server: RedisServer) -> None:
    """Nothing a request writes grows without bound: each key has a TTL in Redis."""
    client = redis_server.client()
    client.flushdb()

    async def scenario(store: StateStore) -> None:
        await store.set("a", "1", 30)
        await store.add("b", "1", 30)
        await store.set("c", "0", 30)
        await store.replace("c", "0", "1", 30)
        await store.take("bucket", 10, time.time())
        await store.increment("counter", 1, 30)
        await store.take_unless_spent("bucket2", 10, "counter", 100, time.time())

    run(lambda: RedisStore(redis_server.url, timeout=2.0), scenario)
    keys = client.keys("chit:*")
    assert sorted(keys) == ["chit:a", "chit:b", "chit:bucket", "chit:bucket2", "chit:c", "chit:counter"]
    assert all(0 < client.pttl(key) <= 60_000 for key in keys)
    client.close()


def test_unreachable_redis_is_state_unavailable_within_the_timeout() -> None:
    async def scenario(store: StateStore) -> None:
        started = time.monotonic()
        for operation in (store.get("k"), store.add("k", "v", 1), store.take("b", 1, 0.0)):
            with pytest.raises(StateUnavailable):
                await operation
        assert time.monotonic() - started < 3.0

    run(lambda: RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3), scenario)


def test_redis_that_stops_answering_times_out_then_recovers(tmp_path) -> None:
    server = RedisServer(tmp_path).start()

    async def scenario(store: StateStore) -> None:
        await store.set("k", "v", 30)
        server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await store.get("k")
            assert time.monotonic() - started < 2.0
        finally:
            server.thaw()
        assert await store.get("k") == "v"
        # Killed and started again on the same port: the next operation reconnects.
        server.kill()
        with pytest.raises(StateUnavailable):
            await store.get("k")
        server.start()
        assert await store.get("k") is None  # in memory only: the restart forgot it
        assert await store.add("k", "w", 30) is True

    try:
        run(lambda: RedisStore(server.url, timeout=0.3), scenario)
    finally:
        server.stop()


# --- Redis Sentinel ------------------------------------------------------------------------


def test_through_sentinel_writes_reach_the_replica_before_they_are_acknowledged(sentinel_group: SentinelGroup) -> None:
    async def scenario(store: StateStore) -> None:
        await store.set("acknowledged", "1", 30)
        await store.add("bound", "nonce-hash", 30)

    run(lambda: sentinel_store(sentinel_group), scenario)
    # Read from the replica itself: what chit acknowledged is there already.
    with sentinel_group.replica.client() as replica:
        assert replica.get("chit:acknowledged") == "1" and replica.get("chit:bound") == "nonce-hash"


def test_a_write_no_replica_acknowledges_is_state_unavailable(sentinel_group: SentinelGroup) -> None:
    """WAIT: with the replica frozen the primary has the write, but chit must not call it
    acknowledged (it would not survive a failover); reads still work; then it does again."""

    async def scenario(store: StateStore) -> None:
        await store.set("before", "1", 30)
        sentinel_group.replica.freeze()
        try:
            started = time.monotonic()
            for write in (store.set("k", "v", 30), store.add("a", "v", 30), store.replace("before", "1", "2", 30), store.delete("before")):
                with pytest.raises(StateUnavailable, match="acknowledged by 0 of 1 replicas"):
                    await write
            assert time.monotonic() - started < 4 * 0.6  # each waits at most half the timeout
            assert await store.get("k") == "v"  # on the primary, not acknowledged
            assert await store.take("bucket", 10, time.time()) == 0.0  # rate limits need no replica
        finally:
            sentinel_group.replica.thaw()
        await store.set("after", "1", 30)

    run(lambda: sentinel_store(sentinel_group, timeout=0.6), scenario)


def test_without_wait_for_replicas_a_write_is_acknowledged_by_the_primary_alone(sentinel_group: SentinelGroup) -> None:
    async def scenario(store: StateStore) -> None:
        sentinel_group.replica.freeze()
        try:
            await store.set("primary-only", "1", 30)
        finally:
            sentinel_group.replica.thaw()

    run(lambda: sentinel_store(sentinel_group, wait_for_replicas=0, timeout=0.6), scenario)


def test_a_wrong_password_is_state_unavailable_and_never_in_the_message(sentinel_group: SentinelGroup) -> None:
    async def scenario(store: StateStore) -> None:
        with pytest.raises(StateUnavailable) as refused:
            await store.get("k")
        assert "wrong-password" not in str(refused.value) and PASSWORD not in str(refused.value)

    run(lambda: sentinel_store(sentinel_group, password="wrong-password", timeout=0.5), scenario)


def test_unreachable_sentinels_are_state_unavailable() -> None:
    sentinel = Sentinel(addresses=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], service=SERVICE)

    async def scenario(store: StateStore) -> None:
        with pytest.raises(StateUnavailable, match="no sentinel names a reachable primary"):
            await store.ping()

    run(lambda: RedisStore(None, 0.3, sentinel=sentinel), scenario)


def test_passwords_come_from_files(sentinel_group: SentinelGroup, tmp_path) -> None:
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")  # as an editor or `kubectl create secret --from-file` leaves it
    settings = State.model_validate(
        {
            "backend": "redis",
            "sentinel": {"addresses": sentinel_group.addresses, "service": SERVICE, "password_file": "redis-password"},
            "password_file": "redis-password",
            "wait_for_replicas": 1,
        },
        context={"base": tmp_path},
    )

    async def scenario(store: StateStore) -> None:
        assert await store.ping() is True
        await store.set("from-files", "1", 30)

    run(lambda: build_state_store(settings), scenario)
    (tmp_path / "redis-password").write_text("")
    with pytest.raises(ValueError, match="state.password_file .*redis-password: the file is empty"):
        build_state_store(settings)
