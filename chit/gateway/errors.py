"""The gateway's refusals, one class per error code (RFC 6750 §3.1 for the bearer token,
RFC 6749 §5.2's codes otherwise), each fixing the HTTP status and the audit outcome.

A refusal is answered before any upstream call. Its description goes to the
caller, so it never carries a token, a key or an upstream's answer; `detail`
is for the audit line.
"""

from __future__ import annotations

from typing import Any

REALM = "chit-gateway"


class GatewayError(Exception):
    error: str = "invalid_request"
    status_code: int = 400
    # Audit outcome (docs/reference/audit-log.md "Gateway lines").
    outcome: str = "invalid"

    def __init__(self, description: str, *, detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.description = description
        self.detail = detail or description
        self.headers = headers or {}

    def answer(self, decision_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        body = {"error": self.error, "error_description": self.description, "decision_id": decision_id}
        return self.status_code, body, {"Cache-Control": "no-store", **self.headers}


class InvalidRequest(GatewayError):
    """RFC 6750 §3.1: "The request is missing a required parameter, includes an unsupported
    parameter or parameter value, repeats the same parameter, uses more than one method
    for including an access token, or is otherwise malformed." """

    def __init__(self, description: str, **kwargs: Any):
        super().__init__(description, **kwargs)
        self.headers.setdefault("WWW-Authenticate", f'Bearer realm="{REALM}", error="invalid_request"')


class RequestTooLarge(GatewayError):
    status_code = 413


class NotFound(GatewayError):
    """No route has this path's prefix."""

    error = "not_found"
    status_code = 404


class MethodNotAllowed(GatewayError):
    """RFC 9110 §15.5.6; the `Allow` header lists the route's methods."""

    error = "method_not_allowed"
    status_code = 405
    outcome = "denied"


class InvalidToken(GatewayError):
    """RFC 6750 §3.1: "The access token provided is expired, revoked, malformed, or invalid
    for other reasons. The resource SHOULD respond with the HTTP 401 (Unauthorized)
    status code." A request with no token at all gets the challenge without an error
    code (§3.1: "the resource server SHOULD NOT include an error code")."""

    error = "invalid_token"
    status_code = 401
    outcome = "unauthorized"

    def __init__(self, description: str, *, missing: bool = False, **kwargs: Any):
        super().__init__(description, **kwargs)
        challenge = f'Bearer realm="{REALM}"' + ("" if missing else ', error="invalid_token"')
        self.headers.setdefault("WWW-Authenticate", challenge)


class InsufficientScope(GatewayError):
    """RFC 6750 §3.1: "The request requires higher privileges than provided by the access
    token. The resource server SHOULD respond with the HTTP 403 (Forbidden) status code
    and MAY include the "scope" attribute with the scope necessary to access the
    protected resource." """

    error = "insufficient_scope"
    status_code = 403
    outcome = "denied"

    def __init__(self, description: str, scope: str, **kwargs: Any):
        super().__init__(description, **kwargs)
        self.headers.setdefault("WWW-Authenticate", f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"')


class AccessDenied(GatewayError):
    """RFC 6749 §4.1.2.1 `access_denied`: the token is good, the request is not one this
    route allows (a path or a model off its allowlist)."""

    error = "access_denied"
    status_code = 403
    outcome = "denied"


class OverBudget(GatewayError):
    """Over a budget; `Retry-After` (RFC 9110 §10.2.3) says when it has room again."""

    error = "slow_down"
    status_code = 429
    outcome = "limited"


class TemporarilyUnavailable(GatewayError):
    """A check cannot be made (the state store, chit's keys, the upstream key): fail closed."""

    error = "temporarily_unavailable"
    status_code = 503
    outcome = "unavailable"


class BadGateway(GatewayError):
    """The upstream could not be reached, or answered what the gateway does not pass on
    (a redirect: redirects are never followed, nor handed to the client)."""

    error = "bad_gateway"
    status_code = 502
    outcome = "upstream_error"


class GatewayTimeout(GatewayError):
    error = "gateway_timeout"
    status_code = 504
    outcome = "upstream_error"
