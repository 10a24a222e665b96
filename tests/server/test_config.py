"""The configuration file: parsed once, strictly; a bad key stops the start with a
message naming the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chit.server.config import ConfigError, load_config
from tests.factories import ROOT

MINIMAL = "issuer: https://chit.example.org\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chit.yaml"
    path.write_text(text)
    return path


def test_minimal_config_has_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.issuer == "https://chit.example.org"
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8400)
    assert config.trust_domain == "example.org"
    assert config.signing.algorithm == "ES256" and config.signing.rotation_grace_seconds == 300
    assert config.signing.keys_dir == tmp_path / "var/keys"  # relative to the file
    assert config.tokens.ttl_seconds == 900
    assert config.policy.engine == "embedded" and config.policy.timeout_ms == 500 and config.policy.extra_dirs == []
    assert config.attestors.kubernetes.max_token_lifetime_seconds == 86400
    assert config.state.backend == "memory" and config.audit.sink == "stdout"
    assert config.token_endpoint == "https://chit.example.org/token"
    gcp = config.attestors.gcp
    assert gcp.enabled and gcp.audiences == [] and gcp.require_full_format
    assert gcp.certs_url == "https://www.googleapis.com/oauth2/v1/certs"
    assert gcp.project_ids is None and not gcp.single_use and not gcp.verify_instance
    assert gcp.compute_endpoint == "https://compute.googleapis.com" and gcp.compute_timeout_ms == 3000


@pytest.mark.parametrize(
    "text, key",
    [
        (MINIMAL + "listen: {host: 0.0.0.0, prot: 8400}\n", "listen.prot: unknown key"),
        (MINIMAL + "bogus: 1\n", "bogus: unknown key"),
        (MINIMAL + "tokens: {ttl_seconds: 901}\n", "tokens.ttl_seconds"),
        (MINIMAL + "tokens: {ttl_seconds: '900'}\n", "tokens.ttl_seconds"),
        (MINIMAL + "signing: {algorithm: HS256}\n", "signing.algorithm"),
        (MINIMAL + "policy: {engine: cedar}\n", "policy.engine"),
        ("listen: {port: 8400}\n", "issuer: Field required"),
        ("issuer: http://chit.example.org\n", "issuer"),
        ("issuer: https://chit.example.org/?x=1\n", "issuer"),
        (MINIMAL + "trust_domain: Example.ORG/x\n", "trust_domain"),
        (MINIMAL + "attestors:\n  kubernetes:\n    clusters:\n      - {name: prod, issuer: https://k8s, jwks_uri: http://10.0.0.1/jwks, audiences: [chit]}\n",
         "attestors.kubernetes.clusters[0].jwks_uri: jwks_uri must be an https:// URL"),
        (MINIMAL + "attestors:\n  kubernetes:\n    clusters:\n      - {name: prod, issuer: https://k8s, audiences: [chit]}\n",
         "set exactly one of jwks_uri, jwks_file, discovery"),
        (MINIMAL + "attestors:\n  kubernetes:\n    clusters:\n      - {name: prod, issuer: https://k8s, jwks_file: j, audiences: []}\n",
         "attestors.kubernetes.clusters[0].audiences"),
        (MINIMAL + "attestors:\n  kubernetes:\n    clusters:\n      - {name: Prod_1, issuer: https://k8s, jwks_file: j, audiences: [chit]}\n",
         "attestors.kubernetes.clusters[0].name"),
        (MINIMAL + "attestors:\n  kubernetes:\n    clusters:\n      - {name: a, issuer: https://k8s, jwks_file: j, audiences: [chit]}\n      - {name: a, issuer: https://k9s, jwks_file: j, audiences: [chit]}\n",
         "cluster name must be unique"),
        (MINIMAL + "attestors:\n  kubernetes:\n    clusters:\n      - {name: a, issuer: 'https://chit.example.org', jwks_file: j, audiences: [chit]}\n",
         "chit's own issuer"),
        (MINIMAL + "state: {backend: redis}\n", "backend redis needs redis_url"),
        (MINIMAL + "state: {backend: redis, redis_url: 'redis://r:6379', sentinel: {addresses: ['s:26379'], service: chit}}\n",
         "set either redis_url or sentinel"),
        (MINIMAL + "state: {backend: redis, sentinel: {addresses: ['s'], service: chit}}\n", "'s' is not host:port"),
        (MINIMAL + "state: {backend: redis, sentinel: {addresses: ['s:26379']}}\n", "state.sentinel.service: Field required"),
        (MINIMAL + "state: {wait_for_replicas: 1}\n", "need backend: redis"),
        (MINIMAL + "state: {backend: redis, redis_url: 'redis://:pw@r:6379', password_file: p}\n", "the password is given twice"),
        (MINIMAL + "log: {level: verbose}\n", "log.level: Input should be"),
        (MINIMAL + "tracing: {enabled: 'yes'}\n", "tracing.enabled: Input should be a valid boolean"),
        (MINIMAL + "dev: true\n", "dev: unknown key"),
        (MINIMAL + "attestors: {gcp: {certs_url: 'http://www.googleapis.com/oauth2/v1/certs'}}\n",
         "attestors.gcp.certs_url: certs_url must be an https:// URL"),
        (MINIMAL + "attestors: {gcp: {audiences: ['']}}\n", "attestors.gcp.audiences[0]"),
        (MINIMAL + "attestors: {gcp: {project_ids: []}}\n", "attestors.gcp.project_ids"),
        (MINIMAL + "attestors: {gcp: {project_ids: [Payments_Prod]}}\n", "'Payments_Prod' is not a Google Cloud project id"),
        (MINIMAL + "attestors: {gcp: {verify_instance: true, compute_endpoint: 'http://compute.googleapis.com'}}\n",
         "attestors.gcp.compute_endpoint: compute_endpoint must be an https:// URL"),
        (MINIMAL + "attestors: {gcp: {compute_endpoint: 'https://compute.googleapis.com/compute/v1'}}\n",
         "attestors.gcp.compute_endpoint: compute_endpoint must be a scheme and host only"),
        (MINIMAL + "attestors: {gcp: {compute_timeout_ms: 0}}\n", "attestors.gcp.compute_timeout_ms"),
        (MINIMAL + "attestors: {gcp: {verify_instance: true, require_full_format: false}}\n",
         "attestors.gcp: verify_instance: true needs require_full_format: true"),
        (MINIMAL + "listen: {tls: {cert_file: tls.crt}}\n", "listen.tls.key_file: Field required"),
        (MINIMAL + "listen: {tls: {cert_file: tls.crt, key_file: tls.key, ca_file: ca.crt}}\n", "listen.tls.ca_file: unknown key"),
        (MINIMAL + "listen: {tls: {cert_file: tls.crt, key_file: tls.key}, plain_http: true}\n",
         "listen: set either tls (HTTPS) or plain_http: true, not both"),
        (MINIMAL + "listen: {plain_http: 'yes'}\n", "listen.plain_http"),
        ("issuer: http://127.0.0.1:8400\nlisten: {tls: {cert_file: tls.crt, key_file: tls.key}}\n",
         "issuer must be an https:// URL when listen.tls is set"),
    ],
    ids=["typo", "unknown-top", "ttl-over-900", "ttl-string", "hs256", "engine", "no-issuer", "http-issuer", "issuer-query",
         "trust-domain", "jwks-http", "no-key-source", "no-audience", "cluster-name", "duplicate-cluster", "own-issuer", "redis-url", "redis-url-and-sentinel", "sentinel-address", "sentinel-service",
         "replicas-without-redis", "password-twice", "log-level", "tracing-enabled", "dev-key",
         "gcp-certs-http", "gcp-empty-audience", "gcp-empty-allowlist", "gcp-bad-project", "gcp-compute-http",
         "gcp-compute-path", "gcp-compute-timeout", "gcp-verify-standard-format",
         "tls-without-key", "tls-unknown-key", "tls-and-plain-http", "plain-http-string", "tls-http-issuer"],
)
def test_invalid_config_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert key in str(error.value), str(error.value)


def test_listen_tls_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "listen: {host: 0.0.0.0, port: 8443, tls: {cert_file: tls/tls.crt, key_file: /etc/chit-tls/tls.key}}\n"))
    assert config.listen.tls is not None and not config.listen.plain_http
    assert config.listen.tls.cert_file == tmp_path / "tls/tls.crt"
    assert config.listen.tls.key_file == Path("/etc/chit-tls/tls.key")
    assert config.listen.clear_text_refusal() is None
    assert load_config(write(tmp_path, MINIMAL)).listen.tls is None  # loopback: plain HTTP by default


def test_gcp_verify_instance_is_accepted(tmp_path: Path) -> None:
    text = MINIMAL + "attestors: {gcp: {verify_instance: true, compute_endpoint: 'http://127.0.0.1:9/', compute_timeout_ms: 1500}}\n"
    gcp = load_config(write(tmp_path, text)).attestors.gcp
    assert gcp.verify_instance and gcp.compute_endpoint == "http://127.0.0.1:9" and gcp.compute_timeout_ms == 1500


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate key 'issuer'"):
        load_config(write(tmp_path, MINIMAL + "issuer: https://other.example.org\n"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "absent.yaml")


def test_loopback_http_is_allowed_for_local_sources(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "issuer: http://127.0.0.1:8400\nattestors:\n  kubernetes:\n    clusters:\n"
            "      - {name: kind, issuer: https://kubernetes.default.svc, jwks_uri: 'http://localhost:6443/openid/v1/jwks', audiences: [chit]}\n",
        )
    )
    assert config.attestors.kubernetes.clusters[0].jwks_uri == "http://localhost:6443/openid/v1/jwks"


def run_chit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chit", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_serve_with_a_bad_key_stops_with_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "listen: {prot: 1}\n")
    result = run_chit("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}: invalid configuration" in result.stderr and "listen.prot: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "extra, named",
    [
        ("attestors: {aws_iid: {enabled: false}}\n", ["revocations"]),
        ("attestors: {gcp: {single_use: true}}\n", ["revocations", "nonce bindings", "single-use"]),
        ("rate_limits: {per_subject_per_minute: 10}\n", ["revocations", "nonce bindings", "rate limits"]),
    ],
)
def test_per_process_state_refuses_several_workers(tmp_path: Path, extra: str, named: list[str]) -> None:
    """With the memory backend each worker would keep its own revocations, bindings, uses and buckets."""
    path = write(tmp_path, MINIMAL + "signing: {keys_dir: keys}\n" + extra)
    result = run_chit("serve", "--config", str(path), "--workers", "2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--workers 2 needs state.backend: redis" in result.stderr
    assert all(name in result.stderr for name in named), result.stderr


def test_config_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "issuer: https://chit.example.org\nsigning: {keys_dir: keys}\n")
    result = run_chit("config", "check", cwd=tmp_path, env={"CHIT_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert "configuration and policy OK" in result.stdout


def test_no_config_at_all_is_a_clear_error(tmp_path: Path) -> None:
    result = run_chit("serve", cwd=tmp_path)
    assert result.returncode == 2 and "no configuration" in result.stderr


AWS_IID = MINIMAL + "attestors:\n  aws_iid:\n"


@pytest.mark.parametrize(
    "text, key",
    [
        (AWS_IID + "    regions: [us-east-1, Moon-1]\n", "attestors.aws_iid.regions: 'Moon-1' is not an AWS region name"),
        (AWS_IID + "    account_ids: ['12345']\n", "'12345' is not a 12-digit AWS account id"),
        (AWS_IID + "    account_ids: [123456789012]\n", "attestors.aws_iid.account_ids"),
        (AWS_IID + "    describe_roles: {'123456789012': not-an-arn}\n", "must map a 12-digit account id to an IAM role ARN"),
        (AWS_IID + "    binding_ttl_seconds: 0\n", "attestors.aws_iid.binding_ttl_seconds"),
        (AWS_IID + "    pkcs7: true\n", "attestors.aws_iid.pkcs7: unknown key"),
        (MINIMAL + "aws: {endpoint_url: 'http://10.0.0.1:4566'}\n", "aws.endpoint_url: endpoint_url must be an https:// URL"),
        (MINIMAL + "aws: {sts_mode: static_keys}\n", "aws.sts_mode"),
        (MINIMAL + "aws: {timeout_seconds: 0}\n", "aws.timeout_seconds"),
    ],
    ids=["region", "account-short", "account-int", "describe-role", "binding-ttl", "unknown", "endpoint-http", "sts-mode", "timeout"],
)
def test_invalid_aws_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert key in str(error.value).replace("\n", " "), str(error.value)


def test_aws_defaults_and_relative_certificates_dir(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, AWS_IID + "    certificates_dir: aws-certs\n"))
    assert config.attestors.aws_iid.certificates_dir == tmp_path / "aws-certs"
    assert config.attestors.aws_iid.enabled and not config.attestors.aws_iid.verify_instance
    assert config.attestors.aws_iid.describe_roles == {}
    assert (config.aws.region, config.aws.sts_mode, config.aws.timeout_seconds) == ("us-east-1", "assume_role", 5.0)


@pytest.mark.parametrize("content", [None, b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_serve_with_unusable_aws_certificates_stops_with_the_message(tmp_path: Path, content: bytes | None) -> None:
    certificates = tmp_path / "aws-certs"
    (certificates / "signature").mkdir(parents=True)
    if content is not None:
        (certificates / "signature" / "us-east-1.pem").write_bytes(content)
    path = write(tmp_path, AWS_IID + "    certificates_dir: aws-certs\nsigning: {keys_dir: keys}\n")
    result = run_chit("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert str(certificates) in result.stderr and "Traceback" not in result.stderr


def test_policy_extra_dirs_are_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "policy: {dir: policies, extra_dirs: [local, /etc/chit/policy.d]}\n"))
    assert config.policy.dir == tmp_path / "policies"
    assert config.policy.extra_dirs == [tmp_path / "local", Path("/etc/chit/policy.d")]
