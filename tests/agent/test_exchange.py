"""`chit exchange`, run as a process the way an agent, a shell script or an AWS SDK
runs it: evidence from each platform in, one credential on stdout; refusals as
RFC 6749 error text on stderr with a non-zero exit."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest

from tests.agent.conftest import CACHE, DB
from tests.factories import (
    MOTO_ACCOUNT,
    ChitServer,
    ClusterIssuer,
    GcpMetadataStandIn,
    GoogleSigner,
    HangingServer,
    HttpRelay,
    ImdsStandIn,
    TestCertificateAuthority,
    chit_command,
    client_env,
    closed_port_url,
    proxy_env,
    run_chit,
    tls_certificate_for_localhost,
)

ERROR_LINE = re.compile(r"chit exchange: (?P<error>[a-z_]+): (?P<description>.+?)( \(decision_id (?P<decision_id>[^)]+)\))?\n")


def token_file(directory: Path, token: str) -> Path:
    path = directory / "token"
    path.write_text(token)
    return path


def exchange(server: ChitServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_chit("exchange", "--server", server.url, *args, env=env)


def refusal(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one stderr line of a refused exchange, parsed; nothing on stdout."""
    assert result.returncode != 0 and result.stdout == "", result
    match = ERROR_LINE.fullmatch(result.stderr)
    assert match, result.stderr
    return match.groupdict()


# --- Kubernetes --------------------------------------------------------------------------------


def test_kubernetes_token_is_exchanged_and_the_token_alone_printed(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    subject = prod_issuer.token()
    result = exchange(chit, "--kubernetes", "--subject-token-file", str(token_file(tmp_path, subject)), "--audience", DB, "--scope", "read:db")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    token = result.stdout.removesuffix("\n")
    assert "\n" not in token
    _, claims = chit.verify_issued(token, DB)
    assert claims["sub"] == "spiffe://example.org/k8s/prod/ns/payments/sa/agent" and claims["scope"] == "read:db"


def test_audiences_and_scopes_repeat(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    path = str(token_file(tmp_path, prod_issuer.token()))
    result = exchange(chit, "--subject-token-file", path, "--audience", DB, "--audience", CACHE, "--scope", "read:db", "--scope", "write:db read:db")
    _, claims = chit.verify_issued(result.stdout.strip(), DB)
    assert claims["aud"] == [DB, CACHE] and claims["scope"] == "read:db write:db"


def test_json_output_is_chits_answer_with_the_expiry(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    before = time.time()
    result = exchange(chit, "--subject-token-file", str(token_file(tmp_path, prod_issuer.token())), "--output", "json")
    body = json.loads(result.stdout)
    assert body["token_type"] == "Bearer" and body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["expires_in"] == 900
    exp = jwt.decode(body["access_token"], options={"verify_signature": False})["exp"]
    assert before + 890 <= body["expires_at"] <= exp


def test_env_output_is_what_a_shell_evaluates(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    """Also: --server and the token file from CHIT_URL and CHIT_SUBJECT_TOKEN_FILE."""
    script = 'eval "$("$@" exchange --output env)" && printf "%s %s" "$CHIT_ACCESS_TOKEN" "$CHIT_TOKEN_EXPIRES_AT"'
    env = client_env(CHIT_URL=chit.url, CHIT_SUBJECT_TOKEN_FILE=str(token_file(tmp_path, prod_issuer.token())))
    result = subprocess.run(["bash", "-c", script, "bash", *chit_command()], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    token, expires_at = result.stdout.split(" ")
    _, claims = chit.verify_issued(token, "https://db.internal")
    assert int(expires_at) <= claims["exp"]


# --- proxies and TLS ------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[HttpRelay]:
    relay = HttpRelay()
    yield relay
    relay.stop()


def test_proxy_variables_of_the_environment_never_see_the_subject_token(
    chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path, proxy: HttpRelay
) -> None:
    """Clusters inject HTTP_PROXY and the like for other traffic; the subject token goes to chit alone."""
    path = str(token_file(tmp_path, prod_issuer.token()))
    result = exchange(chit, "--kubernetes", "--subject-token-file", path, "--audience", DB, env=proxy_env(proxy.url))
    assert result.returncode == 0, result.stderr
    chit.verify_issued(result.stdout.strip(), DB)
    assert proxy.requests == []


@pytest.mark.parametrize("how", ["--proxy", "CHIT_PROXY"])
def test_a_proxy_chosen_for_chit_is_the_one_used(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path, proxy: HttpRelay, how: str) -> None:
    decoy = HttpRelay(forward=False)  # what the environment names: never used
    path = str(token_file(tmp_path, prod_issuer.token()))
    args, env = ["--kubernetes", "--subject-token-file", path, "--audience", DB], proxy_env(decoy.url)
    if how == "--proxy":
        args += ["--proxy", proxy.url]
    else:
        env["CHIT_PROXY"] = proxy.url
    try:
        result = exchange(chit, *args, env=env)
    finally:
        decoy.stop()
    assert result.returncode == 0, result.stderr
    chit.verify_issued(result.stdout.strip(), DB)
    assert proxy.requests == [f"POST {chit.url}/token HTTP/1.1"] and decoy.requests == []


def test_a_proxy_that_is_down_is_worth_retrying_and_named(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    result = exchange(chit, "--subject-token-file", str(token_file(tmp_path, prod_issuer.token())), "--proxy", closed_port_url())
    assert result.returncode == 75
    assert refusal(result)["description"].startswith(f"{chit.url}/token did not answer through the proxy")


def test_ssl_cert_file_and_dir_still_name_the_cas_of_chits_certificate(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    """Not trusting the environment's proxies keeps the CA sources httpx read from it."""
    ca_file, certificate, key = tls_certificate_for_localhost(tmp_path)
    ca_dir = tmp_path / "cas"
    ca_dir.mkdir()
    subject_hash = subprocess.run(["openssl", "x509", "-noout", "-subject_hash", "-in", str(ca_file)], capture_output=True, text=True, check=True)
    (ca_dir / f"{subject_hash.stdout.strip()}.0").write_bytes(ca_file.read_bytes())
    front = HttpRelay(upstream=chit.url, tls=(certificate, key))
    args = ["--subject-token-file", str(token_file(tmp_path, prod_issuer.token())), "--audience", DB]
    try:
        untrusted = run_chit("exchange", "--server", front.url, *args)
        trusted = {
            "SSL_CERT_FILE": run_chit("exchange", "--server", front.url, *args, env={"SSL_CERT_FILE": str(ca_file)}),
            "SSL_CERT_DIR": run_chit("exchange", "--server", front.url, *args, env={"SSL_CERT_DIR": str(ca_dir)}),
            "--ca-file": run_chit("exchange", "--server", front.url, *args, "--ca-file", str(ca_file)),
        }
    finally:
        front.stop()
    assert untrusted.returncode == 1 and "TLS certificate is not trusted" in untrusted.stderr
    for source, result in trusted.items():
        assert result.returncode == 0, (source, result.stderr)
        chit.verify_issued(result.stdout.strip(), DB)


# --- refusals and failures ------------------------------------------------------------------------


def test_a_refusal_is_rfc6749_error_text_naming_the_decision(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    result = exchange(chit, "--subject-token-file", str(token_file(tmp_path, prod_issuer.token())), "--scope", "admin")
    assert result.returncode == 1
    error = refusal(result)
    assert error["error"] == "invalid_scope"
    assert chit.audit_for(error["decision_id"])["outcome"] == "denied"


def test_an_invalid_subject_token_is_refused_without_echoing_it(chit: ChitServer, tmp_path: Path) -> None:
    stranger = ClusterIssuer("stranger", "https://stranger.k8s.chit.test").token()
    result = exchange(chit, "--subject-token-file", str(token_file(tmp_path, stranger)))
    assert refusal(result)["error"] == "invalid_request"
    for part in stranger.split("."):
        assert part not in result.stderr


@pytest.mark.parametrize("outage", ["connection refused", "no answer"])
def test_chit_unreachable_is_worth_retrying(prod_issuer: ClusterIssuer, tmp_path: Path, outage: str) -> None:
    hanging = HangingServer() if outage == "no answer" else None
    try:
        url = hanging.url if hanging else closed_port_url()
        path = str(token_file(tmp_path, prod_issuer.token()))
        result = run_chit("exchange", "--server", url, "--subject-token-file", path, "--timeout", "1")
    finally:
        if hanging:
            hanging.stop()
    assert result.returncode == 75  # EX_TEMPFAIL
    assert refusal(result)["error"] == "temporarily_unavailable"


def test_no_evidence_names_where_it_looked(chit: ChitServer, tmp_path: Path) -> None:
    result = exchange(chit, "--kubernetes", "--subject-token-file", str(tmp_path / "missing"))
    assert result.returncode == 1
    error = refusal(result)
    assert error["error"] == "invalid_request" and error["description"] == f"no Kubernetes token file at {tmp_path / 'missing'}"


def test_auto_without_any_platform_lists_every_place_it_looked(chit: ChitServer, tmp_path: Path) -> None:
    places = ["--subject-token-file", str(tmp_path / "missing"), "--gcp-metadata-url", closed_port_url(), "--imds-url", closed_port_url()]
    description = refusal(exchange(chit, *places))["description"]
    assert description.startswith("no platform found: no Kubernetes token file")
    assert "no GCP metadata server" in description and "no EC2 instance metadata service" in description
    # Inside a pod, the node's cloud identity is not the workload's: auto does not look for it.
    in_pod = refusal(exchange(chit, *places, env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"}))["description"]
    assert "GCP" not in in_pod and "EC2" not in in_pod and "inside a Kubernetes pod" in in_pod


@pytest.mark.parametrize(
    "args, message",
    [
        (["--token-type", "access_token", "--output", "credential-process"], "credential-process needs token-type aws-credentials"),
        (["--server", "ftp://chit.example"], "is not chit's base URL"),
        (["--kubernetes", "--aws"], "not allowed with argument"),
        (["--timeout", "0"], "is not a number of seconds"),
        (["--proxy", "socks5://user:secret@127.0.0.1:1080"], "not a proxy URL"),
        (["--proxy", "http://user:secret@127.0.0.1:3128"], "proxy credentials are not supported"),
        (["--server", "http://chit.chit.svc.cluster.local"], "would cross the network in clear"),
        (["--ca-file", "/nonexistent/ca.crt"], "--ca-file (or $CHIT_CA_FILE) /nonexistent/ca.crt: No such file or directory"),
        (["--ca-file", "/dev/null"], "--ca-file (or $CHIT_CA_FILE) /dev/null: no PEM CA certificate in it"),
    ],
)
def test_usage_errors_exit_2(chit: ChitServer, args: list[str], message: str) -> None:
    result = exchange(chit, *args)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def test_without_a_server_url_nothing_is_collected(tmp_path: Path) -> None:
    result = run_chit("exchange", "--subject-token-file", str(tmp_path / "token"))
    assert result.returncode == 2 and "--server URL is required (or set $CHIT_URL)" in result.stderr


# --- HTTPS --------------------------------------------------------------------------------------------


def test_https_with_chits_ca_from_the_option_or_the_environment(tls_chit: ChitServer, tls_ca: TestCertificateAuthority, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    ca_file = tls_ca.write(tmp_path / "ca.crt")
    path = str(token_file(tmp_path, prod_issuer.token()))
    for args, env in ((["--ca-file", str(ca_file)], None), ([], {"CHIT_CA_FILE": str(ca_file)})):
        result = exchange(tls_chit, "--subject-token-file", path, "--audience", DB, *args, env=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        _, claims = tls_chit.verify_issued(result.stdout.strip(), DB)
        assert claims["iss"] == tls_chit.url


@pytest.mark.parametrize("trusted", ["the public CAs", "another CA"])
def test_an_untrusted_certificate_is_a_clear_error_not_worth_retrying(tls_chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path, trusted: str) -> None:
    args = ["--subject-token-file", str(token_file(tmp_path, prod_issuer.token()))]
    if trusted == "another CA":
        args += ["--ca-file", str(TestCertificateAuthority("another CA").write(tmp_path / "other-ca.crt"))]
    result = exchange(tls_chit, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = refusal(result)
    assert error["error"] == "invalid_request"
    assert error["description"].startswith(f"{tls_chit.url}/token: chit's TLS certificate is not trusted: unable to get local issuer certificate; checked against ")
    assert ("--ca-file or $CHIT_CA_FILE" in error["description"]) == (trusted == "the public CAs")


# --- AWS and GCP ------------------------------------------------------------------------------------


def test_ec2_instance_is_exchanged_with_its_persisted_nonce(aws_chit: ChitServer, imds: ImdsStandIn, ec2_instance: dict, tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonce"
    args = ["--aws", "--imds-url", imds.url, "--nonce-file", str(nonce_file), "--audience", DB]
    first = exchange(aws_chit, *args)
    assert first.returncode == 0, first.stderr
    _, claims = aws_chit.verify_issued(first.stdout.strip(), DB)
    assert claims["sub"] == f"spiffe://example.org/aws/{MOTO_ACCOUNT}/us-east-1/{ec2_instance['InstanceId']}"
    # The instance is now bound to the nonce in the file: the next exchange reuses it...
    assert exchange(aws_chit, *args).returncode == 0
    # ...and a lost nonce file locks the instance out (until `chit aws forget-instance`).
    nonce_file.unlink()
    lost = refusal(exchange(aws_chit, *args))
    assert lost["error"] == "invalid_request" and "bound to another nonce" in lost["description"], lost


def test_compute_engine_vm_is_exchanged_for_chits_own_audience(gcp_chit: ChitServer, gcp_metadata: GcpMetadataStandIn, gcp_signer: GoogleSigner) -> None:
    result = exchange(gcp_chit, "--gcp", "--gcp-metadata-url", gcp_metadata.url, "--audience", DB)
    assert result.returncode == 0, result.stderr
    _, claims = gcp_chit.verify_issued(result.stdout.strip(), DB)
    assert claims["att"] == {"kind": "gcp", "project_id": gcp_signer.project_id, "zone": "europe-west1-b", "instance_id": "4520031799277581759"}
    # The identity token's audience defaulted to the --server URL, chit's issuer.
    assert gcp_metadata.requests[0].query["audience"] == [gcp_chit.url]
