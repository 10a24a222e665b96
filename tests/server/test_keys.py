"""chit's signing keys: files, kid thumbprints, rotation with a grace period, and
a running server picking rotation up without a restart."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from chit.server.keys import KeyStore, ensure_signing_key, jwk_thumbprint, rotate
from tests.factories import ROOT, ChitServer, ClusterIssuer, assert_issued
from tests.conftest import PROD_ISSUER


def test_rfc_7638_thumbprint_example() -> None:
    """The worked example of RFC 7638 §3.1."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_first_key_is_created_private(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ensure_signing_key(keys_dir, "ES256")
    ensure_signing_key(keys_dir, "ES256")  # idempotent
    files = list(keys_dir.glob("signing-*.pem"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    key = KeyStore(keys_dir).signing_key(time.time())
    assert key is not None and key.kid == jwk_thumbprint(key.jwk)


@pytest.mark.parametrize("algorithm, kty", [("ES256", "EC"), ("RS256", "RSA"), ("EdDSA", "OKP")])
def test_each_algorithm_signs_tokens_its_jwk_verifies(tmp_path: Path, algorithm: str, kty: str) -> None:
    ensure_signing_key(tmp_path, algorithm)
    key = KeyStore(tmp_path).signing_key(time.time())
    assert key is not None and key.algorithm == algorithm and key.jwk["kty"] == kty
    token = jwt.encode({"sub": "x"}, key.private_key, algorithm=algorithm, headers={"kid": key.kid})
    assert jwt.decode(token, jwt.PyJWK(key.jwk), algorithms=[algorithm]) == {"sub": "x"}


def test_rotation_publishes_first_and_signs_after_the_grace_period(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    ensure_signing_key(tmp_path, "ES256")
    store = KeyStore(tmp_path)
    old = store.signing_key(time.time())
    assert old is not None
    new = rotate(tmp_path, "ES256", 300, now=now)
    store.reload(force=True)
    assert new.activates_at == int(now) + 300
    assert store.signing_key(now).kid == old.kid
    assert {k.kid for k in store.published(now)} == {old.kid, new.kid}
    assert store.signing_key(now + 300).kid == new.kid
    # The old key last signed at now + 300; its tokens live until now + 1200.
    assert old.kid in {k.kid for k in store.published(now + 300 + 899)}
    assert old.kid not in {k.kid for k in store.published(now + 300 + 900)}


def test_rotation_removes_keys_no_longer_published(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path, "ES256")
    first = KeyStore(tmp_path).keys[0]
    now = time.time()
    rotate(tmp_path, "ES256", 0, now=now)
    assert first.path.exists()  # still published for 900 s
    rotate(tmp_path, "ES256", 0, now=now + 1000)
    assert not first.path.exists()
    assert len(list(tmp_path.glob("signing-*.pem"))) == 2


def test_key_removed_while_the_directory_is_read_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`chit keys rotate` in another process may retire a file between the scan and its reading."""
    import chit.server.keys

    ensure_signing_key(tmp_path, "ES256")
    store = KeyStore(tmp_path)
    retiring = store.keys[0].path
    survivor = rotate(tmp_path, "ES256", 0, now=time.time())
    load = chit.server.keys.load_key_file

    def load_then_lose(path: Path, activates_at: int):
        key = load(path, activates_at)
        if path == retiring:
            path.unlink()
        return key

    monkeypatch.setattr(chit.server.keys, "load_key_file", load_then_lose)
    store.reload(force=True)
    assert [k.kid for k in store.keys] == [survivor.kid]


def test_two_rotations_keep_their_order(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path, "ES256")
    now = time.time()
    second = rotate(tmp_path, "ES256", 60, now=now)
    third = rotate(tmp_path, "ES256", 60, now=now)
    assert third.activates_at > second.activates_at


def test_running_server_picks_up_a_rotation(tmp_path: Path, documents, prod_issuer: ClusterIssuer) -> None:
    from tests.conftest import TEST_BINDINGS
    from tests.factories import copy_policy

    policy = copy_policy(tmp_path / "policies", TEST_BINDINGS)
    server = ChitServer(
        tmp_path / "chit",
        {
            "signing": {"keys_dir": "keys", "rotation_grace_seconds": 3},
            "policy": {"dir": str(policy)},
            "attestors": {"kubernetes": {"clusters": [{"name": "prod", "issuer": PROD_ISSUER, "jwks_uri": documents.url("/prod/openid/v1/jwks"), "audiences": ["chit"]}]}},
        },
    ).start()
    try:
        old_kid = server.jwks()["keys"][0]["kid"]
        result = subprocess.run(
            [sys.executable, "-m", "chit", "keys", "rotate", "--config", str(server.config_path)],
            capture_output=True, text=True, cwd=server.directory, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        rotated_at = time.monotonic()
        deadline = rotated_at + 30
        while len(server.jwks()["keys"]) < 2:
            assert time.monotonic() < deadline, "the new key was not published within 30 s"
            time.sleep(0.5)
        kids = {k["kid"] for k in server.jwks()["keys"]}
        new_kid = (kids - {old_kid}).pop()
        if time.monotonic() - rotated_at < 2.5:  # still inside the grace period
            token = assert_issued(server.exchange(prod_issuer.token()))["access_token"]
            assert jwt.get_unverified_header(token)["kid"] == old_kid
        time.sleep(max(0.0, 3.5 - (time.monotonic() - rotated_at)))
        token = assert_issued(server.exchange(prod_issuer.token()))["access_token"]
        assert jwt.get_unverified_header(token)["kid"] == new_kid
        assert {old_kid, new_kid} <= {k["kid"] for k in server.jwks()["keys"]}
        server.verify_issued(token, "https://db.internal")
    finally:
        server.stop()


def test_a_directory_with_keys_is_only_read(tmp_path: Path) -> None:
    """A Secret mount is read-only: with keys present nothing is written there."""
    ensure_signing_key(tmp_path, "ES256")
    (tmp_path / ".lock").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    ensure_signing_key(tmp_path, "ES256")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_key_and_no_way_to_create_one_is_a_clear_error(tmp_path: Path) -> None:
    from chit.server.keys import SigningKeyError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SigningKeyError, match="no ES256 signing key, and none can be created"):
        ensure_signing_key(blocker / "keys", "ES256")
