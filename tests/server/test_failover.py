"""Losing the Redis primary under load, with Redis Sentinel (docs/operators/state-and-replicas.md
"High availability: Redis Sentinel").

One primary, one replica and three sentinels on 127.0.0.1; chit (two workers)
follows the primary the sentinels name and waits for the replica to acknowledge
every write that must survive (`state.wait_for_replicas: 1`). Under a steady
load of exchanges, revocations and AWS nonce bindings, the primary is killed:

- chit answers 503 `temporarily_unavailable` (never a token, never a 500) and
  only from the kill until shortly after the sentinels promote the replica;
- writes that must survive are refused (503) while no replica can acknowledge
  them, and accepted again once the old primary is back, as a replica;
- nothing chit acknowledged is lost: every revocation and nonce binding that
  was answered 200, before or during the failover, still holds after it.

The measured windows are printed (`pytest -s`) and quoted in the docs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import TEST_BINDINGS, AwsRegions, cluster_config
from tests.factories import (
    AWS_IID_TYPE,
    JWT_TYPE,
    MOTO_ACCOUNT,
    TOKEN_EXCHANGE,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    assert_issued,
    assert_refused,
    copy_policy,
    iid_token,
    instance_document,
    new_nonce,
    run_chit,
)
from tests.redis_sentinel import SERVICE, SentinelGroup

REVOKED_SUBJECT = "spiffe://example.org/k8s/prod/ns/payments/sa/short-lived"
# After the sentinels name the new primary, how long chit may still answer 503: requests
# in flight at that moment, and a reconnect (state.timeout_ms 300).
RECONNECT_SLACK = 1.5


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("failover")).start()
    yield group
    group.stop()


@pytest.fixture(scope="module")
def chit(
    tmp_path_factory: pytest.TempPathFactory,
    documents: DocumentServer,
    prod_issuer: ClusterIssuer,
    aws_regions: AwsRegions,
    group: SentinelGroup,
) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("failover-chit")
    policy_dir = copy_policy(directory / "policies")
    config = {
        "policy": {"dir": str(policy_dir)},
        "attestors": {
            "kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]},
            "aws_iid": {"certificates_dir": str(aws_regions.directory), "regions": ["us-east-1"], "account_ids": [MOTO_ACCOUNT]},
        },
        "state": {
            "backend": "redis",
            "sentinel": {"addresses": group.addresses, "service": SERVICE},
            "wait_for_replicas": 1,
            "timeout_ms": 300,
        },
        # Every exchange takes from its subject's bucket in Redis: each one needs the store.
        "rate_limits": {"per_subject_per_minute": 1_000_000},
    }
    server = ChitServer(directory, config, workers=2)
    data = json.loads(json.dumps(TEST_BINDINGS))
    data["bindings"]["kubernetes"]["prod"]["ops"]["introspector"] = {"scope": ["chit:introspect"], "audience": [server.url]}
    data["bindings"]["aws_iid"] = {MOTO_ACCOUNT: {"us-east-1": {"scope": ["read:db"], "audience": ["https://db.internal"]}}}
    (policy_dir / "data.json").write_text(json.dumps(data))
    yield server.start()
    server.stop()


@dataclass
class Binding:
    document: str
    nonce: str
    signature: str

    def token(self, nonce: str | None = None) -> str:
        return iid_token(self.document, nonce or self.nonce, signature=self.signature)


@dataclass
class Load:
    """Exchanges, revocations and nonce bindings, one after the other, until stopped."""

    chit: ChitServer
    issuer: ClusterIssuer
    regions: AwsRegions
    answers: dict[str, list[tuple[float, int, str | None]]] = field(default_factory=lambda: {"exchange": [], "revoke": [], "bind": []})
    revoked: list[str] = field(default_factory=list)  # tokens whose revocation was answered 200
    bound: list[Binding] = field(default_factory=list)  # instances whose binding was answered 200
    stop: threading.Event = field(default_factory=threading.Event)

    def record(self, kind: str, response: httpx.Response) -> bool:
        error = None if response.status_code == 200 else response.json().get("error")
        self.answers[kind].append((time.monotonic(), response.status_code, error))
        return response.status_code == 200

    def run(self) -> None:
        with httpx.Client(base_url=self.chit.url, timeout=10) as client:
            form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE}
            while not self.stop.is_set():
                response = client.post("/token", data={**form, "subject_token": self.issuer.token()})
                if self.record("exchange", response):
                    token = response.json()["access_token"]
                    if self.record("revoke", client.post("/revoke", data={"token": token})):
                        self.revoked.append(token)
                document = instance_document(f"i-{uuid.uuid4().hex[:17]}")
                binding = Binding(document, new_nonce(), self.regions.us_east_1.signature(document))
                response = client.post("/token", data={**form, "subject_token_type": AWS_IID_TYPE, "subject_token": binding.token()})
                if self.record("bind", response):
                    self.bound.append(binding)
                time.sleep(0.005)

    def refused(self, kind: str) -> list[float]:
        return [at for at, status, _ in self.answers[kind] if status != 200]

    def served_after(self, kind: str, moment: float) -> bool:
        return any(at > moment and status == 200 for at, status, _ in self.answers[kind])


def test_killing_the_primary_fails_closed_only_during_the_failover_and_loses_nothing_acknowledged(
    chit: ChitServer, group: SentinelGroup, prod_issuer: ClusterIssuer, aws_regions: AwsRegions
) -> None:
    # Acknowledged before the failover: a token revoked by its holder, a workload revoked
    # by the operator (`chit revoke --subject`, through the sentinels too), an instance's binding.
    introspector = assert_issued(chit.exchange(prod_issuer.token("ops", "introspector"), audience=chit.url))["access_token"]
    revoked_before = assert_issued(chit.exchange(prod_issuer.token()))["access_token"]
    assert chit.revoke(revoked_before).status_code == 200
    result = run_chit("revoke", "--subject", REVOKED_SUBJECT, "--config", str(chit.config_path))
    assert result.returncode == 0, result.stderr
    document = instance_document(f"i-{uuid.uuid4().hex[:17]}")
    bound_before = Binding(document, new_nonce(), aws_regions.us_east_1.signature(document))
    assert_issued(chit.exchange(bound_before.token(), subject_token_type=AWS_IID_TYPE))

    load = Load(chit, prod_issuer, aws_regions)
    worker = threading.Thread(target=load.run)
    worker.start()
    try:
        time.sleep(1.5)
        old_primary = group.node_on(group.primary_port())
        killed = time.monotonic()
        old_primary.kill()
        switched = group.wait_for_failover(old_primary.port)
        new_primary = group.node_on(group.primary_port())
        group.restart_as_replica(old_primary)
        deadline = time.monotonic() + 30
        while not group.replica_in_sync(new_primary):
            assert time.monotonic() < deadline, "the old primary did not rejoin as a replica"
            time.sleep(0.05)
        rejoined = time.monotonic()
        deadline = time.monotonic() + 15
        while not all(load.served_after(kind, rejoined + 1.0) for kind in load.answers):
            assert time.monotonic() < deadline, "chit did not serve every kind of request again"
            time.sleep(0.1)
    finally:
        load.stop.set()
        worker.join(timeout=30)

    # Refusals only, and only as temporarily_unavailable: never a 500, never another error.
    for kind, answers in load.answers.items():
        assert {(status, error) for _, status, error in answers} <= {(200, None), (503, "temporarily_unavailable")}, kind
        assert all(at >= killed for at in load.refused(kind)), f"{kind} refused before the kill"
    # Exchanges (a rate-limit bucket each) need a primary: refused from the kill until the
    # sentinels name the new one, plus the reconnect.
    exchange_refusals = load.refused("exchange")
    assert exchange_refusals, "the load never hit the failover"
    assert max(exchange_refusals) <= switched + RECONNECT_SLACK
    # Writes that must survive need a replica to acknowledge them as well: refused until one is back.
    bind_refusals = load.refused("bind")
    assert any(switched + RECONNECT_SLACK < at < rejoined for at in bind_refusals), "a write no replica had was acknowledged"
    assert max(bind_refusals) <= rejoined + RECONNECT_SLACK
    print(
        f"\nfailover: sentinels promoted the replica {switched - killed:.2f} s after the kill; "
        f"exchanges refused (503) for {max(exchange_refusals) - killed:.2f} s after it ({len(exchange_refusals)} answers); "
        f"the old primary rejoined as a replica after {rejoined - killed:.2f} s; "
        f"durable writes refused for {max(bind_refusals) - killed:.2f} s ({len(bind_refusals)} answers); "
        f"{len(load.answers['exchange'])} exchanges, {len(load.revoked)} revocations and {len(load.bound)} bindings acknowledged"
    )

    # Nothing acknowledged is lost.
    assert load.revoked and load.bound
    for token in [revoked_before, *load.revoked]:
        assert chit.is_active(token, introspector) is False
    refused = assert_refused(chit.exchange(prod_issuer.token("payments", "short-lived")))
    assert chit.audit_for(refused["decision_id"])["outcome"] == "denied"
    for binding in [bound_before, *load.bound]:
        body = assert_refused(chit.exchange(binding.token(nonce=new_nonce()), subject_token_type=AWS_IID_TYPE))
        assert "bound to another nonce" in body["error_description"]
    assert_issued(chit.exchange(bound_before.token(), subject_token_type=AWS_IID_TYPE))
