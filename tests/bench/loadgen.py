"""A small closed-loop HTTP/1.1 load generator for chit's benchmarks.

Runs in its own process; each of `--connections` keep-alive connections sends
one request, waits for the response, sends the next. Request bodies come from
a file (one urlencoded body per line), used in order and never repeated unless
the file runs out. Prints one JSON object with the counts and latencies.

    python tests/bench/loadgen.py --url http://127.0.0.1:8400/token --bodies FILE \
        --connections 8 --duration 20 [--rate 1000]

`--rate` switches to an open loop at a fixed total request rate (soak tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from urllib.parse import urlsplit


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Connection(asyncio.Protocol):
    """One keep-alive connection; `request` resolves with the response status.

    A bare protocol (no StreamReader) keeps the generator's own cost per request
    small, so that it takes as little CPU as possible from the server it drives.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[int] | None = None
        self.closing = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.closing = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        marker = head.find(b"content-length:")
        length = int(head[marker + 15 : head.find(b"\r\n", marker) if head.find(b"\r\n", marker) > 0 else None]) if marker >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        self.closing = b"connection: close" in head
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    async def request(self, payload: bytes) -> int:
        if self.transport is None or self.closing:
            if self.transport is not None:
                self.transport.close()
            self.buffer = b""
            await self.open()
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


async def run(args: argparse.Namespace) -> dict:
    url = urlsplit(args.url)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"
    if args.bodies:
        with open(args.bodies, "rb") as file:
            bodies = [line.rstrip(b"\n") for line in file if line.strip()]
    else:
        bodies = [b""]
    method = b"POST" if args.bodies else b"GET"

    def payload(body: bytes) -> bytes:
        head = (
            f"{method.decode()} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body

    payloads = [payload(b) for b in bodies]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    next_index = 0
    reused = False
    deadline = 0.0

    def take() -> bytes:
        nonlocal next_index, reused
        if next_index >= len(payloads):
            next_index, reused = 0, True
        item = payloads[next_index]
        next_index += 1
        return item

    async def send(connection: Connection, item: bytes) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            status = await connection.request(item)
        except (OSError, ValueError):
            errors += 1
            if connection.transport is not None:
                connection.transport.close()
            connection.transport = None
            return
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1

    async def closed_loop() -> None:
        connection = Connection(host, port)
        while time.perf_counter() < deadline:
            await send(connection, take())

    async def open_loop() -> None:
        pool = [Connection(host, port) for _ in range(args.connections)]
        free = list(pool)
        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        pending: set[asyncio.Task] = set()

        async def one(connection: Connection, item: bytes) -> None:
            await send(connection, item)
            free.append(connection)

        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at += interval
            if not free:
                free.append(Connection(host, port))  # the server is behind: more connections
            task = asyncio.ensure_future(one(free.pop(), take()))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)

    # Warm-up: one request per connection, not counted.
    warm = [Connection(host, port) for _ in range(min(args.connections, 4))]
    for connection in warm:
        try:
            await connection.request(payloads[0])
        except OSError:
            pass
    started = time.perf_counter()
    deadline = started + args.duration
    if args.rate:
        await open_loop()
    else:
        await asyncio.gather(*(closed_loop() for _ in range(args.connections)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
        "bodies_reused": reused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", help="file with one urlencoded POST body per line (GET without)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s")
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
