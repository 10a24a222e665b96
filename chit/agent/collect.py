"""Which platform's evidence to send: one named on the command line, or `auto`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent, SubjectToken
from chit.attestors.aws_iam import DEFAULT_STS_ENDPOINT
from chit.attestors.aws_iam.collector import AwsIamCollector
from chit.attestors.aws_iid.collector import DEFAULT_NONCE_FILE, IMDS_URL, AwsIidCollector
from chit.attestors.gcp.collector import METADATA_URL, GcpCollector
from chit.attestors.kubernetes.collector import DEFAULT_TOKEN_FILE, KubernetesCollector
from chit.attestors.oidc.collector import (
    DEFAULT_GITLAB_VARIABLE,
    GITHUB_TOKEN_ENV,
    GITHUB_URL_ENV,
    BuildkiteCollector,
    GitHubActionsCollector,
    GitLabCollector,
)


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
    # CI: the token's audience, and the job's environment (GitHub's request URL and
    # token, GitLab's id_tokens variable, Buildkite's agent) as the CLI was given it.
    oidc_audience: str = ""
    gitlab_variable: str = DEFAULT_GITLAB_VARIABLE
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    # AWS IAM: the STS endpoint the signed GetCallerIdentity names, and chit's server id.
    aws_sts_endpoint: str = DEFAULT_STS_ENDPOINT
    aws_sts_region: str | None = None
    aws_server_id: str = ""


def ci_collectors(settings: CollectorSettings) -> dict[str, Collector]:
    environ = settings.environ
    return {
        "github-actions": GitHubActionsCollector(settings.oidc_audience, environ.get(GITHUB_URL_ENV), environ.get(GITHUB_TOKEN_ENV)),
        "gitlab-ci": GitLabCollector(settings.gitlab_variable, environ.get(settings.gitlab_variable)),
        "buildkite": BuildkiteCollector(settings.oidc_audience, environ),
    }


def build_collector(platform: str, settings: CollectorSettings) -> Collector:
    if platform == "kubernetes":
        return KubernetesCollector(settings.subject_token_file)
    if platform == "gcp":
        return GcpCollector(settings.gcp_audience, settings.gcp_metadata_url)
    if platform == "aws":
        return AwsIidCollector(settings.nonce_file, settings.imds_url)
    if platform == "aws-iam":
        return AwsIamCollector(settings.aws_server_id, settings.aws_sts_endpoint, settings.aws_sts_region)
    ci = ci_collectors(settings)
    if platform in ci:
        return ci[platform]
    if platform == "auto":
        kubernetes = KubernetesCollector(settings.subject_token_file)
        if settings.in_kubernetes_pod:
            return AutoCollector([kubernetes], "inside a Kubernetes pod, auto uses only the pod's projected token")
        # A CI job's own token names the job; the runner's machine identity is shared by
        # every job it runs, so CI comes first. AWS IAM credentials are never picked up by
        # auto: a developer's own credentials are found as readily as a workload's.
        return AutoCollector([kubernetes, *ci.values(), GcpCollector(settings.gcp_audience, settings.gcp_metadata_url),
                              AwsIidCollector(settings.nonce_file, settings.imds_url)])
    raise ValueError(f"unknown platform {platform!r}")


class AutoCollector(Collector):
    """The first platform that is present, tried in order (Kubernetes' token file, a CI
    job's token, then the GCP metadata server, then EC2's), and kept once found."""

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
