"""chit's configuration: one YAML file, parsed once at start into frozen objects.

The keys are the contract in DESIGN.md ("Configuration"). An unknown key, a
wrong type or an unsafe value stops the start with a message naming the key and
the file; nothing else in chit reads the file or the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_ENV = "CHIT_CONFIG"
RESOLVED_CONFIG_ENV = "CHIT_RESOLVED_CONFIG"  # set by `chit serve` for its uvicorn workers
MAX_TOKEN_TTL = 900  # DESIGN.md: a minted credential never lives longer than 15 minutes.

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_safe_url(url: str, what: str) -> str:
    """HTTPS anywhere, plain HTTP only to this machine (tests and local stand-ins)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ValueError(f"{what} must be an https:// URL (http:// only on loopback), got {url!r}")


PositiveInt = Annotated[int, Field(gt=0)]
# Paths are strings in YAML; strict mode would only take Path objects.
FilePath = Annotated[Path, Field(strict=False)]


class ListenTls(_Section):
    """chit's own HTTPS certificate: PEM files, re-read when they change (server/tls.py)."""

    cert_file: FilePath  # the certificate, then any intermediates
    key_file: FilePath  # its private key, unencrypted


class Listen(_Section):
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


class Signing(_Section):
    algorithm: Literal["ES256", "RS256", "EdDSA"] = "ES256"
    keys_dir: FilePath = Path("var/keys")
    rotation_grace_seconds: Annotated[int, Field(ge=0)] = 300


class Tokens(_Section):
    ttl_seconds: Annotated[int, Field(gt=0, le=MAX_TOKEN_TTL)] = MAX_TOKEN_TTL


class Policy(_Section):
    engine: Literal["embedded", "opa"] = "embedded"
    dir: FilePath | None = None  # None: the policies shipped with chit
    opa_url: str = "http://127.0.0.1:8181"
    timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 500

    @field_validator("opa_url")
    @classmethod
    def _opa_url(cls, value: str) -> str:
        return require_safe_url(value, "opa_url")


class KubernetesApi(_Section):
    server: str | None = None  # None: the cluster chit runs in (in-cluster configuration)
    ca_file: FilePath | None = None
    token_file: FilePath | None = None
    kubeconfig: FilePath | None = None  # instead of the three above: a kubeconfig file (its current context)
    timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 3000  # each TokenReview / pod GET, in total

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "api.server")

    @model_validator(mode="after")
    def _one_source(self) -> KubernetesApi:
        if self.kubeconfig is not None and (self.server or self.ca_file or self.token_file):
            raise ValueError("set either kubeconfig or server/ca_file/token_file")
        return self


class Cluster(_Section):
    name: str
    issuer: str
    jwks_uri: str | None = None
    jwks_file: FilePath | None = None
    discovery: bool = False
    audiences: Annotated[list[str], Field(min_length=1)]
    region: str | None = None
    api: KubernetesApi = KubernetesApi()
    token_review: bool = False
    pod_lookup: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # The name becomes a path segment of every SPIFFE ID of the cluster.
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError("must be a DNS label (lowercase letters, digits, '-'; at most 63)")
        return value

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


class KubernetesAttestor(_Section):
    max_token_lifetime_seconds: PositiveInt = 86400
    clusters: list[Cluster] = []

    @model_validator(mode="after")
    def _unique(self) -> KubernetesAttestor:
        for field in ("name", "issuer"):
            values = [getattr(c, field) for c in self.clusters]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"cluster {field} must be unique, repeated: {', '.join(duplicates)}")
        return self


AWS_ACCOUNT_ID = re.compile(r"\d{12}")
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
AWS_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")


class AwsIidAttestor(_Section):
    enabled: bool = True
    certificates_dir: FilePath | None = None  # None: the AWS certificates shipped with chit
    regions: list[str] | None = None  # allowlist; None: every region with a certificate
    account_ids: list[str] | None = None  # allowlist
    verify_instance: bool = False
    # Roles chit assumes to call DescribeInstances in other accounts (account id -> role ARN);
    # an account not listed is described with chit's own AWS credentials.
    describe_roles: dict[str, str] = {}
    # How long an instance's nonce binding outlives its last successful exchange.
    binding_ttl_seconds: PositiveInt = 365 * 86400

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str] | None) -> list[str] | None:
        for region in value or []:
            if not AWS_REGION.fullmatch(region):
                raise ValueError(f"{region!r} is not an AWS region name")
        return value

    @field_validator("account_ids")
    @classmethod
    def _account_ids(cls, value: list[str] | None) -> list[str] | None:
        for account in value or []:
            if not AWS_ACCOUNT_ID.fullmatch(account):
                raise ValueError(f"{account!r} is not a 12-digit AWS account id")
        return value

    @field_validator("describe_roles")
    @classmethod
    def _describe_roles(cls, value: dict[str, str]) -> dict[str, str]:
        for account, role_arn in value.items():
            match = AWS_ROLE_ARN.fullmatch(role_arn)
            if not AWS_ACCOUNT_ID.fullmatch(account) or match is None:
                raise ValueError(f"{account!r}: {role_arn!r} must map a 12-digit account id to an IAM role ARN")
        return value


# A Google Cloud project id: 6-30 lowercase letters, digits, hyphens, starting with
# a letter (legacy domain-scoped ids, "example.com:project", are not accepted).
GCP_PROJECT_ID = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")


class GcpAttestor(_Section):
    enabled: bool = True
    # Empty: chit's own `issuer` URL is the one audience accepted (never "any").
    audiences: list[Annotated[str, Field(min_length=1)]] = []
    certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    require_full_format: bool = True
    project_ids: Annotated[list[str], Field(min_length=1)] | None = None
    single_use: bool = False
    # Look the instance up in the Compute Engine API (instances.get) with chit's
    # Application Default Credentials: it must exist, match the token, and run.
    verify_instance: bool = False
    compute_endpoint: str = "https://compute.googleapis.com"
    compute_timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 3000  # each instances.get, and each wait for an access token

    @field_validator("certs_url")
    @classmethod
    def _certs_url(cls, value: str) -> str:
        return require_safe_url(value, "certs_url")

    @field_validator("compute_endpoint")
    @classmethod
    def _compute_endpoint(cls, value: str) -> str:
        require_safe_url(value, "compute_endpoint")
        parts = urlsplit(value)
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"compute_endpoint must be a scheme and host only (chit adds /compute/v1/…), got {value!r}")
        return value.rstrip("/")

    @field_validator("project_ids")
    @classmethod
    def _project_ids(cls, value: list[str] | None) -> list[str] | None:
        for project_id in value or []:
            if not GCP_PROJECT_ID.fullmatch(project_id):
                raise ValueError(f"{project_id!r} is not a Google Cloud project id")
        return value

    @model_validator(mode="after")
    def _instance_to_verify(self) -> GcpAttestor:
        # A standard-format token names no instance: there would be nothing to look up.
        if self.verify_instance and not self.require_full_format:
            raise ValueError("verify_instance: true needs require_full_format: true (a standard-format token names no instance to look up)")
        return self


class Attestors(_Section):
    kubernetes: KubernetesAttestor = KubernetesAttestor()
    aws_iid: AwsIidAttestor = AwsIidAttestor()
    gcp: GcpAttestor = GcpAttestor()


class ImageSignatures(_Section):
    keys: dict[str, str] = {}  # name -> PEM public key (ECDSA P-256, cosign's)
    timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 3000  # all of one exchange's registry lookups
    # host[:port] of the registries chit may ask for signatures; None: any registry
    # named by a DNS name or a public address (image references come from pod specs).
    registries: list[str] | None = None


class Aws(_Section):
    region: str = "us-east-1"
    endpoint_url: str | None = None  # one endpoint for STS and EC2 (a local stand-in); None: AWS's own
    sts_mode: Literal["assume_role", "web_identity"] = "assume_role"
    timeout_seconds: Annotated[float, Field(gt=0, le=60, strict=False)] = 5.0  # connect and read, per attempt

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "endpoint_url")


class State(_Section):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # redis://[user:password@]host:port/db, or rediss:// for TLS
    timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 500  # connect, and each command

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_url(self) -> State:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        return self


class RateLimits(_Section):
    per_subject_per_minute: Annotated[int, Field(ge=0)] = 0
    per_client_per_minute: Annotated[int, Field(ge=0)] = 0


class Audit(_Section):
    sink: str = "stdout"


class Config(_Section):
    issuer: str
    listen: Listen = Listen()
    trust_domain: str = "example.org"
    signing: Signing = Signing()
    tokens: Tokens = Tokens()
    policy: Policy = Policy()
    attestors: Attestors = Attestors()
    image_signatures: ImageSignatures = ImageSignatures()
    aws: Aws = Aws()
    state: State = State()
    rate_limits: RateLimits = RateLimits()
    audit: Audit = Audit()
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
    def _not_our_own_issuer(self) -> Config:
        # chit never accepts its own tokens as evidence (DESIGN.md, issue #2 point 5).
        for cluster in self.attestors.kubernetes.clusters:
            if cluster.issuer.rstrip("/") == self.issuer:
                raise ValueError(f"cluster {cluster.name!r} has chit's own issuer; chit never trusts its own tokens")
        return self

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in a config file are relative to the file, not to the working directory."""

    def resolve(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    kubernetes = config.attestors.kubernetes
    clusters = [
        c.model_copy(
            update={
                "jwks_file": resolve(c.jwks_file),
                "api": c.api.model_copy(
                    update={
                        "ca_file": resolve(c.api.ca_file),
                        "token_file": resolve(c.api.token_file),
                        "kubeconfig": resolve(c.api.kubeconfig),
                    }
                ),
            }
        )
        for c in kubernetes.clusters
    ]
    tls = config.listen.tls
    if tls is not None:
        tls = tls.model_copy(update={"cert_file": resolve(tls.cert_file), "key_file": resolve(tls.key_file)})
    aws_iid = config.attestors.aws_iid
    audit_sink = config.audit.sink
    if audit_sink != "stdout" and not Path(audit_sink).is_absolute():
        audit_sink = str(base / audit_sink)
    return config.model_copy(
        update={
            "listen": config.listen.model_copy(update={"tls": tls}),
            "signing": config.signing.model_copy(update={"keys_dir": resolve(config.signing.keys_dir)}),
            "policy": config.policy.model_copy(update={"dir": resolve(config.policy.dir)}),
            "attestors": config.attestors.model_copy(
                update={
                    "kubernetes": kubernetes.model_copy(update={"clusters": clusters}),
                    "aws_iid": aws_iid.model_copy(update={"certificates_dir": resolve(aws_iid.certificates_dir)}),
                }
            ),
            "audit": config.audit.model_copy(update={"sink": audit_sink}),
        }
    )


def parse_config(document: Mapping[str, Any], source: str, base: Path) -> Config:
    """Validate a config mapping; `source` names it in errors, `base` anchors relative paths."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: the configuration must be a YAML mapping")
    if "dev" in document:
        raise ConfigError(f"{source}: dev: unknown key (use `chit serve --dev`)")
    try:
        config = Config.model_validate(dict(document))
    except ValidationError as error:
        lines = [f"{source}: invalid configuration:"]
        for problem in error.errors():
            key = _format_location(problem["loc"])
            message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message}")
        raise ConfigError("\n".join(lines)) from None
    return _resolve_paths(config, base)


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
