"""Rate limits per client address (docs/reference/http-api.md "Rate limits"): every /token request
counts, well-formed or not, and over the limit the answer is 429 slow_down with
Retry-After, audited as `limited`. (A subject's limit, global across replicas,
is in tests/server/test_replicas.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import TEST_BINDINGS, cluster_config
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, assert_issued, assert_refused, copy_policy

PER_CLIENT_PER_MINUTE = 4


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("rate-limits")
    config = {
        "policy": {"dir": str(copy_policy(directory / "policies", TEST_BINDINGS))},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
        "rate_limits": {"per_client_per_minute": PER_CLIENT_PER_MINUTE},
    }
    server = ChitServer(directory, config).start()
    yield server
    server.stop()


def test_every_request_of_a_client_counts_and_the_excess_is_429(chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    assert_issued(chit.exchange(prod_issuer.token()))
    assert_refused(chit.exchange("garbage"))
    assert_refused(chit.client.post("/token", content=b"not a form"))
    assert_refused(chit.exchange(prod_issuer.token(), grant_type="password"), error="unsupported_grant_type")
    response = chit.exchange(prod_issuer.token())
    body = assert_refused(response, status=429, error="slow_down")
    assert 1 <= int(response.headers["retry-after"]) <= 60 // PER_CLIENT_PER_MINUTE
    audit = chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "limited" and audit["error"] == "slow_down" and audit["client"] == "127.0.0.1"
    assert audit["subject"] is None  # refused before anything was verified
    # Other endpoints are not counted.
    assert chit.client.get("/.well-known/jwks.json").status_code == 200
