"""OpenTelemetry traces: one span per execution, continuing the trace carried by the event.

Every event an execution emits carries that span's ``traceparent``/``tracestate``, so the
next hop becomes its child (Arvo's propagation rule), and the current W3C baggage in the
CloudEvents extension ``baggage``, so baggage set at the edge reaches every hop. A worker
wraps each delivery in a ``process <topic>`` span and each publish in a ``send <topic>``
span, with the messaging semantic-convention attributes; the execution span is the child
of its delivery's span. Trace context and baggage are read and written with the global
propagator (``OTEL_PROPAGATORS``).

Without an SDK configured, no span is made and the incoming trace headers (baggage too)
pass through unchanged; so they do when a tracer makes only invalid spans (a
``NoOpTracer`` of an API older than 1.40 drops the parent), which keeps one trace across
processes that trace.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final

import attrs
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from resumable.events import Event

__all__ = [
    "BAGGAGE",
    "SPAN_KIND_HANDLER",
    "SPAN_KIND_RESUMABLE",
    "SpanSpec",
    "TraceHeaders",
    "current_headers",
    "delivery_span",
    "execution_span",
    "mark_error",
    "publish_span",
    "tracing",
    "tracing_off",
    "use",
]

SPAN_KIND_HANDLER: Final = "handler.simple"
SPAN_KIND_RESUMABLE: Final = "handler.orchestrator.imperative"

_tracer: trace.Tracer = trace.get_tracer("resumable")
_W3C: Final = TraceContextTextMapPropagator()

TraceHeaders = tuple[str | None, str | None, str | None]
"""``(traceparent, tracestate, baggage)`` to put on emitted events."""

BAGGAGE: Final = "baggage"
"""The CloudEvents extension that carries W3C baggage from hop to hop."""


def incoming(event: Event) -> TraceHeaders:
    """The trace headers ``event`` carries, to pass through unchanged."""
    baggage = event.extensions.get(BAGGAGE) if event.extensions else None
    return event.traceparent, event.tracestate, baggage if isinstance(baggage, str) else None


def trace_extensions(
    headers: TraceHeaders, extensions: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``extensions`` with the baggage of ``headers`` added (an explicit one wins)."""
    if headers[2] is None:
        return extensions if extensions is not None else {}
    return {BAGGAGE: headers[2], **(extensions or {})}


_delivered: ContextVar[str | None] = ContextVar("resumable_delivered", default=None)
"""The id of the event whose delivery span is current: its execution span is a child."""


def use(provider: TracerProvider | None) -> None:
    """Trace into ``provider`` instead of the global tracer provider (None: back to the
    global one). For tests and apps that keep their providers to themselves."""
    global _tracer
    from resumable import __version__

    _tracer = (provider or trace.get_tracer_provider()).get_tracer("resumable", __version__)


_PROVIDER_FROM_ENVIRONMENT: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
"""The API loads a tracer provider named there on first use."""


def _tracing_off() -> bool:
    """True while no OpenTelemetry SDK is installed: spans would be no-ops, so skip them and
    pass the incoming trace headers through, which is what a no-op span would do. Reads
    the API's record of a set provider (~30 ns) where ``get_tracer_provider()`` would
    consult the environment on every call."""
    return (
        isinstance(_tracer, trace.ProxyTracer)
        and trace._TRACER_PROVIDER is None
        and not _PROVIDER_FROM_ENVIRONMENT
    )


def tracing() -> bool:
    """True when spans may be recorded: skip making them otherwise."""
    return not _tracing_off()


tracing_off = _tracing_off
"""``not tracing()``, one call cheaper: for the paths every delivery takes."""


def _carrier(event: Event) -> dict[str, str]:
    carrier: dict[str, str] = {}
    if event.traceparent:
        carrier["traceparent"] = event.traceparent
        if event.tracestate:
            carrier["tracestate"] = event.tracestate
    baggage = event.extensions.get(BAGGAGE) if event.extensions else None
    if isinstance(baggage, str) and baggage:
        carrier[BAGGAGE] = baggage
    return carrier


def _parent(event: Event) -> Context | None:
    """The context a span for ``event`` starts in: the trace and baggage the event carries,
    read by the global propagator (W3C Trace Context if that one reads no span: the
    event's fields are W3C's); None, the current context, if there is none or the event's
    delivery span is current."""
    if _delivered.get() == event.id:
        return None
    carrier = _carrier(event)
    if not carrier:
        return None
    context = propagate.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        context = _W3C.extract(carrier, context)
    return context


def current_headers() -> TraceHeaders:
    """The current context's trace headers and baggage, written by the global propagator
    (W3C Trace Context if that one writes no ``traceparent``: an event carries only W3C's
    fields). What a client puts on the events it sends, and an execution on its output."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    if "traceparent" not in headers:
        _W3C.inject(headers)
    return headers.get("traceparent"), headers.get("tracestate"), headers.get(BAGGAGE)


def mark_error(span: Span, name: str, message: str, stack: str | None = None) -> None:
    """Set ERROR on ``span`` and record the exception as the semantic conventions describe
    it, from its name and message (a system error's payload carries no exception object)."""
    if not span.is_recording():
        return
    attributes = {"exception.type": name, "exception.message": message}
    if stack:
        attributes["exception.stacktrace"] = stack
    span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, f"{name}: {message}"))


def _is_contention(error: BaseException) -> bool:
    from resumable.errors import TransactionViolation

    return (
        isinstance(error, TransactionViolation)
        and error.cause == TransactionViolation.LOCK_UNACQUIRED
    )


@attrs.frozen
class SpanSpec:
    """How one handler's execution spans are named and labelled: made once per handler,
    so an execution with no SDK installed builds nothing but the span's context manager."""

    name: str
    """The span's name; with ``by_type``, ``@<event type>`` is appended."""
    arvo_kind: str
    source: str
    uri: str
    kind: SpanKind
    by_type: bool = False


class execution_span:
    """A span for one execution whose parent is the event's trace; entering gives the span
    and the trace headers to put on emitted events. With no SDK installed it costs ~nothing:
    no span, and the incoming headers pass through, as a no-op span would pass them."""

    __slots__ = ("_event", "_manager", "_span", "_spec", "_token")

    def __init__(self, spec: SpanSpec, event: Event) -> None:
        self._spec = spec
        self._event = event
        self._manager: AbstractContextManager[Span] | None = None

    def __enter__(self) -> tuple[Span, TraceHeaders]:
        event = self._event
        if _tracing_off():
            return INVALID_SPAN, incoming(event)
        spec = self._spec
        self._token: object = None
        parent = _parent(event)
        if parent is not None:  # the event's baggage is current while the step runs
            self._token = otel_context.attach(parent)
        self._manager = _tracer.start_as_current_span(
            f"{spec.name}@<{event.type}>" if spec.by_type else spec.name,
            kind=spec.kind,
            record_exception=False,
            set_status_on_exception=False,
        )
        span = self._span = self._manager.__enter__()
        if not span.get_span_context().is_valid:
            return span, incoming(event)  # a tracer that makes no spans: keep the trace
        if span.is_recording():
            span.set_attribute("arvo.span.kind", spec.arvo_kind)
            span.set_attribute("openinference.span.kind", "CHAIN")
            span.set_attribute("arvo.handler.source", spec.source)
            span.set_attribute("arvo.contract.uri", spec.uri)
            for key, value in event.otel_attributes().items():
                span.set_attribute(f"consumable.0.{key}", value)
        return span, current_headers()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._manager is None:
            return
        if error is not None and self._span.is_recording():
            if _is_contention(error):  # retried until the lease ends: not a failure
                self._span.set_attribute("resumable.lease.denied", True)
            else:
                self._span.record_exception(error)
                self._span.set_status(Status(StatusCode.ERROR, str(error)))
        try:
            self._manager.__exit__(kind, error, traceback)
        finally:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]


_MESSAGING: Final = {
    "local": "resumable.local",
    "nats": "nats",
    "redis": "redis",
}


def messaging_system(broker: object) -> str:
    """The ``messaging.system`` of a broker, by its class name (``NatsBroker``: ``nats``)."""
    name = type(broker).__name__.lower().removesuffix("broker")
    return _MESSAGING.get(name, name or "unknown")


@contextmanager
def delivery_span(event: Event, topic: str, system: str, attempt: int) -> Iterator[Span]:
    """A ``process <topic>`` CONSUMER span around one delivery, a child of the event's
    trace; the handler's execution span becomes its child."""
    if _tracing_off():
        yield INVALID_SPAN
        return
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.message.id": event.id,
        "messaging.message.conversation_id": event.subject,
        "resumable.delivery.attempt": attempt,
        "cloudevents.event_type": event.type,
    }
    parent = _parent(event)
    attached = otel_context.attach(parent) if parent is not None else None
    try:
        with _tracer.start_as_current_span(
            f"process {topic}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = _delivered.set(event.id)
            try:
                yield span
            finally:
                _delivered.reset(token)
    finally:
        if attached is not None:
            otel_context.detach(attached)


@contextmanager
def publish_span(event: Event, system: str) -> Iterator[Span]:
    """A ``send <topic>`` PRODUCER span around publishing one event, in the current trace."""
    if _tracing_off():
        yield INVALID_SPAN
        return
    topic = event.to or ""
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.message.id": event.id,
        "messaging.message.conversation_id": event.subject,
        "cloudevents.event_type": event.type,
    }
    with _tracer.start_as_current_span(
        f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span
