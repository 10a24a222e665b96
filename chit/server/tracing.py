"""OpenTelemetry traces of the exchange (docs/operators/tracing.md): off by default.

With `tracing.enabled: true` (and `pip install 'chit[tracing]'`), every POST
/token is a server span, continuing the caller's trace when the request
carries a W3C `traceparent` (and `tracestate`), with a child span per step
of the pipeline (attest, admit, enrich, decide, mint, sts, state). Outbound
calls made meanwhile (key sources, OPA, registries over httpx; the
Kubernetes API and Google's token endpoint over urllib3; STS and EC2 over
botocore) are spans too and carry the trace to their servers.

The exporter is OTLP over HTTP, configured by OpenTelemetry's standard
environment variables, which the SDK reads itself (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_BSP_*, OTEL_SDK_DISABLED, …); chit reads none of them.

Off, nothing of OpenTelemetry is imported, and each step costs one check of
a module global that returns a shared no-op context manager.

What a span carries is what the audit line carries: never a token.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Awaitable, Callable, ContextManager, Mapping, TypeVar

from chit.section import Section


class Tracing(Section):
    """The `tracing` section of chit's configuration."""

    enabled: bool = False


class TracingUnavailable(Exception):
    """`tracing.enabled` without the tracing extra installed."""


_NOTHING: ContextManager[Any] = contextlib.nullcontext()
_tracer: Any = None  # an OpenTelemetry tracer once `start` ran with tracing enabled
T = TypeVar("T")


def check_available(settings: Tracing) -> None:
    """TracingUnavailable when tracing is enabled but OpenTelemetry is not installed
    (`chit serve` says so at start, once, rather than in every worker)."""
    if settings.enabled:
        _sdk()


def _sdk() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.instrumentation.botocore  # noqa: F401
        import opentelemetry.instrumentation.httpx  # noqa: F401
        import opentelemetry.instrumentation.urllib3  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as error:
        raise TracingUnavailable(
            f"tracing.enabled: true needs OpenTelemetry (no module {error.name!r}): pip install 'chit[tracing]'"
        ) from None


def start(settings: Tracing) -> None:
    """Set up the SDK and instrument the HTTP clients, once per process (each worker)."""
    global _tracer
    if not settings.enabled or _tracer is not None:
        return
    _sdk()
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; "chit" names the service otherwise.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "chit"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    BotocoreInstrumentor().instrument(tracer_provider=provider)
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    _tracer = trace.get_tracer("chit")


def shutdown() -> None:
    """Export what is still buffered (a worker stopping)."""
    if _tracer is not None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def step(name: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorates one async step of the exchange: a child span `name` of the current one
    while it runs; when tracing is off, a call straight through."""

    def decorate(function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(function)
        async def traced(*args: Any, **kwargs: Any) -> T:
            if _tracer is None:
                return await function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await function(*args, **kwargs)

        return traced

    return decorate


def exchange_span(traceparent: str | None, tracestate: str | None) -> ContextManager[Any]:
    """The server span of one POST /token, continuing the trace of the request's W3C
    `traceparent` and `tracestate` headers (Trace Context §3.2, §3.3) if valid, a new
    trace otherwise; nothing when off."""
    if _tracer is None:
        return _NOTHING
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    headers = {name: value for name, value in (("traceparent", traceparent), ("tracestate", tracestate)) if value}
    return _tracer.start_as_current_span("POST /token", context=extract(headers), kind=SpanKind.SERVER)


def annotate(span: Any, attributes: Mapping[str, Any], *, failed: bool = False) -> None:
    """Attributes on the span `exchange_span` opened (None when off); `failed` marks a 5xx."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes({key: value for key, value in attributes.items() if value is not None})
    if failed:
        span.set_status(Status(StatusCode.ERROR))


def current_ids() -> tuple[str, str] | None:
    """The current trace and span ids in W3C's hex form, for log lines; None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
