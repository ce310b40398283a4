"""OpenTelemetry: one span per execution, continuing the trace carried by the event.

Every event an execution emits carries that span's ``traceparent``/``tracestate``, so the
next hop becomes its child (Arvo's propagation rule). Without an SDK configured, spans are
non-recording and the incoming trace headers pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from resumable.events import Event

__all__ = ["SPAN_KIND_HANDLER", "SPAN_KIND_RESUMABLE", "TraceHeaders", "execution_span"]

SPAN_KIND_HANDLER: Final = "handler.simple"
SPAN_KIND_RESUMABLE: Final = "handler.orchestrator.imperative"

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("resumable")

TraceHeaders = tuple[str | None, str | None]


def _tracing_off() -> bool:
    """True while no OpenTelemetry SDK is installed: spans would be no-ops, so skip them and
    pass the incoming trace headers through, which is what a no-op span would do."""
    return isinstance(_tracer, trace.ProxyTracer) and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )


@contextmanager
def execution_span(
    name: str, event: Event, *, arvo_kind: str, source: str, uri: str, kind: SpanKind
) -> Iterator[tuple[Span, TraceHeaders]]:
    """Run a block inside a span whose parent is the event's trace; yield it and its headers."""
    if _tracing_off():
        yield INVALID_SPAN, (event.traceparent, event.tracestate)
        return
    carrier: dict[str, str] = {}
    if event.traceparent:
        carrier["traceparent"] = event.traceparent
        if event.tracestate:
            carrier["tracestate"] = event.tracestate
    parent = _propagator.extract(carrier) if carrier else None
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            span.set_attribute("arvo.span.kind", arvo_kind)
            span.set_attribute("openinference.span.kind", "CHAIN")
            span.set_attribute("arvo.handler.source", source)
            span.set_attribute("arvo.contract.uri", uri)
            for key, value in event.otel_attributes().items():
                span.set_attribute(f"consumable.0.{key}", value)
        headers: dict[str, str] = {}
        _propagator.inject(headers)
        try:
            yield span, (headers.get("traceparent"), headers.get("tracestate"))
        except BaseException as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
            raise
