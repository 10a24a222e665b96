"""Shared state behind one small interface: instance nonce bindings, single-use
token hashes, revocations, rate-limit buckets and the gateway's budgets.

Every value written on behalf of a request has a TTL, so nothing grows without
bound; `ttl=None` (kept until deleted) is only for what an operator writes
(`chit revoke --subject`). A backend that cannot answer raises
`StateUnavailable`; the exchange then fails closed (503).

Backends: `memory` (one process; the default) and `redis` (shared by every
worker and replica): one Redis named by `redis_url`, or the primary that Redis
Sentinel names (`state.sentinel`), followed across failovers. With
`wait_for_replicas`, a write that must survive a failover is acknowledged only
once that many replicas have it (Redis WAIT); otherwise it fails closed.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Any, Callable, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from chit import metrics
from chit.section import FilePath, Milliseconds, Section

log = logging.getLogger("chit.state")


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for IPv6) as (host, port); ValueError otherwise."""
    parts = urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0 or parts.username or parts.password or parts.path:
        raise ValueError(f"{value!r} is not host:port")
    return parts.hostname, port


class Sentinel(Section):
    """`state.sentinel`: Redis Sentinel names the current primary of `service`."""

    addresses: Annotated[list[str], Field(min_length=1)]  # host:port of every sentinel
    service: Annotated[str, Field(min_length=1)]  # the name in the sentinels' `sentinel monitor NAME …`
    password_file: FilePath | None = None  # the sentinels' own password (their `requirepass`), if set

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_address(address)
        return value


class State(Section):
    """The `state` section of chit's configuration."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # redis://[user:password@]host:port/db, or rediss:// for TLS
    sentinel: Sentinel | None = None  # instead of redis_url: the primary Sentinel names
    password_file: FilePath | None = None  # Redis's password (AUTH), kept out of the file; read at start
    # Writes that must survive a failover (revocations, nonce bindings, single-use
    # tokens) are acknowledged once this many replicas have them (Redis WAIT).
    wait_for_replicas: Annotated[int, Field(ge=0, le=16)] = 0
    timeout_ms: Milliseconds = 500  # connect, and each command

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_url(self) -> State:
        if self.redis_url and self.sentinel:
            raise ValueError("set either redis_url or sentinel, not both")
        if self.backend == "redis" and not (self.redis_url or self.sentinel):
            raise ValueError("backend redis needs redis_url (or sentinel)")
        if self.backend == "memory" and (self.sentinel or self.wait_for_replicas or self.password_file):
            raise ValueError("sentinel, password_file and wait_for_replicas need backend: redis")
        if self.password_file and self.redis_url and urlsplit(self.redis_url).password:
            raise ValueError("the password is given twice: in redis_url and in password_file (keep the file)")
        return self

    def where(self) -> str:
        """Where the state lives, for messages: never a password."""
        if self.sentinel is not None:
            return f"redis primary {self.sentinel.service!r} named by sentinels {', '.join(self.sentinel.addresses)}"
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url)
            netloc = parts.netloc.rpartition("@")[2]
            return f"redis {parts.scheme}://{netloc}{parts.path}"
        return "memory"


class StateUnavailable(Exception):
    """The state store did not answer; a check that needs it cannot be made."""


class StateStore(ABC):
    """Keys are namespaced by their users ("iid:…", "revoked:jti:…", "rate:client:…")."""

    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl: float | None) -> None: ...

    @abstractmethod
    async def add(self, key: str, value: str, ttl: float | None) -> bool:
        """Set `key` only if it is absent; True if this call set it."""

    @abstractmethod
    async def replace(self, key: str, expected: str, value: str, ttl: float | None) -> bool:
        """Set `key` to `value` only if it currently holds `expected` (compare-and-set)."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed."""

    @abstractmethod
    async def take(self, key: str, per_minute: int, now: float) -> float:
        """Take one token from a bucket refilled at `per_minute` per minute with a burst
        of `per_minute`. Returns 0.0 when taken, else the seconds until one is available."""

    @abstractmethod
    async def take_unless_spent(self, bucket: str, per_minute: int, counter: str, limit: int, now: float) -> tuple[float, int]:
        """A budget check in one step (one round trip): read the counter at `counter`
        (absent: 0); if it is under `limit` (or `limit` is 0), take one token from the
        bucket as `take` does (none with `per_minute` 0). Returns the seconds until the
        bucket has a token (0.0: taken, or no bucket) and the counter's value; a counter
        at its limit takes nothing."""

    @abstractmethod
    async def increment(self, key: str, amount: int, ttl: float) -> int:
        """Add `amount` to the counter at `key` (absent: 0) and return its new value; a new
        counter lives `ttl` seconds, and adding to it does not extend that."""

    @abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:
        return None


def _expiry(now: float, ttl: float | None) -> float:
    return math.inf if ttl is None else now + ttl


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

    async def set(self, key: str, value: str, ttl: float | None) -> None:
        now = time.time()
        self._tick(now)
        self._values[key] = (value, _expiry(now, ttl))

    async def add(self, key: str, value: str, ttl: float | None) -> bool:
        now = time.time()
        self._tick(now)
        if self._live(key, now) is not None:
            return False
        self._values[key] = (value, _expiry(now, ttl))
        return True

    async def replace(self, key: str, expected: str, value: str, ttl: float | None) -> bool:
        now = time.time()
        self._tick(now)
        if self._live(key, now) != expected:
            return False
        self._values[key] = (value, _expiry(now, ttl))
        return True

    async def delete(self, key: str) -> bool:
        live = self._live(key, time.time()) is not None
        self._values.pop(key, None)
        return live

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

    async def take_unless_spent(self, bucket: str, per_minute: int, counter: str, limit: int, now: float) -> tuple[float, int]:
        used = int(self._live(counter, time.time()) or 0) if limit else 0
        if (limit and used >= limit) or not per_minute:
            return 0.0, used
        return await self.take(bucket, per_minute, now), used

    async def increment(self, key: str, amount: int, ttl: float) -> int:
        now = time.time()
        self._tick(now)
        current = self._live(key, now)
        expiry = self._values[key][1] if current is not None else _expiry(now, ttl)
        value = (0 if current is None else int(current)) + amount
        self._values[key] = (str(value), expiry)
        return value

    async def ping(self) -> bool:
        return True


class RedisStore(StateStore):
    """State in Redis (`state.backend: redis`), shared by every worker and replica.

    Every operation is atomic on the server: add is SET NX PX, compare-and-set
    and the token bucket are Lua scripts. Every key carries a TTL (PX) unless
    an operator wrote it. Connections time out after `state.timeout_ms`; a
    connection found broken (Redis restarted) is retried once, then the
    operation fails with `StateUnavailable`, and the next one tries again, so
    service resumes without a restart when Redis returns.
    """

    PREFIX = "chit:"
    POOL_SIZE = 64  # connections per process; a request waits at most the timeout for one

    # KEYS[1]; ARGV: expected, new value, TTL in ms ("" for none).
    _REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""
    # KEYS[1]: a hash {tokens, updated}; ARGV: per minute, now (s). Returns "0" when a
    # token was taken, else the seconds until one is available (a string: Lua numbers
    # would come back as integers). A bucket idle for a minute is full: it expires then.
    _TAKE_FROM_BUCKET = """
local rate = burst / 60.0
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(math.max(now, updated)))
redis.call('PEXPIRE', KEYS[1], 60000)
"""
    _TAKE = "local burst = tonumber(ARGV[1])\nlocal now = tonumber(ARGV[2])\n" + _TAKE_FROM_BUCKET + "return tostring(wait)\n"
    # KEYS: bucket, counter; ARGV: per minute (0: no bucket), the counter's limit (0: none), now (s).
    # Returns {wait, the counter's value}, as strings.
    _TAKE_UNLESS_SPENT = """
local burst = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local used = 0
if limit > 0 then used = tonumber(redis.call('GET', KEYS[2]) or '0') or 0 end
if (limit > 0 and used >= limit) or burst == 0 then return {'0', tostring(used)} end
""" + _TAKE_FROM_BUCKET + "return {tostring(wait), tostring(used)}\n"

    # KEYS[1]; ARGV: amount, TTL in ms. A new counter gets the TTL; an existing one keeps its own.
    _INCREMENT = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

    def __init__(
        self,
        url: str | None,
        timeout: float,
        *,
        sentinel: Sentinel | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        wait_for_replicas: int = 0,
        pool_size: int = POOL_SIZE,
    ):
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel as SentinelClient
        from redis.asyncio.sentinel import SentinelConnectionPool
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        options: dict[str, Any] = dict(
            max_connections=pool_size,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
            decode_responses=True,
        )
        if password is not None:
            options["password"] = password
        if sentinel is None:
            assert url is not None
            self._pool = BlockingConnectionPool.from_url(url, **options)
            self._sentinels: list[Redis] = []
        else:

            class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
                """Sentinel's pool, waiting (up to the timeout) for a free connection like
                the single-server one instead of failing at once under load."""

            # Every new connection asks the sentinels for the current primary, so after
            # a failover the next connection reaches the promoted replica.
            sentinels = SentinelClient(
                [parse_address(address) for address in sentinel.addresses],
                sentinel_kwargs=dict(
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    # One attempt per sentinel: the next sentinel is the retry (redis-py's default
                    # backs off for seconds, far beyond the time budget of a request).
                    retry=Retry(NoBackoff(), 0),
                    decode_responses=True,
                    password=sentinel_password,
                ),
            )
            self._pool = BlockingSentinelPool(sentinel.service, sentinels, **options)
            self._sentinels = sentinels.sentinels
        self._redis = Redis(connection_pool=self._pool)
        self._replace = self._redis.register_script(self._REPLACE)
        self._take = self._redis.register_script(self._TAKE)
        self._increment = self._redis.register_script(self._INCREMENT)
        self._take_unless_spent = self._redis.register_script(self._TAKE_UNLESS_SPENT)
        self._failing = False
        self._wait_for_replicas = wait_for_replicas
        # WAIT's own budget leaves the rest of the command timeout for the write itself.
        self._wait_ms = max(1, int(timeout * 1000) // 2)

    async def _call(self, operation: str, awaitable):  # type: ignore[no-untyped-def]
        from redis.asyncio.sentinel import MasterNotFoundError
        from redis.exceptions import RedisError

        try:
            result = await awaitable
        except (RedisError, OSError) as error:
            metrics.STATE_ERRORS.labels(operation).inc()
            # redis-py's own message would list every sentinel client's settings.
            message = "no sentinel names a reachable primary" if isinstance(error, MasterNotFoundError) else str(error)
            if not self._failing:
                log.error("state store (redis) unavailable: %s", message)
            self._failing = True
            raise StateUnavailable(f"redis: {error.__class__.__name__}: {message}") from None
        if self._failing:
            log.warning("state store (redis) answers again")
            self._failing = False
        return result

    @staticmethod
    def _px(ttl: float | None) -> int | None:
        return None if ttl is None else max(1, math.ceil(ttl * 1000))

    async def _durable(self, operation: str, write: Callable[[Any], Any]) -> Any:
        """A write that must survive a failover: with `wait_for_replicas`, the write and
        WAIT go down one connection (WAIT counts that connection's writes), and fewer
        replicas than asked within the budget is StateUnavailable: never acknowledged.

        redis.io, WAIT: "if a given write is transferred to one or more replicas, it is
        more likely (but not guaranteed) that if the master fails, we'll be able to
        promote, during a failover, a replica that received the write".
        """
        if not self._wait_for_replicas:
            return await self._call(operation, write(self._redis))

        async def write_and_wait() -> tuple[Any, int]:
            async with self._redis.pipeline(transaction=False) as pipeline:
                await write(pipeline)
                pipeline.wait(self._wait_for_replicas, self._wait_ms)
                result, acknowledged = await pipeline.execute()
            return result, acknowledged

        result, acknowledged = await self._call(operation, write_and_wait())
        if acknowledged < self._wait_for_replicas:
            metrics.STATE_ERRORS.labels(operation).inc()
            raise StateUnavailable(
                f"redis: written on the primary but acknowledged by {acknowledged} of {self._wait_for_replicas} replicas "
                f"within {self._wait_ms} ms (state.wait_for_replicas)"
            )
        return result

    async def get(self, key: str) -> str | None:
        return await self._call("get", self._redis.get(self.PREFIX + key))

    async def set(self, key: str, value: str, ttl: float | None) -> None:
        await self._durable("set", lambda client: client.set(self.PREFIX + key, value, px=self._px(ttl)))

    async def add(self, key: str, value: str, ttl: float | None) -> bool:
        return bool(await self._durable("add", lambda client: client.set(self.PREFIX + key, value, px=self._px(ttl), nx=True)))

    async def replace(self, key: str, expected: str, value: str, ttl: float | None) -> bool:
        px = self._px(ttl)
        arguments = [expected, value, "" if px is None else px]
        return await self._durable("replace", lambda client: self._replace(keys=[self.PREFIX + key], args=arguments, client=client)) == 1

    async def delete(self, key: str) -> bool:
        return await self._durable("delete", lambda client: client.delete(self.PREFIX + key)) == 1

    async def take(self, key: str, per_minute: int, now: float) -> float:
        return float(await self._call("take", self._take(keys=[self.PREFIX + key], args=[per_minute, repr(now)])))

    async def take_unless_spent(self, bucket: str, per_minute: int, counter: str, limit: int, now: float) -> tuple[float, int]:
        result = self._take_unless_spent(keys=[self.PREFIX + bucket, self.PREFIX + counter], args=[per_minute, limit, repr(now)])
        wait, used = await self._call("take_unless_spent", result)
        return float(wait), int(used)

    async def increment(self, key: str, amount: int, ttl: float) -> int:
        result = self._increment(keys=[self.PREFIX + key], args=[amount, self._px(ttl)])
        return int(await self._call("increment", result))

    async def ping(self) -> bool:
        return bool(await self._call("ping", self._redis.ping()))

    async def replicas(self) -> int:
        """The primary's replicas online now (`chit doctor` holds them to `wait_for_replicas`)."""
        info = await self._call("info", self._redis.info("replication"))
        return sum(1 for name, value in info.items() if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
        for sentinel in self._sentinels:
            await sentinel.aclose()


def read_password(path: Path, key: str) -> str:
    """A password from its file (a mounted Secret), without the trailing newline editors add."""
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{key} {path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    if not password:
        raise ValueError(f"{key} {path}: the file is empty")
    return password


def build_state_store(settings: State, pool_size: int = RedisStore.POOL_SIZE) -> StateStore:
    """The configured store; ValueError (naming the key) when a password file cannot be read."""
    if settings.backend == "memory":
        return MemoryStore()
    password = None if settings.password_file is None else read_password(settings.password_file, "state.password_file")
    sentinel_password = None
    if settings.sentinel is not None and settings.sentinel.password_file is not None:
        sentinel_password = read_password(settings.sentinel.password_file, "state.sentinel.password_file")
    return RedisStore(
        settings.redis_url,
        settings.timeout_ms / 1000,
        sentinel=settings.sentinel,
        password=password,
        sentinel_password=sentinel_password,
        wait_for_replicas=settings.wait_for_replicas,
        pool_size=pool_size,
    )
