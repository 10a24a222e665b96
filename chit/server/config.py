"""chit's configuration: one YAML file, parsed once at start into frozen objects.

The keys are the contract (docs/reference/configuration.md). Each part of chit
that is configured owns its section (`chit.section`): the attestors theirs, the
state store and the AWS client theirs; this module composes them with the
server's own. An unknown key, a wrong type or an unsafe value stops the start
with a message naming the key and the file; nothing else in chit reads the
file or the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from chit.attestors.aws_iam.config import AwsIamSettings
from chit.attestors.aws_iid.config import AwsIidSettings
from chit.attestors.gcp.config import GcpSettings
from chit.attestors.kubernetes.config import KubernetesSettings
from chit.attestors.oidc.config import OidcSettings
from chit.audit import AuditSink
from chit.aws import Aws
from chit.protocol import MAX_TOKEN_TTL
from chit.policy.config import PolicySettings
from chit.section import ConfigError, FilePath, Milliseconds, Section, read_yaml_file, validate_section
from chit.server import CONFIG_ENV, RESOLVED_CONFIG_ENV  # noqa: F401 — re-exported
from chit.server.logs import Log
from chit.server.tracing import Tracing
from chit.serving.listen import Listen, ListenTls  # noqa: F401 (ListenTls: part of this module's contract)
from chit.state import State
from chit.urls import require_safe_url

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


Algorithm = Literal["ES256", "RS256", "EdDSA"]


class Signing(Section):
    algorithm: Algorithm = "ES256"  # the default: tokens for audiences not in tokens.audiences
    # The key series kept in keys_dir, each rotated apart; None: the default alone.
    algorithms: list[Algorithm] | None = None
    keys_dir: FilePath = Path("var/keys")
    rotation_grace_seconds: Annotated[int, Field(ge=0)] = 300

    @model_validator(mode="after")
    def _default_is_kept(self) -> Signing:
        if self.algorithms is not None:
            if self.algorithm not in self.algorithms:
                raise ValueError(f"signing.algorithms must include signing.algorithm ({self.algorithm})")
            if len(set(self.algorithms)) != len(self.algorithms):
                raise ValueError("signing.algorithms lists an algorithm twice")
        return self

    @property
    def series(self) -> tuple[str, ...]:
        """The default algorithm first, then the others (chit.server.keys.KeySeries)."""
        return (self.algorithm, *(a for a in self.algorithms or () if a != self.algorithm))


class AudienceTokens(Section):
    """How tokens for one audience are minted: relying parties differ in what they accept
    (docs/operators/llm-providers.md)."""

    algorithm: Algorithm | None = None  # None: signing.algorithm
    ttl_seconds: Annotated[int, Field(gt=0, le=MAX_TOKEN_TTL)] | None = None  # a lower cap for this audience


class Tokens(Section):
    ttl_seconds: Annotated[int, Field(gt=0, le=MAX_TOKEN_TTL)] = MAX_TOKEN_TTL
    audiences: dict[str, AudienceTokens] = {}


class Attestors(Section):
    kubernetes: KubernetesSettings = KubernetesSettings()
    aws_iid: AwsIidSettings = AwsIidSettings()
    aws_iam: AwsIamSettings = AwsIamSettings()
    gcp: GcpSettings = GcpSettings()
    oidc: OidcSettings = OidcSettings()


class ImageSignatures(Section):
    keys: dict[str, str] = {}  # name -> PEM public key (ECDSA P-256, cosign's)
    timeout_ms: Milliseconds = 3000  # all of one exchange's registry lookups
    # host[:port] of the registries chit may ask for signatures; None: any registry
    # named by a DNS name or a public address (image references come from pod specs).
    registries: list[str] | None = None


class RateLimits(Section):
    per_subject_per_minute: Annotated[int, Field(ge=0)] = 0
    per_client_per_minute: Annotated[int, Field(ge=0)] = 0


class Config(Section):
    issuer: str
    listen: Listen = Listen()
    trust_domain: str = "example.org"
    signing: Signing = Signing()
    tokens: Tokens = Tokens()
    policy: PolicySettings = PolicySettings()
    attestors: Attestors = Attestors()
    image_signatures: ImageSignatures = ImageSignatures()
    aws: Aws = Aws()
    state: State = State()
    rate_limits: RateLimits = RateLimits()
    audit: AuditSink = AuditSink()
    log: Log = Log()
    tracing: Tracing = Tracing()
    # Not a file key: set by `chit serve --dev`, which adds the development cluster.
    dev: bool = False

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        require_safe_url(value, "issuer")
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("issuer must not have a query or fragment (RFC 8414 §2)")
        return value.rstrip("/")

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if not _TRUST_DOMAIN.fullmatch(value):
            raise ValueError("must be a SPIFFE trust domain: lowercase letters, digits, '.', '-', '_'")
        return value

    @model_validator(mode="after")
    def _https_issuer(self) -> Config:
        # Discovery would otherwise name http:// endpoints that chit does not serve.
        if self.listen.tls is not None and not self.issuer.startswith("https://"):
            raise ValueError("issuer must be an https:// URL when listen.tls is set (chit serves HTTPS)")
        return self

    @model_validator(mode="after")
    def _audience_algorithms_are_kept(self) -> Config:
        for audience, profile in self.tokens.audiences.items():
            if profile.algorithm is not None and profile.algorithm not in self.signing.series:
                raise ValueError(
                    f"tokens.audiences[{audience!r}].algorithm {profile.algorithm} has no key series: add it to signing.algorithms"
                )
        return self

    @model_validator(mode="after")
    def _not_our_own_issuer(self) -> Config:
        # chit never accepts its own tokens as evidence (docs/reference/http-api.md).
        for cluster in self.attestors.kubernetes.clusters:
            if cluster.issuer.rstrip("/") == self.issuer:
                raise ValueError(f"cluster {cluster.name!r} has chit's own issuer; chit never trusts its own tokens")
        for oidc in self.attestors.oidc.issuers:
            if oidc.issuer_url.rstrip("/") == self.issuer:
                raise ValueError(f"OIDC issuer {oidc.name!r} is chit's own issuer; chit never trusts its own tokens")
        return self

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"


def parse_config(document: Mapping[str, Any], source: str, base: Path) -> Config:
    """Validate a config mapping; `source` names it in errors, `base` anchors relative paths."""
    if isinstance(document, Mapping) and "dev" in document:
        raise ConfigError(f"{source}: dev: unknown key (use `chit serve --dev`)")
    return validate_section(Config, document, source, base)


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    return parse_config(read_yaml_file(path), str(path), path.resolve().parent)
