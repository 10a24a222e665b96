"""The audit log: one JSON object per line for every /token response (docs/reference/audit-log.md "Audit log").

Records are built by the exchange pipeline from fields that carry no secret:
never a subject or actor token, an issued token, a signature, or an AWS secret.
`json.dumps` with ASCII output escapes every control character, so a line is
always one line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

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


class AuditLog:
    """Appends one line per record with a single write(2), so that lines from
    several workers sharing a file (O_APPEND) never interleave."""

    def __init__(self, sink: str):
        self.sink = sink
        if sink == "stdout":
            self._fd, self._owned = sys.stdout.fileno(), False
        else:
            self._fd, self._owned = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640), True

    def write(self, record: dict[str, Any]) -> None:
        line = memoryview((json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode())
        while line:
            line = line[os.write(self._fd, line) :]

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
