"""`chit doctor` (docs/operators/doctor.md): each check against a real dependency that
answers and one that does not (or answers wrongly), in process; then the command as
an operator runs it: one line per check, the reason of each failure, exit 1 on any.
`chit config check` keeps checking the file only."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chit.server import doctor
from chit.server.config import Config, load_config, parse_config
from chit.server.doctor import Finding
from chit.server.keys import ensure_signing_key, write_key_file
from tests.conftest import SENTINEL_PASSWORD, TEST_BINDINGS
from tests.factories import (
    AWS_TEST_ENV,
    ROOT,
    ClusterIssuer,
    DocumentServer,
    GoogleServiceAccount,
    GoogleSigner,
    GoogleTokenEndpoint,
    KubernetesApiStandIn,
    MotoServer,
    OpaStandIn,
    RedisServer,
    closed_port_url,
    copy_policy,
    free_port,
    run_chit,
)
from tests.redis_sentinel import SERVICE, SentinelGroup

ISSUER = "https://doctor.k8s.chit.test"
OFF = {"aws_iid": {"enabled": False}, "gcp": {"enabled": False}}


def config(directory: Path, **document: Any) -> Config:
    attestors = {**OFF, **document.pop("attestors", {})}
    return parse_config({"issuer": "https://chit.corp.test", "trust_domain": "corp.test", "signing": {"keys_dir": "keys"},
                         "attestors": attestors, **document}, "(test)", directory)


def run(check: Any, settings: Config) -> list[Finding]:
    return asyncio.run(check(settings))


def statuses(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(finding.check, finding.status) for finding in findings]


# --- placeholders ---------------------------------------------------------------------------


def test_the_shipped_manifest_s_placeholders_are_warned_about(tmp_path: Path) -> None:
    shipped = load_config(ROOT / "deploy" / "base" / "chit.yaml")
    warned = {finding.detail.split(" is ")[0] for finding in doctor.placeholders(shipped)}
    assert {"issuer", "trust_domain", "attestors.kubernetes.clusters[0].issuer"} <= warned
    assert all(finding.status == "warn" for finding in doctor.placeholders(shipped))
    assert doctor.placeholders(config(tmp_path)) == []


# --- files -------------------------------------------------------------------------------------


def certificate_files(directory: Path, days: int, other_key: bool = False) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chit.chit.svc")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    served_key = ec.generate_private_key(ec.SECP256R1()) if other_key else key
    (directory / "tls.key").write_bytes(served_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
    return {"cert_file": "tls.crt", "key_file": "tls.key"}


def test_tls_reads_the_certificate_and_key_and_checks_their_dates(tmp_path: Path) -> None:
    settings = config(tmp_path, listen={"tls": certificate_files(tmp_path, days=90)})
    now = time.time()
    assert statuses(doctor.tls(settings, now)) == [("tls", "ok")]
    assert "CN=chit.chit.svc, valid until" in doctor.tls(settings, now)[0].detail
    assert statuses(doctor.tls(settings, now + 80 * 86400)) == [("tls", "warn")]  # 10 days left
    expired = doctor.tls(settings, now + 91 * 86400)
    assert statuses(expired) == [("tls", "fail")] and "expired on" in expired[0].detail
    assert "not valid yet" in doctor.tls(settings, now - 86400)[0].detail
    mismatched = config(tmp_path, listen={"tls": certificate_files(tmp_path, days=90, other_key=True)})
    failed = doctor.tls(mismatched, now)
    assert statuses(failed) == [("tls", "fail")] and "is not the key of the certificate" in failed[0].detail


def test_signing_keys_are_read_and_an_old_active_key_is_overdue(tmp_path: Path) -> None:
    settings = config(tmp_path)
    assert statuses(doctor.signing_keys(settings, time.time())) == [("signing keys", "warn")]  # none yet, can be created
    assert not (tmp_path / "keys").exists()  # the doctor creates nothing
    ensure_signing_key(tmp_path / "keys", "ES256")
    assert statuses(doctor.signing_keys(settings, time.time())) == [("signing keys ES256", "ok")]
    overdue = doctor.signing_keys(settings, time.time() + 91 * 86400)
    assert statuses(overdue) == [("signing keys ES256", "warn")] and "rotation overdue" in overdue[0].detail
    # Each series (signing.algorithms) needs its own active key.
    series = config(tmp_path, signing={"keys_dir": "keys", "algorithms": ["ES256", "RS256"]})
    missing = doctor.signing_keys(series, time.time())
    assert statuses(missing) == [("signing keys ES256", "ok"), ("signing keys RS256", "fail")] and "no RS256 key" in missing[1].detail
    write_key_file(tmp_path / "keys", "RS256", int(time.time()))
    assert statuses(doctor.signing_keys(series, time.time())) == [("signing keys ES256", "ok"), ("signing keys RS256", "ok")]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "signing-100-abcd.pem").write_text("not a key")
    failed = doctor.signing_keys(config(tmp_path, signing={"keys_dir": "broken"}), time.time())
    assert statuses(failed) == [("signing keys ES256", "fail")] and "no ES256 key is active" in failed[0].detail
    write_key_file(tmp_path / "later", "ES256", int(time.time()) + 3600)
    assert statuses(doctor.signing_keys(config(tmp_path, signing={"keys_dir": "later"}), time.time())) == [("signing keys ES256", "fail")]


def test_the_audit_file_must_be_writable(tmp_path: Path) -> None:
    assert statuses(doctor.audit_sink(config(tmp_path, audit={"sink": "audit.log"}))) == [("audit", "ok")]
    failed = doctor.audit_sink(config(tmp_path, audit={"sink": "no/such/dir/audit.log"}))
    assert statuses(failed) == [("audit", "fail")] and "cannot be written" in failed[0].detail


# --- the state store --------------------------------------------------------------------------


def test_redis_answers_or_the_reason_it_does_not(tmp_path: Path, redis_server: RedisServer) -> None:
    assert statuses(run(doctor.state, config(tmp_path))) == [("state", "ok")]  # memory
    found = run(doctor.state, config(tmp_path, state={"backend": "redis", "redis_url": redis_server.url}))
    assert statuses(found) == [("state", "ok")] and "0 replica(s) online" in found[0].detail
    port = free_port()
    down = run(doctor.state, config(tmp_path, state={"backend": "redis", "redis_url": f"redis://:hunter2@127.0.0.1:{port}/0", "timeout_ms": 300}))
    assert statuses(down) == [("state", "fail")]
    assert f"redis redis://127.0.0.1:{port}/0: redis: ConnectionError" in down[0].detail and "hunter2" not in down[0].detail
    unacknowledged = run(doctor.state, config(tmp_path, state={"backend": "redis", "redis_url": redis_server.url, "wait_for_replicas": 1}))
    assert statuses(unacknowledged) == [("state", "fail")] and "fewer than state.wait_for_replicas 1" in unacknowledged[0].detail


def test_through_sentinel_each_sentinel_and_the_primary_are_asked(tmp_path: Path, sentinel_group: SentinelGroup) -> None:
    (tmp_path / "password").write_text(SENTINEL_PASSWORD)
    dead = f"127.0.0.1:{free_port()}"
    state = {"backend": "redis", "sentinel": {"addresses": [*sentinel_group.addresses, dead], "service": SERVICE, "password_file": "password"},
             "password_file": "password", "wait_for_replicas": 1, "timeout_ms": 300}
    found = run(doctor.state, config(tmp_path, state=state))
    assert statuses(found) == [("sentinel", "ok")] * 3 + [("sentinel", "fail"), ("state", "ok")]
    assert f"{dead}: ConnectionError" in found[3].detail and "1 replica(s) online" in found[4].detail
    (tmp_path / "password").write_text("wrong")
    refused = run(doctor.state, config(tmp_path, state=state))
    assert all(finding.status == "fail" for finding in refused) and SENTINEL_PASSWORD not in json.dumps([f.detail for f in refused])


# --- the policy engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    with OpaStandIn.over(tmp_path_factory.mktemp("doctor-opa"), TEST_BINDINGS) as server:
        yield server


def test_the_policy_compiles_or_opa_answers_with_chit_s_decision(tmp_path: Path, opa: OpaStandIn) -> None:
    assert statuses(run(doctor.policy, config(tmp_path))) == [("policy", "ok")]  # the shipped policy, embedded
    broken = copy_policy(tmp_path / "broken", rego={"broken.rego": "package chit\n\nthis is not rego\n"})
    failed = run(doctor.policy, config(tmp_path, policy={"dir": str(broken)}))
    assert statuses(failed) == [("policy", "fail")] and "broken.rego" in failed[0].detail

    found = run(doctor.policy, config(tmp_path, policy={"engine": "opa", "opa_url": opa.url}))
    assert statuses(found) == [("policy", "ok")] and "defines data.chit.decision" in found[0].detail
    unreachable = closed_port_url()
    down = run(doctor.policy, config(tmp_path, policy={"engine": "opa", "opa_url": unreachable, "timeout_ms": 300}))
    assert statuses(down) == [("policy", "fail")] and down[0].detail == f"OPA at {unreachable} unreachable: ConnectError"


def test_opa_without_chit_s_policy_fails(tmp_path: Path, opa: OpaStandIn) -> None:
    """Healthy, but data.chit.decision is undefined there (OPA answers 200 without `result`)."""
    opa.fault(status=200, body={}, paths=["/v1/data/chit/decision"])
    try:
        failed = run(doctor.policy, config(tmp_path, policy={"engine": "opa", "opa_url": opa.url}))
    finally:
        opa.reset()
    assert statuses(failed) == [("policy", "fail")] and "does not define data.chit.decision" in failed[0].detail


# --- clusters ------------------------------------------------------------------------------------------


def cluster(**entry: Any) -> dict[str, Any]:
    return {"kubernetes": {"clusters": [{"name": "doc", "issuer": ISSUER, "audiences": ["chit"], **entry}]}}


def test_each_cluster_s_keys_are_fetched_as_chit_fetches_them(tmp_path: Path, documents: DocumentServer) -> None:
    issuer = ClusterIssuer("doc", ISSUER, "ES256")
    documents.serve("/doctor/jwks", issuer.jwks())
    found = run(doctor.clusters, config(tmp_path, attestors=cluster(jwks_uri=documents.url("/doctor/jwks"))))
    assert statuses(found) == [("cluster doc keys", "ok")] and "1 usable key(s)" in found[0].detail
    documents.failures["/doctor/jwks"] = 503
    try:
        failed = run(doctor.clusters, config(tmp_path, attestors=cluster(jwks_uri=documents.url("/doctor/jwks"))))
    finally:
        del documents.failures["/doctor/jwks"]
    assert statuses(failed) == [("cluster doc keys", "fail")] and "answered HTTP 503" in failed[0].detail
    # Discovery: the document must name the configured issuer.
    discovery_issuer = documents.url("/doctor-oidc")
    documents.serve("/doctor-oidc/.well-known/openid-configuration", {"issuer": discovery_issuer, "jwks_uri": documents.url("/doctor/jwks")})
    entry = {"name": "doc", "issuer": discovery_issuer, "discovery": True, "audiences": ["chit"]}
    found = run(doctor.clusters, config(tmp_path, attestors={"kubernetes": {"clusters": [entry]}}))
    assert statuses(found) == [("cluster doc keys", "ok")]
    missing = run(doctor.clusters, config(tmp_path, attestors=cluster(jwks_file="absent.json")))
    assert statuses(missing) == [("cluster doc keys", "fail")] and "No such file or directory" in missing[0].detail


def test_a_cluster_s_api_server_grants_what_its_checks_need(tmp_path: Path, documents: DocumentServer) -> None:
    issuer = ClusterIssuer("doc", ISSUER, "ES256")
    api = KubernetesApiStandIn(issuer, "chit-credential")
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    (tmp_path / "token").write_text("chit-credential")
    entry = dict(jwks_file="jwks.json", api={"server": api.url(""), "token_file": "token"}, token_review=True, pod_lookup=True)
    try:
        found = run(doctor.clusters, config(tmp_path, attestors=cluster(**entry)))
        assert statuses(found) == [("cluster doc keys", "ok"), ("cluster doc API", "ok"), ("cluster doc API", "ok")]
        api.permissions.discard(("get", "", "pods"))
        denied = run(doctor.clusters, config(tmp_path, attestors=cluster(**entry)))
        assert statuses(denied)[2] == ("cluster doc API", "fail") and "may not get pods" in denied[2].detail
        (tmp_path / "token").write_text("another-credential")
        refused = run(doctor.clusters, config(tmp_path, attestors=cluster(**entry)))
        assert statuses(refused)[1:] == [("cluster doc API", "fail")] * 2 and "HTTP 401" in refused[1].detail
    finally:
        api.stop()


# --- AWS and Google ---------------------------------------------------------------------------------------


def test_sts_answers_with_chit_s_identity(tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    assert run(doctor.aws, config(tmp_path)) == []  # nothing configured calls AWS
    found = run(doctor.aws, config(tmp_path, aws={"endpoint_url": moto.url}))
    assert statuses(found) == [("aws", "ok")] and "chit's AWS identity is arn:aws:" in found[0].detail
    down = run(doctor.aws, config(tmp_path, aws={"endpoint_url": closed_port_url(), "timeout_seconds": 1}))
    assert statuses(down) == [("aws", "fail")] and "EndpointConnectionError" in down[0].detail


def test_google_s_certificates_and_chit_s_google_credentials(
    tmp_path: Path, documents: DocumentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = GoogleSigner("https://chit.corp.test")
    documents.serve("/doctor-google/certs", signer.certs)
    gcp = {"enabled": True, "certs_url": documents.url("/doctor-google/certs")}
    found = run(doctor.google, config(tmp_path, attestors={"gcp": gcp}))
    assert statuses(found) == [("gcp certificates", "ok")]
    failed = run(doctor.google, config(tmp_path, attestors={"gcp": {**gcp, "certs_url": documents.url("/doctor-google/absent")}}))
    assert statuses(failed) == [("gcp certificates", "fail")] and "answered HTTP 404" in failed[0].detail

    endpoint = GoogleTokenEndpoint()
    try:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(endpoint.account("chit@corp-prod.iam.gserviceaccount.com").key_file(tmp_path / "sa.json")))
        verifying = {**gcp, "verify_instance": True}
        found = run(doctor.google, config(tmp_path, attestors={"gcp": verifying}))
        assert statuses(found) == [("gcp certificates", "ok"), ("gcp credentials", "ok")]
        stranger = GoogleServiceAccount("stranger@corp-prod.iam.gserviceaccount.com", endpoint.token_uri)  # unknown to Google
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(stranger.key_file(tmp_path / "stranger.json")))
        refused = run(doctor.google, config(tmp_path, attestors={"gcp": verifying}))
        assert statuses(refused) == [("gcp certificates", "ok"), ("gcp credentials", "fail")]
        assert "cannot be refreshed" in refused[1].detail
    finally:
        endpoint.stop()


# --- the command ------------------------------------------------------------------------------------------


def test_chit_doctor_prints_a_line_per_check_and_fails_on_any_failure(tmp_path: Path, redis_server: RedisServer) -> None:
    ensure_signing_key(tmp_path / "keys", "ES256")
    document = {"issuer": "https://chit.corp.test", "trust_domain": "corp.test", "signing": {"keys_dir": "keys"},
                "attestors": OFF, "state": {"backend": "redis", "redis_url": redis_server.url}}
    (tmp_path / "chit.yaml").write_text(json.dumps(document))
    healthy = run_chit("doctor", "--config", str(tmp_path / "chit.yaml"))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert lines[0] == f"chit doctor: {tmp_path / 'chit.yaml'}"
    assert [line.split(":")[0] for line in lines[1:-1]] == ["ok    tls", "ok    signing keys ES256", "ok    audit", "ok    state", "ok    policy"]
    assert lines[-1] == "chit doctor: 0 failed, 0 warning(s), 5 ok"

    document["state"]["redis_url"] = f"redis://127.0.0.1:{free_port()}/0"
    document["trust_domain"] = "example.org"
    (tmp_path / "chit.yaml").write_text(json.dumps(document))
    sick = run_chit("doctor", "--config", str(tmp_path / "chit.yaml"))
    assert sick.returncode == 1
    assert "WARN  placeholder: trust_domain is 'example.org'" in sick.stdout
    assert "FAIL  state: redis redis://127.0.0.1:" in sick.stdout and "ConnectionError" in sick.stdout
    assert sick.stdout.splitlines()[-1] == "chit doctor: 1 failed, 1 warning(s), 4 ok"
    # `chit config check` checks the file only: the same file passes it.
    checked = run_chit("config", "check", "--config", str(tmp_path / "chit.yaml"))
    assert checked.returncode == 0, checked.stderr
