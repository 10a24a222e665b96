"""The token server's operational logs: chit.serving.logs' lines, whose records also
carry the current `trace_id` and `span_id` when tracing is on (docs/operators/logs.md)."""

from __future__ import annotations

import logging
from typing import Any

from chit.server import tracing
from chit.serving.logs import DECISION_ID, JsonLines, Log, RequestContext, Text  # noqa: F401 — re-exported
from chit.serving.logs import log_config as _log_config


class ExchangeContext(RequestContext):
    """Adds the current exchange's `decision_id`, and its trace ids when tracing is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        record.trace_ids = tracing.current_ids()
        return True


def log_config(settings: Log) -> dict[str, Any]:
    return _log_config(settings, ExchangeContext)
