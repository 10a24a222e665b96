"""Prometheus metrics, served at GET /metrics in the text format.

With several workers a scrape reaches one of them, so every process writes its
samples to memory-mapped files in one directory (prometheus-client's
multiprocess mode) and a scrape sums them all. `chit serve --workers N` (N > 1)
creates that directory, empty, for each run and names it in
PROMETHEUS_MULTIPROC_DIR, prometheus-client's own setting, before anything
imports this module (the setting is read at import). Without it (one worker,
the app built in process) the process's own registry is served.

Label values are bounded by the configuration and the RFC error codes: never a
subject, a client address or anything else a caller chooses.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Exchanges take milliseconds; a dependency timing out takes seconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EXCHANGES = Counter(
    "chit_exchanges_total",
    "Token exchanges answered, by audit outcome, attestation kind and OAuth error",
    ["outcome", "kind", "error"],
)
EXCHANGE_SECONDS = Histogram("chit_exchange_duration_seconds", "Whole /token requests", buckets=DURATION_BUCKETS)
STEP_SECONDS = Histogram(
    "chit_exchange_step_duration_seconds", "Steps of an exchange: attest, policy, sign", ["step"], buckets=DURATION_BUCKETS
)
ATTEST_SECONDS = STEP_SECONDS.labels("attest")
POLICY_SECONDS = STEP_SECONDS.labels("policy")
SIGN_SECONDS = STEP_SECONDS.labels("sign")
KEY_FETCHES = Counter(
    "chit_key_fetches_total", "Fetches of verification keys (cluster JWKS, Google's certificates)", ["source", "result"]
)
INSTANCE_LOOKUPS = Counter(
    "chit_instance_lookups_total",
    "Platform API lookups of an attested instance (GCP Compute Engine instances.get): ok, invalid (absent, "
    "mismatched or not running) or error (the API or its credentials could not answer)",
    ["api", "result"],
)
STATE_ERRORS = Counter("chit_state_store_errors_total", "State store operations that failed or timed out", ["operation"])
UNAVAILABLE = Counter(
    "chit_exchange_unavailable_total",
    "Exchanges answered 503 temporarily_unavailable, by the dependency that could not answer: attestation (key "
    "sources, TokenReview, Google's certificates), platform_api (pod and instance lookups), policy, state, sts, signing_key",
    ["cause"],
)
# Set at each scrape, by the worker that answers it: the most recent value is the current one.
SIGNING_KEY_ACTIVATED = Gauge(
    "chit_signing_key_activated_timestamp_seconds",
    "When the signing key in use for each algorithm's series became active (Unix time); rotation is overdue once it is old",
    ["algorithm"],
    multiprocess_mode="mostrecent",
)


def since(started: float) -> float:
    return time.perf_counter() - started


def exposition() -> tuple[bytes, str]:
    """The current samples of every worker (or of this process), and their content type."""
    if MULTIPROCESS_ENV in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

