"""Exchange throughput and latency, against two floors measured in the same run.

    python -m tests.bench.bench_exchange [--duration 20] [--connections 8] [--workloads 1000]

Starts, one after the other, with 1 and with 2 workers: the trivial Starlette
endpoint, chit's pipeline with a constant decision (verify + sign, no
policy), and chit itself with the shipped policy over `--workloads` bindings
(4 clusters). A separate load process drives Kubernetes exchanges over
keep-alive connections; every request carries a token never sent before (a
distinct pod of one of the workloads), so no cache can serve a repeat.

chit keeps its state in a redis-server the benchmark starts (Debian's package):
several workers need shared state (`chit serve` refuses the memory backend
with more than one). Rate limits are off, as by default, so an exchange makes
no Redis round trip of its own (revoked subjects are re-read at most twice a
second per worker); tests/bench/soak.py measures them on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.factories import RedisServer

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = 4
SERVICE_ACCOUNTS_PER_NAMESPACE = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workloads(count: int) -> list[tuple[str, str, str]]:
    namespaces = max(1, count // (CLUSTERS * SERVICE_ACCOUNTS_PER_NAMESPACE))
    result = []
    for c in range(CLUSTERS):
        for n in range(namespaces):
            for s in range(SERVICE_ACCOUNTS_PER_NAMESPACE):
                result.append((f"cluster{c}", f"team{n:03d}", f"agent{s}"))
    return result[:count]


_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def _mint_batch(job: tuple[dict[str, bytes], list[tuple[str, str, str]], int]) -> list[bytes]:
    pems, batch, now = job
    keys = {name: serialization.load_pem_private_key(pem, None) for name, pem in pems.items()}
    bodies = []
    for cluster, namespace, service_account in batch:
        claims = {
            "iss": f"https://{cluster}.bench.invalid",
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": ["chit"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": f"{service_account}-{uuid.uuid4().hex[:10]}", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                "warnafter": now + 3000,
            },
        }
        token = jwt.encode(claims, keys[cluster], algorithm="RS256", headers={"kid": f"{cluster}-key"})
        body = urlencode(
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "subject_token": token,
                "scope": "read:db",
            }
        )
        bodies.append(body.encode())
    return bodies


def prepare(directory: Path, workload_count: int, requests: int, redis_url: str) -> Path:
    """Cluster keys, policy with one binding per workload, config, and the request bodies."""
    population = workloads(workload_count)
    pems: dict[str, bytes] = {}
    clusters_config = []
    for c in range(CLUSTERS):
        name = f"cluster{c}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pems[name] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk.update(kid=f"{name}-key", alg="RS256", use="sig")
        (directory / f"{name}.jwks.json").write_text(json.dumps({"keys": [jwk]}))
        clusters_config.append(
            {"name": name, "issuer": f"https://{name}.bench.invalid", "jwks_file": f"{name}.jwks.json", "audiences": ["chit"], "region": "us-east-1"}
        )

    bindings: dict = {}
    for cluster, namespace, service_account in population:
        bindings.setdefault(cluster, {}).setdefault(namespace, {})[service_account] = {
            "scope": ["read:db", "write:db"],
            "audience": ["https://db.internal"],
            "ttl": 900,
            "regions": ["us-east-1", "eu-west-1"],
        }
    policy_dir = directory / "policies"
    shutil.copytree(ROOT / "policies", policy_dir, ignore=shutil.ignore_patterns("data.json", "*_test.rego", "*.md"))
    (policy_dir / "data.json").write_text(json.dumps({"bindings": {"kubernetes": bindings}}))

    config = {
        "issuer": "http://127.0.0.1:8400",
        "signing": {"keys_dir": "keys"},
        "policy": {"dir": "policies"},
        "audit": {"sink": "audit.log"},
        "attestors": {"kubernetes": {"clusters": clusters_config}},
        "state": {"backend": "redis", "redis_url": redis_url},
    }
    config_path = directory / "chit.yaml"
    config_path.write_text(json.dumps(config))

    now = int(time.time())
    order = [population[i % len(population)] for i in range(requests)]
    chunk = 2000
    jobs = [(pems, order[i : i + chunk], now) for i in range(0, len(order), chunk)]
    print(f"minting {requests} distinct subject tokens for {len(population)} workloads …", file=sys.stderr, flush=True)
    started = time.time()
    with multiprocessing.Pool(os.cpu_count() or 2) as pool:
        with (directory / "bodies.txt").open("wb") as out:
            for done, batch in enumerate(pool.imap(_mint_batch, jobs), 1):
                out.write(b"\n".join(batch) + b"\n")
                if done % 10 == 0:
                    print(f"  {done * chunk}/{requests} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    return config_path


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def measure(label: str, command: list[str], ready_path: str, port: int, args: argparse.Namespace, directory: Path, bodies: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(directory / f"{label.replace(' ', '_')}.log", "wb")
    server = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready_path}", server)
        load = subprocess.run(
            [
                sys.executable,
                str(ROOT / "tests/bench/loadgen.py"),
                "--url", f"http://127.0.0.1:{port}/token",
                "--bodies", str(bodies),
                "--connections", str(args.connections),
                "--duration", str(args.duration),
            ],
            capture_output=True,
            check=True,
        )
        return json.loads(load.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    parser.add_argument("--requests", type=int, default=0, help="distinct tokens to mint (default: enough for 4,500/s)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    requests = args.requests or int(4500 * args.duration)

    directory = Path(tempfile.mkdtemp(prefix="chit-bench-"))
    redis = RedisServer(directory / "redis").start()
    try:
        rows = run_all(args, directory, redis.url, worker_counts, requests)
    finally:
        redis.stop()
    report(args, rows)
    if args.keep:
        print(f"\nworking directory kept: {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


def run_all(args: argparse.Namespace, directory: Path, redis_url: str, worker_counts: list[int], requests: int) -> list:
    config = prepare(directory, args.workloads, requests, redis_url)
    bodies = directory / "bodies.txt"
    rows = []
    for workers in worker_counts:
        for label, kind in (("trivial Starlette endpoint", "trivial"), ("verify + sign, no policy", "verify_sign"), ("chit exchange", "chit")):
            port = free_port()
            if kind == "chit":
                command = [sys.executable, "-m", "chit", "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
            else:
                command = [sys.executable, "-m", "tests.bench.floors", kind, "--port", str(port), "--workers", str(workers)]
            if kind == "verify_sign":
                # The floor app reads the config the way chit's workers do.
                from chit.server.config import RESOLVED_CONFIG_ENV, load_config

                resolved = load_config(config)
                resolved = resolved.model_copy(update={"listen": resolved.listen.model_copy(update={"port": port})})
                os.environ[RESOLVED_CONFIG_ENV] = resolved.model_dump_json()
            print(f"measuring {label} with {workers} worker(s) for {args.duration:.0f} s …", file=sys.stderr, flush=True)
            ready_path = "/readyz" if kind == "chit" else "/"  # floors: any answer means listening
            result = measure(f"{kind}-{workers}", command, ready_path, port, args, directory, bodies)
            rows.append((label, workers, result))
    return rows


def report(args: argparse.Namespace, rows: list) -> None:
    print()
    print(f"chit exchange benchmark: {args.connections} connections, {args.duration:.0f} s per run, "
          f"{args.workloads} workloads, {os.cpu_count()} CPUs")
    print(f"{'':32} {'workers':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}  ratio")
    floors: dict[tuple[str, int], float] = {}
    for label, workers, result in rows:
        floors[(label, workers)] = result["per_second"]
        non_ok = sum(v for k, v in result["statuses"].items() if k != "200") + result["errors"]
        ratio = ""
        if label == "chit exchange":
            vs = floors[("verify + sign, no policy", workers)]
            tv = floors[("trivial Starlette endpoint", workers)]
            ratio = f"{result['per_second'] / vs:.2f}× verify+sign, {result['per_second'] / tv:.2f}× trivial"
        elif label == "verify + sign, no policy":
            ratio = f"{result['per_second'] / floors[('trivial Starlette endpoint', workers)]:.2f}× trivial"
        reused = " (bodies reused)" if result["bodies_reused"] else ""
        print(f"{label:32} {workers:>7} {result['per_second']:>9.0f} {result['p50_ms']:>8.2f} {result['p99_ms']:>8.2f} {non_ok:>8}  {ratio}{reused}")


if __name__ == "__main__":
    main()
