"""The grant: what a decision allows for the request (docs/reference/policy-contract.md "Policy contract").

Granted scope is the requested scope intersected with the decision's; every
requested audience/resource must be in the decision's audience. A refusal is the
OAuth error the exchange answers with.
"""

from __future__ import annotations

from dataclasses import dataclass

from chit.policy.decision import Decision
from chit.server.errors import PolicyDenied, PolicyDeniedScope, PolicyDeniedTarget


@dataclass(frozen=True, slots=True)
class Grant:
    scope: tuple[str, ...]
    audience: tuple[str, ...]


def grant(decision: Decision, scope: tuple[str, ...], targets: tuple[str, ...], *, require_audience: bool = True) -> Grant:
    """What the decision allows for the requested scope and targets (audience + resource).

    `require_audience` is false for AWS credentials: their audience is AWS, so a
    decision may grant them without naming one."""
    reasons = "; ".join(decision.reasons)
    if not decision.allow:
        raise PolicyDenied("the exchange is not permitted", detail=reasons)
    if scope:
        granted_scope = tuple(s for s in scope if s in decision.scope)
        if not granted_scope:
            raise PolicyDeniedScope("none of the requested scopes is permitted", detail="no requested scope in decision.scope")
    else:
        granted_scope = decision.scope
    refused = [t for t in targets if t not in decision.audience]
    if refused:
        raise PolicyDeniedTarget("a requested audience or resource is not permitted", detail=f"not in decision.audience: {refused}")
    audience = targets or decision.audience[:1]
    if not audience and require_audience:
        raise PolicyDeniedTarget("no audience is permitted", detail="decision.audience is empty")
    return Grant(granted_scope, tuple(dict.fromkeys(audience)))
