"""Google's certificates: fetched, cached per their headers, refetched, and checked by google-auth;
in process where the HTTP round trip to chit adds nothing."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chit.attestors.base import EvidenceUnavailable
from tests.factories import (
    KeySourceClock,
    ChitServer,
    DocumentServer,
    GoogleSigner,
    assert_issued,
    assert_refused,
    copy_policy,
    free_port,
)
from tests.attestors.gcp.conftest import AUDIENCE, GCP_BINDINGS, gcp_server, unique_instance


# --- Google's certificates ----------------------------------------------------------------


def test_certificates_are_cached_per_their_cache_headers(chit_gcp: ChitServer, documents: DocumentServer, google: GoogleSigner) -> None:
    assert_issued(chit_gcp.exchange(google.token()))
    before = documents.hits["/google/certs"]
    for _ in range(10):
        assert_issued(chit_gcp.exchange(google.token(instance=unique_instance())))
    assert documents.hits["/google/certs"] == before  # max-age=3600: no request to Google


def test_unknown_kid_flood_costs_at_most_one_fetch(chit_gcp: ChitServer, documents: DocumentServer, google: GoogleSigner) -> None:
    assert_issued(chit_gcp.exchange(google.token()))
    before = documents.hits["/google/certs"]
    for _ in range(30):
        assert_refused(chit_gcp.exchange(google.token(kid=uuid.uuid4().hex)))
    assert documents.hits["/google/certs"] - before <= 1
    assert_issued(chit_gcp.exchange(google.token()))


def test_certificates_unreachable_with_nothing_cached_is_503(tmp_path: Path, google: GoogleSigner) -> None:
    policy = copy_policy(tmp_path / "policy", GCP_BINDINGS)
    down = f"http://127.0.0.1:{free_port()}/oauth2/v1/certs"  # nothing listens there
    server = ChitServer(tmp_path / "chit", {"policy": {"dir": str(policy)}, "attestors": {"gcp": {"certs_url": down, "audiences": [AUDIENCE]}}})
    server.start()  # Google being down does not block start or readiness
    try:
        body = assert_refused(server.exchange(google.token()), status=503, error="temporarily_unavailable")
        audit = server.audit_for(body["decision_id"])
        assert audit["outcome"] == "unavailable" and "Google's certificates" in " ".join(audit["reasons"])
        assert server.client.get("/readyz").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    "document",
    [b"<html>busy</html>", ["not", "an", "object"], {"kid": "not a certificate"}],
    ids=["not-json", "array", "bad-certificate"],
)
def test_unusable_certificates_are_never_a_token(tmp_path: Path, documents: DocumentServer, google: GoogleSigner, document: object) -> None:
    path = f"/unusable-{uuid.uuid4().hex}/certs"
    documents.serve(path, document)
    policy = copy_policy(tmp_path / "policy", GCP_BINDINGS)
    server = gcp_server(tmp_path / "chit", documents, path, policy=policy, audiences=[AUDIENCE]).start()
    try:
        response = server.exchange(google.token())
        assert response.status_code in (400, 503) and "access_token" not in response.json()
    finally:
        server.stop()


def test_stale_certificates_are_refetched_and_keep_working_when_google_is_down(documents: DocumentServer, google: GoogleSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Cache-Control: no-cache`: stale at once, so refetched (at most once per 30 s);
    when that refetch fails, the cached certificates keep working. In process, with
    the certificate cache's clock in hand."""
    from chit.attestors.gcp.certificates import GoogleCertificates
    from chit.attestors.jwks import http_client

    clock = KeySourceClock(monkeypatch)
    path = "/google-no-cache/certs"
    documents.serve(path, google.certs)
    documents.headers[path] = {"Cache-Control": "no-cache"}
    kid = next(iter(google.certs()))

    async def scenario() -> None:
        certificates = GoogleCertificates(documents.url(path), http_client())
        try:
            assert (await certificates.certificate(kid)).kid == kid
            assert documents.hits[path] == 1
            clock.advance(20)
            await certificates.certificate(kid)
            assert documents.hits[path] == 1  # within 30 s of the last fetch
            documents.failures[path] = 503
            clock.advance(11)
            assert (await certificates.certificate(kid)).kid == kid  # answered from the cache …
            for _ in range(100):  # … while the refresh runs beside it
                if documents.hits[path] == 2:
                    break
                await asyncio.sleep(0.02)
            assert documents.hits[path] == 2, "stale certificates were not refetched"
            assert (await certificates.certificate(kid)).kid == kid  # the failed refresh kept them
            # A kid that cannot be checked while Google is down: unavailable (503), never accepted.
            clock.advance(31)
            with pytest.raises(EvidenceUnavailable):
                await certificates.certificate(uuid.uuid4().hex)
        finally:
            documents.failures.pop(path, None)
            await certificates.close()

    asyncio.run(scenario())


# --- the pieces, in process ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Cache-Control": "public, max-age=19790, must-revalidate, no-transform"}, 19790),  # Google's
        ({"Cache-Control": "public, max-age=19790", "Age": "790"}, 19000),
        ({"Cache-Control": "max-age=60", "Age": "120"}, 0),
        ({"Cache-Control": "no-cache"}, 0),
        ({"Cache-Control": "no-store, max-age=600"}, 0),
        ({"Cache-Control": "max-age=-5"}, 0),
        ({"Cache-Control": "max-age=soon"}, 0),
        ({"Cache-Control": 'max-age="600"'}, 600),
        ({"Cache-Control": "max-age=\xb2".encode("latin-1")}, 0),  # '²' is a digit to str.isdigit
        ({"Cache-Control": "max-age=60", "Age": "\xb2".encode("latin-1")}, 60),
        ({"Expires": "Wed, 21 Oct 2026 07:28:00 GMT", "Date": "Wed, 21 Oct 2026 07:18:00 GMT"}, 600),
        ({"Expires": "0", "Date": "Wed, 21 Oct 2026 07:18:00 GMT"}, 0),  # RFC 9111 §5.3: already expired
        ({"Cache-Control": "max-age=600", "Expires": "Wed, 21 Oct 2026 07:18:00 GMT"}, 600),  # max-age wins
        ({"Cache-Control": "max-age=31536000"}, 86400),  # capped at a day
        ({"Cache-Control": "public"}, 300),
        ({}, 300),
    ],
)
def test_freshness_follows_the_cache_headers(headers: dict, expected: float) -> None:
    from chit.attestors.gcp.freshness import freshness_lifetime

    assert freshness_lifetime(httpx.Headers(headers)) == expected


def test_only_rsa_2048_e65537_certificates_are_kept() -> None:
    from chit.attestors.gcp.certificates import parse_certificates
    from tests.factories import self_signed_certificate

    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = {
        "good": self_signed_certificate(good, "google"),
        "small": self_signed_certificate(rsa.generate_private_key(public_exponent=65537, key_size=1024), "google"),
        "e3": self_signed_certificate(rsa.generate_private_key(public_exponent=3, key_size=2048), "google"),
        "ec": self_signed_certificate(ec.generate_private_key(ec.SECP256R1()), "google"),
        "garbage": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "number": 7,
        "": self_signed_certificate(good, "google"),
    }
    certificates = parse_certificates(document, "test")
    assert list(certificates) == ["good"]
    assert certificates["good"].algorithm == "RS256" and certificates["good"].pem == document["good"]
    with pytest.raises(ValueError):
        parse_certificates(["good"], "test")


def test_a_certificate_with_exponent_3_never_verifies_and_the_others_keep_working(
    tmp_path: Path, documents: DocumentServer
) -> None:
    """Google's certificates meet the same rule as every JWKS key (RFC 7518 §3.3, e = 65537)."""
    signer = GoogleSigner(AUDIENCE)
    weak_kid = signer.add_key(public_exponent=3)
    documents.serve("/google-weak/certs", signer.certs())
    server = gcp_server(tmp_path / "chit", documents, "/google-weak/certs", policy=copy_policy(tmp_path / "p", GCP_BINDINGS), audiences=[AUDIENCE])
    server.start()
    try:
        for _ in range(3):
            body = assert_refused(server.exchange(signer.token(kid=weak_kid)))
            assert server.audit_for(body["decision_id"])["outcome"] == "invalid"
        assert_issued(server.exchange(signer.token()))
        assert server.log().count(f"kid {weak_kid!r} not used: RSA-2048 with exponent 3") == 1, server.log()
    finally:
        server.stop()


def test_google_auth_is_never_called_without_an_audience(google: GoogleSigner) -> None:
    """google-auth skips the aud check when given None; chit's one call into it refuses first."""
    from chit.attestors.base import InvalidEvidence
    from chit.attestors.gcp.certificates import GoogleCertificate, verify_with_google_auth

    key = google.keys[google.kid]
    certificate = GoogleCertificate(google.kid, key.public_key(), "RS256", google.certificates[google.kid])
    token = google.token(aud="https://anyone.example")
    with pytest.raises(InvalidEvidence):
        verify_with_google_auth(token, certificate, ())
    with pytest.raises(InvalidEvidence):
        verify_with_google_auth(token, certificate, (AUDIENCE,))
    assert verify_with_google_auth(token, certificate, ("https://anyone.example",))["aud"] == "https://anyone.example"
