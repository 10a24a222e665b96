"""OAuth errors, one class per RFC error code (RFC 6749 §5.2, RFC 8693 §2.2.2).

Every refusal in chit is raised as one of these; `server.app` turns it into
the JSON error response and the exchange pipeline into the audit outcome. The
description goes to the client, so it never carries a secret or policy detail;
`detail` is for the audit log and the operator only.
"""

from __future__ import annotations

from typing import Any

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


class OAuthError(Exception):
    error: str = "invalid_request"
    status_code: int = 400
    # Audit outcome (docs/reference/audit-log.md "Audit log"): invalid | denied | limited | unavailable.
    outcome: str = "invalid"

    def __init__(self, description: str, *, detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.description = description
        self.detail = detail or description
        self.headers = headers or {}


    def answer(self, decision_id: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The error response (RFC 6749 §5.2): status, JSON body, headers."""
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if decision_id is not None:
            body["decision_id"] = decision_id
        headers = {**NO_STORE, **self.headers}
        if self.status_code == 401:
            headers.setdefault("WWW-Authenticate", f'Bearer error="{self.error}"')
        if self.status_code == 413:
            headers["Connection"] = "close"  # the rest of the body is not read
        return self.status_code, body, headers


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2: "The request is missing a required parameter, includes an
    unsupported parameter value (other than grant type), repeats a parameter,
    includes multiple credentials, ... or is otherwise malformed." RFC 8693
    §2.2.2 uses it for an invalid subject or actor token too."""


class RequestTooLarge(InvalidRequest):
    status_code = 413


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2: "The authorization grant type is not supported by the authorization server." """

    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """RFC 6749 §5.2: "The requested scope is invalid, unknown, malformed, or
    exceeds the scope granted by the resource owner." """

    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8693 §2.2.2: "The authorization server is unwilling or unable to issue
    a token for any target service as indicated by the resource or audience
    parameters." """

    error = "invalid_target"


class PolicyDenied(InvalidRequest):
    """Policy said no. RFC 8693 leaves the code to the server; chit answers
    invalid_request and names no policy detail (the reasons go to the audit log)."""

    outcome = "denied"


class PolicyDeniedScope(InvalidScope):
    outcome = "denied"


class PolicyDeniedTarget(InvalidTarget):
    outcome = "denied"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: "Client authentication failed" (401 with a Bearer challenge)."""

    error = "invalid_client"
    status_code = 401


class SlowDown(OAuthError):
    """Over a rate limit. `slow_down` is RFC 8628's name for "poll less often"."""

    error = "slow_down"
    status_code = 429
    outcome = "limited"


class TemporarilyUnavailable(OAuthError):
    """A dependency a check needs cannot answer: fail closed, never a token."""

    error = "temporarily_unavailable"
    status_code = 503
    outcome = "unavailable"
    # Which dependency could not answer, for chit_exchange_unavailable_total{cause}
    # (docs/operators/metrics.md): attestation, platform_api, policy, state, sts, signing_key.
    CAUSES = frozenset({"attestation", "platform_api", "policy", "state", "sts", "signing_key", "other"})

    def __init__(self, description: str, *, cause: str = "other", detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(description, detail=detail, headers=headers)
        assert cause in self.CAUSES, cause
        self.cause = cause


class ServerError(OAuthError):
    """RFC 6749 §5.2 `server_error`: "The authorization server encountered an unexpected
    condition". The client learns nothing more (no traceback); the log has the rest."""

    error = "server_error"
    status_code = 500
    outcome = "unavailable"
