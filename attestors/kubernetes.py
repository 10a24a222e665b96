"""Kubernetes: projected service-account tokens, verified against each cluster's issuer keys.

Server side: a token is routed by its `iss` to exactly one configured cluster,
whose keys alone may verify it. Only pod-bound projected tokens are evidence
(the `kubernetes.io` claim names the pod); legacy secret-based tokens never
expire and are refused. A cluster may also have its API server vouch for each
token (`token_review`) and for the pod (`pod_lookup`, which also reports the
pod's container images); clusters that enable neither cost nothing extra.

Client side (`KubernetesCollector`): the kubelet writes a projected token with
chit's audience into the pod and rotates it; the collector reads that file
afresh for every exchange.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from attestors import (
    TOKEN_TYPE_JWT,
    Attestation,
    CollectionFailed,
    Collector,
    InvalidEvidence,
    JwtVerifier,
    PlatformAbsent,
    SubjectToken,
)
from attestors.jose import CompactJws, audiences, check_validity_window, verify_signature
from attestors.jwks import FileKeySource, KeySource, RemoteKeySource, http_client
from server.config import Cluster, KubernetesAttestor

KIND = "kubernetes"

# Names Kubernetes itself allows (RFC 1123 label / subdomain); they become SPIFFE
# path segments, so nothing else (no '/', no '..') may pass.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LEGACY_CLAIM_PREFIX = "kubernetes.io/serviceaccount/"


@dataclass(frozen=True, slots=True)
class PodIdentity:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str | None


def _named_object(value: Any, what: str, name_pattern: re.Pattern[str]) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise InvalidEvidence(f"claim kubernetes.io.{what} missing: only pod-bound projected tokens are accepted")
    name, uid = value.get("name"), value.get("uid")
    if not isinstance(name, str) or not name_pattern.fullmatch(name):
        raise InvalidEvidence(f"claim kubernetes.io.{what}.name missing or malformed")
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise InvalidEvidence(f"claim kubernetes.io.{what}.uid missing or malformed")
    return name, uid


def pod_identity(claims: Mapping[str, Any]) -> PodIdentity:
    """The workload a projected token names, checked for consistency with `sub`."""
    if any(name.startswith(_LEGACY_CLAIM_PREFIX) for name in claims):
        raise InvalidEvidence("legacy service-account secret tokens are not accepted")
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, dict):
        raise InvalidEvidence("claim kubernetes.io missing: only projected service-account tokens are accepted")
    namespace = k8s.get("namespace")
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        raise InvalidEvidence("claim kubernetes.io.namespace missing or malformed")
    service_account, _ = _named_object(k8s.get("serviceaccount"), "serviceaccount", _DNS_SUBDOMAIN)
    pod_name, pod_uid = _named_object(k8s.get("pod"), "pod", _DNS_SUBDOMAIN)
    node_name = None
    if "node" in k8s:
        node_name, _ = _named_object(k8s["node"], "node", _DNS_SUBDOMAIN)
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{service_account}":
        raise InvalidEvidence("claim sub does not match the service account")
    return PodIdentity(namespace, service_account, pod_name, pod_uid, node_name)


class ClusterTrust:
    """One configured cluster: its issuer, its keys, its audiences."""

    def __init__(self, config: Cluster, keys: KeySource):
        self.config = config
        self.name = config.name
        self.issuer = config.issuer
        self.audiences = frozenset(config.audiences)
        self.keys = keys
        self.api = None
        if config.token_review or config.pod_lookup:
            # The kubernetes client is imported only by clusters that use it (it is slow to import).
            from attestors.kubernetes_api import ClusterApi

            self.api = ClusterApi(config)


def key_source(cluster: Cluster) -> KeySource:
    if cluster.jwks_file is not None:
        return FileKeySource(cluster.jwks_file)
    label = f"cluster {cluster.name}"
    client = http_client(cluster.api.ca_file)
    if cluster.discovery:
        return RemoteKeySource(discovery_issuer=cluster.issuer, client=client, label=label)
    return RemoteKeySource(jwks_uri=cluster.jwks_uri, client=client, label=label)


class KubernetesVerifier(JwtVerifier):
    """Verifies projected service-account tokens of every configured cluster."""

    kind = KIND

    def __init__(self, config: KubernetesAttestor, trust_domain: str):
        self.trust_domain = trust_domain
        self.max_lifetime = config.max_token_lifetime_seconds
        self.clusters = {c.issuer: ClusterTrust(c, key_source(c)) for c in config.clusters}
        # Only clusters with pod_lookup enrich an attestation; for the others enrich() is a dict miss.
        self.pod_lookups = {c.name: c for c in self.clusters.values() if c.config.pod_lookup}

    @property
    def issuers(self) -> frozenset[str]:
        return frozenset(self.clusters)

    async def verify_jws(self, jws: CompactJws, now: float) -> Attestation:
        cluster = self.clusters[jws.claims["iss"]]
        key = await cluster.keys.key(jws.kid)
        verify_signature(jws, key.key, key.algorithm)
        claims = jws.claims
        expires_at = check_validity_window(claims, now, self.max_lifetime, require_nbf=True)
        if not cluster.audiences.intersection(audiences(claims)):
            raise InvalidEvidence("audience not accepted for this cluster")
        pod = pod_identity(claims)
        if cluster.config.token_review:
            assert cluster.api is not None
            await cluster.api.review(jws.raw, subject=claims["sub"], pod_name=pod.pod_name, pod_uid=pod.pod_uid)
        subject = (
            f"spiffe://{self.trust_domain}/k8s/{cluster.name}/ns/{pod.namespace}/sa/{pod.service_account}"
        )
        facts: dict[str, Any] = {
            "issuer": cluster.issuer,
            "cluster": cluster.name,
            "namespace": pod.namespace,
            "service_account": pod.service_account,
            "pod": {"name": pod.pod_name, "uid": pod.pod_uid},
        }
        if cluster.config.region is not None:
            facts["region"] = cluster.config.region
        if pod.node_name is not None:
            facts["node"] = {"name": pod.node_name}
        return Attestation(
            kind=KIND,
            subject=subject,
            facts=facts,
            claims=claims,
            att={
                "cluster": cluster.name,
                "namespace": pod.namespace,
                "service_account": pod.service_account,
                "pod": {"name": pod.pod_name, "uid": pod.pod_uid},
            },
            expires_at=expires_at,
        )

    async def enrich(self, attestation: Attestation) -> Attestation:
        """pod_lookup: the pod must exist, be the token's and run; its images go to input.images."""
        cluster = self.pod_lookups.get(attestation.facts["cluster"])
        if cluster is None:
            return attestation
        assert cluster.api is not None
        facts = attestation.facts
        images = await cluster.api.pod_images(facts["namespace"], facts["pod"]["name"], facts["pod"]["uid"], facts["service_account"])
        return dataclasses.replace(attestation, images=images)

    async def close(self) -> None:
        for cluster in self.clusters.values():
            await cluster.keys.close()
            if cluster.api is not None:
                await cluster.api.close()


# --- the collector (client side) -------------------------------------------------------

# Where deploy/examples/agent.yaml mounts the projected token (a serviceAccountToken
# volume source with chit's audience); not the default service-account token, whose
# audience is the API server.
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/chit/token")
MAX_TOKEN_FILE_BYTES = 64 * 1024


class KubernetesCollector(Collector):
    kind = KIND

    def __init__(self, token_file: Path = DEFAULT_TOKEN_FILE):
        self.token_file = token_file

    def collect(self) -> SubjectToken:
        try:
            with self.token_file.open("rb") as file:
                raw = file.read(MAX_TOKEN_FILE_BYTES + 1)
        except FileNotFoundError:
            raise PlatformAbsent(f"no Kubernetes token file at {self.token_file}") from None
        except OSError as error:
            raise CollectionFailed(f"cannot read the Kubernetes token file {self.token_file}: {error.strerror}") from None
        token = raw.decode("ascii", errors="replace").strip()
        # The kubelet writes a compact JWS; anything else is the wrong file.
        if len(raw) > MAX_TOKEN_FILE_BYTES or token.count(".") != 2 or not token.isascii() or not token.isprintable():
            raise CollectionFailed(f"{self.token_file} does not hold a service-account token (a JWT)")
        return SubjectToken(token, TOKEN_TYPE_JWT)
