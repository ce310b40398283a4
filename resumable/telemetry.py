"""OpenTelemetry: one span per execution, continuing the trace carried by the event.

Every event an execution emits carries that span's ``traceparent``/``tracestate``, so the
next hop becomes its child (Arvo's propagation rule). Without an SDK configured, spans are
non-recording and the incoming trace headers pass through unchanged.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from types import TracebackType
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


_PROVIDER_FROM_ENV: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _tracing_off() -> bool:
    """True while no OpenTelemetry SDK is installed: spans would be no-ops, so skip them and
    pass the incoming trace headers through, which is what a no-op span would do.

    Called twice per step: while no provider is set it reads the API's global directly
    rather than ``get_tracer_provider()``, which looks the environment up on every call."""
    if not isinstance(_tracer, trace.ProxyTracer):
        return False
    if getattr(trace, "_TRACER_PROVIDER", None) is None and not _PROVIDER_FROM_ENV:
        return True
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class execution_span:
    """A span for one execution whose parent is the event's trace; entering gives the span
    and the trace headers to put on emitted events. With no SDK installed it costs ~nothing:
    no span, and the incoming headers pass through, as a no-op span would pass them."""

    __slots__ = ("_attributes", "_event", "_kind", "_manager", "_name", "_span")

    def __init__(
        self, name: str, event: Event, *, arvo_kind: str, source: str, uri: str, kind: SpanKind
    ) -> None:
        self._name = name
        self._event = event
        self._kind = kind
        self._attributes = (arvo_kind, source, uri)
        self._manager: AbstractContextManager[Span] | None = None
        self._span: Span = INVALID_SPAN

    def __enter__(self) -> tuple[Span, TraceHeaders]:
        event = self._event
        if _tracing_off():
            return INVALID_SPAN, (event.traceparent, event.tracestate)
        carrier: dict[str, str] = {}
        if event.traceparent:
            carrier["traceparent"] = event.traceparent
            if event.tracestate:
                carrier["tracestate"] = event.tracestate
        parent = _propagator.extract(carrier) if carrier else None
        self._manager = _tracer.start_as_current_span(
            self._name,
            context=parent,
            kind=self._kind,
            record_exception=False,
            set_status_on_exception=False,
        )
        span = self._span = self._manager.__enter__()
        if span.is_recording():
            arvo_kind, source, uri = self._attributes
            span.set_attribute("arvo.span.kind", arvo_kind)
            span.set_attribute("openinference.span.kind", "CHAIN")
            span.set_attribute("arvo.handler.source", source)
            span.set_attribute("arvo.contract.uri", uri)
            for key, value in event.otel_attributes().items():
                span.set_attribute(f"consumable.0.{key}", value)
        headers: dict[str, str] = {}
        _propagator.inject(headers)
        return span, (headers.get("traceparent"), headers.get("tracestate"))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._manager is None:
            return
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, str(error)))
        self._manager.__exit__(kind, error, traceback)
