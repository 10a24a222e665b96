"""Policy: build `input`, ask the engine for `data.chit.decision`, validate the answer.

Two engines answer the same question: `embedded` (rego-cpp in process) and
`opa` (an OPA server). Either way an engine that errors or answers something
malformed denies; an engine that cannot be reached makes the exchange fail
closed with 503 (docs/reference/policy-contract.md "Decisions").
"""

from __future__ import annotations

import datetime as _dt
import functools
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from chit.policy.config import PolicySettings
from chit.policy.bundle import PolicyBundle, load_policy_dir, shipped_policy_dir
from chit.policy.decision import Decision, parse_decision


class PolicyUnavailable(Exception):
    """The engine could not be asked (unreachable, 5xx, timeout): fail closed."""


class PolicyInputUnrepresentable(Exception):
    """A string of the input cannot be carried faithfully by the engine (docs/reference "Strings
    reach the policy faithfully or not at all"): the exchange is refused, not decided."""


class PolicyEvaluationError(Exception):
    """The policy raised an error (a conflict, a strict built-in error) or the engine's
    answer is unusable (an OPA 4xx, a malformed response): the decision is a deny."""


class PolicyEngine(Protocol):
    name: str

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        """The raw decision value (None when undefined). Raises PolicyEvaluationError
        (deny) or PolicyUnavailable (503)."""

    async def ready(self) -> bool: ...

    async def unready_reason(self) -> str | None:
        """Why the engine cannot decide now (for /readyz and `chit doctor`); None when it can."""

    async def close(self) -> None: ...


def policy_dirs(settings: PolicySettings) -> list[Path]:
    """`policy.dir` (else the shipped policies), then `policy.extra_dirs`."""
    return [settings.dir or shipped_policy_dir(), *settings.extra_dirs]


def policy_bundle(settings: PolicySettings) -> PolicyBundle:
    # Test modules never take part in a decision; the server leaves them out.
    first, *extra = policy_dirs(settings)
    return load_policy_dir(first, include_tests=False, extra_dirs=extra)


def build_engine(settings: PolicySettings) -> PolicyEngine:
    """The configured engine; raises PolicyLoadError when the policy cannot be used.

    With `engine: opa` the policy lives in the OPA server: chit loads nothing
    and starts even while OPA is down (readiness reports it, exchanges get 503).
    """
    if settings.engine == "opa":
        from chit.policy.opa import OpaEngine

        return OpaEngine(settings.opa_url, settings.timeout_ms / 1000)
    from chit.policy.embedded import EmbeddedEngine

    return EmbeddedEngine(policy_bundle(settings))


def plain(value: Any) -> Any:
    """The input as JSON-serializable plain containers (verified claims are read-only views)."""
    if isinstance(value, (dict, MappingProxyType)):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@functools.lru_cache(maxsize=4)
def _now_input(second: int) -> dict[str, Any]:
    moment = _dt.datetime.fromtimestamp(second, _dt.timezone.utc)
    return {
        "unix": second,
        "rfc3339": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "weekday": WEEKDAYS[moment.weekday()],
        "hour": moment.hour,
    }


def now_input(now: float) -> dict[str, Any]:
    """`input.now` in UTC, from the one timestamp taken per request (a copy: callers may keep it)."""
    return dict(_now_input(int(now)))


def policy_input(
    subject: str,
    attestation: Mapping[str, Any],
    request: dict[str, Any],
    now: float,
    images: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The one place `input` is built (docs/reference/policy-contract.md "Policy contract"), from the verified
    facts the exchange hands over (`Attestation.policy_view()`)."""
    document: dict[str, Any] = {
        "subject": subject,
        "attestation": attestation,
        "request": request,
        "now": now_input(now),
    }
    if images is not None:
        document["images"] = images
    return document


__all__ = [
    "Decision",
    "PolicyEngine",
    "PolicyEvaluationError",
    "PolicyInputUnrepresentable",
    "PolicyUnavailable",
    "build_engine",
    "parse_decision",
    "plain",
    "policy_bundle",
    "policy_dirs",
    "policy_input",
]
