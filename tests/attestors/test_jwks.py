"""Where verification keys come from, and what happens when that source fails:
cached keys keep working, an unknown kid costs at most one fetch per 30 s, and a
check that cannot be made is a 503, never a token. Which keys of a source are
used at all: only strong ones whose JWK says what they are."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import jwt
import pytest

from chit.attestors.base import InvalidEvidence
from chit.attestors.jwks import RemoteKeySource, http_client
from tests.factories import (
    KeySourceClock,
    WEAK_KEY_KINDS,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    WeakKey,
    assert_issued,
    assert_refused,
    copy_policy,
    free_port,
    weak_keys,
)


@pytest.fixture(scope="module")
def weak() -> dict[str, WeakKey]:
    return weak_keys("weak")


@pytest.fixture(scope="module")
def issuers(documents: DocumentServer, weak: dict[str, WeakKey]) -> dict[str, ClusterIssuer]:
    found = {}
    for name in ("flaky", "rotating", "flood", "down", "garbage", "deep", "slow", "private", "weak"):
        issuer = ClusterIssuer(name, f"https://{name}.k8s.chit.test")
        found[name] = issuer
        documents.serve(f"/{name}/jwks", issuer.jwks())
    documents.serve("/garbage/jwks", b"<html>not json</html>")
    documents.serve("/deep/jwks", b"[" * 50_000 + b"]" * 50_000)  # JSON, nested deeper than Python parses
    documents.delays["/slow/jwks"] = 7
    private = found["private"]
    leaked = dict(private.jwk, d="AQAB")  # a JWKS that (wrongly) carries a private member
    documents.serve("/private/jwks", {"keys": [leaked]})
    # One good key among keys that must never verify anything.
    documents.serve("/weak/jwks", {"keys": [*(key.jwk for key in weak.values()), found["weak"].jwk]})
    for name in ("disco", "impostor"):
        issuer = ClusterIssuer(name, documents.url(f"/{name}"))
        found[name] = issuer
        documents.serve(f"/{name}/keys", issuer.jwks())
        documents.serve(
            f"/{name}/.well-known/openid-configuration",
            {"issuer": issuer.issuer if name == "disco" else "https://someone-else.example", "jwks_uri": documents.url(f"/{name}/keys")},
        )
    return found


@pytest.fixture(scope="module")
def chit_jwks(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, issuers: dict[str, ClusterIssuer]) -> Iterator[ChitServer]:
    clusters = []
    for name, issuer in issuers.items():
        cluster = {"name": name, "issuer": issuer.issuer, "audiences": ["chit"]}
        if name in ("disco", "impostor"):
            cluster["discovery"] = True
        elif name == "down":
            cluster["jwks_uri"] = f"http://127.0.0.1:{free_port()}/jwks"  # nothing listens there
        else:
            cluster["jwks_uri"] = documents.url(f"/{name}/jwks")
        clusters.append(cluster)
    bindings = {name: {"payments": {"agent": {"scope": ["s"], "audience": ["https://x"]}}} for name in issuers}
    policy = tmp_path_factory.mktemp("jwks-policy")
    copy_policy(policy / "p", {"bindings": {"kubernetes": bindings}})
    server = ChitServer(
        tmp_path_factory.mktemp("chit-jwks"),
        {"policy": {"dir": str(policy / "p")}, "attestors": {"kubernetes": {"clusters": clusters}}},
    ).start()
    yield server
    server.stop()


def token_with_kid(issuer: ClusterIssuer, kid: str) -> str:
    return jwt.encode(issuer.claims(), issuer.private_key, algorithm="RS256", headers={"kid": kid})


def test_unreachable_jwks_with_nothing_cached_is_503(chit_jwks: ChitServer, issuers) -> None:
    body = assert_refused(chit_jwks.exchange(issuers["down"].token()), status=503, error="temporarily_unavailable")
    assert chit_jwks.audit_for(body["decision_id"])["outcome"] == "unavailable"


@pytest.mark.parametrize("name", ["garbage", "deep"])
def test_jwks_that_is_not_json_is_503(chit_jwks: ChitServer, issuers, name: str) -> None:
    assert_refused(chit_jwks.exchange(issuers[name].token()), status=503, error="temporarily_unavailable")


def test_jwks_that_times_out_is_503(chit_jwks: ChitServer, issuers) -> None:
    started = time.monotonic()
    assert_refused(chit_jwks.exchange(issuers["slow"].token()), status=503, error="temporarily_unavailable")
    assert time.monotonic() - started < 7


def test_private_key_in_a_jwks_is_never_used(chit_jwks: ChitServer, issuers) -> None:
    assert_refused(chit_jwks.exchange(issuers["private"].token()))


def test_cached_keys_keep_working_when_the_source_fails(chit_jwks: ChitServer, documents: DocumentServer, issuers) -> None:
    flaky = issuers["flaky"]
    assert_issued(chit_jwks.exchange(flaky.token()))
    documents.failures["/flaky/jwks"] = 500
    try:
        assert_issued(chit_jwks.exchange(flaky.token()))
        # An unknown kid cannot be checked while the source is down (or was
        # refetched moments ago): refused either way, never a token.
        response = chit_jwks.exchange(token_with_kid(flaky, "unknown-kid"))
        assert response.status_code in (400, 503) and "access_token" not in response.json()
    finally:
        del documents.failures["/flaky/jwks"]


def test_unknown_kid_flood_costs_at_most_one_fetch(chit_jwks: ChitServer, documents: DocumentServer, issuers) -> None:
    flood = issuers["flood"]
    assert_issued(chit_jwks.exchange(flood.token()))  # first fetch
    before = documents.hits.get("/flood/jwks", 0)
    for _ in range(30):
        assert_refused(chit_jwks.exchange(token_with_kid(flood, uuid.uuid4().hex)))
    assert documents.hits.get("/flood/jwks", 0) - before <= 1


def test_new_issuer_key_is_picked_up_after_the_refetch_interval(documents: DocumentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with the key source's clock in hand: a new kid is negatively cached
    for 30 s after the last fetch, then fetched once; the old key keeps working."""
    clock = KeySourceClock(monkeypatch)
    rotating = ClusterIssuer("rotating-in-process", "https://rotating.k8s.chit.test")
    successor = ClusterIssuer("rotating-in-process", rotating.issuer)
    path = "/rotating-in-process/jwks"
    documents.serve(path, {"keys": [rotating.jwk]})

    async def scenario() -> None:
        source = RemoteKeySource(jwks_uri=documents.url(path), client=http_client(), label="cluster rotating")
        try:
            assert (await source.key(rotating.kid)).kid == rotating.kid
            documents.serve(path, {"keys": [rotating.jwk, successor.jwk]})
            clock.advance(29)
            with pytest.raises(InvalidEvidence, match="signing key not known"):
                await source.key(successor.kid)
            assert documents.hits[path] == 1
            clock.advance(2)
            assert (await source.key(successor.kid)).kid == successor.kid
            assert (await source.key(rotating.kid)).kid == rotating.kid
            assert documents.hits[path] == 2
        finally:
            await source.close()

    asyncio.run(scenario())


def test_discovery_finds_the_jwks(chit_jwks: ChitServer, documents: DocumentServer, issuers) -> None:
    assert_issued(chit_jwks.exchange(issuers["disco"].token()))
    assert documents.hits.get("/disco/.well-known/openid-configuration", 0) >= 1


def test_discovery_document_naming_another_issuer_is_never_used(chit_jwks: ChitServer, documents: DocumentServer, issuers) -> None:
    body = assert_refused(chit_jwks.exchange(issuers["impostor"].token()), status=503, error="temporarily_unavailable")
    assert documents.hits.get("/impostor/keys", 0) == 0
    assert "another issuer" in " ".join(chit_jwks.audit_for(body["decision_id"])["reasons"])
    assert "another issuer" in chit_jwks.log()


@pytest.mark.parametrize("name", WEAK_KEY_KINDS)
def test_a_weak_or_mislabelled_key_never_verifies_and_the_good_keys_keep_working(
    chit_jwks: ChitServer, issuers, weak: dict[str, WeakKey], name: str
) -> None:
    """RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used" (and chit pins
    e = 65537); §3.4: ES256 is ECDSA "using P-256"; RFC 7517 §4.4: `alg` is "the
    algorithm intended for use with the key"."""
    issuer, key = issuers["weak"], weak[name]
    for _ in range(3):
        body = assert_refused(chit_jwks.exchange(key.token(issuer.claims())))
        assert chit_jwks.audit_for(body["decision_id"])["outcome"] == "invalid"
    assert_issued(chit_jwks.exchange(issuer.token()))
    assert chit_jwks.log().count(f"kid {key.kid!r} not used") == 1, chit_jwks.log()


def file_jwks_chit(directory: Path, issuer: ClusterIssuer, jwks: Path) -> ChitServer:
    """chit trusting `issuer` with the JWKS in the file `jwks`."""
    policy = copy_policy(directory / "p", {"bindings": {"kubernetes": {issuer.name: {"payments": {"agent": {"audience": ["https://x"]}}}}}})
    cluster = {"name": issuer.name, "issuer": issuer.issuer, "jwks_file": str(jwks), "audiences": ["chit"]}
    return ChitServer(directory / "chit", {"policy": {"dir": str(policy)}, "attestors": {"kubernetes": {"clusters": [cluster]}}}).start()


def rewrite_until_used(server: ChitServer, jwks: Path, successor: ClusterIssuer, keys: list[dict]) -> None:
    """Write `keys` to the JWKS file and wait until chit has re-read it (`successor` verifies)."""
    jwks.write_text(json.dumps({"keys": keys}))
    deadline = time.time() + 10
    while server.exchange(successor.token()).status_code != 200:
        assert time.time() < deadline, "the new JWKS file was not picked up"
        time.sleep(0.5)


def test_jwks_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    issuer = ClusterIssuer("filed", "https://filed.k8s.chit.test")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    server = file_jwks_chit(tmp_path, issuer, jwks)
    try:
        assert_issued(server.exchange(issuer.token()))
        successor = ClusterIssuer("filed", issuer.issuer)
        rewrite_until_used(server, jwks, successor, [successor.jwk])
        assert_refused(server.exchange(issuer.token()))  # the replaced key is gone
    finally:
        server.stop()


def test_a_skipped_key_is_logged_once_not_on_every_reread(tmp_path: Path) -> None:
    issuer = ClusterIssuer("filed", "https://filed.k8s.chit.test")
    weak = [key.jwk for key in weak_keys("filed").values()]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [issuer.jwk, *weak]}))
    server = file_jwks_chit(tmp_path, issuer, jwks)
    try:
        assert_issued(server.exchange(issuer.token()))
        successor = ClusterIssuer("filed", issuer.issuer)
        rewrite_until_used(server, jwks, successor, [issuer.jwk, successor.jwk, *weak])
        assert_issued(server.exchange(issuer.token()))
        for jwk in weak:
            assert server.log().count(f"kid {jwk['kid']!r} not used") == 1, server.log()
    finally:
        server.stop()
