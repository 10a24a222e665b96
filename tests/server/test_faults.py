"""Losing a dependency never mints a token, and service resumes when it returns;
stopping chit lets in-flight exchanges finish.

- the state store (a real redis-server) killed or frozen mid-run → 503s, never a
  token; back → exchanges succeed again without a restart of chit;
- /metrics of a multi-worker chit counts every worker's exchanges;
- SIGTERM during load: in-flight requests complete, new connections are
  refused, exit 0 (one process, and the multi-worker supervisor).

JWKS sources and the policy engine failing are in tests/attestors/test_jwks.py
and tests/policy/test_opa.py.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chit.revocation import MAX_AGE
from tests.conftest import TEST_BINDINGS, AwsRegions, cluster_config
from tests.factories import (
    AWS_IID_TYPE,
    MOTO_ACCOUNT,
    TOKEN_EXCHANGE,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    OpaStandIn,
    RedisServer,
    assert_issued,
    assert_refused,
    copy_policy,
    iid_token,
    instance_document,
    new_nonce,
)

def bindings(issuer: str) -> dict:
    data = json.loads(json.dumps(TEST_BINDINGS))
    data["bindings"]["kubernetes"]["prod"]["ops"]["introspector"] = {"scope": ["chit:introspect"], "audience": [issuer]}
    data["bindings"]["aws_iid"] = {MOTO_ACCOUNT: {"us-east-1": {"scope": ["read:db"], "audience": ["https://db.internal"]}}}
    return data


@pytest.fixture(scope="module")
def chit(
    tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, aws_regions: AwsRegions, redis: RedisServer
) -> Iterator[ChitServer]:
    """Two workers sharing the Redis store."""
    directory = tmp_path_factory.mktemp("faults")
    policy_dir = copy_policy(directory / "policies")
    config = {
        "policy": {"dir": str(policy_dir)},
        "attestors": {
            "kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]},
            "aws_iid": {"certificates_dir": str(aws_regions.directory), "regions": ["us-east-1"], "account_ids": [MOTO_ACCOUNT]},
        },
        "state": {"backend": "redis", "redis_url": redis.url, "timeout_ms": 300},
    }
    server = ChitServer(directory, config, workers=2)
    (policy_dir / "data.json").write_text(json.dumps(bindings(server.url)))
    yield server.start()
    server.stop()


def iid_exchange(chit: ChitServer, aws_regions: AwsRegions) -> httpx.Response:
    document = instance_document(f"i-{uuid.uuid4().hex[:17]}")
    return chit.exchange(iid_token(document, new_nonce(), signature=aws_regions.us_east_1.signature(document)), subject_token_type=AWS_IID_TYPE)


def fresh_connection(chit: ChitServer, path: str) -> httpx.Response:
    """A new connection per request, so that the kernel spreads them over the workers."""
    return httpx.get(chit.url + path, timeout=10)


def assert_unavailable(chit: ChitServer, response: httpx.Response) -> None:
    body = assert_refused(response, status=503, error="temporarily_unavailable")
    audit = chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "unavailable" and audit["jti"] is None


def wait_until_ready(chit: ChitServer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while fresh_connection(chit, "/readyz").status_code != 200:
        assert time.monotonic() < deadline, "chit did not become ready again"
        time.sleep(0.1)


def test_redis_killed_mid_run_is_503_never_a_token_and_service_resumes(
    chit: ChitServer, redis: RedisServer, prod_issuer: ClusterIssuer, aws_regions: AwsRegions
) -> None:
    token = assert_issued(chit.exchange(prod_issuer.token()))["access_token"]
    assert_issued(iid_exchange(chit, aws_regions))
    introspector = assert_issued(chit.exchange(prod_issuer.token("ops", "introspector"), audience=chit.url))["access_token"]

    redis.kill()
    try:
        # A nonce binding needs the store on every exchange: refused at once.
        assert_unavailable(chit, iid_exchange(chit, aws_regions))
        # Whether a token is revoked cannot be known: neither active nor inactive.
        for response in (chit.introspect(token, bearer=introspector), chit.revoke(token)):
            assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
            assert "active" not in response.json()
        readiness = fresh_connection(chit, "/readyz")
        assert readiness.status_code == 503 and readiness.json()["checks"]["state"] is False
        # Revoked subjects are cached for at most MAX_AGE; after that every exchange needs the store.
        time.sleep(MAX_AGE)
        for _ in range(6):
            form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": prod_issuer.token()}
            assert_unavailable(chit, httpx.post(chit.url + "/token", data=form, timeout=10))
    finally:
        redis.start()

    wait_until_ready(chit)
    assert_issued(chit.exchange(prod_issuer.token()))
    assert_issued(iid_exchange(chit, aws_regions))
    assert chit.is_active(token, introspector)
    assert metric(fresh_connection(chit, "/metrics").text, "chit_state_store_errors_total") >= 1
    # The 503s name their cause: the state store (an AWS binding check counts as attestation).
    assert metric(fresh_connection(chit, "/metrics").text, "chit_exchange_unavailable_total", cause="state") >= 6


def test_redis_that_stops_answering_is_503_within_the_timeout(chit: ChitServer, redis: RedisServer, aws_regions: AwsRegions) -> None:
    redis.freeze()
    try:
        started = time.monotonic()
        assert_unavailable(chit, iid_exchange(chit, aws_regions))
        assert time.monotonic() - started < 3.0  # state.timeout_ms 300, one reconnect
    finally:
        redis.thaw()
    wait_until_ready(chit)
    assert_issued(iid_exchange(chit, aws_regions))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name:
            sample = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if all(sample.get(k) == v for k, v in labels.items()):
                total += float(match[3])
    return total


def test_metrics_count_the_exchanges_of_every_worker(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    before = fresh_connection(chit, "/metrics").text
    issued = metric(before, "chit_exchanges_total", outcome="issued", kind="kubernetes")
    invalid = metric(before, "chit_exchanges_total", outcome="invalid", error="invalid_request")
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    for _ in range(12):
        assert_issued(httpx.post(chit.url + "/token", data={**form, "subject_token": prod_issuer.token()}, timeout=10))
        assert_refused(httpx.post(chit.url + "/token", data={**form, "subject_token": "garbage"}, timeout=10))
    for _ in range(6):  # whichever worker answers the scrape, it counts them all
        response = fresh_connection(chit, "/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert metric(text, "chit_exchanges_total", outcome="issued", kind="kubernetes") == issued + 12
        assert metric(text, "chit_exchanges_total", outcome="invalid", error="invalid_request") == invalid + 12
    assert metric(text, "chit_exchange_duration_seconds_count") >= 24
    for step in ("attest", "policy", "sign"):
        assert metric(text, "chit_exchange_step_duration_seconds_count", step=step) >= 12
    assert metric(text, "chit_key_fetches_total", source="cluster prod", result="ok") >= 1
    assert "spiffe://" not in text and "garbage" not in text


# --- SIGTERM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    with OpaStandIn.over(tmp_path_factory.mktemp("sigterm-opa"), TEST_BINDINGS) as server:
        yield server


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_in_flight_exchanges_finish_refuses_new_connections_and_exits_0(
    tmp_path: Path, documents: DocumentServer, prod_issuer: ClusterIssuer, slow_opa: OpaStandIn, redis: RedisServer, workers: int
) -> None:
    state = {"backend": "redis", "redis_url": redis.url} if workers > 1 else {"backend": "memory"}
    config = {
        "policy": {"engine": "opa", "opa_url": slow_opa.url, "timeout_ms": 10_000},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
        "state": state,
    }
    chit = ChitServer(tmp_path, config, workers=workers).start()
    slow_opa.reset()
    slow_opa.fault(delay=3.0)  # every decision takes 3 s: the exchanges are in flight meanwhile
    responses: list[httpx.Response] = []
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}

    def exchange() -> None:
        responses.append(httpx.post(chit.url + "/token", data={**form, "subject_token": prod_issuer.token()}, timeout=30))

    threads = [threading.Thread(target=exchange) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(slow_opa.requests()) < len(threads):
            assert time.monotonic() < deadline, "the exchanges did not reach the policy engine"
            time.sleep(0.05)
        assert chit.process is not None
        chit.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.5
        while not connection_refused(chit.port):
            assert time.monotonic() < deadline, "chit still accepts connections after SIGTERM"
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=30)
        assert len(responses) == len(threads)
        for response in responses:
            assert_issued(response)
        assert chit.process.wait(timeout=30) == 0
    finally:
        slow_opa.reset()
        chit.stop()
