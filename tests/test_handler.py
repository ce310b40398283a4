"""resumable.handler.EventHandler against Arvo's ArvoEventHandler: how replies are built and
routed, which errors are thrown (violations) and which become ``sys.<type>.error`` events,
and the handler span's attributes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import resumable.telemetry
from resumable.contracts import Contract, ErrorData
from resumable.domains import FROM_TRIGGERING_EVENT, ORCHESTRATION_CONTEXT
from resumable.errors import (
    ConfigViolation,
    ContractViolation,
    ExecutionViolation,
    ViolationError,
)
from resumable.events import Event, from_json, to_dict, to_json
from resumable.handler import Emit, EventHandler
from resumable.subject import new_subject


class Greet(msgspec.Struct):
    name: str


class GreetV2(msgspec.Struct):
    name: str
    times: int


class Greeted(msgspec.Struct):
    greeting: str


class Audit(msgspec.Struct):
    note: str


URI = "#/contracts/greeter"
TYPE = "com.greeter.greet"
DONE = "evt.greeter.greet.success"
AUDIT = "evt.greeter.greet.audit"

contract = Contract(
    uri=URI,
    type=TYPE,
    versions={
        "1.0.0": {"accepts": Greet, "emits": {DONE: Greeted}},
        "2.0.0": {"accepts": GreetV2, "emits": {DONE: Greeted, AUDIT: Audit}},
    },
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "rojo=00f067aa0ba902b7"


async def greet_v1(event: Event) -> Emit:
    assert isinstance(event.data, Greet)
    return Emit(DONE, Greeted(f"hello {event.data.name}"))


async def greet_v2(event: Event) -> list[Emit]:
    assert isinstance(event.data, GreetV2)
    return [
        Emit(DONE, Greeted(f"hello {event.data.name} x{event.data.times}")),
        Emit(AUDIT, {"note": "greeted"}),
    ]


def make_handler(**functions: Any) -> EventHandler:
    versions = {"1.0.0": greet_v1, "2.0.0": greet_v2}
    for key, value in functions.items():
        versions[key.replace("v", "").replace("_", ".")] = value
    return EventHandler(contract, versions, executionunits=1.5, error_stack=True)


def make_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "id": "in-1",
        "source": "com.caller.app",
        "type": TYPE,
        "subject": "subject-1",
        "data": {"name": "ada"},
        "dataschema": f"{URI}/1.0.0",
        "time": "2025-01-03T09:57:04.123+00:00",
    }
    fields.update(overrides)
    return Event(**fields)


@pytest.fixture(autouse=True)
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without an OTel SDK unless a test installs one (robust to other tests' globals)."""
    monkeypatch.setattr(resumable.telemetry, "_tracer", trace.NoOpTracer())


def drop_time(event: Event) -> dict[str, Any]:
    out = to_dict(event)
    del out["time"]
    return out


# --- the reply ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reply_fields() -> None:
    event = make_event(accesscontrol="user:1", traceparent=TRACEPARENT, tracestate=TRACESTATE)
    [out] = await make_handler().execute(event)
    assert out.type == DONE
    assert out.source == TYPE
    assert out.subject == "subject-1"
    assert out.data == {"greeting": "hello ada"}
    assert out.dataschema == f"{URI}/1.0.0"
    assert out.to == "com.caller.app"
    assert out.parentid == "in-1"
    assert out.accesscontrol == "user:1"
    assert out.executionunits == 1.5
    assert out.redirectto is None
    assert out.domain is None
    assert out.traceparent == TRACEPARENT
    assert out.tracestate == TRACESTATE
    assert out.extensions == {}
    assert uuid.UUID(out.id).version == 4
    assert out.id != "in-1"
    assert from_json(to_json(out)) == out


@pytest.mark.anyio
async def test_source_is_contract_type() -> None:
    assert make_handler().source == TYPE


@pytest.mark.anyio
async def test_no_trace_headers_without_incoming_ones() -> None:
    [out] = await make_handler().execute(make_event())
    assert out.traceparent is None
    assert out.tracestate is None


@pytest.mark.anyio
async def test_to_prefers_redirectto_over_source() -> None:
    [out] = await make_handler().execute(make_event(redirectto="com.orchestrator.x"))
    assert out.to == "com.orchestrator.x"


@pytest.mark.anyio
async def test_to_prefers_emit_to() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), to="com.explicit.target")

    [out] = await make_handler(v1_0_0=fn).execute(make_event(redirectto="com.orchestrator.x"))
    assert out.to == "com.explicit.target"


@pytest.mark.anyio
async def test_emit_overrides() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(
            DONE,
            Greeted("x"),
            id="my-id",
            accesscontrol="role:other",
            redirectto="com.reply.here",
            executionunits=7,
            extensions={"tenant": "acme", "retry": 2},
        )

    [out] = await make_handler(v1_0_0=fn).execute(make_event(accesscontrol="user:1"))
    assert out.id == "my-id"
    assert out.accesscontrol == "role:other"
    assert out.redirectto == "com.reply.here"
    assert out.executionunits == 7
    assert out.extensions == {"tenant": "acme", "retry": 2}
    assert out.parentid == "in-1"


@pytest.mark.anyio
async def test_executionunits_zero_override_kept() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), executionunits=0)

    [out] = await make_handler(v1_0_0=fn).execute(make_event())
    assert out.executionunits == 0


@pytest.mark.anyio
async def test_default_executionunits_is_zero() -> None:
    handler = EventHandler(contract, {"1.0.0": greet_v1, "2.0.0": greet_v2})
    [out] = await handler.execute(make_event())
    assert out.executionunits == 0


@pytest.mark.anyio
async def test_none_gives_no_events() -> None:
    async def fn(event: Event) -> None:
        return None

    assert await make_handler(v1_0_0=fn).execute(make_event()) == []


@pytest.mark.anyio
async def test_empty_list_gives_no_events() -> None:
    async def fn(event: Event) -> list[Emit]:
        return []

    assert await make_handler(v1_0_0=fn).execute(make_event()) == []


@pytest.mark.anyio
async def test_several_emits() -> None:
    event = make_event(dataschema=f"{URI}/2.0.0", data={"name": "bo", "times": 2})
    outs = await make_handler().execute(event)
    assert [o.type for o in outs] == [DONE, AUDIT]
    assert [o.data for o in outs] == [{"greeting": "hello bo x2"}, {"note": "greeted"}]
    assert {o.dataschema for o in outs} == {f"{URI}/2.0.0"}
    assert {o.parentid for o in outs} == {"in-1"}
    assert len({o.id for o in outs}) == 2


@pytest.mark.anyio
async def test_sync_function() -> None:
    def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted(f"sync {event.data.name}"))

    [out] = await make_handler(v1_0_0=fn).execute(make_event())
    assert out.data == {"greeting": "sync ada"}


@pytest.mark.anyio
async def test_function_sees_decoded_event() -> None:
    seen: list[Event] = []

    async def fn(event: Event) -> None:
        seen.append(event)

    event = make_event()
    await make_handler(v1_0_0=fn).execute(event)
    [got] = seen
    assert got.data == Greet("ada")
    assert got.id == event.id
    assert got.subject == event.subject
    assert event.data == {"name": "ada"}  # the caller's event is untouched


@pytest.mark.anyio
async def test_deterministic_ids() -> None:
    event = make_event(dataschema=f"{URI}/2.0.0", data={"name": "bo", "times": 2})
    handler = make_handler()
    first = await handler.execute(event)
    second = await handler.execute(event)
    assert [o.id for o in first] == [o.id for o in second]
    assert [drop_time(o) for o in first] == [drop_time(o) for o in second]
    other = await handler.execute(
        make_event(id="in-2", dataschema=f"{URI}/2.0.0", data={"name": "bo", "times": 2})
    )
    assert not {o.id for o in other} & {o.id for o in first}


# --- versions -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_dataschema_uses_latest() -> None:
    [out, _] = await make_handler().execute(
        make_event(dataschema=None, data={"name": "z", "times": 1})
    )
    assert out.dataschema == f"{URI}/2.0.0"
    assert out.data == {"greeting": "hello z x1"}


@pytest.mark.anyio
async def test_version_picked_from_dataschema() -> None:
    [out] = await make_handler().execute(make_event(dataschema=f"{URI}/1.0.0"))
    assert out.dataschema == f"{URI}/1.0.0"


# --- violations ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wrong_type_is_config_violation() -> None:
    with pytest.raises(ConfigViolation) as info:
        await make_handler().execute(make_event(type="com.other.type"))
    assert "'com.other.type'" in str(info.value)
    assert f"'{TYPE}'" in str(info.value)
    assert str(info.value).startswith("ViolationError<Config> ")


@pytest.mark.anyio
async def test_other_uri_is_contract_violation() -> None:
    with pytest.raises(ContractViolation) as info:
        await make_handler().execute(make_event(dataschema="#/contracts/other/1.0.0"))
    assert "'#/contracts/other'" in str(info.value)
    assert f"'{URI}'" in str(info.value)
    assert info.value.type == "Contract"


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["3.0.0", "0.0.0"])
async def test_unknown_version_is_config_violation(version: str) -> None:
    with pytest.raises(ConfigViolation) as info:
        await make_handler().execute(make_event(dataschema=f"{URI}/{version}"))
    assert f"version {version}" in str(info.value)
    assert "1.0.0, 2.0.0" in str(info.value)


@pytest.mark.anyio
async def test_malformed_dataschema_is_contract_violation() -> None:
    with pytest.raises(ContractViolation, match=r"not '\{uri\}/\{version\}'"):
        await make_handler().execute(make_event(dataschema=f"{URI}/latest"))


@pytest.mark.anyio
@pytest.mark.parametrize("data", [{"name": 5}, {}, {"nome": "x"}])
async def test_bad_input_is_contract_violation(data: dict[str, Any]) -> None:
    called: list[Event] = []

    async def fn(event: Event) -> None:
        called.append(event)

    with pytest.raises(ContractViolation) as info:
        await make_handler(v1_0_0=fn).execute(make_event(data=data))
    assert "input payload" in str(info.value)
    assert "Greet" in str(info.value)
    assert called == []


@pytest.mark.anyio
async def test_emitting_undeclared_type_is_contract_violation() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(AUDIT, Audit("not in 1.0.0"))

    with pytest.raises(ContractViolation) as info:
        await make_handler(v1_0_0=fn).execute(make_event())
    assert f"'{AUDIT}'" in str(info.value)
    assert f"{URI}/1.0.0" in str(info.value)
    assert DONE in str(info.value)


@pytest.mark.anyio
async def test_emitting_unknown_type_is_contract_violation() -> None:
    async def fn(event: Event) -> Emit:
        return Emit("com.random.thing", {"a": 1})

    with pytest.raises(ContractViolation, match=r"'com\.random\.thing'"):
        await make_handler(v1_0_0=fn).execute(make_event())


@pytest.mark.anyio
@pytest.mark.parametrize("data", [{"greeting": 5}, {}, Audit("wrong struct")])
async def test_invalid_output_is_contract_violation(data: Any) -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, data)

    with pytest.raises(ContractViolation) as info:
        await make_handler(v1_0_0=fn).execute(make_event())
    assert f"output '{DONE}'" in str(info.value)
    assert "Greeted" in str(info.value)


@pytest.mark.anyio
async def test_invalid_emitted_event_field_is_contract_violation() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), to="bad target")

    with pytest.raises(ContractViolation) as info:
        await make_handler(v1_0_0=fn).execute(make_event())
    assert "'to'" in str(info.value)


@pytest.mark.anyio
async def test_non_emit_result_is_execution_violation() -> None:
    async def fn(event: Event) -> Any:
        return [{"type": DONE, "data": {"greeting": "x"}}]

    with pytest.raises(ExecutionViolation, match=r"return Emit\(\.\.\.\)"):
        await make_handler(v1_0_0=fn).execute(make_event())


@pytest.mark.anyio
async def test_violation_raised_by_function_propagates() -> None:
    async def fn(event: Event) -> None:
        raise ExecutionViolation("escape the error path")

    with pytest.raises(ExecutionViolation, match="escape the error path"):
        await make_handler(v1_0_0=fn).execute(make_event())


# --- system errors --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_exception_becomes_one_system_error() -> None:
    async def fn(event: Event) -> None:
        raise RuntimeError("database down")

    event = make_event(
        redirectto="com.orchestrator.x",
        accesscontrol="user:1",
        traceparent=TRACEPARENT,
        tracestate=TRACESTATE,
    )
    [error] = await make_handler(v1_0_0=fn).execute(event)
    assert error.type == "sys.com.greeter.greet.error"
    assert error.source == TYPE
    assert error.to == "com.caller.app"  # the source, not redirectto
    assert error.parentid == "in-1"
    assert error.subject == "subject-1"
    assert error.dataschema == f"{URI}/0.0.0"
    assert error.accesscontrol == "user:1"
    assert error.executionunits == 1.5
    assert error.domain is None
    assert error.traceparent == TRACEPARENT
    assert error.tracestate == TRACESTATE
    assert set(error.data) == {"errorName", "errorMessage", "errorStack"}
    assert error.data["errorName"] == "RuntimeError"
    assert error.data["errorMessage"] == "database down"
    assert "RuntimeError: database down" in error.data["errorStack"]
    assert msgspec.convert(error.data, ErrorData).errorName == "RuntimeError"
    assert from_json(to_json(error)) == error


@pytest.mark.anyio
async def test_sync_exception_becomes_system_error() -> None:
    def fn(event: Event) -> None:
        raise KeyError("missing")

    [error] = await make_handler(v1_0_0=fn).execute(make_event())
    assert error.type == "sys.com.greeter.greet.error"
    assert error.data["errorName"] == "KeyError"


@pytest.mark.anyio
async def test_system_error_id_is_deterministic() -> None:
    async def fn(event: Event) -> None:
        raise RuntimeError("x")

    handler = make_handler(v1_0_0=fn)
    [first] = await handler.execute(make_event())
    [second] = await handler.execute(make_event())
    assert first.id == second.id
    assert first.id != "in-1"
    assert drop_time(first) == drop_time(second)


@pytest.mark.anyio
async def test_system_error_domains() -> None:
    async def fn(event: Event) -> None:
        raise RuntimeError("x")

    handler = EventHandler(
        contract,
        {"1.0.0": fn, "2.0.0": greet_v2},
        system_error_domain=[FROM_TRIGGERING_EVENT, None, "ops.alerts", "ops.alerts"],
    )
    errors = await handler.execute(make_event(domain="human.review"))
    assert [e.domain for e in errors] == ["human.review", None, "ops.alerts"]
    assert len({e.id for e in errors}) == 3
    assert {e.type for e in errors} == {"sys.com.greeter.greet.error"}


# --- domains --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_domain_list_dedupes_after_resolution() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), domain=["a.b", "a.b", None])

    outs = await make_handler(v1_0_0=fn).execute(make_event())
    assert [o.domain for o in outs] == ["a.b", None]
    assert len({o.id for o in outs}) == 2
    assert {o.type for o in outs} == {DONE}
    assert {o.parentid for o in outs} == {"in-1"}


@pytest.mark.anyio
async def test_domain_symbols_resolved_then_deduped_first_occurrence() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), domain=[None, FROM_TRIGGERING_EVENT, "human.review", None])

    outs = await make_handler(v1_0_0=fn).execute(make_event(domain="human.review"))
    assert [o.domain for o in outs] == [None, "human.review"]


@pytest.mark.anyio
async def test_single_domain_string() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), domain="human.review")

    [out] = await make_handler(v1_0_0=fn).execute(make_event())
    assert out.domain == "human.review"


@pytest.mark.anyio
async def test_explicit_id_shared_across_domains() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), id="same", domain=["a.b", None])

    outs = await make_handler(v1_0_0=fn).execute(make_event())
    assert [(o.id, o.domain) for o in outs] == [("same", "a.b"), ("same", None)]


@pytest.mark.anyio
async def test_default_domain_is_local_for_local_event() -> None:
    assert Emit(DONE, {}).domain == (ORCHESTRATION_CONTEXT,)
    [out] = await make_handler().execute(make_event())
    assert out.domain is None


@pytest.mark.anyio
async def test_default_domain_reply_into_orchestration_domain() -> None:
    # The event arrived over domain 'human.review' but the orchestration lives in 'eu.one':
    # the reply goes back into the orchestration's domain.
    subject = new_subject(
        orchestrator="arvo.orc.order.fulfil",
        version="1.0.0",
        initiator="com.shop.web",
        domain="eu.one",
    )
    [out] = await make_handler().execute(make_event(subject=subject, domain="human.review"))
    assert out.domain == "eu.one"
    assert out.subject == subject


@pytest.mark.anyio
async def test_default_domain_local_when_event_domain_matches_subject() -> None:
    subject = new_subject(
        orchestrator="arvo.orc.order.fulfil",
        version="1.0.0",
        initiator="com.shop.web",
        domain="eu.one",
    )
    [out] = await make_handler().execute(make_event(subject=subject, domain="eu.one"))
    assert out.domain is None


def test_bad_emit_domain_fails_where_the_emit_is_written() -> None:
    with pytest.raises(ValueError, match=r"Emit\(domain=\.\.\.\)"):
        Emit(DONE, Greeted("x"), domain=[])
    with pytest.raises(ValueError, match="lowercase letters"):
        Emit(DONE, Greeted("x"), domain="Not A Domain")


@pytest.mark.anyio
async def test_bad_emit_domain_in_a_handler_is_reported_as_its_error() -> None:
    async def fn(event: Event) -> Emit:
        return Emit(DONE, Greeted("x"), domain=[])

    (error,) = await make_handler(v1_0_0=fn).execute(make_event())
    assert error.type.endswith(".error")
    assert "Emit(domain=...)" in error.data["errorMessage"]


# --- construction ---------------------------------------------------------------------------


def test_missing_version_function() -> None:
    with pytest.raises(ValueError) as info:
        EventHandler(contract, {"1.0.0": greet_v1})
    assert f"contract {URI!r} needs a handler function for version(s) 2.0.0" == str(info.value)


def test_unknown_version_function() -> None:
    with pytest.raises(ValueError) as info:
        EventHandler(contract, {"1.0.0": greet_v1, "2.0.0": greet_v2, "9.0.0": greet_v1})
    assert "has no version(s) 9.0.0" in str(info.value)
    assert "1.0.0, 2.0.0" in str(info.value)


def test_not_a_contract() -> None:
    with pytest.raises(TypeError, match="needs a Contract"):
        EventHandler(contract.latest, {"2.0.0": greet_v2})  # type: ignore[arg-type]


def test_violations_are_violation_errors() -> None:
    assert issubclass(ConfigViolation, ViolationError)
    assert issubclass(ContractViolation, ViolationError)
    assert str(ContractViolation("m")) == "ViolationError<Contract> m"


# --- telemetry ------------------------------------------------------------------------------


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(resumable.telemetry, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def headers_of(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@pytest.mark.anyio
async def test_span_recorded(spans: InMemorySpanExporter) -> None:
    event = make_event(traceparent=TRACEPARENT, tracestate=TRACESTATE)
    [out] = await make_handler().execute(event)
    [span] = spans.get_finished_spans()
    assert span.name == f"Handler<{URI}>"
    assert span.kind == SpanKind.CONSUMER
    assert span.attributes["arvo.span.kind"] == "handler.simple"
    assert span.attributes["openinference.span.kind"] == "CHAIN"
    assert span.attributes["arvo.handler.source"] == TYPE
    assert span.attributes["arvo.contract.uri"] == URI
    assert span.attributes["consumable.0.cloudevents.event_id"] == "in-1"
    # The parent is the trace carried by the consumed event.
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent is not None
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert span.parent.is_remote
    # The reply carries the handler span's headers, so the next hop is its child.
    assert out.traceparent == headers_of(span)
    assert out.traceparent != TRACEPARENT
    assert out.tracestate == TRACESTATE


@pytest.mark.anyio
async def test_span_without_incoming_trace_is_root(spans: InMemorySpanExporter) -> None:
    [out] = await make_handler().execute(make_event())
    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert out.traceparent == headers_of(span)
    assert out.tracestate is None


@pytest.mark.anyio
async def test_system_error_carries_span_headers(spans: InMemorySpanExporter) -> None:
    async def fn(event: Event) -> None:
        raise RuntimeError("x")

    [error] = await make_handler(v1_0_0=fn).execute(make_event(traceparent=TRACEPARENT))
    [span] = spans.get_finished_spans()
    assert error.traceparent == headers_of(span)
    assert span.attributes["arvo.handler.execution.status"] == "failure"


@pytest.mark.anyio
async def test_violation_marks_span_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ConfigViolation):
        await make_handler().execute(make_event(type="com.other.type"))
    [span] = spans.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
