"""The gateway's own series, beside chit.metrics' shared exposition: defined here so that
`chit serve`, which never imports the gateway, exports none of them.

Route names come from the gateway's configuration, outcomes from its audit lines.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from chit.metrics import DURATION_BUCKETS

GATEWAY_REQUESTS = Counter(
    "chit_gateway_requests_total", "Requests the gateway answered, by route and audit outcome", ["route", "outcome"]
)
GATEWAY_SECONDS = Histogram(
    "chit_gateway_duration_seconds", "Whole proxied requests, until the answer's last byte", ["route"], buckets=DURATION_BUCKETS
)
GATEWAY_TOKENS = Counter("chit_gateway_llm_tokens_total", "LLM tokens the upstreams reported as used", ["route"])

