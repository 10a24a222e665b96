"""Which platform's evidence to send: one named on the command line, or `auto`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent, SubjectToken
from chit.attestors.aws_iid.collector import DEFAULT_NONCE_FILE, IMDS_URL, AwsIidCollector
from chit.attestors.gcp.collector import METADATA_URL, GcpCollector
from chit.attestors.kubernetes.collector import DEFAULT_TOKEN_FILE, KubernetesCollector


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """Where each platform's evidence is found (the command-line options)."""

    subject_token_file: Path = DEFAULT_TOKEN_FILE
    gcp_audience: str = ""
    gcp_metadata_url: str = METADATA_URL
    imds_url: str = IMDS_URL
    nonce_file: Path = DEFAULT_NONCE_FILE
    # Inside a Kubernetes pod (KUBERNETES_SERVICE_HOST is set), `auto` never falls back
    # to the node's cloud identity: every pod on the node could claim it.
    in_kubernetes_pod: bool = False


def build_collector(platform: str, settings: CollectorSettings) -> Collector:
    if platform == "kubernetes":
        return KubernetesCollector(settings.subject_token_file)
    if platform == "gcp":
        return GcpCollector(settings.gcp_audience, settings.gcp_metadata_url)
    if platform == "aws":
        return AwsIidCollector(settings.nonce_file, settings.imds_url)
    if platform == "auto":
        kubernetes = KubernetesCollector(settings.subject_token_file)
        if settings.in_kubernetes_pod:
            return AutoCollector([kubernetes], "inside a Kubernetes pod, auto uses only the pod's projected token")
        return AutoCollector([kubernetes, GcpCollector(settings.gcp_audience, settings.gcp_metadata_url), AwsIidCollector(settings.nonce_file, settings.imds_url)])
    raise ValueError(f"unknown platform {platform!r}")


class AutoCollector(Collector):
    """The first platform that is present, tried in order (Kubernetes' token file, then
    the GCP metadata server, then EC2's), and kept once found."""

    kind = "auto"

    def __init__(self, candidates: list[Collector], note: str = ""):
        self.candidates = candidates
        self.note = note
        self.found: Collector | None = None

    def collect(self) -> SubjectToken:
        if self.found is not None:
            return self.found.collect()
        absent = []
        for candidate in self.candidates:
            try:
                token = candidate.collect()
            except PlatformAbsent as error:
                absent.append(str(error))
                continue
            except CollectionFailed:
                self.found = candidate  # the platform is here; its failure is the answer
                raise
            self.found = candidate
            return token
        raise PlatformAbsent("no platform found: " + "; ".join(absent + ([self.note] if self.note else [])))
