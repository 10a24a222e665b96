"""Container image signatures against a real OCI registry (Debian's
docker-registry): an image counts as signed by a configured key only when a
cosign signature made with that key names exactly the image's digest; every
other case — unsigned, another key, another digest, a tampered payload, a
registry that does not answer — is unsigned, and a policy requiring signed
images denies."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chit.attestors.base import ContainerImage
from chit.server.signatures import ImageSignatures, load_keys
from tests.factories import (
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    KubernetesApiStandIn,
    OciRegistry,
    RegistryTokenService,
    assert_issued,
    assert_refused,
    copy_policy,
    free_port,
    pem_public_key,
)

ISSUER = "https://signed.k8s.chit.test"
RELEASE = ec.generate_private_key(ec.SECP256R1())
AUDIT = ec.generate_private_key(ec.SECP256R1())
STRANGER = ec.generate_private_key(ec.SECP256R1())  # a key chit is not configured with
KEYS = {"release": pem_public_key(RELEASE), "audit": pem_public_key(AUDIT)}
DEAD_REGISTRY = f"127.0.0.1:{free_port()}"  # nothing listens there
BINDINGS = {"bindings": {"kubernetes": {"signed": {"payments": {
    "agent": {"audience": ["https://db.internal"], "image_signers": ["release"]},
    "any": {"audience": ["https://db.internal"]},
}}}}}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    server = OciRegistry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def issuer(documents: DocumentServer) -> ClusterIssuer:
    issuer = ClusterIssuer("signed", ISSUER, "ES256")
    documents.serve("/signed/jwks", issuer.jwks())
    return issuer


@pytest.fixture(scope="module")
def api(issuer: ClusterIssuer) -> Iterator[KubernetesApiStandIn]:
    server = KubernetesApiStandIn(issuer, "credential")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, api: KubernetesApiStandIn, registry: OciRegistry) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("chit-signatures")
    (directory / "api-token").write_text("credential")
    server = ChitServer(
        directory,
        {
            "policy": {"dir": str(copy_policy(directory / "policies", BINDINGS))},
            "image_signatures": {"keys": KEYS, "timeout_ms": 2000, "registries": [registry.host, DEAD_REGISTRY]},
            "attestors": {"kubernetes": {"clusters": [{
                "name": "signed", "issuer": ISSUER, "jwks_uri": documents.url("/signed/jwks"), "audiences": ["chit"],
                "api": {"server": api.url(""), "token_file": str(directory / "api-token")}, "pod_lookup": True,
            }]}},
        },
    ).start()
    yield server
    server.stop()


def exchange_running(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, *refs: str, service_account: str = "agent") -> Any:
    """An exchange for a pod running these images (refs by digest, as the runtime reports them)."""
    k8s = issuer.claims(service_account=service_account)["kubernetes.io"]
    k8s["pod"]["name"] = f"agent-{uuid.uuid4().hex[:8]}"
    token = issuer.token(service_account=service_account, **{"kubernetes.io": k8s})
    api.add_pod(token, images=[(ref.split("@")[0] + ":1.0", ref) for ref in refs])
    return chit.exchange(token)


def new_image(registry: OciRegistry, *signers: Any, **signature: Any) -> str:
    repository = f"team/agent-{uuid.uuid4().hex[:6]}"
    ref, digest = registry.push_image(repository)
    if signers:
        registry.sign(repository, digest, *signers, **signature)
    return ref


def describe(signatures: ImageSignatures, *refs: str) -> list[dict[str, Any]]:
    return asyncio.run(signatures.describe(tuple(ContainerImage(ref, ref.split("@")[1]) for ref in refs)))


# --- through chit: a policy requiring the release signer -----------------------------------------


def test_image_signed_with_the_required_key_is_allowed(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, registry: OciRegistry) -> None:
    assert_issued(exchange_running(chit, api, issuer, new_image(registry, RELEASE), new_image(registry, AUDIT, RELEASE)))


@pytest.mark.parametrize(
    "case",
    ["unsigned", "stranger", "other-configured-key", "other-digest", "tampered", "one-of-two-unsigned"],
)
def test_anything_but_the_required_signature_is_denied(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, registry: OciRegistry, case: str) -> None:
    signed = new_image(registry, RELEASE)
    refs = {
        "unsigned": [new_image(registry)],
        "stranger": [new_image(registry, STRANGER)],
        "other-configured-key": [new_image(registry, AUDIT)],
        # A genuine release signature, but for another image, copied under this image's .sig tag.
        "other-digest": [new_image(registry, RELEASE, payload_digest=signed.split("@")[1])],
        "tampered": [new_image(registry, RELEASE, tamper=True)],
        "one-of-two-unsigned": [signed, new_image(registry)],
    }[case]
    body = assert_refused(exchange_running(chit, api, issuer, *refs))
    assert chit.audit_for(body["decision_id"])["reasons"] == ["an image is not signed by a required signer"]


def test_unreachable_registry_means_unsigned_not_unavailable(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer) -> None:
    ref = f"{DEAD_REGISTRY}/team/agent@sha256:" + "d" * 64
    body = assert_refused(exchange_running(chit, api, issuer, ref))
    assert chit.audit_for(body["decision_id"])["outcome"] == "denied"
    # A workload whose binding requires nothing is not held up by the registry.
    assert_issued(exchange_running(chit, api, issuer, ref, service_account="any"))


# --- the verdict per image ------------------------------------------------------------------


def test_signers_name_every_configured_key_that_signed(registry: OciRegistry) -> None:
    signatures = ImageSignatures(KEYS, 5, [registry.host])
    both, release, unsigned, stranger = new_image(registry, RELEASE, AUDIT), new_image(registry, RELEASE), new_image(registry), new_image(registry, STRANGER)
    verdicts = describe(signatures, both, release, unsigned, stranger)
    assert [(v["signed"], v["signers"]) for v in verdicts] == [(True, ["release", "audit"]), (True, ["release"]), (False, []), (False, [])]
    assert verdicts[0]["ref"] == both and verdicts[0]["digest"] == both.split("@")[1]


def test_results_are_cached_by_digest(tmp_path: Path) -> None:
    registry = OciRegistry(tmp_path)
    signatures = ImageSignatures(KEYS, 5, [registry.host])
    try:
        ref = new_image(registry, RELEASE)
        assert describe(signatures, ref)[0]["signers"] == ["release"]
    finally:
        registry.stop()
    assert describe(signatures, ref)[0]["signers"] == ["release"]  # no registry needed any more
    assert describe(ImageSignatures(KEYS, 5, [registry.host]), ref)[0]["signed"] is False  # a fresh cache: unsigned, not signed


def test_images_without_a_digest_or_a_registry_are_unsigned() -> None:
    signatures = ImageSignatures(KEYS, 1)
    images = (ContainerImage("registry.example/agent:1.0", None), ContainerImage("not a reference@sha256:" + "a" * 64, "sha256:" + "a" * 64))
    assert [i["signed"] for i in asyncio.run(signatures.describe(images))] == [False, False]


def test_slow_registry_is_cut_off(tmp_path: Path) -> None:
    """A registry that accepts connections and never answers: unsigned within the time budget."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        ref = f"{host}/team/agent@sha256:" + "e" * 64
        started = time.monotonic()
        assert describe(ImageSignatures(KEYS, 0.5, [host]), ref)[0]["signed"] is False
        assert time.monotonic() - started < 3


def test_registry_with_token_auth_is_read_with_an_anonymous_pull_token(tmp_path: Path) -> None:
    """Docker Hub and ghcr.io answer 401 with a Bearer challenge even for public images."""
    tokens = RegistryTokenService()
    registry = OciRegistry(tmp_path, tokens)
    try:
        signed, unsigned = new_image(registry, RELEASE), new_image(registry)
        realm_host = httpx.URL(tokens.realm).netloc.decode()
        tokens.requests.clear()
        # A realm on a private address is asked only when it is allowlisted as the registry is.
        assert describe(ImageSignatures(KEYS, 5, [registry.host]), signed)[0]["signed"] is False
        assert tokens.requests == []
        allowed = [registry.host, realm_host]
        verdicts = describe(ImageSignatures(KEYS, 5, allowed), signed, unsigned)
        assert [(v["signed"], v["signers"]) for v in verdicts] == [(True, ["release"]), (False, [])]
        # chit asked for pull access only, without credentials, once per repository.
        assert sorted(r["scope"] for r in tokens.requests) == sorted(f"repository:{ref.split('/', 1)[1].split('@')[0]}:pull" for ref in (signed, unsigned))
        assert {r["authorization"] for r in tokens.requests} == {None}
        tokens.available = False  # no token, no signature: unsigned
        assert describe(ImageSignatures(KEYS, 5, allowed), signed)[0]["signed"] is False
    finally:
        registry.stop()
        tokens.stop()


def test_registries_outside_the_allowlist_are_never_contacted(registry: OciRegistry, documents: DocumentServer) -> None:
    signed = new_image(registry, RELEASE)
    assert describe(ImageSignatures(KEYS, 5, ["registry.example.org"]), signed)[0]["signed"] is False
    counted = f"127.0.0.1:{documents.port}/team/agent@sha256:" + "f" * 64
    before = sum(documents.hits.values())
    assert describe(ImageSignatures(KEYS, 5, ["registry.example.org"]), counted)[0]["signed"] is False
    assert sum(documents.hits.values()) == before


@pytest.mark.parametrize(
    "registry, reachable",
    [
        ("ghcr.io", True), ("registry-1.docker.io", True), ("registry.internal:5000", True), ("8.8.8.8:443", True),
        ("127.0.0.1:5000", False), ("localhost:5000", False), ("[::1]:5000", False),
        ("169.254.169.254", False), ("10.0.0.7:5000", False), ("192.168.1.2", False), ("[fd00::1]:5000", False),
    ],
)
def test_by_default_addresses_on_this_host_its_link_or_private_networks_are_not_contacted(registry: str, reachable: bool) -> None:
    """Image references come from pod specs: they must not turn chit into a probe of internal addresses."""
    from chit.server.signatures import registry_reachable

    assert registry_reachable(registry, None) is reachable
    assert registry_reachable(registry, frozenset({registry})) is True


@pytest.mark.parametrize(
    "addresses, allowlist, allowed",
    [
        (["140.82.113.33"], None, True),
        (["2606:50c0:8000::154"], None, True),
        (["10.0.0.7"], None, False),  # a public-looking DNS name that resolves inside
        (["169.254.169.254"], None, False),
        (["140.82.113.33", "127.0.0.1"], None, False),  # every address must be public
        (["fe80::1%eth0"], None, False),
        (["10.0.0.7"], {"registry.example:443"}, True),
        (["10.0.0.7"], {"registry.example"}, True),  # no port: 443 (and 80)
        (["10.0.0.7"], {"registry.example:5000"}, False),
        (["10.0.0.7"], {"other.example"}, False),
    ],
)
def test_connections_go_only_to_allowlisted_hosts_or_public_addresses(addresses: list[str], allowlist: set[str] | None, allowed: bool) -> None:
    """Checked on the addresses chit resolved and then connects to: for the
    registry, each redirect hop and the token realm alike."""
    from chit.server.registry import may_connect

    assert may_connect("registry.example", 443, addresses, None if allowlist is None else frozenset(allowlist)) is allowed
    assert may_connect("localhost", 443, ["140.82.113.33"], None) is False


def test_redirects_and_realms_leave_only_for_allowed_hosts(documents: DocumentServer) -> None:
    """An allowlisted registry redirecting to an internal address does not make chit contact it."""
    internal = DocumentServer()
    try:
        digest = "sha256:" + uuid.uuid4().hex * 2
        registry = f"127.0.0.1:{documents.port}"
        signature_path = f"/v2/team/redirecting/manifests/{digest.replace(':', '-')}.sig"
        documents.redirects[signature_path] = internal.url("/latest/meta-data/iam")
        internal.serve("/latest/meta-data/iam", {"token": "internal"})
        ref = f"{registry}/team/redirecting@{digest}"
        assert describe(ImageSignatures(KEYS, 2, [registry]), ref)[0]["signed"] is False
        assert internal.hits == {}
        # The same redirect to a host the operator allowlisted is followed (the test can see a contact).
        assert describe(ImageSignatures(KEYS, 2, [registry, f"127.0.0.1:{internal.port}"]), ref)[0]["signed"] is False
        assert internal.hits == {"/latest/meta-data/iam": 1}
    finally:
        internal.stop()
        documents.redirects.clear()


def test_plain_http_is_refused_beyond_loopback() -> None:
    from chit.server.registry import RegistryClient

    async def fetch() -> None:
        client = RegistryClient(1.0, frozenset({"registry.example:80"}))
        try:
            await client._client.get("http://registry.example/v2/")
        finally:
            await client.close()

    with pytest.raises(httpx.UnsupportedProtocol, match="plain HTTP only on loopback"):
        asyncio.run(fetch())


def test_no_keys_means_no_registry_traffic(registry: OciRegistry) -> None:
    ref = new_image(registry, RELEASE)
    assert describe(ImageSignatures({}, 5), ref)[0]["signed"] is False


@pytest.mark.parametrize(
    "pem, message",
    [
        ("not a key", "not a PEM public key"),
        (pem_public_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "ECDSA P-256"),
        (pem_public_key(ec.generate_private_key(ec.SECP384R1())), "ECDSA P-256"),
    ],
    ids=["garbage", "rsa", "p384"],
)
def test_only_p256_public_keys_are_accepted(pem: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_keys({"release": pem})
