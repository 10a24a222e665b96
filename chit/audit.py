"""Audit lines: one JSON object per line, written whole (docs/reference/audit-log.md).

The token server writes one per /token response (`chit.server.audit`), the
gateway one per proxied call (`chit.gateway.proxy`). Records are built from
fields that carry no secret; `json.dumps` with ASCII output escapes every
control character, so a line is always one line.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo, field_validator

from chit.section import Section

class AuditSink(Section):
    """The `audit` section of the token server's and the gateway's configuration."""

    sink: str = "stdout"  # or a file path, relative to the configuration file

    @field_validator("sink")
    @classmethod
    def _relative_to_the_file(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base")
        return value if value == "stdout" or base is None or Path(value).is_absolute() else str(Path(base) / value)


# Decision ids: a random per-process prefix and a counter, in UUID form. Unique
# across workers and replicas without a system call per request.
_DECISION_PREFIX = uuid.uuid4().int >> 64 << 64
_decision_counter = itertools.count()


def new_decision_id() -> str:
    return str(uuid.UUID(int=_DECISION_PREFIX | next(_decision_counter), version=4))


@functools.lru_cache(maxsize=4)
def _second_rfc3339(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def audit_timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-22T01:46:40.123Z."""
    second = int(now)
    return f"{_second_rfc3339(second)}.{int((now - second) * 1000):03d}Z"


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
