"""Metrics and spans, read back from the OpenTelemetry SDK's in-memory reader and exporter
after real runs of the demo: what is counted, and which spans are errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Setter, TextMapPropagator, default_setter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import resumable.metrics
import resumable.telemetry
from resumable import Resumable, call, complete
from resumable.brokers import LocalBroker
from resumable.demo import (
    SERVICES,
    ChargeCard,
    OrderResult,
    PlaceOrder,
    PrintLabel,
    demo_order,
    init_for,
    make_handlers,
    make_workflow,
    orders,
    payments,
    shipping,
)
from resumable.errors import ExecutionViolation, TransactionViolation
from resumable.memory import InMemoryMemory

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    resumable.metrics.use(provider)
    yield reader
    resumable.metrics.use(None)
    provider.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    resumable.telemetry.use(provider)
    yield exporter
    resumable.telemetry.use(None)
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every metric's data points, by name."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def total(found: dict[str, list[Any]], name: str, **attributes: Any) -> float:
    """The sum of a counter's points (a histogram's count) whose attributes include these."""
    out = 0.0
    for point in found.get(name, []):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            out += point.count if hasattr(point, "bucket_counts") else point.value
    return out


async def run_demo(count: int, memory: InMemoryMemory | None = None) -> list[Any]:
    memory = memory or InMemoryMemory()
    broker = LocalBroker([*make_handlers(), make_workflow(memory, cache_size=4)])
    return [await broker.resolve(init_for(index)) for index in range(count)]


async def test_the_demo_is_counted(reader: InMemoryMetricReader) -> None:
    reports = await run_demo(20)
    assert len(reports) == 20
    found = points(reader)
    flow = {"resumable.source": orders.type}
    steps = total(found, "resumable.steps", **flow)
    # Every order: start, charge; shipped ones also stock and label; failed ones a refund.
    assert steps >= 40
    assert total(found, "resumable.step.duration", **flow) >= steps
    shipped = sum(1 for i in range(20) if demo_order(i).sku != "out-of-stock")
    assert total(found, "resumable.instances.finished", **flow, **{"resumable.status": "done"})
    assert total(found, "resumable.instances.finished", **flow) == 20
    # Order 7 is out of stock: the inventory service raises (a handler's system error),
    # then the workflow refunds and fails (the workflow's system error).
    assert total(found, "resumable.system_errors", **flow) == 20 - shipped
    assert total(found, "resumable.system_errors", **{"resumable.source": "com.inventory.reserve"})
    assert total(found, "resumable.cache.hits", **flow) > 0
    assert total(found, "resumable.record.size", **flow) == steps
    assert total(found, "resumable.journal.appended", **flow) > 0
    topic = {"messaging.destination.name": orders.type}
    assert total(found, "resumable.worker.received", **topic) == steps
    assert total(found, "resumable.worker.acked", **topic) == steps
    assert total(found, "resumable.worker.in_flight", **topic) == 0
    assert total(found, "resumable.worker.published") > 0
    lag = found["resumable.worker.delivery.lag"]
    assert sum(p.count for p in lag) == total(found, "resumable.worker.received")
    assert {m for m in found if not m.startswith("resumable.")} == set()


async def test_a_full_cache_evicts_and_replays_are_counted(reader: InMemoryMetricReader) -> None:
    memory = InMemoryMemory()
    handlers = {h.source: h for h in make_handlers()}
    flow = make_workflow(memory, cache_size=1)
    first, second = init_for(0), init_for(1)
    (charge_1,) = await flow.execute(first)
    await flow.execute(second)  # evicts the first instance's generator
    (reply_1,) = await handlers[charge_1.type].execute(charge_1)
    await flow.execute(reply_1)  # replays the first instance: one entry
    found = points(reader)
    attributes = {"resumable.source": orders.type}
    assert total(found, "resumable.cache.evictions", **attributes) >= 1
    assert total(found, "resumable.cache.misses", **attributes) == 1
    assert total(found, "resumable.replays", **attributes) == 1
    assert total(found, "resumable.replay.steps", **attributes) == 1


async def changed(ctx: Any, order: PlaceOrder) -> Any:
    yield call(shipping, PrintLabel(order.order_id))
    yield complete({"status": "x"})


async def parked_instance() -> tuple[Resumable[Any], Any]:
    """An instance whose code changed under it, and the reply that parks it."""
    memory = InMemoryMemory()
    handlers = {h.source: h for h in make_handlers()}
    init = orders.init_event(PlaceOrder("o-1", 100), source="com.shop.web")
    (charge,) = await make_workflow(memory).execute(init)
    (reply,) = await handlers[charge.type].execute(charge)
    broken = Resumable(orders, versions={"1.0.0": changed}, services=SERVICES, memory=memory)
    return broken, reply


async def test_parking_and_violations_are_counted(reader: InMemoryMetricReader) -> None:
    broken, reply = await parked_instance()
    assert await broken.execute(reply) == []
    with pytest.raises(ExecutionViolation, match="does not exist"):
        await make_workflow(InMemoryMemory()).execute(reply)
    found = points(reader)
    attributes = {"resumable.source": orders.type}
    assert total(found, "resumable.parked", **attributes) == 1
    assert total(
        found, "resumable.violations", **attributes, **{"resumable.violation.kind": "Execution"}
    )


async def test_a_denied_lease_is_counted_and_its_span_is_not_an_error(
    reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    memory = InMemoryMemory()
    flow = make_workflow(memory)
    init = init_for(0)
    assert await memory.lock(init.subject, "someone else", 30)
    with pytest.raises(TransactionViolation, match="locked by another execution"):
        await flow.execute(init)
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.UNSET
    assert span.attributes is not None and span.attributes["resumable.lease.denied"] is True
    kind = {"resumable.violation.kind": "OrchestratorTransaction.LOCK_UNACQUIRED"}
    assert total(points(reader), "resumable.violations", **kind) == 1
    assert total(points(reader), "resumable.lease.denied") == 1


# --- spans -------------------------------------------------------------------------------


def by_name(spans: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name.startswith(prefix)]


async def test_a_failed_order_has_error_spans_with_the_exception(
    spans: InMemorySpanExporter,
) -> None:
    (report,) = [r for r in await run_demo(8) if r.type == orders.system_error_type]
    handler_errors = [
        s for s in by_name(spans, "Handler<") if s.status.status_code == StatusCode.ERROR
    ]
    assert len(handler_errors) == 1  # the inventory service raised
    (event,) = handler_errors[0].events
    assert event.name == "exception" and event.attributes is not None
    assert "exception.stacktrace" in event.attributes
    failed = [s for s in by_name(spans, "Resumable<") if s.status.status_code == StatusCode.ERROR]
    assert len(failed) == 1  # the step that ended the workflow after the refund
    assert failed[0].attributes is not None
    assert failed[0].attributes["resumable.instance.status"] == "failed"
    assert failed[0].attributes["arvo.handler.execution.status"] == "failure"
    assert [e.name for e in failed[0].events] == ["exception"]
    assert format(failed[0].context.trace_id, "032x") == report.traceparent.split("-")[1]
    ok = [s for s in by_name(spans, "Resumable<") if s.status.status_code == StatusCode.UNSET]
    assert len(ok) >= 7 * 3


async def test_a_parked_instance_has_an_error_span(spans: InMemorySpanExporter) -> None:
    broken, reply = await parked_instance()
    spans.clear()
    await broken.execute(reply)
    (span,) = by_name(spans, "Resumable<")
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description is not None and "no longer matches" in span.status.description
    assert span.attributes is not None and span.attributes["resumable.instance.status"] == "parked"
    (event,) = span.events
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "NonDeterminismError"


async def test_deliveries_and_publishes_have_messaging_spans(spans: InMemorySpanExporter) -> None:
    init = init_for(0)
    memory = InMemoryMemory()
    broker = LocalBroker([*make_handlers(), make_workflow(memory)])
    await broker.resolve(init)
    finished = spans.get_finished_spans()
    processes = [s for s in finished if s.name == f"process {orders.type}"]
    assert processes and all(s.kind == SpanKind.CONSUMER for s in processes)
    attributes = processes[0].attributes
    assert attributes is not None
    assert attributes["messaging.system"] == "resumable.local"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == orders.type
    assert attributes["messaging.message.id"] == init.id
    # The execution span is the delivery span's child; publishes are its siblings.
    (execution,) = [
        s
        for s in finished
        if s.parent
        and s.parent.span_id == processes[0].context.span_id
        and s.name.startswith("Resumable<")
    ]
    sends = [s for s in finished if s.name.startswith("send ")]
    assert sends and all(s.kind == SpanKind.PRODUCER for s in sends)
    first = [s for s in sends if s.parent and s.parent.span_id == processes[0].context.span_id]
    assert first and first[0].attributes is not None
    assert first[0].attributes["messaging.operation.type"] == "send"
    assert first[0].attributes["messaging.destination.name"] == "com.payments.charge"
    # One trace for the whole order.
    assert len({s.context.trace_id for s in finished}) == 1
    assert execution.status.status_code == StatusCode.UNSET


class _Marking(TextMapPropagator):
    """W3C Trace Context that also marks the tracestate it writes: proves it was used."""

    def __init__(self) -> None:
        self._w3c = TraceContextTextMapPropagator()

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Any = None) -> Any:
        return (
            self._w3c.extract(carrier, context)
            if getter is None
            else self._w3c.extract(carrier, context, getter)
        )

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        self._w3c.inject(carrier, context, setter)
        setter.set(carrier, "tracestate", "marked=yes")

    @property
    def fields(self) -> set[str]:
        return {"traceparent", "tracestate"}


class _Nothing(TextMapPropagator):
    """A propagator that reads and writes nothing (a b3-only setup, as events see it)."""

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Any = None) -> Any:
        return context if context is not None else Context()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return set()


async def test_the_global_propagator_writes_the_trace_headers(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_Marking())
    try:
        (charge,) = await make_workflow(InMemoryMemory()).execute(
            orders.init_event(
                PlaceOrder("o-1", 100), source="com.shop.web", traceparent=TRACEPARENT
            )
        )
    finally:
        propagate.set_global_textmap(before)
    assert charge.tracestate == "marked=yes"
    assert (
        charge.traceparent is not None
        and charge.traceparent.split("-")[1] == TRACEPARENT.split("-")[1]
    )


async def test_events_carry_w3c_headers_when_the_global_propagator_writes_none(
    spans: InMemorySpanExporter,
) -> None:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_Nothing())
    try:
        (charge,) = await make_workflow(InMemoryMemory()).execute(
            orders.init_event(
                PlaceOrder("o-1", 100), source="com.shop.web", traceparent=TRACEPARENT
            )
        )
    finally:
        propagate.set_global_textmap(before)
    (span,) = by_name(spans, "Resumable<")
    assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331
    assert charge.traceparent == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


class _DropsParents(trace.NoOpTracer):
    """The API's NoOpTracer as versions before 1.40 made it: every span invalid, the
    parent dropped."""

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return trace.INVALID_SPAN


async def test_the_incoming_trace_is_kept_by_a_tracer_that_makes_no_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resumable.telemetry, "_tracer", _DropsParents())
    init = orders.init_event(
        PlaceOrder("o-1", 100), source="com.shop.web", traceparent=TRACEPARENT, tracestate="a=b"
    )
    (charge,) = await make_workflow(InMemoryMemory()).execute(init)
    assert (charge.traceparent, charge.tracestate) == (TRACEPARENT, "a=b")


# --- replay-safe logging -------------------------------------------------------------------


async def logs_each_step(ctx: Any, order: PlaceOrder) -> Any:
    ctx.log.info("charging %s", order.order_id)
    yield call(payments, ChargeCard(order.order_id, order.amount_cents))
    ctx.log.warning("charged %s", order.order_id)
    yield call(shipping, PrintLabel(order.order_id))
    ctx.log.info("shipped")
    yield complete(OrderResult("shipped"))


async def test_ctx_log_writes_each_line_once_with_the_instance_and_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="resumable.workflow")
    memory = InMemoryMemory()
    # No cache: every step rebuilds the generator by replaying the steps before it.
    flow = make_workflow(memory, fn=logs_each_step, cache_size=0)
    broker = LocalBroker([*make_handlers(), flow])
    init = init_for(0)
    report = await broker.resolve(init)
    assert report is not None and report.type == orders.complete_type
    lines = [r for r in caplog.records if r.name == "resumable.workflow"]
    assert [r.getMessage() for r in lines] == ["charging o-0", "charged o-0", "shipped"]
    assert [r.levelname for r in lines] == ["INFO", "WARNING", "INFO"]
    assert [r.__dict__["workflow_step"] for r in lines] == [0, 1, 2]
    assert {r.__dict__["workflow_subject"] for r in lines} == {init.subject}
    assert {r.__dict__["workflow_name"] for r in lines} == {orders.type}
    assert {r.__dict__["workflow_version"] for r in lines} == {"1.0.0"}


async def test_a_dead_lettered_delivery_has_an_error_span(
    spans: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    _, reply = await parked_instance()  # a reply for an instance the new memory lacks
    spans.clear()
    broker = LocalBroker([make_workflow(InMemoryMemory())])
    await broker.publish(reply)
    (process,) = [s for s in spans.get_finished_spans() if s.name.startswith("process ")]
    assert process.status.status_code == StatusCode.ERROR
    assert process.status.description is not None
    assert "DeadLettered" in process.status.description
    (execution,) = by_name(spans, "Resumable<")
    assert execution.status.status_code == StatusCode.ERROR  # an ExecutionViolation
    topic = {"messaging.destination.name": orders.type}
    assert total(points(reader), "resumable.worker.dead_lettered", **topic) == 1


async def test_a_timer_step_continues_the_trace_of_the_step_that_set_it(
    spans: InMemorySpanExporter,
) -> None:
    """The timer event is made from the record alone; the record keeps the trace of the
    step it was written by, so the woken step is in the instance's one trace."""
    from resumable import VirtualClock, sleep

    async def naps(ctx: Any, order: PlaceOrder) -> Any:
        yield sleep(60)
        yield complete(OrderResult("rested"))

    clock = VirtualClock()
    workflow = Resumable(orders, versions={"1.0.0": naps}, clock=clock)
    init = orders.init_event(PlaceOrder("o-1", 1), source="com.shop.web", time=clock())
    assert await workflow.execute(init) == []
    clock.advance(61)
    timer = await workflow.timer_event(init.subject)
    assert timer is not None and timer.traceparent is not None
    (done,) = await workflow.execute(timer)
    started, woken = by_name(spans, "Resumable<")
    assert woken.parent is not None and woken.parent.span_id == started.context.span_id
    assert woken.context.trace_id == started.context.trace_id
    assert done.traceparent is not None
    assert done.traceparent.split("-")[1] == format(started.context.trace_id, "032x")


# --- baggage -------------------------------------------------------------------------------


def _baggage_probe(seen: list[tuple[str, object, object]]) -> tuple[Any, Any]:
    """The demo's workflow and payment service, noting the baggage their code sees (and, for
    the service, the ``baggage`` extension of the event it got)."""
    from opentelemetry import baggage

    from resumable import Emit, EventHandler
    from resumable.demo import CardCharged

    async def tagged(ctx: Any, order: PlaceOrder) -> Any:
        seen.append(("workflow", baggage.get_baggage("tenant"), None))
        yield call(payments, ChargeCard(order.order_id, order.amount_cents))
        seen.append(("workflow", baggage.get_baggage("tenant"), None))
        yield complete(OrderResult("charged"))

    async def charge(event: Any) -> Emit:
        seen.append(("payments", baggage.get_baggage("tenant"), event.extensions.get("baggage")))
        return Emit("evt.payments.charge.success", CardCharged("pay-1"))

    return tagged, EventHandler(payments, {"1.0.0": charge})


async def test_baggage_set_by_the_caller_reaches_every_hop_and_the_code_there(
    spans: InMemorySpanExporter,
) -> None:
    """Baggage current where a workflow is started travels on every event of the instance
    (the ``baggage`` extension), and the workflow's and the service's code see it."""
    from opentelemetry import baggage, context

    from resumable import Runtime

    seen: list[tuple[str, object, object]] = []
    tagged, service = _baggage_probe(seen)
    async with Runtime([make_workflow(None, fn=tagged), service]) as runtime:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            handle = await runtime.start(orders, PlaceOrder("o-1", 100), id="o-1")
        finally:
            context.detach(token)
        assert await handle.result() == OrderResult("charged")
    assert seen == [
        ("workflow", "acme", None),
        ("payments", "acme", "tenant=acme"),
        ("workflow", "acme", None),
    ]


async def test_baggage_passes_through_unchanged_when_nothing_traces() -> None:
    """Without an SDK no context is made, but the events still carry the baggage on."""
    seen: list[tuple[str, object, object]] = []
    tagged, service = _baggage_probe(seen)
    workflow = make_workflow(InMemoryMemory(), fn=tagged)
    init = orders.init_event(
        PlaceOrder("o-1", 100), source="com.shop.web", extensions={"baggage": "tenant=acme"}
    )
    (request,) = await workflow.execute(init)
    assert request.extensions == {"baggage": "tenant=acme"}
    (reply,) = await service.execute(request)
    assert reply.extensions == {"baggage": "tenant=acme"}
    (done,) = await workflow.execute(reply)
    assert done.extensions == {"baggage": "tenant=acme"}
    assert seen[1][2] == "tenant=acme"


async def test_a_timer_event_carries_the_baggage_of_the_step_that_set_it() -> None:
    from resumable import VirtualClock, sleep

    async def naps(ctx: Any, order: PlaceOrder) -> Any:
        yield sleep(60)
        yield complete(OrderResult("rested"))

    clock = VirtualClock()
    workflow = Resumable(orders, versions={"1.0.0": naps}, clock=clock)
    init = orders.init_event(
        PlaceOrder("o-1", 1),
        source="com.shop.web",
        time=clock(),
        extensions={"baggage": "tenant=acme"},
    )
    assert await workflow.execute(init) == []
    clock.advance(61)
    timer = await workflow.timer_event(init.subject)
    assert timer is not None and timer.extensions == {"baggage": "tenant=acme"}
    (done,) = await workflow.execute(timer)
    assert done.extensions == {"baggage": "tenant=acme"}
