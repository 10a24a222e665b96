"""Shared fixtures: one document server, two test cluster issuers, and a chit
server that trusts both (session-scoped: starting chit costs about a second);
for AWS, a real local AWS API (moto), test region certificates and a chit
server that verifies instance identity documents against both."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.factories import (
    AWS_TEST_ENV,
    MOTO_ACCOUNT,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    HangingServer,
    MotoServer,
    RedisServer,
    RegionCertificate,
    TestCertificateAuthority,
    closed_port_url,
    copy_policy,
    write_certificates,
)
from tests.redis_sentinel import SentinelGroup

PROD_ISSUER = "https://prod.k8s.chit.test"
STAGING_ISSUER = "https://staging.k8s.chit.test"

TEST_BINDINGS = {
    "bindings": {
        "kubernetes": {
            "prod": {
                "payments": {
                    "agent": {
                        "scope": ["read:db", "write:db"],
                        "audience": ["https://db.internal", "https://cache.internal"],
                        "ttl": 900,
                    },
                    "short-lived": {"scope": ["read:db"], "audience": ["https://db.internal"], "ttl": 120},
                    "eu-only": {"scope": ["read:db"], "audience": ["https://db.internal"], "regions": ["eu-west-1"]},
                    "no-audience": {"scope": ["read:db"], "audience": []},
                    # docs/reference/http-api.md "Reserved audience": policies that list it; chit never grants it.
                    "sts-only": {"scope": ["read:db"], "audience": ["sts.amazonaws.com"]},
                    "sts-first": {"scope": ["read:db"], "audience": ["sts.amazonaws.com", "https://db.internal"]},
                    "sts-url": {"scope": ["read:db"], "audience": ["https://STS.amazonaws.com/"]},
                },
                "ops": {"orchestrator": {"scope": ["delegate"], "audience": ["https://db.internal"]}},
            },
            "staging": {"payments": {"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
        },
        # The account of the real AWS-signed vectors (tests/attestors/aws_iid/vectors).
        "aws_iid": {"975050371289": {"us-east-1": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
    }
}


@pytest.fixture(scope="session")
def documents() -> Iterator[DocumentServer]:
    server = DocumentServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prod_issuer(documents: DocumentServer) -> ClusterIssuer:
    """An RS256 issuer whose JWKS chit fetches over HTTP."""
    issuer = ClusterIssuer("prod", PROD_ISSUER, "RS256")
    documents.serve("/prod/openid/v1/jwks", issuer.jwks())
    return issuer


@pytest.fixture(scope="session")
def staging_issuer() -> ClusterIssuer:
    """An ES256 issuer whose JWKS chit reads from a file."""
    return ClusterIssuer("staging", STAGING_ISSUER, "ES256")


def cluster_config(documents: DocumentServer, staging_jwks: Path) -> list[dict]:
    return [
        {
            "name": "prod",
            "issuer": PROD_ISSUER,
            "jwks_uri": documents.url("/prod/openid/v1/jwks"),
            "audiences": ["chit"],
            "region": "us-east-1",
        },
        {"name": "staging", "issuer": STAGING_ISSUER, "jwks_file": str(staging_jwks), "audiences": ["chit"]},
    ]


@pytest.fixture(scope="session")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, staging_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("chit")
    staging_jwks = directory / "staging-jwks.json"
    staging_jwks.write_text(json.dumps(staging_issuer.jwks()))
    policy_dir = copy_policy(directory / "policies", TEST_BINDINGS)
    server = ChitServer(
        directory,
        {
            "trust_domain": "example.org",
            "policy": {"dir": str(policy_dir)},
            "attestors": {"kubernetes": {"clusters": cluster_config(documents, staging_jwks)}},
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> TestCertificateAuthority:
    """The private CA of chit's TLS certificate (cert-manager's CA issuer in deploy/)."""
    return TestCertificateAuthority()


@pytest.fixture(scope="session")
def tls_chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, tls_ca: TestCertificateAuthority) -> Iterator[ChitServer]:
    """`chit` over HTTPS, with a certificate `tls_ca` issued for 127.0.0.1 (prod cluster only)."""
    directory = tmp_path_factory.mktemp("tls-chit")
    clusters = cluster_config(documents, Path("/nonexistent"))[:1]
    config = {"policy": {"dir": str(copy_policy(directory / "policies", TEST_BINDINGS))}, "attestors": {"kubernetes": {"clusters": clusters}}}
    server = ChitServer(directory, config, tls=tls_ca).start()
    yield server
    server.stop()


# --- AWS ------------------------------------------------------------------------------

ROLE_AGENT = f"arn:aws:iam::{MOTO_ACCOUNT}:role/agent"
ROLE_DESCRIBER = f"arn:aws:iam::{MOTO_ACCOUNT}:role/describer"
ROLE_DEPLOYER = f"arn:aws:iam::{MOTO_ACCOUNT}:role/deployer"
SESSION_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::artifacts/*"}],
}
AWS_BINDINGS = {
    "bindings": {
        "kubernetes": {
            "prod": {
                "payments": {
                    "agent": {"scope": ["read:db"], "audience": ["https://db.internal"]},
                    "deployer": {"aws": {"role_arn": ROLE_DEPLOYER, "session_policy": SESSION_POLICY, "tags": {"team": "payments"}}},
                    "short-lived": {"ttl": 300, "aws": {"role_arn": ROLE_DEPLOYER}},
                    "tag-thief": {"aws": {"role_arn": ROLE_DEPLOYER, "tags": {"CHIT:subject": "spiffe://example.org/k8s/prod/ns/ops/sa/admin"}}},
                    # A role, and (wrongly) the reserved audience: STS credentials yes, a JWT for STS never.
                    "sts-audience": {"audience": ["sts.amazonaws.com"], "aws": {"role_arn": ROLE_DEPLOYER}},
                }
            }
        },
        "aws_iid": {
            MOTO_ACCOUNT: {
                "us-east-1": {
                    "scope": ["read:db"],
                    "audience": ["https://db.internal"],
                    "tags": {"team": "payments"},
                    "aws": {"role_arn": ROLE_AGENT},
                }
            }
        },
    }
}


@dataclass
class AwsRegions:
    """Test stand-ins for AWS's region certificates, as chit's `certificates_dir`."""

    directory: Path
    us_east_1: RegionCertificate  # signature/us-east-1.pem
    us_east_1_rsa2048: RegionCertificate  # rsa2048/us-east-1.pem
    eu_west_1: RegionCertificate  # signature/eu-west-1.pem
    expired: RegionCertificate  # signature/eu-west-2.pem
    not_yet_valid: RegionCertificate  # signature/eu-west-3.pem
    not_allowed: RegionCertificate  # signature/ap-south-1.pem, outside the `regions` allowlist


@pytest.fixture(scope="session")
def aws_regions(tmp_path_factory: pytest.TempPathFactory) -> AwsRegions:
    now = time.time()
    regions = AwsRegions(
        directory=tmp_path_factory.mktemp("aws-certificates"),
        us_east_1=RegionCertificate(),
        us_east_1_rsa2048=RegionCertificate(),
        eu_west_1=RegionCertificate(),
        expired=RegionCertificate(valid_from=now - 400 * 86400, valid_until=now - 86400),
        not_yet_valid=RegionCertificate(valid_from=now + 86400, valid_until=now + 400 * 86400),
        not_allowed=RegionCertificate(),
    )
    write_certificates(
        regions.directory,
        {
            "signature": {
                "us-east-1": regions.us_east_1,
                "eu-west-1": regions.eu_west_1,
                "eu-west-2": regions.expired,
                "eu-west-3": regions.not_yet_valid,
                "ap-south-1": regions.not_allowed,
            },
            "rsa2048": {"us-east-1": regions.us_east_1_rsa2048},
        },
    )
    return regions


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    iam = server.client("iam")
    for role in ("agent", "deployer", "describer"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    yield server
    server.stop()


def aws_chit_config(documents: DocumentServer, aws_regions: AwsRegions, policy_dir: Path, **aws: object) -> dict:
    """chit with the prod cluster and the test AWS regions, calling `aws.endpoint_url`."""
    return {
        "trust_domain": "example.org",
        "policy": {"dir": str(policy_dir)},
        "attestors": {
            "kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]},
            "aws_iid": {
                "certificates_dir": str(aws_regions.directory),
                "regions": ["us-east-1", "eu-west-1", "eu-west-2", "eu-west-3"],
                "account_ids": [MOTO_ACCOUNT, "210987654321"],
                "verify_instance": True,
            },
        },
        "aws": {"region": "us-east-1", "sts_mode": "assume_role", **aws},
    }


@pytest.fixture(scope="session")
def aws_chit(
    tmp_path_factory: pytest.TempPathFactory,
    documents: DocumentServer,
    prod_issuer: ClusterIssuer,
    aws_regions: AwsRegions,
    moto: MotoServer,
) -> Iterator[ChitServer]:
    """chit verifying instances and minting STS credentials against moto (assume_role mode)."""
    directory = tmp_path_factory.mktemp("aws-chit")
    policy_dir = copy_policy(directory / "policies", AWS_BINDINGS)
    config = aws_chit_config(documents, aws_regions, policy_dir, endpoint_url=moto.url)
    # DescribeInstances through a role chit assumes in the instances' account.
    config["attestors"]["aws_iid"]["describe_roles"] = {MOTO_ACCOUNT: ROLE_DESCRIBER}
    server = ChitServer(directory, config, env=AWS_TEST_ENV).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["connection refused", "no answer"])
def outage_chit(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    documents: DocumentServer,
    prod_issuer: ClusterIssuer,
    aws_regions: AwsRegions,
) -> Iterator[ChitServer]:
    """chit whose AWS endpoint refuses connections, or accepts them and never answers."""
    hanging = HangingServer() if request.param == "no answer" else None
    endpoint = hanging.url if hanging else closed_port_url()
    directory = tmp_path_factory.mktemp("aws-outage")
    policy_dir = copy_policy(directory / "policies", AWS_BINDINGS)
    config = aws_chit_config(documents, aws_regions, policy_dir, endpoint_url=endpoint, timeout_seconds=1)
    server = ChitServer(directory, config, env=AWS_TEST_ENV).start()
    yield server
    server.stop()
    if hanging:
        hanging.stop()


# --- Redis ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the tests that share it (each uses its own keys or flushes)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test module's own, for modules that kill it or need it empty
    (`redis_server` is the one the session shares)."""
    server = RedisServer(tmp_path_factory.mktemp("own-redis")).start()
    yield server
    server.stop()


SENTINEL_PASSWORD = "s3ntinel-and-redis-password"


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A primary, its replica and three sentinels, every one of them protected by
    SENTINEL_PASSWORD, for the tests that share them (none kills a node: those start their own)."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), password=SENTINEL_PASSWORD).start()
    yield group
    group.stop()
