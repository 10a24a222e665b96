"""The small interfaces every attestor implements (standard library only: the agent imports it).

A verifier turns a subject token into an `Attestation` — the verified facts
about where a workload runs — or raises `InvalidEvidence` (the token proves
nothing: 400) or `EvidenceUnavailable` (a check could not be made: 503).
Nothing a verifier has not verified ever goes into an Attestation.

A collector, on the workload's machine, fetches the evidence its verifier
reads — a `SubjectToken` — or raises `PlatformAbsent` (this is not that
platform: nothing answered) or `CollectionFailed` (the platform is here but did
not hand its evidence over).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol

from chit.httpclient import Response, request
from chit.strictjson import StrictJSONError, strict_json_object

if TYPE_CHECKING:
    from chit.attestors.jose import CompactJws


class InvalidEvidence(Exception):
    """The subject (or actor) token is not acceptable evidence; the message says why
    in words safe to return to the caller (no key material, no token)."""


def evidence_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object of evidence, parsed strictly (chit.strictjson); InvalidEvidence if it is not one."""
    try:
        return strict_json_object(data, what)
    except StrictJSONError as error:
        raise InvalidEvidence(str(error)) from None


class EvidenceUnavailable(Exception):
    """A source the verification needs (JWKS, certificates, a platform API) did not
    answer: the check cannot be made, so the exchange fails closed (503)."""


class ReplayGuard(Protocol):
    """Single-use bookkeeping a verifier asks for, committed only once a credential
    is issued, so that failed attempts bind nothing (docs/operators/aws.md "AWS nonce")."""

    async def commit(self) -> None:
        """Record the use atomically; raise InvalidEvidence if another exchange won."""


@dataclass(frozen=True, slots=True)
class ContainerImage:
    """A container image the platform reports for the workload (not yet signature-checked)."""

    ref: str
    digest: str | None


@dataclass(frozen=True, slots=True)
class Attestation:
    """Verified facts about a workload.

    `facts` become `input.attestation` (beside `kind` and `claims`), `att` the
    `att` claim of minted tokens. `expires_at` caps the lifetime of the tokens
    chit mints: a token never outlives its evidence. AWS STS credentials are
    the exception (docs/reference/policy-contract.md "Minted lifetime"): they always last 900 s, AWS's
    minimum, even when the evidence expires sooner, as AWS's own web-identity
    flow does.
    """

    kind: str
    subject: str
    facts: Mapping[str, Any]
    claims: Mapping[str, Any]
    att: Mapping[str, Any]
    expires_at: float | None = None
    images: tuple[ContainerImage, ...] | None = None
    replay_guard: ReplayGuard | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Read-only views; verifiers hand over dicts they no longer touch.
        for name in ("facts", "claims", "att"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(value))

    @property
    def region(self) -> str | None:
        return self.facts.get("region")

    def policy_view(self) -> dict[str, Any]:
        """`input.attestation` (docs/reference/policy-contract.md "Policy contract")."""
        return {"kind": self.kind, **self.facts, "claims": self.claims}

    def att_claim(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.att}


class Verifier(ABC):
    """The server half of an attestor."""

    kind: ClassVar[str]

    async def enrich(self, attestation: Attestation) -> Attestation:
        """Optional platform API checks and facts (pod lookup, instance state)."""
        return attestation

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class JwtVerifier(Verifier):
    """An attestor whose evidence is a JWT, routed to it by the token's `iss`."""

    @property
    @abstractmethod
    def issuers(self) -> frozenset[str]:
        """The exact `iss` values this verifier is responsible for."""

    @abstractmethod
    async def verify_jws(self, jws: CompactJws, now: float) -> Attestation:
        """Verify a structurally checked JWS whose `iss` is one of `issuers`."""


class DocumentVerifier(Verifier):
    """An attestor with its own subject token type (an AWS instance identity document)."""

    token_type: ClassVar[str]

    @abstractmethod
    async def verify(self, subject_token: str, now: float) -> Attestation:
        """Verify a subject token of `token_type`."""


# --- the client half ---------------------------------------------------------------------


class PlatformAbsent(Exception):
    """The platform a collector serves is not where this runs (no token file, no
    metadata service answering); the message says where it looked."""


class CollectionFailed(Exception):
    """The platform is here but did not hand over its evidence; the message says why
    (never with token material)."""


@dataclass(frozen=True, slots=True)
class SubjectToken:
    """Evidence as RFC 8693 sends it: `subject_token` and `subject_token_type`."""

    value: str = field(repr=False)
    token_type: str


class Collector(ABC):
    """The client half of an attestor: fetches this platform's evidence, fresh for
    every exchange (projected tokens rotate, identity tokens expire)."""

    kind: ClassVar[str]

    @abstractmethod
    def collect(self) -> SubjectToken:
        """This workload's evidence; `PlatformAbsent` or `CollectionFailed` otherwise."""


# Metadata services answer in milliseconds on their platform; off it, a connection
# to a link-local address may hang, so giving up after a second says "not here".
METADATA_CONNECT_TIMEOUT = 1.0
METADATA_READ_TIMEOUT = 5.0
MAX_METADATA_BODY = 64 * 1024


def metadata_request(method: str, url: str, headers: Mapping[str, str]) -> Response:
    """A request to a platform's metadata service: short timeouts, no redirects, never
    through a proxy (the identity documents are for this machine alone, and the
    service only answers local requests). Raises TransportError when nothing answers."""
    return request(
        method,
        url,
        headers=headers,
        connect_timeout=METADATA_CONNECT_TIMEOUT,
        read_timeout=METADATA_READ_TIMEOUT,
        max_bytes=MAX_METADATA_BODY,
    )


def printable(text: str, limit: int = 200) -> str:
    """A remote service's error text made safe for a terminal or a log line."""
    cleaned = "".join(c if c.isprintable() else " " for c in text[:limit]).strip()
    return cleaned + ("…" if len(text) > limit else "")
