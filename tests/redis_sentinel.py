"""A Redis Sentinel deployment on 127.0.0.1: Debian's `redis-server` as a primary
and its replica, and three `redis-sentinel` processes watching them.

The sentinels decide quickly (`down-after-milliseconds` 1000), so a killed
primary is replaced within a few seconds; `wait_for_failover()` returns the
moment the sentinels name the promoted replica.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.factories import RedisServer, free_port

SERVICE = "chit"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class SentinelProcess:
    """One `redis-sentinel` with its own (rewritable) configuration file."""

    def __init__(self, directory: Path, primary_port: int, password: str | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if password is not None:
            # The sentinels' own password, and the one they use to reach the data nodes.
            lines += [f"requirepass {password}", f"sentinel auth-pass {SERVICE} {password}", f"sentinel sentinel-pass {password}"]
        self.config = directory / "sentinel.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SentinelProcess:
        log = open(self.directory / "sentinel.log", "ab")
        self.process = subprocess.Popen(["redis-sentinel", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, password=self.password, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class SentinelGroup:
    """A primary, one replica and three sentinels; `password` protects every one of them."""

    def __init__(self, directory: Path, password: str | None = None):
        self.directory = directory
        self.password = password
        self.auth = ("--requirepass", password, "--masterauth", password) if password else ()
        self.primary = RedisServer(directory / "node-a", *self.auth)
        self.replica = RedisServer(directory / "node-b", *self.auth, "--replicaof", "127.0.0.1", str(self.primary.port))
        self.nodes = [self.primary, self.replica]
        self.sentinels = [SentinelProcess(directory / f"sentinel-{i}", self.primary.port, password) for i in range(3)]

    @property
    def addresses(self) -> list[str]:
        return [sentinel.address for sentinel in self.sentinels]

    def start(self, timeout: float = 30) -> SentinelGroup:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until_watched(timeout)
        return self

    def wait_until_watched(self, timeout: float) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the
        two other sentinels (they find each other through the primary every 2 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                synced = self.replica_in_sync(self.primary)
                watched = all(self._sees_everyone(sentinel) for sentinel in self.sentinels)
            except Exception:  # noqa: BLE001 — a process still starting
                synced = watched = False
            if synced and watched:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the sentinels did not settle within {timeout} s (see {self.directory})")

    @staticmethod
    def _sees_everyone(sentinel: SentinelProcess) -> bool:
        with sentinel.client() as client:
            state = client.sentinel_master(SERVICE)
        return int(state["num-other-sentinels"]) == 2 and int(state["num-slaves"]) >= 1

    @staticmethod
    def replica_in_sync(primary: RedisServer) -> bool:
        """`primary` has a replica online (its initial synchronisation done)."""
        with primary.client(timeout=1) as client:
            info = client.info("replication")
        return any(v.get("state") == "online" for k, v in info.items() if k.startswith("slave") and isinstance(v, dict))

    def restart_as_replica(self, node: RedisServer) -> RedisServer:
        """Start a node that died again, on its port, as the replica of the primary the
        sentinels name: what an operator's start script does (a node without persistence
        must never come back as a primary, empty)."""
        primary = self.primary_port()
        replacement = RedisServer(node.directory, *self.auth, "--replicaof", "127.0.0.1", str(primary), port=node.port)
        self.nodes[self.nodes.index(node)] = replacement
        return replacement.start()

    def primary_port(self) -> int:
        """The primary's port as the sentinels name it now."""
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def node_on(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def wait_for_failover(self, old_port: int, timeout: float = 30) -> float:
        """Wait until every sentinel names another primary than `old_port`; the moment, on time.monotonic()."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = set()
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    ports.add(int(client.sentinel_get_master_addr_by_name(SERVICE)[1]))
            if old_port not in ports and len(ports) == 1:
                return time.monotonic()
            time.sleep(0.02)
        raise AssertionError(f"no failover within {timeout} s")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop()
