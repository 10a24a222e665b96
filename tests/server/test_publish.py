"""`chit keys export` and `chit keys publish`: the documents a relying party needs,
for an inline registration or on static hosting (S3, against moto's), with the issuer's
URLs wherever they are served from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import yaml

from chit.server.keys import KeySeries, KeyStore, ensure_signing_keys, rotate
from tests.factories import AWS_TEST_ENV, MotoServer, run_chit

ISSUER = "https://oidc.chit.test/tenant-a"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A chit whose issuer is public static hosting; its keys are ES256 and RS256."""
    path = tmp_path / "chit.yaml"
    path.write_text(yaml.safe_dump({"issuer": ISSUER, "signing": {"keys_dir": "keys", "algorithms": ["ES256", "RS256"], "rotation_grace_seconds": 600}}))
    ensure_signing_keys(tmp_path / "keys", KeySeries(("ES256", "RS256")))
    return path


def test_export_prints_every_published_key_the_next_one_included(config_file: Path) -> None:
    keys_dir = config_file.parent / "keys"
    upcoming = rotate(keys_dir, "RS256", 600, series=KeySeries(("ES256", "RS256")))
    result = run_chit("keys", "export", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    jwks = json.loads(result.stdout)
    published = KeyStore(keys_dir, KeySeries(("ES256", "RS256"))).published(time.time())
    assert [k["kid"] for k in jwks["keys"]] == [k.kid for k in published] and upcoming.kid in {k["kid"] for k in jwks["keys"]}
    for jwk in jwks["keys"]:
        assert jwk["use"] == "sig" and not {"d", "p", "q", "dp", "dq", "qi"} & jwk.keys()
        jwt.PyJWK(jwk)  # a usable public key


def test_export_of_an_empty_keys_dir_fails(tmp_path: Path) -> None:
    (tmp_path / "chit.yaml").write_text(yaml.safe_dump({"issuer": ISSUER, "signing": {"keys_dir": "keys"}}))
    (tmp_path / "keys").mkdir()
    result = run_chit("keys", "export", "--config", str(tmp_path / "chit.yaml"))
    assert result.returncode == 1 and "holds no key" in result.stderr and not result.stdout


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    moto = MotoServer(tmp_path_factory.mktemp("moto-s3")).start()
    yield moto
    moto.stop()


def test_publish_writes_discovery_and_jwks_at_the_issuers_paths(config_file: Path, s3: MotoServer) -> None:
    client = s3.client("s3")
    client.create_bucket(Bucket="chit-issuer")
    result = run_chit("keys", "publish", "--config", str(config_file), "--bucket", "chit-issuer", "--endpoint-url", s3.url,
                      env=AWS_TEST_ENV)
    assert result.returncode == 0, result.stderr
    assert "s3://chit-issuer/tenant-a/.well-known/openid-configuration" in result.stdout

    discovery = client.get_object(Bucket="chit-issuer", Key="tenant-a/.well-known/openid-configuration")
    assert discovery["ContentType"] == "application/json" and discovery["CacheControl"] == "public, max-age=300"
    document = json.loads(discovery["Body"].read())
    # The issuer's URLs, wherever the documents are served from.
    assert document["issuer"] == ISSUER and document["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert document["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    assert "token_endpoint" not in document  # the static host serves no endpoint

    jwks = client.get_object(Bucket="chit-issuer", Key="tenant-a/.well-known/jwks.json")
    assert jwks["ContentType"] == "application/jwk-set+json" and jwks["CacheControl"] == "public, max-age=60"
    kids = {k["kid"] for k in json.loads(jwks["Body"].read())["keys"]}
    assert kids == {k.kid for k in KeyStore(config_file.parent / "keys", KeySeries(("ES256", "RS256"))).keys}


def test_publish_under_a_chosen_prefix(config_file: Path, s3: MotoServer) -> None:
    client = s3.client("s3")
    client.create_bucket(Bucket="chit-prefixed")
    result = run_chit("keys", "publish", "--config", str(config_file), "--bucket", "chit-prefixed", "--prefix", "",
                      "--endpoint-url", s3.url, env=AWS_TEST_ENV)
    assert result.returncode == 0, result.stderr
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket="chit-prefixed")["Contents"])
    assert listed == [".well-known/jwks.json", ".well-known/openid-configuration"]


def test_publish_to_a_missing_bucket_fails_clearly(config_file: Path, s3: MotoServer) -> None:
    result = run_chit("keys", "publish", "--config", str(config_file), "--bucket", "no-such-bucket", "--endpoint-url", s3.url,
                      env=AWS_TEST_ENV)
    assert result.returncode == 1 and "cannot publish to s3://no-such-bucket" in result.stderr and "NoSuchBucket" in result.stderr


def test_rotate_fills_an_empty_directory_with_a_signing_key_per_series(tmp_path: Path) -> None:
    """What the Kubernetes Secret is made from: every series can sign at once."""
    (tmp_path / "chit.yaml").write_text(yaml.safe_dump({"issuer": ISSUER, "signing": {"keys_dir": "keys", "algorithms": ["ES256", "RS256"]}}))
    result = run_chit("keys", "rotate", "--config", str(tmp_path / "chit.yaml"))
    assert result.returncode == 0, result.stderr
    store = KeyStore(tmp_path / "keys", KeySeries(("ES256", "RS256")))
    assert {store.signing_key(time.time(), a).algorithm for a in ("ES256", "RS256")} == {"ES256", "RS256"}
    listed = run_chit("keys", "list", "--config", str(tmp_path / "chit.yaml"))
    assert sorted((line.split()[1], line.split()[2]) for line in listed.stdout.splitlines()) == [("ES256", "signing"), ("RS256", "signing")]
