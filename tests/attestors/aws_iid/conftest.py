"""Helpers of the AWS instance identity tests: the real vectors, in-process verification,
exchanges through chit, documents signed with the test region certificates."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from chit.attestors.aws_iid.config import AwsIidSettings
from chit.attestors.aws_iid.verifier import AwsIidVerifier
from chit.state import MemoryStore, StateStore
from tests.conftest import AwsRegions
from tests.factories import ChitServer, MotoServer, iid_token, new_nonce, AWS_IID_TYPE, instance_document


VECTORS = Path(__file__).parent / "vectors"


VECTOR_NONCE = "vector-nonce-0123456789"  # the session chit binds the vectors' instances to it


DB = "https://db.internal"


def vector(n: int) -> tuple[str, str]:
    return (VECTORS / f"iid{n}.json").read_text(), (VECTORS / f"iid{n}.sig").read_text()


def verifier(state: StateStore | None = None, **config: object) -> AwsIidVerifier:
    return AwsIidVerifier(AwsIidSettings(**config), "example.org", state or MemoryStore())


def verify(v: AwsIidVerifier, token: str):
    return asyncio.run(v.verify(token, time.time()))


def exchange(chit: ChitServer, token: str, **fields: str):
    return chit.exchange(token, subject_token_type=AWS_IID_TYPE, **fields)


def signed(regions: AwsRegions, document: str, nonce: str | None = None, **token: bool) -> str:
    return iid_token(document, nonce or new_nonce(), signature=regions.us_east_1.signature(document), **token)


@pytest.fixture
def instance(moto: MotoServer) -> dict:
    """A running instance the aws_chit policy binds (account, region, tag team=payments)."""
    return moto.launch_instance(tags={"team": "payments"})


def document_token(regions: AwsRegions, nonce: str, pending_time: str = "2026-01-15T14:12:11Z") -> str:
    return signed(regions, instance_document(pending_time=pending_time), nonce)
