"""Operational logs of `chit serve` and `chit gateway`, on stderr: one JSON object per
line in production, readable text with `chit serve --dev` (docs/operators/logs.md).
The audit log (stdout, or `audit.sink`) is another stream and is not touched here.

Every line logged while an exchange (or a gateway call) runs carries its
`decision_id` (the one in its audit line and in its error response): the
request sets it in a context variable, which follows it into every task it
starts, and a filter on the handler copies it onto each record. The token
server's filter (`chit.server.logs`) adds the current `trace_id` and
`span_id` when tracing is on.

What is logged never includes a token, a signature, a password or an AWS
secret: the messages are chit's own, built from verified facts and error
classes.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

from chit.section import Section

# The decision id of the exchange (or gateway call) being handled in this context, if any.
DECISION_ID: ContextVar[str | None] = ContextVar("chit_decision_id", default=None)


class Log(Section):
    """The `log` section of the token server's and the gateway's configuration."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one object per line, for a log pipeline; text: for a person (`chit serve --dev`).
    format: Literal["json", "text"] = "json"


class RequestContext(logging.Filter):
    """Adds the current request's `decision_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.decision_id = DECISION_ID.get()
        return True


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, as the audit log's `ts`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonLines(logging.Formatter):
    """`{"ts", "level", "logger", "message", "decision_id"?, "trace_id"?, "span_id"?, "exception"?}`.

    json.dumps escapes every control character, so a message can never break
    the one-object-per-line framing (no forged log lines)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        decision_id = getattr(record, "decision_id", None)
        if decision_id is not None:
            entry["decision_id"] = decision_id
        trace_ids = getattr(record, "trace_ids", None)
        if trace_ids is not None:
            entry["trace_id"], entry["span_id"] = trace_ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class Text(logging.Formatter):
    """`2026-12-06T03:19:47.898Z INFO chit.exchange [decision_id]: message`, for a person."""

    def format(self, record: logging.LogRecord) -> str:
        decision_id = getattr(record, "decision_id", None)
        context = f" [{decision_id}]" if decision_id is not None else ""
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}{context}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_config(settings: Log, context: type[logging.Filter] = RequestContext) -> dict[str, Any]:
    """The `logging.config.dictConfig` of chit and uvicorn: stderr only (stdout is the
    audit log's), chit's and uvicorn's loggers at `log.level`, other libraries' at
    WARNING (httpx would log every request at INFO); `context` fills in each record's
    request fields."""
    formatter = JsonLines if settings.format == "json" else Text
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"exchange": {"()": context}},
        "formatters": {"chit": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "chit", "filters": ["exchange"], "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": settings.level, "propagate": False},
            "chit": {"handlers": ["stderr"], "level": settings.level, "propagate": False},
        },
    }
