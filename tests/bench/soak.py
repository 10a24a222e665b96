"""A fixed-rate soak of chit as it is deployed: several workers, state in Redis, rate limits on.

    python -m tests.bench.soak [--rate 500] [--duration 300] [--workers 2] [--connections 16]

Starts a redis-server (Debian's package) and `chit serve --workers N` with the
Redis backend and rate limits on (600 per subject per minute as in
deploy/base/chit.yaml; the per-client limit is on but high, since all the load
comes from one address), then drives Kubernetes exchanges at a fixed rate
(tests/bench/loadgen.py --rate: an open loop, so a slow server meets the same
arrival rate) for --duration seconds, every request with a token never sent
before. Every exchange makes two Redis round trips (the two token buckets).

Reports the achieved rate, p50/p99 latency, non-200 answers and connection
errors, and the resident memory (RSS) of every chit process (the supervisor and
its workers) when ready, at the end, and the largest seen, sampled every 5 s.
Exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.bench_exchange import ROOT, free_port, prepare, wait_ready
from tests.factories import RedisServer

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def rss_mb(pids: list[int]) -> dict[int, float]:
    sizes = {}
    for pid in pids:
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        sizes[pid] = resident * PAGE_KB / 1024
    return sizes


def role(pid: int, supervisor: int) -> str:
    if pid == supervisor:
        return "supervisor"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    # multiprocessing's resource tracker, started with the spawned workers
    return "tracker" if b"resource_tracker" in command else "worker"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="exchanges per second (default 500)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workloads", type=int, default=1000)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="chit-soak-"))
    redis = RedisServer(directory / "redis").start()
    server = None
    try:
        config_path = prepare(directory, args.workloads, int(args.rate * args.duration * 1.05) + 100, redis.url)
        config = json.loads(config_path.read_text())
        config["rate_limits"] = {"per_subject_per_minute": 600, "per_client_per_minute": 10_000_000}
        config_path.write_text(json.dumps(config))

        port = free_port()
        log = open(directory / "chit.log", "wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "chit", "serve", "--config", str(config_path), "--port", str(port), "--workers", str(args.workers)],
            cwd=directory, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
        )
        wait_ready(f"http://127.0.0.1:{port}/readyz", server)
        time.sleep(1.0)
        at_start = rss_mb(process_tree(server.pid))
        roles = {pid: role(pid, server.pid) for pid in at_start}
        largest = dict(at_start)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(5.0):
                for pid, size in rss_mb(process_tree(server.pid)).items():
                    largest[pid] = max(largest.get(pid, 0.0), size)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"soak: {args.rate:.0f} exchanges/s for {args.duration:.0f} s against {args.workers} workers (Redis state, rate limits on) …",
              file=sys.stderr, flush=True)
        load = subprocess.run(
            [sys.executable, str(ROOT / "tests/bench/loadgen.py"), "--url", f"http://127.0.0.1:{port}/token",
             "--bodies", str(directory / "bodies.txt"), "--connections", str(args.connections),
             "--duration", str(args.duration), "--rate", str(args.rate)],
            capture_output=True, check=True,
        )
        done.set()
        at_end = rss_mb(process_tree(server.pid))
        result = json.loads(load.stdout)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=40)
        redis.stop()

    non_ok = {status: count for status, count in result["statuses"].items() if status != "200"}
    print(f"\nchit soak: {args.workers} workers, Redis state, rate limits on; {args.rate:.0f}/s offered for {result['seconds']:.0f} s")
    print(f"  exchanges: {result['requests']} ({result['per_second']:.1f}/s), p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    print(f"  non-200: {sum(non_ok.values())} {non_ok or ''}; connection errors: {result['errors']}; bodies reused: {result['bodies_reused']}")
    print("  RSS MB      ready      end  largest")
    for pid in sorted(set(at_start) | set(at_end)):
        print(f"  {roles.get(pid, 'new'):10} {at_start.get(pid, 0):6.1f}   {at_end.get(pid, 0):6.1f}   {largest.get(pid, 0):6.1f}   (pid {pid})")
    print(f"  total      {sum(at_start.values()):6.1f}   {sum(at_end.values()):6.1f}")
    shutil.rmtree(directory, ignore_errors=True)
    raise SystemExit(1 if non_ok or result["errors"] else 0)


if __name__ == "__main__":
    main()
