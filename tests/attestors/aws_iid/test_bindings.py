"""The nonce binding (docs/operators/aws.md): the first exchange of an instance binds its
nonce, later ones need it, failed ones bind nothing."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.attestors.aws_iid.bindings import InstanceBindings
from chit.state import MemoryStore, StateUnavailable
from tests.conftest import AwsRegions
from tests.factories import (
    ChitServer,
    MotoServer,
    assert_issued,
    assert_refused,
    instance_document,
    iid_token,
    new_nonce,
)
from tests.attestors.aws_iid.conftest import document_token, exchange, signed, verifier


# --- the nonce binding -------------------------------------------------------------------------


def test_first_exchange_binds_the_nonce(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))  # re-attestation
    for other in (new_nonce(), nonce[:-1] + "x"):
        body = assert_refused(exchange(aws_chit, signed(aws_regions, document, other)))
        assert body["error_description"] == "subject_token invalid: this instance is bound to another nonce"
    assert_refused(exchange(aws_chit, iid_token(document, None, signature=aws_regions.us_east_1.signature(document))))
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))


def test_older_pending_time_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    launched = json.loads(moto.document_for(instance))["pendingTime"]
    at = lambda pending: instance_document(instance["InstanceId"], image_id=instance["ImageId"], pending_time=pending)  # noqa: E731
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, signed(aws_regions, at(launched), nonce)))
    body = assert_refused(exchange(aws_chit, signed(aws_regions, at("2020-01-01T00:00:00Z"), nonce)))
    assert "pendingTime is older" in body["error_description"]
    # A restart (a newer pendingTime) re-attests with the same nonce, and moves the binding on.
    assert_issued(exchange(aws_chit, signed(aws_regions, at("2099-01-01T00:00:00Z"), nonce)))
    assert_refused(exchange(aws_chit, signed(aws_regions, at(launched), nonce)))


def test_failed_exchanges_bind_nothing(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer) -> None:
    described = moto.launch_instance(tags={"team": "billing"})
    document = moto.document_for(described)
    # Denied by policy (wrong team), then with a scope nobody grants: neither binds its nonce.
    assert_refused(exchange(aws_chit, signed(aws_regions, document, new_nonce())))
    moto.client("ec2").create_tags(Resources=[described["InstanceId"]], Tags=[{"Key": "team", "Value": "payments"}])
    assert_refused(exchange(aws_chit, signed(aws_regions, document, new_nonce()), scope="admin:all"), error="invalid_scope")
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))
    assert_refused(exchange(aws_chit, signed(aws_regions, document, new_nonce())))


def test_racing_first_exchanges_bind_one_nonce(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    nonces = [new_nonce() for _ in range(4)]
    tokens = [signed(aws_regions, document, nonce) for nonce in nonces]
    barrier = threading.Barrier(len(tokens))
    statuses: dict[str, int] = {}

    def attempt(nonce: str, token: str) -> None:
        barrier.wait()
        statuses[nonce] = exchange(aws_chit, token).status_code

    threads = [threading.Thread(target=attempt, args=pair) for pair in zip(nonces, tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [nonce for nonce, status in statuses.items() if status == 200]
    assert len(winners) == 1, statuses
    assert sorted(statuses.values()) == [200, 400, 400, 400]
    for nonce, token in zip(nonces, tokens):
        assert exchange(aws_chit, token).status_code == (200 if nonce in winners else 400)


def test_interleaved_first_exchanges_bind_one_nonce(aws_regions: AwsRegions) -> None:
    """Both verify before either commits: the second commit finds the binding taken."""
    attestor = verifier(certificates_dir=aws_regions.directory)
    first, second = new_nonce(), new_nonce()

    async def scenario() -> None:
        a = await attestor.verify(document_token(aws_regions, first), time.time())
        b = await attestor.verify(document_token(aws_regions, second), time.time())
        await a.replay_guard.commit()
        with pytest.raises(InvalidEvidence, match="another nonce"):
            await b.replay_guard.commit()
        # The same nonce racing a refresh of the binding is fine.
        c = await attestor.verify(document_token(aws_regions, first, "2026-02-01T00:00:00Z"), time.time())
        d = await attestor.verify(document_token(aws_regions, first), time.time())
        await c.replay_guard.commit()
        with pytest.raises(InvalidEvidence, match="older"):
            await d.replay_guard.commit()

    asyncio.run(scenario())


def test_the_store_keeps_a_hash_of_the_nonce_never_the_nonce(aws_regions: AwsRegions) -> None:
    store = MemoryStore()
    attestor = verifier(store, certificates_dir=aws_regions.directory)
    nonce = new_nonce()

    async def scenario() -> str | None:
        attestation = await attestor.verify(document_token(aws_regions, nonce), time.time())
        await attestation.replay_guard.commit()
        return await store.get("iid:i-0b02d936754a6d637")

    stored = asyncio.run(scenario())
    assert stored is not None and nonce not in stored
    assert len(stored.split()[0]) == 64  # SHA-256, hex


def test_forgetting_an_instance_lets_a_new_nonce_bind(aws_regions: AwsRegions) -> None:
    store = MemoryStore()
    attestor = verifier(store, certificates_dir=aws_regions.directory)
    old, new = new_nonce(), new_nonce()

    async def scenario() -> None:
        await (await attestor.verify(document_token(aws_regions, old), time.time())).replay_guard.commit()
        with pytest.raises(InvalidEvidence):
            await attestor.verify(document_token(aws_regions, new), time.time())
        assert await InstanceBindings(store, 60).forget("i-0b02d936754a6d637") is True
        assert await InstanceBindings(store, 60).forget("i-0b02d936754a6d637") is False
        await (await attestor.verify(document_token(aws_regions, new), time.time())).replay_guard.commit()
        with pytest.raises(InvalidEvidence):
            await attestor.verify(document_token(aws_regions, old), time.time())

    asyncio.run(scenario())


class UnavailableStore(MemoryStore):
    """A state store that stops answering after `answers` calls."""

    def __init__(self, answers: int):
        super().__init__()
        self.answers = answers

    def _tick(self, now: float) -> None:
        self.answers -= 1
        if self.answers < 0:
            raise StateUnavailable("connection refused")
        super()._tick(now)


def test_state_store_down_makes_the_check_unavailable(aws_regions: AwsRegions) -> None:
    async def scenario() -> None:
        with pytest.raises(EvidenceUnavailable):
            await verifier(UnavailableStore(0), certificates_dir=aws_regions.directory).verify(document_token(aws_regions, new_nonce()), time.time())
        attestation = await verifier(UnavailableStore(1), certificates_dir=aws_regions.directory).verify(
            document_token(aws_regions, new_nonce()), time.time()
        )
        with pytest.raises(EvidenceUnavailable):
            await attestation.replay_guard.commit()

    asyncio.run(scenario())
