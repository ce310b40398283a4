"""Workflow primitives, the record codec, derived ids, and the workflow's telemetry."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resumable import call, complete, gather
from resumable.brokers import LocalBroker
from resumable.contracts import ErrorData
from resumable.engine.frame import Frame
from resumable.events import Event
from resumable.ids import derive_id
from resumable.memory import InMemoryMemory
from resumable.record import (
    Entry,
    Header,
    Slot,
    decode_entry,
    decode_header,
    encode_entry,
    encode_header,
    wire,
)
from resumable.workflow import Call, Context, Gather

from harness import order_workflow
from orders import HANDLERS, ChargeCard, OrderResult, PlaceOrder, orders, payments, shipping


def test_call_describes_itself_and_keeps_options() -> None:
    request = call(
        payments,
        ChargeCard("o", 1),
        to="com.other.charge",
        accesscontrol="a",
        executionunits=3,
        domain="ext",
        extensions={"tenant": "t1"},
    )
    assert isinstance(request, Call)
    assert request.describe() == "call com.payments.charge"
    assert (request.to, request.accesscontrol, request.executionunits, request.domain) == (
        "com.other.charge",
        "a",
        3,
        "ext",
    )
    assert request.extensions == {"tenant": "t1"}


def test_call_rejects_a_non_contract() -> None:
    with pytest.raises(TypeError, match="needs a contract"):
        call("com.payments.charge", {})  # type: ignore[arg-type]


def test_gather_describes_its_calls_in_order() -> None:
    both = gather(call(payments, {}), call(shipping, {}))
    assert isinstance(both, Gather)
    assert both.describe() == "gather(call com.payments.charge, call com.shipping.label)"
    with pytest.raises(TypeError, match="takes call"):
        gather(complete({}))  # type: ignore[arg-type]


def test_complete_keeps_its_data() -> None:
    done = complete(OrderResult("ok"), executionunits=2)
    assert done.describe() == "complete"
    assert done.data == OrderResult("ok") and done.executionunits == 2


def test_context_helpers_are_deterministic_per_step() -> None:
    def values(subject: str, seq: int) -> tuple[uuid.UUID, uuid.UUID, float]:
        frame = Frame(subject)
        ctx: Context[None] = Context(state=None, subject=subject, version="1.0.0", frame=frame)
        frame.enter(seq, "2026-01-01T00:00:00.000+00:00")
        return ctx.uuid(), ctx.uuid(), ctx.random().random()

    first = values("s", 3)
    assert first == values("s", 3)
    assert first[0] != first[1]  # successive calls differ
    assert values("s", 4) != first and values("t", 3) != first
    frame = Frame("s")
    ctx = Context(state=None, subject="s", version="1.0.0", frame=frame)
    frame.enter(0, "2026-01-01T10:00:00.123+00:00")
    assert ctx.now().isoformat() == "2026-01-01T10:00:00.123000+00:00"


def test_derived_ids_are_stable_uuid4s() -> None:
    value = derive_id("subject", 1, "x")
    assert value == derive_id("subject", 1, "x")
    assert value != derive_id("subject", 2, "x")
    assert uuid.UUID(value).version == 4
    assert derive_id("a", "b") != derive_id("a\x1fb")  # parts are not simply joined away


def test_record_round_trips_through_msgpack() -> None:
    request = Event(
        source="com.a.b",
        type="com.payments.charge",
        subject="s",
        data={"order_id": "o", "amount_cents": 1},
    )
    header = Header(
        status="active",
        version="1.0.0",
        seq=2,
        init_event_id="i",
        parent_subject=None,
        state={"payment_id": None},
        waiting=[Slot(service="#/p", requests=[request.id], reply="r", sent_by="i")],
        mode="gather",
        inbox=[("com.approval", "e1")],
        waits_for="call com.payments.charge",
        error=ErrorData("E", "m", None),
    )
    assert decode_header(encode_header(header)) == header
    entry = Entry(event=request, produced=[request], resumed=["a"], yielded="complete")
    assert decode_entry(encode_entry(entry)) == entry


def test_wire_turns_struct_payloads_into_plain_data() -> None:
    event = Event(
        source="com.a.b", type="com.payments.charge", subject="s", data=ChargeCard("o", 1)
    )
    assert wire(event).data == {"order_id": "o", "amount_cents": 1}
    plain = wire(event)
    assert wire(plain) is plain


@pytest.mark.anyio
async def test_workflow_spans_continue_the_trace_and_stamp_emitted_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr("resumable.telemetry._tracer", provider.get_tracer("test"))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web", traceparent=parent)
    workflow = order_workflow(InMemoryMemory())
    (request,) = await workflow.execute(init)
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("Resumable")]
    assert span.name == "Resumable<#/orchestrators/order>@<arvo.orc.order.fulfil>"
    assert span.kind == trace.SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["arvo.span.kind"] == "handler.orchestrator.imperative"
    assert span.attributes["arvo.handler.execution.status"] == "normal"
    assert span.attributes["consumable.0.cloudevents.event_id"] == init.id
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert request.traceparent is not None
    assert request.traceparent.split("-")[1:3] == [
        "0af7651916cd43dd8448eb211c80319c",
        format(span.context.span_id, "016x"),
    ]
    # the whole chain stays in one trace
    broker = LocalBroker([*HANDLERS, order_workflow(InMemoryMemory())])
    done = await broker.resolve(
        orders.init_event(PlaceOrder("o2", 1), source="com.shop.web", traceparent=parent)
    )
    assert done is not None and done.traceparent is not None
    assert done.traceparent.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()} == {
        "0af7651916cd43dd8448eb211c80319c"
    }
    msgspec.structs.replace(init)  # events stay valid after tracing
