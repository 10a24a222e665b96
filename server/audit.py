"""The audit log: one JSON object per line for every /token response (DESIGN.md "Audit log").

Records are built by the exchange pipeline from fields that carry no secret:
never a subject or actor token, an issued token, a signature, or an AWS secret.
`json.dumps` with ASCII output escapes every control character, so a line is
always one line.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

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
    def __init__(self, sink: str):
        self.sink = sink
        self._stream: TextIO = sys.stdout if sink == "stdout" else open(sink, "a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
