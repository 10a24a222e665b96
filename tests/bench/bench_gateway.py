"""The gateway's overhead: calls through `chit gateway` against calls straight to the same
upstream stand-in, in the same run, then a soak for the gateway's memory.

    python -m tests.bench.bench_gateway [--rate 500] [--duration 15] [--rounds 2] [--soak 120] [--connections 8] [--workers 1]
                                        [--gateway-state redis|memory]

Starts a redis-server (Debian's package: the gateway's revocations and budgets
live there, as deployed), chit (for the JWKS and one real token), the providers'
stand-in (`tests/gateway/upstreams.py`, no delay between events) and the gateway
with one OpenAI route whose budgets are on (requests per minute and tokens per
day, set high enough never to trip: every call pays for both checks and the
charge). Then, from a separate load process (tests/bench/loadgen.py's
connections, an open loop at `--rate` requests/s):

1. `--rounds` times, alternating: `--duration` s straight to the stand-in
   (`POST /v1/chat/completions` with the provider key), then `--duration` s
   through the gateway (`POST /openai/v1/chat/completions` with the chit token);
2. the most each can do: a closed loop over `--connections` connections;
3. a soak through the gateway at `--rate` for `--soak` s, sampling the
   gateway's resident memory (RSS, all its processes) every 5 s.

Prints p50/p99 of each, the overhead (gateway minus direct, same round), the
throughputs, and the RSS samples. Every call through the gateway verifies the
token, checks revocations, both budgets, injects the key, forwards, reads the
usage and charges it: the whole path, one upstream round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.loadgen import Connection, percentile
from tests.bench.soak import process_tree, rss_mb
from tests.factories import ROOT, ChitServer, ClusterIssuer, DocumentServer, RedisServer, copy_policy
from tests.gateway.servers import GATEWAY_AUDIENCE, KEYS, GatewayServer, UpstreamStandIn, route

ISSUER = "https://bench.k8s.chit.test"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}).encode()


# --- the load process --------------------------------------------------------------------


async def drive(url: str, authorization: str, rate: float, duration: float, connections: int) -> dict:
    """An open loop at `rate` (or a closed loop over `connections` when rate is 0)."""
    from urllib.parse import urlsplit

    target = urlsplit(url)
    payload = (f"POST {target.path} HTTP/1.1\r\nHost: {target.hostname}:{target.port}\r\nContent-Type: application/json\r\n"
               f"Authorization: {authorization}\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    async def send(connection: Connection) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            status = await connection.request(payload)
        except (OSError, ValueError):
            errors += 1
            connection.transport = None
            return
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1

    for _ in range(20):  # warm-up: connections open, caches filled
        await send(Connection(target.hostname or "127.0.0.1", target.port or 80))
    latencies.clear()
    statuses.clear()
    started = time.perf_counter()
    deadline = started + duration
    if rate:
        free = [Connection(target.hostname or "127.0.0.1", target.port or 80) for _ in range(connections)]
        pending: set[asyncio.Task] = set()

        async def one(connection: Connection) -> None:
            await send(connection)
            free.append(connection)

        next_at = time.perf_counter()
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at += 1.0 / rate
            connection = free.pop() if free else Connection(target.hostname or "127.0.0.1", target.port or 80)
            task = asyncio.ensure_future(one(connection))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    else:
        async def closed() -> None:
            connection = Connection(target.hostname or "127.0.0.1", target.port or 80)
            while time.perf_counter() < deadline:
                await send(connection)

        await asyncio.gather(*(closed() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies), "errors": errors, "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3), "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def load(url: str, authorization: str, rate: float, duration: float, connections: int) -> dict:
    """One load run in its own process (the load generator's CPU is not the servers')."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_gateway", "--load", url, "--authorization", authorization,
         "--rate", str(rate), "--duration", str(duration), "--connections", str(connections)],
        capture_output=True, text=True, cwd=ROOT, timeout=duration + 120,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


# --- the benchmark -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak", type=float, default=120.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="the gateway's worker processes")
    parser.add_argument("--gateway-state", choices=("redis", "memory"), default="redis",
                        help="the gateway's state store (memory: what Redis adds, measured apart; one worker)")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the load process
    parser.add_argument("--authorization", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(drive(args.load, args.authorization, args.rate, args.duration, args.connections))))
        return

    directory = Path(tempfile.mkdtemp(prefix="chit-bench-gateway-"))
    documents = DocumentServer()
    cluster = ClusterIssuer("bench", ISSUER, "ES256")
    documents.serve("/bench/jwks", cluster.jwks())
    redis = RedisServer(directory / "redis").start()
    grant = {"scope": ["llm:openai"], "audience": [GATEWAY_AUDIENCE]}
    chit = ChitServer(directory / "chit", {
        "policy": {"dir": str(copy_policy(directory / "policies", {"bindings": {"kubernetes": {"bench": {"agents": {"agent": grant}}}}}))},
        "attestors": {"kubernetes": {"clusters": [{"name": "bench", "issuer": ISSUER, "jwks_uri": documents.url("/bench/jwks"),
                                                   "audiences": ["chit"]}]}},
        "state": {"backend": "redis", "redis_url": redis.url},
    }).start()
    upstream = UpstreamStandIn(directory / "upstream", KEYS, delay=0.0)
    gateway = GatewayServer(directory / "gateway", chit.url,
                            [route("openai", upstream.url, budgets={"requests_per_minute": 10_000_000, "tokens_per_day": 10**15})],
                            state={"backend": "redis", "redis_url": redis.url} if args.gateway_state == "redis" else {"backend": "memory"},
                            workers=args.workers).start()
    try:
        token = chit.exchange(cluster.token("agents", "agent")).json()["access_token"]
        direct = (f"{upstream.url}/v1/chat/completions", f"Bearer {KEYS['openai']}")
        through = (f"{gateway.url}/openai/v1/chat/completions", f"Bearer {token}")
        assert gateway.client.post("/openai/v1/chat/completions", content=BODY, headers={"Authorization": through[1]}).status_code == 200

        print(f"open loop at {args.rate:.0f}/s, {args.duration:.0f} s per run; p50 / p99 in ms")
        print(f"{'round':>5}  {'direct p50':>10} {'p99':>7}  {'gateway p50':>11} {'p99':>7}  {'overhead p50':>12} {'p99':>7}  {'non-200':>7}")
        for number in range(1, args.rounds + 1):
            plain = load(*direct, args.rate, args.duration, args.connections)
            proxied = load(*through, args.rate, args.duration, args.connections)
            failures = sum(v for k, v in proxied["statuses"].items() if k != "200") + proxied["errors"]
            print(f"{number:>5}  {plain['p50_ms']:>10.2f} {plain['p99_ms']:>7.2f}  {proxied['p50_ms']:>11.2f} {proxied['p99_ms']:>7.2f}  "
                  f"{proxied['p50_ms'] - plain['p50_ms']:>12.2f} {proxied['p99_ms'] - plain['p99_ms']:>7.2f}  {failures:>7}"
                  f"   (achieved {plain['per_second']:.0f}/s and {proxied['per_second']:.0f}/s; {proxied['statuses']})")

        plain = load(*direct, 0, args.duration, args.connections)
        proxied = load(*through, 0, args.duration, args.connections)
        print(f"closed loop, {args.connections} connections: direct {plain['per_second']:.0f}/s (p99 {plain['p99_ms']:.2f} ms), "
              f"gateway {proxied['per_second']:.0f}/s (p99 {proxied['p99_ms']:.2f} ms)")

        if args.soak:
            assert gateway.process is not None
            samples: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(5.0):
                    samples.append(sum(rss_mb(process_tree(gateway.process.pid)).values()))  # type: ignore[union-attr]

            samples.append(sum(rss_mb(process_tree(gateway.process.pid)).values()))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                soak = load(*through, args.rate, args.soak, args.connections)
            finally:
                stop.set()
                sampler.join()
            samples.append(sum(rss_mb(process_tree(gateway.process.pid)).values()))
            print(f"soak: {soak['requests']} calls at {soak['per_second']:.0f}/s over {args.soak:.0f} s, p50 {soak['p50_ms']:.2f} ms, "
                  f"p99 {soak['p99_ms']:.2f} ms, statuses {soak['statuses']}, connection errors {soak['errors']}")
            print("gateway RSS MB every 5 s: " + " ".join(f"{s:.1f}" for s in samples))
    finally:
        for stopper in (gateway.stop, upstream.stop, chit.stop, redis.stop, documents.stop):
            try:
                stopper()
            except Exception as error:  # noqa: BLE001 — stop the others all the same
                print(f"stopping: {type(error).__name__}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
