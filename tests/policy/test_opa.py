"""The OPA engine (`policy.engine: opa`), driven through a real chit server and
an OPA-REST-API stand-in: OPA decides exactly as the embedded engine does, and
nothing OPA says other than a well-formed allow ever issues a token."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import PROD_ISSUER, TEST_BINDINGS
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, OpaStandIn, assert_issued, assert_refused, free_port

TIMEOUT_MS = 1500


def opa_chit(directory: Path, documents: DocumentServer, opa_url: str) -> ChitServer:
    return ChitServer(
        directory,
        {
            "policy": {"engine": "opa", "opa_url": opa_url, "timeout_ms": TIMEOUT_MS},
            "attestors": {
                "kubernetes": {
                    "clusters": [
                        {
                            "name": "prod",
                            "issuer": PROD_ISSUER,
                            "jwks_uri": documents.url("/prod/openid/v1/jwks"),
                            "audiences": ["chit"],
                            "region": "us-east-1",
                        }
                    ]
                }
            },
        },
    )


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    with OpaStandIn.over(tmp_path_factory.mktemp("opa"), TEST_BINDINGS) as server:
        yield server


@pytest.fixture(scope="module")
def chit_opa(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, opa: OpaStandIn) -> Iterator[ChitServer]:
    server = opa_chit(tmp_path_factory.mktemp("chit-opa"), documents, opa.url).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def healthy_opa(opa: OpaStandIn) -> Iterator[None]:
    opa.reset()
    yield
    opa.reset()


def test_opa_grants_what_the_binding_says(chit_opa: ChitServer, opa: OpaStandIn, prod_issuer: ClusterIssuer) -> None:
    body = assert_issued(chit_opa.exchange(prod_issuer.token(), scope="read:db"))
    assert body["scope"] == "read:db" and body["expires_in"] == 900
    _, claims = chit_opa.verify_issued(body["access_token"], "https://db.internal")
    assert claims["sub"] == "spiffe://example.org/k8s/prod/ns/payments/sa/agent"
    (sent,) = [r for r in opa.requests() if r["path"] == "/v1/data/chit/decision"]
    # The same input document the embedded engine gets (docs/reference/policy-contract.md "Policy contract").
    assert set(sent["input"]) == {"subject", "attestation", "request", "now"}
    assert sent["input"]["attestation"]["namespace"] == "payments"
    assert sent["input"]["attestation"]["claims"]["sub"] == "system:serviceaccount:payments:agent"
    assert sent["input"]["request"]["scope"] == ["read:db"]
    assert set(sent["input"]["now"]) == {"unix", "rfc3339", "weekday", "hour"}


def test_opa_denial_keeps_its_reasons_in_the_audit_only(chit_opa: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(chit_opa.exchange(prod_issuer.token(service_account="intruder")))
    assert body["error_description"] == "the exchange is not permitted"
    line = chit_opa.audit_for(body["decision_id"])
    assert line["outcome"] == "denied" and line["reasons"] == ["no binding for this workload"]


def test_opa_region_denial(chit_opa: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(chit_opa.exchange(prod_issuer.token(service_account="eu-only")))
    assert chit_opa.audit_for(body["decision_id"])["reasons"] == ["region not allowed by the binding"]


@pytest.mark.parametrize(
    "status, answer, reason",
    [
        (200, {}, "decision undefined"),
        (200, {"result": None}, "decision undefined"),
        (200, {"result": {"allow": "true", "audience": ["https://db.internal"]}}, "malformed decision: decision.allow is not a boolean"),
        (200, {"result": {"allow": 1}}, "malformed decision: decision.allow is not a boolean"),
        (200, {"result": [{"allow": True}]}, "malformed decision: decision is not an object"),
        (200, "not json at all", "policy error: OPA answered 200 with a body that is not a strictly valid JSON object"),
        (200, [], "policy error: OPA answered 200 with a body that is not a strictly valid JSON object"),
        (400, {"code": "invalid_parameter", "message": "bad input"}, "policy error: OPA refused the query (HTTP 400, invalid_parameter: bad input)"),
        (404, "404 page not found", "policy error: OPA refused the query (HTTP 404, no error body)"),
        (
            500,
            {"code": "internal_error", "message": "error(s) occurred while evaluating query",
             "errors": [{"code": "eval_conflict_error", "message": "complete rules must not produce multiple outputs"}]},
            "policy error: OPA evaluation error: eval_conflict_error: complete rules must not produce multiple outputs",
        ),
    ],
    ids=["no-result", "null-result", "allow-string", "allow-number", "array", "not-json", "json-array", "400", "404", "eval-error"],
)
def test_anything_but_a_clean_allow_is_a_denial(chit_opa: ChitServer, opa: OpaStandIn, prod_issuer: ClusterIssuer, status: int, answer: object, reason: str) -> None:
    opa.fault(status=status, body=answer)
    body = assert_refused(chit_opa.exchange(prod_issuer.token()))
    assert body["error_description"] == "the exchange is not permitted"
    line = chit_opa.audit_for(body["decision_id"])
    assert line["outcome"] == "denied" and line["error"] == "invalid_request"
    assert line["reasons"] == [reason]


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500, "body": {"code": "internal_error", "message": "storage failure"}},
        {"status": 500, "body": {"code": "internal_error", "message": "x", "errors": [{"code": "eval_cancel_error", "message": "caller cancelled query execution"}]}},
        {"status": 502, "body": "bad gateway"},
        {"status": 503, "body": {}},
        {"status": 307, "body": {}},
        {"close": True},
        {"delay": TIMEOUT_MS / 1000 + 1.5, "status": 200, "body": {"result": {"allow": True, "audience": ["https://db.internal"]}}},
    ],
    ids=["500", "500-cancelled", "502", "503", "redirect", "connection-dropped", "timeout"],
)
def test_opa_failing_or_slow_fails_closed(chit_opa: ChitServer, opa: OpaStandIn, prod_issuer: ClusterIssuer, fault: dict) -> None:
    opa.fault(**fault)
    body = assert_refused(chit_opa.exchange(prod_issuer.token()), 503, "temporarily_unavailable")
    line = chit_opa.audit_for(body["decision_id"])
    assert line["outcome"] == "unavailable" and line["jti"] is None


def test_readiness_follows_opa_health(chit_opa: ChitServer, opa: OpaStandIn) -> None:
    ready = chit_opa.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["policy"] is True
    opa.fault(status=500, body={"code": "internal_error", "message": "not ready"}, paths=["/health"])
    ready = chit_opa.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["policy"] is False


def test_chit_starts_without_opa_and_refuses_to_decide(tmp_path: Path, documents: DocumentServer, prod_issuer: ClusterIssuer) -> None:
    """OPA as a sidecar may start later: chit serves, is not ready, and answers 503."""
    server = opa_chit(tmp_path, documents, f"http://127.0.0.1:{free_port()}").start(ready_path="/healthz")
    try:
        assert server.client.get("/readyz").status_code == 503
        assert_refused(server.exchange(prod_issuer.token()), 503, "temporarily_unavailable")
    finally:
        server.stop()
