"""Container image signatures, cosign-compatible: who signed each image the workload runs.

For an image `repo@sha256:<hex>`, cosign stores its signatures in the same
repository under the tag `sha256-<hex>.sig`: a manifest whose layers are
simple-signing payloads (media type
`application/vnd.dev.cosign.simplesigning.v1+json`), each with its ECDSA
P-256 / SHA-256 signature, base64 DER, in the annotation
`dev.cosignproject.cosign/signature`. A layer counts for a key named in
`image_signatures.keys` when the key verifies the signature over the exact
payload bytes and the payload's `critical.image.docker-manifest-digest` is
the image's digest (and its `critical.type` is cosign's).

Every failure — no signature, a registry error or timeout, a malformed
manifest or payload, another key, another digest, a tampered payload —
leaves the image unsigned (`signed: false, signers: []`), never signed.
Results are cached by repository and digest; failures to reach the registry
are not cached.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import time
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chit.attestors.base import ContainerImage
from chit.server.registry import RegistryClient, RegistryError, Repository, is_digest, repository_of

log = logging.getLogger("chit.signatures")

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 10_000
TIMEOUT = 3.0
MAX_SIGNATURES = 16  # layers looked at per signature manifest


def load_keys(keys: Mapping[str, str]) -> dict[str, ec.EllipticCurvePublicKey]:
    """`image_signatures.keys` (name → PEM), each an ECDSA P-256 public key, else ValueError."""
    loaded = {}
    for name, pem in keys.items():
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            raise ValueError(f"image_signatures.keys.{name}: not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"image_signatures.keys.{name}: must be an ECDSA P-256 key (cosign's)")
        loaded[name] = key
    return loaded


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def registry_reachable(registry: str, allowed: frozenset[str] | None) -> bool:
    """Whether chit may send requests to `registry` (host[:port]), as far as its name tells.

    Image references come from pod specs, which anyone who may create a pod
    writes: without an allowlist, a registry named by an address on this host,
    its link or a private network (the cloud metadata service, an internal
    admin port) is never contacted. A DNS name passes here; the addresses it
    resolves to are checked when connecting (`server.registry.may_connect`),
    as are redirect targets and token realms.
    """
    if allowed is not None:
        return registry in allowed
    host = registry[1 : registry.index("]")] if registry.startswith("[") else registry.rsplit(":", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host != "localhost"
    return address.is_global


class ImageSignatures:
    def __init__(self, keys: Mapping[str, str], timeout: float = TIMEOUT, registries: list[str] | None = None):
        """`timeout`: seconds for all of one exchange's lookups together; `registries`:
        the allowlist of `image_signatures.registries`."""
        self.keys = load_keys(keys)
        self.timeout = timeout
        self.registries = None if registries is None else frozenset(registries)
        self._registry = RegistryClient(timeout, self.registries) if self.keys else None
        self._cache: dict[tuple[Repository, str], tuple[float, tuple[str, ...]]] = {}

    async def describe(self, images: tuple[ContainerImage, ...]) -> list[dict[str, Any]]:
        """`input.images`: each image with `signed` and `signers` (names of the keys that signed it)."""
        signers = [()] * len(images) if not self.keys else await self._all_signers(images)
        return [
            {"ref": image.ref, "digest": image.digest, "signed": bool(names), "signers": list(names)}
            for image, names in zip(images, signers)
        ]

    async def _all_signers(self, images: tuple[ContainerImage, ...]) -> list[tuple[str, ...]]:
        tasks = [asyncio.ensure_future(self.signers(image)) for image in images]
        done, pending = await asyncio.wait(tasks, timeout=self.timeout) if tasks else (set(), set())
        for task in pending:
            task.cancel()
            log.warning("image signature lookup timed out: the image counts as unsigned")
        return [task.result() if task in done and not task.cancelled() and task.exception() is None else () for task in tasks]

    async def signers(self, image: ContainerImage) -> tuple[str, ...]:
        repository = repository_of(image.ref)
        if repository is None or not is_digest(image.digest):
            return ()
        if not registry_reachable(repository.registry, self.registries):
            log.warning("image %s: registry %s is not one chit may contact: the image counts as unsigned", image.ref, repository.registry)
            return ()
        assert image.digest is not None
        key = (repository, image.digest)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            names = await self._lookup(repository, image.digest)
        except RegistryError as error:
            log.warning("image %s: signatures cannot be fetched (%s): the image counts as unsigned", image.ref, error)
            return ()
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + CACHE_SECONDS, names)
        return names

    async def _lookup(self, repository: Repository, digest: str) -> tuple[str, ...]:
        assert self._registry is not None
        manifest = await self._registry.manifest(repository, signature_tag(digest))
        if manifest is None:
            return ()
        try:
            layers = json.loads(manifest)["layers"]
            if not isinstance(layers, list):
                raise TypeError("layers is not an array")
        except (ValueError, KeyError, TypeError) as error:
            log.warning("%s: malformed signature manifest (%s)", repository.name, error)
            return ()
        names: list[str] = []
        for layer in layers[:MAX_SIGNATURES]:
            for name in await self._layer_signers(repository, digest, layer):
                if name not in names:
                    names.append(name)
        return tuple(names)

    async def _layer_signers(self, repository: Repository, digest: str, layer: Any) -> list[str]:
        """The keys whose signature in this layer covers a payload naming `digest`."""
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            return []
        annotations = layer.get("annotations")
        encoded = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        if not isinstance(encoded, str) or not isinstance(layer.get("digest"), str):
            return []
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return []
        payload = await self._registry.blob(repository, layer["digest"])  # type: ignore[union-attr]
        try:
            critical = json.loads(payload)["critical"]
            if critical["image"]["docker-manifest-digest"] != digest or critical["type"] != COSIGN_TYPE:
                return []
        except (ValueError, KeyError, TypeError):
            return []
        verified = []
        for name, key in self.keys.items():
            try:
                key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            verified.append(name)
        return verified

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.close()
