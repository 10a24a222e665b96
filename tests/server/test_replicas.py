"""Two chit replicas sharing one real redis-server and one signing-keys directory,
as behind a Kubernetes Service: what one replica learns holds at the other.

- a token revoked at replica 1 is inactive at replica 2 at once; a subject
  revoked by `chit revoke` is refused at both within one second, until lifted;
- an instance bound to a nonce at replica 1 cannot be replayed at replica 2;
- a subject's rate limit is one budget across both replicas.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from chit.revocation import MAX_AGE
from tests.conftest import AwsRegions, TEST_BINDINGS, cluster_config
from tests.factories import (
    AWS_IID_TYPE,
    MOTO_ACCOUNT,
    ChitServer,
    JWT_TYPE,
    ClusterIssuer,
    DocumentServer,
    RedisServer,
    assert_issued,
    assert_refused,
    copy_policy,
    iid_token,
    instance_document,
    new_nonce,
    run_chit,
)

ISSUER = "https://chit.replicas.test"  # the Service's URL: one issuer for every replica
DB = "https://db.internal"
PER_SUBJECT_PER_MINUTE = 6


def bindings() -> dict:
    data = json.loads(json.dumps(TEST_BINDINGS))
    grant = {"scope": ["read:db"], "audience": [DB]}
    data["bindings"]["kubernetes"]["prod"]["ops"].update(
        {"introspector": {"scope": ["chit:introspect"], "audience": [ISSUER]}, "revoked": grant, "limited": grant, "delegating": grant}
    )
    data["bindings"]["aws_iid"][MOTO_ACCOUNT] = {"us-east-1": grant}
    return data


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    documents: DocumentServer,
    prod_issuer: ClusterIssuer,
    aws_regions: AwsRegions,
    redis: RedisServer,
) -> Iterator[tuple[ChitServer, ChitServer]]:
    directory = tmp_path_factory.mktemp("replicas")
    config = {
        "issuer": ISSUER,
        "signing": {"keys_dir": str(directory / "keys")},
        "policy": {"dir": str(copy_policy(directory / "policies", bindings()))},
        "attestors": {
            "kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]},
            "aws_iid": {"certificates_dir": str(aws_regions.directory), "regions": ["us-east-1"], "account_ids": [MOTO_ACCOUNT]},
        },
        "state": {"backend": "redis", "redis_url": redis.url},
        "rate_limits": {"per_subject_per_minute": PER_SUBJECT_PER_MINUTE, "per_client_per_minute": 100_000},
    }
    first = ChitServer(directory / "replica-1", config).start()
    second = ChitServer(directory / "replica-2", config).start()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def introspector(replicas: tuple[ChitServer, ChitServer], prod_issuer: ClusterIssuer) -> str:
    return assert_issued(replicas[0].exchange(prod_issuer.token("ops", "introspector"), audience=ISSUER))["access_token"]


def test_replicas_publish_the_same_keys(replicas: tuple[ChitServer, ChitServer]) -> None:
    first, second = replicas
    assert first.jwks() == second.jwks() and first.jwks()["keys"]


def test_a_token_revoked_at_one_replica_is_inactive_at_the_other(replicas, prod_issuer: ClusterIssuer, introspector: str) -> None:
    first, second = replicas
    token = assert_issued(first.exchange(prod_issuer.token()))["access_token"]
    assert second.is_active(token, introspector)
    assert first.revoke(token).status_code == 200
    # The jti is looked up in Redis by every introspection: no propagation delay at all.
    assert not second.is_active(token, introspector)
    assert not first.is_active(token, introspector)


def test_a_revoked_subject_is_refused_at_every_replica_within_a_second_until_lifted(
    replicas, prod_issuer: ClusterIssuer, introspector: str
) -> None:
    first, second = replicas
    subject = "spiffe://example.org/k8s/prod/ns/ops/sa/revoked"
    before = assert_issued(second.exchange(prod_issuer.token("ops", "revoked")))["access_token"]
    # A token another workload got with the revoked one as its actor (RFC 8693 `act`).
    delegated = assert_issued(
        second.exchange(prod_issuer.token("ops", "delegating"), actor_token=prod_issuer.token("ops", "revoked"), actor_token_type=JWT_TYPE)
    )["access_token"]

    result = run_chit("revoke", "--subject", subject, "--config", str(first.config_path))
    assert result.returncode == 0, result.stderr
    time.sleep(MAX_AGE)  # the bound: every replica's copy is at most this old
    for replica in (first, second):
        body = assert_refused(replica.exchange(prod_issuer.token("ops", "revoked")))
        audit = replica.audit_for(body["decision_id"])
        assert audit["outcome"] == "denied" and any("revoked" in reason for reason in audit["reasons"])
        assert not replica.is_active(before, introspector)
        assert not replica.is_active(delegated, introspector)
    assert_issued(first.exchange(prod_issuer.token("ops", "introspector"), audience=ISSUER))  # others are untouched

    result = run_chit("revoke", "--subject", subject, "--lift", "--config", str(second.config_path))
    assert result.returncode == 0 and "lifted" in result.stdout, result.stderr
    time.sleep(MAX_AGE)
    for replica in (first, second):
        after = assert_issued(replica.exchange(prod_issuer.token("ops", "revoked")))["access_token"]
        assert replica.is_active(after, introspector)
        assert not replica.is_active(before, introspector)  # revoked tokens stay revoked


def test_chit_revoke_checks_what_it_is_given(replicas) -> None:
    first, _ = replicas
    config = str(first.config_path)
    for subject in ("spiffe://other.org/k8s/prod/ns/a/sa/b", "not-a-spiffe-id", "spiffe://example.org/"):
        result = run_chit("revoke", "--subject", subject, "--config", config)
        assert result.returncode == 2 and "is not a SPIFFE ID of trust domain example.org" in result.stderr
    result = run_chit("revoke", "--subject", "spiffe://example.org/k8s/prod/ns/ops/sa/never", "--lift", "--config", config)
    assert result.returncode == 0 and "is not revoked" in result.stdout


def test_an_instance_bound_at_one_replica_cannot_be_replayed_at_the_other(replicas, aws_regions: AwsRegions) -> None:
    first, second = replicas
    document = instance_document(f"i-{uuid.uuid4().hex[:17]}")
    signature = aws_regions.us_east_1.signature(document)
    nonce = new_nonce()
    assert_issued(first.exchange(iid_token(document, nonce, signature=signature), subject_token_type=AWS_IID_TYPE))
    body = assert_refused(second.exchange(iid_token(document, new_nonce(), signature=signature), subject_token_type=AWS_IID_TYPE))
    assert body["error_description"] == "subject_token invalid: this instance is bound to another nonce"
    assert_issued(second.exchange(iid_token(document, nonce, signature=signature), subject_token_type=AWS_IID_TYPE))


def test_a_subjects_rate_limit_is_one_budget_across_replicas(replicas, prod_issuer: ClusterIssuer) -> None:
    first, second = replicas
    for i in range(PER_SUBJECT_PER_MINUTE):
        assert_issued((first, second)[i % 2].exchange(prod_issuer.token("ops", "limited")))
    for replica in (first, second):
        response = replica.exchange(prod_issuer.token("ops", "limited"))
        body = assert_refused(response, status=429, error="slow_down")
        assert 1 <= int(response.headers["retry-after"]) <= 60 // PER_SUBJECT_PER_MINUTE
        audit = replica.audit_for(body["decision_id"])
        assert audit["outcome"] == "limited" and audit["error"] == "slow_down"
        assert audit["subject"] == "spiffe://example.org/k8s/prod/ns/ops/sa/limited"
    assert_issued(first.exchange(prod_issuer.token()))  # another subject has its own budget


def test_state_in_redis_carries_no_secret_and_expires(replicas, redis: RedisServer) -> None:
    client = redis.client()
    try:
        for key in client.keys("chit:*"):
            if key == "chit:revoked:subjects":
                continue  # written by the operator, kept until lifted entries age out
            assert client.pttl(key) > 0, key
    finally:
        client.close()
