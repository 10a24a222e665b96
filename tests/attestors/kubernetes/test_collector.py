"""The Kubernetes collector: the projected token file, read afresh for every exchange."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from chit.attestors.base import CollectionFailed, PlatformAbsent
from chit.protocol import TOKEN_TYPE_JWT
from chit.attestors.kubernetes.collector import DEFAULT_TOKEN_FILE, KubernetesCollector
from tests.factories import ChitServer, ClusterIssuer, assert_issued, b64url


def rs256(issuer: ClusterIssuer, header_text: str, claims_text: str) -> str:
    """Sign exactly these header and claims texts (which json.dumps could not produce)."""
    signing_input = f"{b64url(header_text.encode())}.{b64url(claims_text.encode())}"
    signature = issuer.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


# --- the collector (client side) ------------------------------------------------------------


def test_collector_reads_the_projected_token_afresh_each_time(tmp_path: Path, chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    token_file = tmp_path / "token"
    collector = KubernetesCollector(token_file)
    first = prod_issuer.token()
    token_file.write_text(first + "\n")
    subject = collector.collect()
    assert subject.value == first and subject.token_type == TOKEN_TYPE_JWT
    assert first not in repr(subject)
    assert_issued(chit.exchange(subject.value, subject_token_type=subject.token_type))
    # The kubelet rotates the file; the next collection sends the new token.
    second = prod_issuer.token()
    token_file.write_text(second)
    assert collector.collect().value == second


def test_collector_without_the_token_file_says_the_platform_is_absent(tmp_path: Path) -> None:
    assert str(DEFAULT_TOKEN_FILE) == "/var/run/secrets/chit/token"  # what the docs and deploy/examples name
    with pytest.raises(PlatformAbsent, match=f"no Kubernetes token file at {tmp_path / 'missing'}"):
        KubernetesCollector(tmp_path / "missing").collect()


@pytest.mark.parametrize("content", ["", "not a token", "a.b", "a.b.c.d.e", "a.b.\u00e9", "a." + "b" * 70000 + ".c"])
def test_collector_refuses_a_file_that_holds_no_jwt(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(CollectionFailed, match="does not hold a service-account token"):
        KubernetesCollector(token_file).collect()


def test_collector_names_an_unreadable_token_file(tmp_path: Path) -> None:
    with pytest.raises(CollectionFailed, match="cannot read the Kubernetes token file"):
        KubernetesCollector(tmp_path).collect()  # a directory
