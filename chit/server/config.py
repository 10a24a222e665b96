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

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from chit.attestors.aws_iam.config import AwsIamSettings
from chit.attestors.aws_iid.config import AwsIidSettings
from chit.attestors.gcp.config import GcpSettings
from chit.attestors.kubernetes.config import KubernetesSettings
from chit.attestors.oidc.config import OidcSettings
from chit.aws import Aws
from chit.policy.config import PolicySettings
from chit.section import FilePath, Milliseconds, Section
from chit.server.logs import Log
from chit.server.tracing import Tracing
from chit.state import State
from chit.urls import is_loopback_host, require_safe_url
from chit.server import CONFIG_ENV, RESOLVED_CONFIG_ENV  # noqa: F401 — re-exported

MAX_TOKEN_TTL = 900  # docs/reference: a minted credential never lives longer than 15 minutes.

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class ListenTls(Section):
    """chit's own HTTPS certificate: PEM files, re-read when they change (server/tls.py)."""

    cert_file: FilePath  # the certificate, then any intermediates
    key_file: FilePath  # its private key, unencrypted


class Listen(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8400
    tls: ListenTls | None = None
    # Plain HTTP on an address other than loopback: subject tokens and issued
    # tokens then cross the network in clear, so `chit serve` wants it said.
    plain_http: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> Listen:
        if self.tls is not None and self.plain_http:
            raise ValueError("set either tls (HTTPS) or plain_http: true, not both")
        return self

    def clear_text_refusal(self) -> str | None:
        """Why `chit serve` must not listen like this, if it must not: tokens in clear
        beyond this machine, without the operator having said so."""
        if self.tls is not None or self.plain_http or is_loopback_host(self.host):
            return None
        return (
            f"listen.host {self.host} is not a loopback address and listen.tls is not set: subject tokens and "
            "issued tokens would cross the network in clear. Set listen.tls.cert_file and listen.tls.key_file "
            "to serve HTTPS, or listen.plain_http: true if something else encrypts the traffic (the start is then logged as a warning)"
        )


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


class Audit(Section):
    sink: str = "stdout"  # or a file path, relative to the configuration file

    @field_validator("sink")
    @classmethod
    def _relative_to_the_file(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base")
        return value if value == "stdout" or base is None or Path(value).is_absolute() else str(Path(base) / value)


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
    audit: Audit = Audit()
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


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_config(document: Mapping[str, Any], source: str, base: Path) -> Config:
    """Validate a config mapping; `source` names it in errors, `base` anchors relative paths."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: the configuration must be a YAML mapping")
    if "dev" in document:
        raise ConfigError(f"{source}: dev: unknown key (use `chit serve --dev`)")
    try:
        # Relative paths are relative to the file, not to the working directory (chit.section).
        config = Config.model_validate(dict(document), context={"base": base})
    except ValidationError as error:
        lines = [f"{source}: invalid configuration:"]
        for problem in error.errors():
            key = _format_location(problem["loc"])
            message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message}")
        raise ConfigError("\n".join(lines)) from None
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (the second would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(document or {}, str(path), path.resolve().parent)
