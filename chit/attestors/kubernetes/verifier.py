"""Kubernetes projected service-account tokens, verified against each cluster's issuer keys.

A token is routed by its `iss` to exactly one configured cluster, whose keys
alone may verify it (`chit.attestors.routing`). A cluster may also have its API
server vouch for each token (`token_review`) and for the pod (`pod_lookup`, which
also reports the pod's container images); clusters that enable neither cost
nothing extra.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chit.attestors.base import Attestation, InvalidEvidence, JwtVerifier
from chit.attestors.jose import CompactJws, audiences, check_validity_window, verify_signature
from chit.attestors.jwks import KeySource, issuer_key_source
from chit.attestors.kubernetes import KIND
from chit.attestors.kubernetes.claims import pod_identity
from chit.attestors.kubernetes.config import Cluster, KubernetesSettings

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
            from chit.attestors.kubernetes.api import ClusterApi

            self.api = ClusterApi(config)


def key_source(cluster: Cluster) -> KeySource:
    return issuer_key_source(
        issuer=cluster.issuer,
        jwks_uri=cluster.jwks_uri,
        jwks_file=cluster.jwks_file,
        discovery=cluster.discovery,
        ca_file=cluster.api.ca_file,
        label=f"cluster {cluster.name}",
    )


class KubernetesVerifier(JwtVerifier):
    """Verifies projected service-account tokens of every configured cluster."""

    kind = KIND

    def __init__(self, config: KubernetesSettings, trust_domain: str):
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
