"""`chit policy eval`: the server's answer to one exchange, without issuing anything.

The request goes through the server's own pipeline, `TokenExchange.handle`:
the same form parser, the same verifiers built from the configuration, the
same enrichment, the same `input` (`chit.policy.policy_input`, with
`input.now`), the same engine, then the same grant, reserved-audience rule,
lifetime and AWS rules. So its answer is the server's: the audit line the
server would write, and the OAuth error it would answer with.

What eval does not share with a running server, and why:

- **state**: a private in-memory store, never `state.backend`: eval binds no
  AWS nonce, uses up no GCP single-use token, counts against no rate limit, and
  does not see `chit revoke` (the operator's kill switch, not the policy's);
- **keys**: throwaway signing keys, one per series, so
  `tokens.audiences` apply as in the server; the token minted is dropped, never
  printed (tokens issued by chit are still refused as evidence, by the
  configured keys when they can be read);
- **AWS STS**: not asked for credentials; every check on the decision runs,
  the credential is a placeholder and its lifetime 900 s, as STS's would be;
- **audit**: nothing is written: the audit line is the answer;
- **network**: this machine only (loopback), unless `--network`: a check that
  needs another host (a JWKS, Google's certificates, a platform API, STS
  for an aws-iam request, a registry) answers 503 `temporarily_unavailable`,
  and the refused hosts are listed.

With `--input`, the verified facts come from an input document instead of a
token (`subject`, `attestation`, `images`, as chit builds them): verification
and enrichment are skipped, the rest is the same.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping
from urllib.parse import urlencode

from chit.attestors.base import Attestation
from chit.aws import AwsClients
from chit.policy import PolicyEngine, build_engine, plain
from chit.protocol import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from chit.server.app import build_attestors, build_signatures
from chit.audit import AuditLog
from chit.server.config import Config
from chit.server.exchange import HttpRequest, TokenExchange
from chit.server.keys import KeyStore, SigningKeyError, write_key_file
from chit.server.signatures import ImageSignatures
from chit.server.sts import STS_DURATION_SECONDS, AwsCredentials, StsIssuer, StsSession
from chit.state import MemoryStore

# What the audit line holds that only a served exchange has (when, which id, from where).
_SERVED_ONLY = ("ts", "decision_id", "client", "jti", "latency_ms")
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class EvalRequest:
    """The token request eval answers, as its flags give it."""

    subject_token: str | None  # None: the facts come from an input document
    subject_token_type: str = TOKEN_TYPE_JWT
    scope: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    requested_token_type: str | None = None

    def form(self) -> bytes:
        fields: list[tuple[str, str]] = [
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            # With an input document, a placeholder: the given facts stand in for its verification.
            ("subject_token", self.subject_token if self.subject_token is not None else "input-document"),
            ("subject_token_type", self.subject_token_type),
        ]
        if self.scope:
            fields.append(("scope", " ".join(self.scope)))
        fields += [("audience", a) for a in self.audience] + [("resource", r) for r in self.resource]
        if self.requested_token_type:
            fields.append(("requested_token_type", self.requested_token_type))
        return urlencode(fields).encode("ascii")


# --- the facts of an input document ---------------------------------------------------------------


class GivenWorkload:
    """Stands in for the attestors: the verified facts are those of an input document."""

    def __init__(self, document: Mapping[str, Any]):
        attestation = document.get("attestation")
        if not isinstance(attestation, dict) or not isinstance(attestation.get("kind"), str):
            raise ValueError("the input document needs an `attestation` object with its `kind`")
        subject = document.get("subject")
        if not isinstance(subject, str):
            raise ValueError("the input document needs a `subject` string")
        facts = {k: v for k, v in attestation.items() if k not in ("kind", "claims")}
        claims = attestation.get("claims", {})
        images = document.get("images")
        self.attestation = Attestation(
            attestation["kind"], subject, facts, claims if isinstance(claims, dict) else {}, {}, images=() if images is not None else None
        )

    def accepts(self, token_type: str) -> bool:
        return True

    async def verify(self, token_type: str, token: str, now: float) -> Attestation:
        return self.attestation

    async def enrich(self, attestation: Attestation) -> Attestation:
        return attestation

    async def close(self) -> None:
        return None


class GivenImages(ImageSignatures):
    """The images of an input document, already described (`signed`, `signers`)."""

    def __init__(self, images: list[dict[str, Any]] | None):
        super().__init__({})
        self.images = images

    async def describe(self, images: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        return list(self.images or [])


# --- what eval does instead of STS and the decision's engine ---------------------------------------


class PlaceholderSts(StsIssuer):
    """Every check of the decision's `aws` runs (`session`); STS is not called."""

    async def assume(self, session: StsSession, web_identity_token: str | None = None) -> AwsCredentials:
        return AwsCredentials(
            access_key_id="(not issued by chit policy eval)",
            secret_access_key="-",
            session_token="-",
            expiration=datetime.now(timezone.utc) + timedelta(seconds=STS_DURATION_SECONDS),
        )


@dataclass
class RecordingEngine:
    """The configured engine, keeping the input it was asked about and its raw answer."""

    engine: PolicyEngine
    policy_input: dict[str, Any] | None = None
    decision: Any = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.engine.name

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        self.policy_input = policy_input
        self.decision = await self.engine.decide(policy_input)
        return self.decision

    async def ready(self) -> bool:
        return await self.engine.ready()

    async def unready_reason(self) -> str | None:
        return await self.engine.unready_reason()

    async def close(self) -> None:
        await self.engine.close()


# --- the network -------------------------------------------------------------------------------------


class NetworkRefused(ConnectionRefusedError):
    """eval connects to this machine only, unless --network."""


def _is_loopback(host: Any) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
    """While inside, name lookups and connections to anything but loopback fail (as a
    refused connection: every client chit uses reports it as "unavailable"); yields the
    list of hosts refused. Process-wide: `chit policy eval` is a command, not a server."""
    refused: list[str] = []
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def refuse(host: Any) -> NetworkRefused:
        host = host.decode(errors="replace") if isinstance(host, bytes) else host
        refused.append(str(host))
        return NetworkRefused(f"chit policy eval connects to this machine only (pass --network): {host}")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            raise refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise refuse(address[0])

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    try:
        yield refused
    finally:
        socket.getaddrinfo = real_getaddrinfo  # type: ignore[assignment]
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]


# --- the answer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalAnswer:
    status: int
    audit: dict[str, Any]  # the server's audit line, without what only a served exchange has
    error_description: str | None
    policy_input: dict[str, Any] | None  # None: the exchange was refused before the policy was asked
    decision: Any
    refused_hosts: tuple[str, ...]

    def document(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": self.status, **self.audit}
        if self.error_description is not None:
            answer["error_description"] = self.error_description
        answer["decision"] = self.decision
        answer["input"] = plain(self.policy_input)
        if self.refused_hosts:
            answer["network_refused"] = sorted(set(self.refused_hosts))
        return answer


def _own_kid(config: Config) -> Any:
    """The configured keys' ids, when they can be read: chit's own tokens are no evidence."""
    try:
        return KeyStore(config.signing.keys_dir).is_own_kid
    except (SigningKeyError, OSError):
        return lambda kid: False


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def evaluate_exchange(
    config: Config,
    request: EvalRequest,
    now: float,
    *,
    document: Mapping[str, Any] | None = None,
    engine: PolicyEngine | None = None,
    network: bool = False,
) -> EvalAnswer:
    """The answer the server configured by `config` would give to `request` at `now`: from
    `request.subject_token`, verified; or from the verified facts of `document`."""
    state = MemoryStore()
    recording = RecordingEngine(engine or build_engine(config.policy))
    with tempfile.TemporaryDirectory(prefix="chit-eval-") as keys_dir:
        write_key_file(Path(keys_dir), config.signing.algorithm, 0)  # active at any --now
        aws = AwsClients(config.aws)
        if document is not None:
            attestors: Any = GivenWorkload(document)
            signatures: ImageSignatures = GivenImages(document.get("images"))
        else:
            attestors = build_attestors(config, state, aws, _own_kid(config))
            signatures = build_signatures(config)
        exchange = TokenExchange(
            config, KeyStore(Path(keys_dir)), attestors, recording, AuditLog("/dev/null"), state, PlaceholderSts(config.aws, aws), signatures
        )
        body = request.form()
        http = HttpRequest(client=None, query="", content_type=FORM, content_length=str(len(body)), body=_one_chunk(body))
        guard = contextlib.nullcontext([]) if network else loopback_only()
        with guard as refused:
            try:
                outcome = await exchange.handle(http, now)
            finally:
                await exchange.close()
    audit = {key: value for key, value in outcome.audit.items() if key not in _SERVED_ONLY}
    description = outcome.body.get("error_description") if outcome.status != 200 else None
    return EvalAnswer(outcome.status, audit, description, recording.policy_input, recording.decision, tuple(refused))


def parse_now(text: str | None, default: float) -> float:
    """`--now`: an RFC 3339 date-time with its offset (`2026-11-24T10:00:00Z`)."""
    if text is None:
        return default
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--now {text!r} is not an RFC 3339 date-time (2026-11-24T10:00:00Z)") from None
    if moment.tzinfo is None:
        raise ValueError(f"--now {text!r} needs its offset (Z or +hh:mm): the policy reads UTC")
    return moment.timestamp()


__all__ = ["EvalAnswer", "EvalRequest", "evaluate_exchange", "loopback_only", "parse_now"]
