"""The `attestors.kubernetes` section of chit's configuration: clusters, their keys, their API checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from chit.section import DnsLabel, FilePath, Milliseconds, PositiveInt, Section
from chit.urls import require_safe_url



class KubernetesApi(Section):
    server: str | None = None  # None: the cluster chit runs in (in-cluster configuration)
    ca_file: FilePath | None = None
    token_file: FilePath | None = None
    kubeconfig: FilePath | None = None  # instead of the three above: a kubeconfig file (its current context)
    timeout_ms: Milliseconds = 3000  # each TokenReview / pod GET, in total

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "api.server")

    @model_validator(mode="after")
    def _one_source(self) -> KubernetesApi:
        if self.kubeconfig is not None and (self.server or self.ca_file or self.token_file):
            raise ValueError("set either kubeconfig or server/ca_file/token_file")
        return self


class Cluster(Section):
    name: DnsLabel
    issuer: str
    jwks_uri: str | None = None
    jwks_file: FilePath | None = None
    discovery: bool = False
    audiences: Annotated[list[str], Field(min_length=1)]
    region: str | None = None
    api: KubernetesApi = KubernetesApi()
    token_review: bool = False
    pod_lookup: bool = False

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "jwks_uri")

    @model_validator(mode="after")
    def _one_key_source(self) -> Cluster:
        sources = [self.jwks_uri is not None, self.jwks_file is not None, self.discovery]
        if sum(sources) != 1:
            raise ValueError("set exactly one of jwks_uri, jwks_file, discovery: true")
        if self.discovery:
            require_safe_url(self.issuer, "issuer (with discovery: true)")
        return self


class KubernetesSettings(Section):
    max_token_lifetime_seconds: PositiveInt = 86400
    clusters: list[Cluster] = []

    @model_validator(mode="after")
    def _unique(self) -> KubernetesSettings:
        for field in ("name", "issuer"):
            values = [getattr(c, field) for c in self.clusters]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"cluster {field} must be unique, repeated: {', '.join(duplicates)}")
        return self
