"""Fixtures for the client side: a chit that verifies GCP identity tokens (the
Kubernetes and AWS ones are the session's), and the metadata services the
collectors talk to, as stand-ins."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.conftest import AwsRegions
from tests.factories import (
    ChitServer,
    DocumentServer,
    GcpMetadataStandIn,
    GoogleSigner,
    ImdsStandIn,
    MotoServer,
    copy_policy,
)

DB = "https://db.internal"
CACHE = "https://cache.internal"
GOOGLE_CERTS = "/client-google/certs"


@pytest.fixture(scope="session")
def gcp_signer(documents: DocumentServer) -> GoogleSigner:
    signer = GoogleSigner(audience="set per token by the metadata stand-in")
    documents.serve(GOOGLE_CERTS, signer.certs)
    return signer


@pytest.fixture(scope="session")
def gcp_chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, gcp_signer: GoogleSigner) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("client-gcp")
    bindings = {"bindings": {"gcp": {gcp_signer.project_id: {gcp_signer.email: {"scope": ["read:db"], "audience": [DB]}}}}}
    # No gcp.audiences: the audience is chit's issuer URL, which `--gcp-audience` defaults to.
    config = {"policy": {"dir": str(copy_policy(directory / "policies", bindings))}, "attestors": {"gcp": {"certs_url": documents.url(GOOGLE_CERTS)}}}
    server = ChitServer(directory, config).start()
    yield server
    server.stop()


@pytest.fixture
def gcp_metadata(gcp_signer: GoogleSigner) -> Iterator[GcpMetadataStandIn]:
    stand_in = GcpMetadataStandIn(gcp_signer)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def ec2_instance(moto: MotoServer) -> dict[str, Any]:
    """A running moto instance that the `aws_chit` policy binds (tag team=payments)."""
    return moto.launch_instance(tags={"team": "payments"})


@pytest.fixture
def imds(ec2_instance: dict[str, Any], aws_regions: AwsRegions) -> Iterator[ImdsStandIn]:
    """IMDS on `ec2_instance`: its identity document, signed with the test us-east-1 certificate."""
    document = MotoServer.document_for(ec2_instance)
    stand_in = ImdsStandIn(document, aws_regions.us_east_1.signature(document))
    yield stand_in
    stand_in.stop()
