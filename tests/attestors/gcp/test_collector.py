"""The GCP collector: the metadata server's identity token."""

from __future__ import annotations

from typing import Iterator

import httpx
import jwt
import pytest

from chit.attestors.base import CollectionFailed, PlatformAbsent
from chit.protocol import TOKEN_TYPE_JWT
from chit.attestors.gcp.collector import GcpCollector
from tests.factories import (
    ChitServer,
    GcpMetadataStandIn,
    GoogleSigner,
    ImdsStandIn,
    assert_issued,
    closed_port_url,
)
from tests.attestors.gcp.conftest import AUDIENCE, SUBJECT


# --- the collector (client side): the metadata server ---------------------------------------


@pytest.fixture
def metadata(google: GoogleSigner) -> Iterator[GcpMetadataStandIn]:
    stand_in = GcpMetadataStandIn(google)
    yield stand_in
    stand_in.stop()


def test_the_metadata_stand_in_is_as_strict_as_googles(metadata: GcpMetadataStandIn) -> None:
    identity = metadata.url + GcpMetadataStandIn.IDENTITY
    refused = httpx.get(identity, params={"audience": AUDIENCE})
    assert refused.status_code == 403 and refused.headers["Metadata-Flavor"] == "Google"
    forwarded = {"Metadata-Flavor": "Google", "X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(identity, params={"audience": AUDIENCE}, headers=forwarded).status_code == 403
    assert httpx.get(identity, headers={"Metadata-Flavor": "Google"}).status_code == 400  # no audience


def test_collector_gets_a_full_format_token_chit_accepts(metadata: GcpMetadataStandIn, chit_gcp: ChitServer) -> None:
    subject = GcpCollector(AUDIENCE, metadata.url).collect()
    assert subject.token_type == TOKEN_TYPE_JWT
    claims = jwt.decode(subject.value, options={"verify_signature": False})
    assert claims["aud"] == AUDIENCE and "compute_engine" in claims["google"]
    (request,) = metadata.requests
    assert (request.method, request.path) == ("GET", "/computeMetadata/v1/instance/service-accounts/default/identity")
    assert request.query == {"audience": [AUDIENCE], "format": ["full"]}
    assert request.headers["metadata-flavor"] == "Google"
    body = assert_issued(chit_gcp.exchange(subject.value, subject_token_type=subject.token_type, audience="https://db.internal"))
    assert chit_gcp.verify_issued(body["access_token"], "https://db.internal")[1]["sub"] == SUBJECT


def test_a_vm_without_a_service_account_fails_the_collection(google: GoogleSigner) -> None:
    stand_in = GcpMetadataStandIn(google, service_account=False)
    try:
        with pytest.raises(CollectionFailed, match="refused an identity token: HTTP 404"):
            GcpCollector(AUDIENCE, stand_in.url).collect()
    finally:
        stand_in.stop()


def test_off_gcp_the_platform_is_absent() -> None:
    with pytest.raises(PlatformAbsent, match="no GCP metadata server"):
        GcpCollector(AUDIENCE, closed_port_url()).collect()


def test_a_server_that_is_not_googles_metadata_server_is_not_gcp() -> None:
    """EC2's metadata service listens on the same address (169.254.169.254) and does not
    answer with Metadata-Flavor: Google."""
    imds = ImdsStandIn("{}", "")
    try:
        with pytest.raises(PlatformAbsent, match="not as Google's metadata server"):
            GcpCollector(AUDIENCE, imds.url).collect()
    finally:
        imds.stop()
