"""The token server's audit lines: one JSON object per line for every /token response
(docs/reference/audit-log.md "Audit log"), written by `chit.audit.AuditLog`.

Records are built by the exchange pipeline from fields that carry no secret:
never a subject or actor token, an issued token, a signature, or an AWS secret.
`json.dumps` with ASCII output escapes every control character, so a line is
always one line.
"""

from __future__ import annotations

AUDIT_FIELDS = (
    "ts",
    "decision_id",
    "outcome",
    "error",
    "subject",
    "kind",
    "region",
    "client",
    "audience",
    "resource",
    "scope",
    "granted_audience",
    "granted_scope",
    "ttl",
    "jti",
    "reasons",
    "latency_ms",
)
