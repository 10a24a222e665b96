"""What a projected service-account token says about its pod, checked for consistency with `sub`.

Only pod-bound projected tokens are evidence (the `kubernetes.io` claim names the
pod); legacy secret-based tokens never expire and are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from chit.attestors.base import InvalidEvidence

# Names Kubernetes itself allows (RFC 1123 label / subdomain); they become SPIFFE
# path segments, so nothing else (no '/', no '..') may pass.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
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
    if not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace):
        raise InvalidEvidence("claim kubernetes.io.namespace missing or malformed")
    service_account, _ = _named_object(k8s.get("serviceaccount"), "serviceaccount", DNS_SUBDOMAIN)
    pod_name, pod_uid = _named_object(k8s.get("pod"), "pod", DNS_SUBDOMAIN)
    node_name = None
    if "node" in k8s:
        node_name, _ = _named_object(k8s["node"], "node", DNS_SUBDOMAIN)
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{service_account}":
        raise InvalidEvidence("claim sub does not match the service account")
    return PodIdentity(namespace, service_account, pod_name, pod_uid, node_name)
