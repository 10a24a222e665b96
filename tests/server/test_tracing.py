"""Tracing (docs/operators/tracing.md): OpenTelemetry spans of the exchange, exported by a
real chit over OTLP/HTTP to a receiver on 127.0.0.1, configured by the standard
OTEL_* variables only.

- an exchange is a server span continuing the caller's W3C `traceparent`, with a
  child span per pipeline step, and carries its decision_id;
- the outbound call it makes (the cluster's JWKS fetch) is a client span and
  carries `traceparent` to the key server; so does the Kubernetes API client's
  TokenReview, made in a thread of its own;
- a malformed `traceparent` starts a new trace; no header starts one too;
- STS credentials are a step of their own, and the AWS call a client span under it;
- off (the default), nothing of OpenTelemetry is even imported; enabled without
  the extra installed, the start says how to install it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from chit.server.tracing import Tracing, TracingUnavailable, check_available
from tests.conftest import AWS_BINDINGS, TEST_BINDINGS, AwsRegions, aws_chit_config
from tests.factories import (
    AWS_CREDENTIALS_TYPE,
    AWS_TEST_ENV,
    ROOT,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    KubernetesApiStandIn,
    MotoServer,
    assert_issued,
    copy_policy,
)
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

ISSUER = "https://traced.k8s.chit.test"
UNSERVED = "https://unserved.k8s.chit.test"
STEPS = {"chit.attest", "chit.admit", "chit.enrich", "chit.decide", "chit.mint", "chit.state"}
SERVER, CLIENT = 2, 3  # OTLP SpanKind


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced_issuer() -> ClusterIssuer:
    return ClusterIssuer("traced", ISSUER, "ES256")


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, traced_issuer: ClusterIssuer, receiver: OtlpReceiver) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("tracing")
    data = json.loads(json.dumps(TEST_BINDINGS))
    data["bindings"]["kubernetes"]["traced"] = data["bindings"]["kubernetes"]["prod"]
    config = {
        "policy": {"dir": str(copy_policy(directory / "policies", data))},
        "attestors": {"kubernetes": {"clusters": [
            {"name": "traced", "issuer": ISSUER, "jwks_uri": documents.url("/traced/jwks"), "audiences": ["chit"]},
            # Its keys are never served: its first exchange logs the failed fetch.
            {"name": "unserved", "issuer": UNSERVED, "jwks_uri": documents.url("/unserved/jwks"), "audiences": ["chit"]}]}},
        "tracing": {"enabled": True},
    }
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "chit-under-test"}
    server = ChitServer(directory, config, env=env).start(ready_path="/healthz")
    yield server
    server.stop()


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def test_an_exchange_continues_the_caller_s_trace_step_by_step_and_propagates_it(
    chit: ChitServer, receiver: OtlpReceiver, documents: DocumentServer, traced_issuer: ClusterIssuer
) -> None:
    documents.serve("/traced/jwks", traced_issuer.jwks())  # first fetched by this exchange
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = chit.client.post(
        "/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
              "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": traced_issuer.token()},
        headers={"traceparent": f"00-{trace_id}-{caller_span}-01", "tracestate": "vendor=opaque"},
    )
    assert_issued(response)
    spans = receiver.trace(trace_id, count=len(STEPS) + 2)
    named = by_name(spans)
    exchange = named["POST /token"]
    assert exchange.parent_span_id == caller_span and exchange.kind == SERVER and exchange.service == "chit-under-test"
    audit = chit.audit_lines()[-1]
    assert exchange.attributes["chit.decision_id"] == audit["decision_id"]
    assert exchange.attributes["chit.outcome"] == "issued" and exchange.attributes["http.response.status_code"] == 200
    assert STEPS <= set(named)
    assert all(named[step].parent_span_id == exchange.span_id for step in STEPS)
    # The JWKS fetch: a client span under the attest step, and its traceparent reached the key server.
    fetch = next(span for span in spans if span.kind == CLIENT)
    assert fetch.parent_span_id == named["chit.attest"].span_id
    sent = documents.request_headers["/traced/jwks"][-1]["traceparent"]
    assert sent == f"00-{trace_id}-{fetch.span_id}-01"
    # What a span carries is what the audit line carries: never the token.
    assert response.json()["access_token"] not in json.dumps([span.attributes for span in spans])


@pytest.mark.parametrize("traceparent", [None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage"])
def test_without_a_valid_traceparent_an_exchange_starts_its_own_trace(
    chit: ChitServer, receiver: OtlpReceiver, documents: DocumentServer, traced_issuer: ClusterIssuer, traceparent: str | None
) -> None:
    documents.serve("/traced/jwks", traced_issuer.jwks())
    headers = {} if traceparent is None else {"traceparent": traceparent}
    response = chit.client.post(
        "/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
              "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": traced_issuer.token()},
        headers=headers,
    )
    decision_id = chit.audit_lines()[-1]["decision_id"]
    assert_issued(response)
    deadline = time.monotonic() + 10
    while not any(span.attributes.get("chit.decision_id") == decision_id for span in receiver.spans):
        assert time.monotonic() < deadline, "no span for the exchange"
        time.sleep(0.05)
    exchange = next(span for span in receiver.spans if span.attributes.get("chit.decision_id") == decision_id)
    assert exchange.parent_span_id == "" and exchange.trace_id != "0" * 32


def test_off_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    script = f"""
import sys
from chit.server.app import create_app
from chit.server.config import parse_config
create_app(parse_config({{"issuer": "http://127.0.0.1:8400", "signing": {{"keys_dir": "keys"}}}}, "(test)", __import__("pathlib").Path({str(tmp_path)!r})))
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_enabled_without_the_tracing_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(TracingUnavailable, match=r"pip install 'chit\[tracing\]'"):
        check_available(Tracing(enabled=True))
    check_available(Tracing(enabled=False))


def test_log_lines_of_a_traced_exchange_carry_its_trace_and_span_ids(chit: ChitServer, receiver: OtlpReceiver) -> None:
    """A key fetch that fails logs a warning inside the exchange: the line names the trace."""
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    response = chit.client.post(
        "/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
              "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": ClusterIssuer("unserved", UNSERVED, "ES256").token()},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 503
    lines = [json.loads(line) for line in chit.log().splitlines() if line.startswith("{")]
    (line,) = [line for line in lines if line.get("decision_id") == response.json()["decision_id"]]
    assert line["logger"] == "chit.jwks" and "could not be fetched" in line["message"] and line["trace_id"] == trace_id
    assert line["span_id"] in {span.span_id for span in receiver.trace(trace_id, count=3)}


@pytest.fixture(scope="module")
def aws_traced(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer,
               aws_regions: AwsRegions, moto: MotoServer, receiver: OtlpReceiver) -> Iterator[ChitServer]:
    """chit minting STS credentials against moto, traced."""
    directory = tmp_path_factory.mktemp("aws-traced")
    config = aws_chit_config(documents, aws_regions, copy_policy(directory / "policies", AWS_BINDINGS), endpoint_url=moto.url)
    env = {**AWS_TEST_ENV, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = ChitServer(directory, {**config, "tracing": {"enabled": True}}, env=env).start()
    yield server
    server.stop()


def test_sts_credentials_are_a_step_and_the_aws_call_a_client_span(aws_traced: ChitServer, receiver: OtlpReceiver, prod_issuer: ClusterIssuer) -> None:
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4736"
    response = aws_traced.client.post(
        "/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
              "subject_token": prod_issuer.token(service_account="deployer"), "requested_token_type": AWS_CREDENTIALS_TYPE},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 200, response.text
    named = by_name(receiver.trace(trace_id, count=len(STEPS) + 3))
    assert named["chit.sts"].parent_span_id == named["chit.mint"].span_id
    assume = named["STS.AssumeRole"]
    assert assume.kind == CLIENT and assume.parent_span_id == named["chit.sts"].span_id
    assert response.json()["aws_credentials"]["SecretAccessKey"] not in json.dumps([span.attributes for span in named.values()])


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, traced_issuer: ClusterIssuer,
             receiver: OtlpReceiver) -> Iterator[tuple[ChitServer, KubernetesApiStandIn]]:
    """chit checking each subject token with the cluster's TokenReview, traced."""
    directory = tmp_path_factory.mktemp("reviewed")
    (directory / "api-token").write_text("credential")
    api = KubernetesApiStandIn(traced_issuer, "credential")
    data = json.loads(json.dumps(TEST_BINDINGS))
    data["bindings"]["kubernetes"]["traced"] = data["bindings"]["kubernetes"]["prod"]
    config = {
        "policy": {"dir": str(copy_policy(directory / "policies", data))},
        "attestors": {"kubernetes": {"clusters": [
            {"name": "traced", "issuer": ISSUER, "jwks_uri": documents.url("/traced/jwks"), "audiences": ["chit"],
             "api": {"server": api.url(""), "token_file": str(directory / "api-token")}, "token_review": True}]}},
        "tracing": {"enabled": True},
    }
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = ChitServer(directory, config, env=env).start()
    yield server, api
    server.stop()
    api.stop()


def test_the_kubernetes_api_call_is_a_client_span_and_carries_the_trace(
    reviewed: tuple[ChitServer, KubernetesApiStandIn], receiver: OtlpReceiver, documents: DocumentServer, traced_issuer: ClusterIssuer
) -> None:
    server, api = reviewed
    documents.serve("/traced/jwks", traced_issuer.jwks())
    trace_id, token = "7bf92f3577b34da6a3ce929d0e0e4736", traced_issuer.token()
    response = server.client.post(
        "/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
              "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": token},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert_issued(response)
    spans = receiver.trace(trace_id, count=len(STEPS) + 2)
    attest = by_name(spans)["chit.attest"]
    (review,) = [span for span in spans if span.kind == CLIENT and span.parent_span_id == attest.span_id
                 and span.attributes.get("url.full", span.attributes.get("http.url", "")).endswith("/tokenreviews")]
    sent = api.request_headers["/apis/authentication.k8s.io/v1/tokenreviews"][-1]["traceparent"]
    assert sent == f"00-{trace_id}-{review.span_id}-01"
    # The subject token and chit's API credential go to the API server, never into a span.
    recorded = json.dumps([span.attributes for span in spans])
    assert token not in recorded and "credential" not in recorded
