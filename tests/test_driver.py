"""The workflow driver: steps, routing, failures, violations, replay, cache, locking."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from collections.abc import AsyncIterator
from typing import Any

import attrs
import msgspec
import pytest

from resumable import (
    ConfigViolation,
    Contract,
    ContractViolation,
    Emit,
    Event,
    EventHandler,
    ExecutionViolation,
    OrchestratorContract,
    Resumable,
    ServiceError,
    SetupError,
    TransactionViolation,
    call,
    complete,
    gather,
)
from resumable.brokers import LocalBroker
from resumable.limits import MAX_ID_BYTES, MAX_SUBJECT_BYTES, LimitViolation
from resumable.memory import InMemoryMemory, Memory, SQLiteMemory
from resumable.subject import parse_subject

from harness import FIXED_TIME, Network, fixed_clock, order_workflow, snapshot, untimed
from orders import (
    HANDLERS,
    SERVICES,
    ChargeCard,
    OrderResult,
    OrderState,
    PlaceOrder,
    fulfil,
    orders,
    payments,
    shipping,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["inmemory", "sqlite"])
async def memory(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Memory]:
    mem: Memory = (
        InMemoryMemory() if request.param == "inmemory" else SQLiteMemory(tmp_path / "wf.db")
    )
    yield mem
    await mem.close()


async def test_design_example_runs_to_completion(memory: Memory) -> None:
    workflow = order_workflow(memory)
    broker = LocalBroker([*HANDLERS, workflow])
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    done = await broker.resolve(init)
    assert done is not None
    assert done.type == "arvo.orc.order.fulfil.done"
    assert done.data == {"status": "shipped", "payment_id": "pay-o-1"}
    assert done.to == "com.shop.web"
    assert done.parentid == init.id
    assert done.subject == init.subject
    assert done.dataschema == "#/orchestrators/order/1.0.0"
    status = await workflow.status(init.subject)
    assert status is not None
    assert status.status == "done"
    assert status.state == OrderState(payment_id="pay-o-1", steps=2)
    assert broker.errors == []


async def test_declined_and_compensated_orders(memory: Memory) -> None:
    workflow = order_workflow(memory)
    broker = LocalBroker([*HANDLERS, workflow])
    declined = await broker.resolve(
        orders.init_event(PlaceOrder("o-2", 500_000), source="com.shop.web")
    )
    assert declined is not None and declined.data == {"status": "declined", "payment_id": None}
    init = orders.init_event(PlaceOrder("o-3", 10, "out-of-stock"), source="com.shop.web")
    failed = await broker.resolve(init)
    # out of stock is not handled by the workflow: the compensation stack refunds, then the
    # failure is reported to the shop
    assert failed is not None and failed.type == orders.system_error_type
    assert failed.data["errorName"] == "RuntimeError"  # the inventory service's own error
    refunds = [e for e in broker.events if e.type == "com.payments.refund"]
    assert len(refunds) == 1 and refunds[0].data == {"order_id": "o-3"}
    refunded_at = broker.events.index(refunds[0])
    assert broker.events.index(failed) > refunded_at  # refunded before the report
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed" and status.compensations == []


async def test_request_routing_follows_arvo() -> None:
    workflow = order_workflow(InMemoryMemory())
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web", accesscontrol="user:1")
    (request,) = await workflow.execute(init)
    assert request.type == "com.payments.charge"
    assert request.source == "arvo.orc.order.fulfil"
    assert request.to == "com.payments.charge"
    assert request.redirectto == "arvo.orc.order.fulfil"
    assert request.parentid == init.id
    assert request.subject == init.subject
    assert request.dataschema == "#/contracts/payments/charge/1.0.0"
    assert request.accesscontrol == "user:1"
    assert request.executionunits == 0
    assert request.domain is None
    assert request.time == FIXED_TIME
    assert request.data == {"order_id": "o-1", "amount_cents": 4200}


async def test_gather_sends_all_requests_and_waits_for_all_replies() -> None:
    workflow = order_workflow(InMemoryMemory())
    net = Network([*HANDLERS, workflow])
    net.add([orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")])
    await net.deliver()  # init -> charge request
    await net.deliver()  # charge -> reply
    outputs = await net.deliver()  # reply -> gather of two requests
    assert [e.type for e in outputs] == ["com.inventory.reserve", "com.shipping.label"]
    await net.deliver(0)  # reserve -> reply
    await net.deliver(0)  # label -> reply
    # the label reply arrives first: stored, nothing emitted, nothing resumed yet
    label_reply = net.inflight.pop(1)
    assert await workflow.execute(label_reply) == []
    status = await workflow.status(label_reply.subject)
    assert status is not None and status.waits_for == (
        "gather(call com.inventory.reserve, call com.shipping.label)"
    )
    await net.run()
    assert [e.data["status"] for e in net.outside] == ["shipped"]


async def test_brand_new_resumable_per_step_matches_a_warm_run(tmp_path) -> None:
    """Each event through a new Resumable (empty cache) on the same SQLite file."""
    warm_memory = SQLiteMemory(tmp_path / "warm.db")
    warm = Network([*HANDLERS, order_workflow(warm_memory)])
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    warm.add([init])
    await warm.run()

    path = tmp_path / "cold.db"
    produced: list[Event] = []

    class FreshEachStep:
        source = orders.type

        async def execute(self, event: Event) -> list[Event]:
            memory = SQLiteMemory(path)
            outputs = await order_workflow(memory, cache_size=0).execute(event)
            await memory.close()
            produced.extend(outputs)
            return outputs

    cold = Network([*HANDLERS, FreshEachStep()])
    cold.add([init])
    await cold.run()
    warm_produced = [e for e in warm.delivered if e.source == orders.type] + warm.outside
    assert untimed(produced) == untimed(warm_produced)
    assert [e.data for e in cold.outside] == [{"status": "shipped", "payment_id": "pay-o-1"}]
    await warm_memory.close()


async def test_replay_rebuilds_the_same_state_and_events(memory: Memory) -> None:
    workflow = order_workflow(memory)
    net = Network([*HANDLERS, workflow])
    net.add([orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")])
    while net.inflight:
        workflow.evict()
        await net.deliver()
    assert [e.data["status"] for e in net.outside] == ["shipped"]


async def test_redelivered_event_returns_what_it_produced_then(memory: Memory) -> None:
    workflow = order_workflow(memory)
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    first = await workflow.execute(init)
    before = await snapshot(memory)
    again = await workflow.execute(init)
    assert again == first
    assert await snapshot(memory) == before
    reply = (await HANDLERS[0].execute(first[0]))[0]
    gathered = await workflow.execute(reply)
    assert await workflow.execute(reply) == gathered
    workflow.evict()
    assert await workflow.execute(reply) == gathered


async def test_workflow_exception_fails_instance_and_reports_error(memory: Memory) -> None:
    async def broken(ctx, order):
        yield call(payments, ChargeCard(order.order_id, order.amount_cents))
        raise ValueError("bad luck")

    workflow = Resumable(
        orders, versions={"1.0.0": broken}, services=SERVICES, memory=memory, clock=fixed_clock
    )
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    (request,) = await workflow.execute(init)
    (reply,) = await HANDLERS[0].execute(request)
    (error,) = await workflow.execute(reply)
    assert error.type == "sys.arvo.orc.order.fulfil.error"
    assert error.to == "com.shop.web"
    assert error.parentid == init.id
    assert error.subject == init.subject
    assert error.dataschema == "#/orchestrators/order/0.0.0"
    assert error.data["errorName"] == "ValueError"
    assert error.data["errorMessage"] == "bad luck"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"
    assert status.error is not None and status.error.errorMessage == "bad luck"
    # later events for a failed workflow are ignored; the failing one is answered again
    assert await workflow.execute(reply) == [error]
    late = msgspec.structs.replace(reply, id="another-reply")
    assert await workflow.execute(late) == []


async def test_service_error_raises_at_the_yield() -> None:
    seen: list[str] = []

    async def wf(ctx, order):
        try:
            yield call(payments, ChargeCard(order.order_id, order.amount_cents))
        except ServiceError as error:
            seen.append(f"{error.name}: {error.message}")
            yield complete(OrderResult("failed"))

    async def boom(event):
        raise RuntimeError("card service down")

    charge = EventHandler(payments, versions={"1.0.0": boom})
    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    broker = LocalBroker([charge, workflow])
    done = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert done is not None and done.data == {"status": "failed", "payment_id": None}
    assert seen == ["RuntimeError: card service down"]


async def test_gather_raises_first_service_error_in_call_order() -> None:
    async def wf(ctx, order):
        try:
            yield gather(call(shipping, {"order_id": "a"}), call(payments, ChargeCard("x", 1)))
        except ServiceError as error:
            yield complete(OrderResult(f"failed:{error.event.type}"))

    async def boom(event):
        raise RuntimeError("down")

    async def label(event):
        raise RuntimeError("also down")

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    broker = LocalBroker(
        [
            EventHandler(payments, versions={"1.0.0": boom}),
            EventHandler(shipping, versions={"1.0.0": label}),
            workflow,
        ]
    )
    done = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert done is not None and done.data["status"] == "failed:sys.com.shipping.label.error"


# ------------------------------------------------------------------------------------------
# violations: raised, nothing persisted


def _charged(subject: str, parentid: str, data: dict[str, object] | None = None) -> Event:
    """A payment reply, as the charge service would send it, to the request ``parentid``."""
    return Event(
        source="com.payments.charge",
        type="evt.payments.charge.success",
        subject=subject,
        data={"payment_id": "p"} if data is None else data,
        dataschema="#/contracts/payments/charge/1.0.0",
        parentid=parentid,
    )


async def _started(memory: Memory) -> tuple[Resumable[OrderState], Event, Event]:
    workflow = order_workflow(memory)
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    (request,) = await workflow.execute(init)
    return workflow, init, request


async def test_bad_subject_is_an_execution_violation(memory: Memory) -> None:
    workflow, init, _ = await _started(memory)
    before = await snapshot(memory)
    bad = msgspec.structs.replace(init, subject="not-a-subject", id="x1")
    with pytest.raises(ExecutionViolation, match="not an orchestration subject"):
        await workflow.execute(bad)
    assert await snapshot(memory) == before


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("id", "x" * (MAX_ID_BYTES + 1), "over the limit of 512 bytes"),
        ("id", "ä" * (MAX_ID_BYTES // 2 + 1), "over the limit of 512 bytes"),  # bytes
        ("id", "evt\x00nul", "NUL or another control character"),
        ("id", "evt\nline", "NUL or another control character"),
        ("subject", "s" * (MAX_SUBJECT_BYTES + 1), "over the limit of 2,048 bytes"),
    ],
)
async def test_an_event_over_the_limits_is_refused_before_any_write(
    memory: Memory, field: str, value: str, problem: str
) -> None:
    workflow, init, _ = await _started(memory)
    before = await snapshot(memory)
    fields: dict[str, Any] = {"id": "fresh-id"} | {field: value}
    bad = msgspec.structs.replace(init, **fields)
    with pytest.raises(LimitViolation, match=problem) as caught:
        await workflow.execute(bad)
    assert caught.value.field == field
    assert isinstance(caught.value, ExecutionViolation)  # permanent: dead-lettered at once
    assert len(str(caught.value)) < 1000  # the message quotes the value, shortened
    assert await snapshot(memory) == before


async def test_unknown_type_is_a_config_violation(memory: Memory) -> None:
    workflow, init, request = await _started(memory)
    before = await snapshot(memory)
    odd = Event(
        source="com.other.svc",
        type="evt.unknown.thing",
        subject=init.subject,
        data={},
        dataschema="#/x/1.0.0",
        parentid=request.id,
    )
    with pytest.raises(ConfigViolation, match="matches no contract"):
        await workflow.execute(odd)
    assert await snapshot(memory) == before


async def test_unknown_version_is_a_config_violation(memory: Memory) -> None:
    v2 = OrchestratorContract(
        uri=orders.uri,
        name=orders.name,
        versions={
            "1.0.0": {"init": PlaceOrder, "complete": OrderResult},
            "2.0.0": {"init": PlaceOrder, "complete": OrderResult},
        },
    )
    workflow = Resumable(v2, versions={"1.0.0": fulfil}, services=SERVICES, memory=memory)
    init = v2.init_event(PlaceOrder("o-1", 1), source="com.shop.web", version="2.0.0")
    with pytest.raises(ConfigViolation, match=re.escape("no function for version 2.0.0")):
        await workflow.execute(init)
    assert await memory.keys() == []


async def test_schema_mismatch_is_a_contract_violation(memory: Memory) -> None:
    workflow, init, request = await _started(memory)
    before = await snapshot(memory)
    wrong = _charged(init.subject, request.id, data={"payment_id": 42})
    with pytest.raises(ContractViolation, match="does not match CardCharged"):
        await workflow.execute(wrong)
    other_schema = msgspec.structs.replace(
        wrong, data={"payment_id": "p"}, dataschema="#/contracts/payments/charge/9.9.9"
    )
    with pytest.raises(
        ContractViolation, match=re.escape("expects '#/contracts/payments/charge/1.0.0'")
    ):
        await workflow.execute(other_schema)
    bad_init = orders.init_event(PlaceOrder("o-9", 1), source="com.shop.web")
    bad_init = msgspec.structs.replace(bad_init, data={"order_id": 5, "parentSubject$$": None})
    with pytest.raises(ContractViolation, match="does not match PlaceOrder"):
        await workflow.execute(bad_init)
    assert await snapshot(memory) == before


async def test_reply_nobody_waits_for_is_an_execution_violation(memory: Memory) -> None:
    workflow, init, _request = await _started(memory)
    before = await snapshot(memory)
    stray = _charged(init.subject, "nobody-asked")
    with pytest.raises(ExecutionViolation, match="not waiting for a reply to event 'nobody-asked'"):
        await workflow.execute(stray)
    assert await snapshot(memory) == before


async def test_non_init_first_event_is_an_execution_violation(memory: Memory) -> None:
    workflow = order_workflow(memory)
    subject = orders.init_event(PlaceOrder("o", 1), source="com.shop.web").subject
    reply = _charged(subject, "x")
    with pytest.raises(ExecutionViolation, match="does not exist"):
        await workflow.execute(reply)
    assert await memory.keys() == []


async def test_second_init_for_a_subject_is_an_execution_violation(memory: Memory) -> None:
    workflow, init, _ = await _started(memory)
    before = await snapshot(memory)
    again = msgspec.structs.replace(init, id="another-init")
    with pytest.raises(ExecutionViolation, match="already started"):
        await workflow.execute(again)
    assert await snapshot(memory) == before


async def test_init_without_parent_subject_key_is_a_contract_violation() -> None:
    workflow = order_workflow(InMemoryMemory())
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web")
    stripped = msgspec.structs.replace(init, data={"order_id": "o", "amount_cents": 1})
    with pytest.raises(ContractViolation, match="parentSubject"):
        await workflow.execute(stripped)


async def test_invalid_outgoing_payload_is_a_violation_and_nothing_is_kept() -> None:
    async def wf(ctx, order):
        yield call(payments, {"order_id": order.order_id})  # amount missing

    memory = InMemoryMemory()
    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES, memory=memory)
    with pytest.raises(ContractViolation, match="does not match ChargeCard"):
        await workflow.execute(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert await memory.keys() == []


async def test_event_for_another_orchestrator_is_a_violation_naming_both() -> None:
    """Not acked and dropped: an execution violation, which a worker dead-letters."""
    other = OrchestratorContract(
        uri="#/orchestrators/other",
        name="other.flow",
        versions={"1.0.0": {"init": PlaceOrder, "complete": OrderResult}},
    )
    workflow = order_workflow(InMemoryMemory())
    event = other.init_event(PlaceOrder("o", 1), source="com.shop.web")
    event = msgspec.structs.replace(event, type=orders.type)
    with pytest.raises(ExecutionViolation, match=r"subject names workflow arvo\.orc\.other\.flow"):
        await workflow.execute(event)
    assert await workflow.memory.read(event.subject) is None


# ------------------------------------------------------------------------------------------
# determinism, cache, await guard


async def test_changed_code_between_steps_parks_the_instance(memory: Memory) -> None:
    workflow = order_workflow(memory)
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    (request,) = await workflow.execute(init)
    (reply,) = await HANDLERS[0].execute(request)

    async def changed(ctx, order):
        yield call(shipping, {"order_id": order.order_id})

    redeployed = Resumable(
        orders, versions={"1.0.0": changed}, services=SERVICES, state=OrderState, memory=memory
    )
    before = await memory.read(init.subject, journal=True)
    assert await redeployed.execute(reply) == []  # parked: not raised, so never retried
    status = await redeployed.status(init.subject)
    assert status is not None and status.status == "parked"
    assert status.parked is not None
    assert status.parked.step == 0
    assert status.parked.recorded == "call com.payments.charge"
    assert status.parked.replayed == "call com.shipping.label"
    assert "step 0 was `call com.payments.charge`, now `call com.shipping.label`" in (
        status.parked.message
    )
    after = await memory.read(init.subject, journal=True)
    assert before is not None and after is not None
    assert after.journal == before.journal  # history untouched: only the header says parked
    assert [s.subject for s in await redeployed.parked()] == [init.subject]
    # a redelivery, and any later event, is kept for when the instance is unparked
    assert await redeployed.execute(reply) == []
    assert await memory.read(init.subject, journal=True) == after


async def test_state_changed_outside_the_workflow_is_detected() -> None:
    @attrs.define
    class Counter:
        n: int = 0

    calls = {"count": 0}

    async def wf(ctx, order):
        calls["count"] += 1
        ctx.state.n = calls["count"]  # differs on replay: not deterministic
        yield call(payments, ChargeCard(order.order_id, 1))
        yield complete(OrderResult("x"))

    memory = InMemoryMemory()
    workflow = Resumable(
        orders, versions={"1.0.0": wf}, services=SERVICES, state=Counter, memory=memory
    )
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web")
    (request,) = await workflow.execute(init)
    (reply,) = await HANDLERS[0].execute(request)
    workflow.evict()
    assert await workflow.execute(reply) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "parked" and status.parked is not None
    assert "explicit state" in status.parked.message


async def test_cache_eviction_runs_no_workflow_code() -> None:
    cleanups: list[str] = []

    async def wf(ctx, order):
        try:
            yield call(payments, ChargeCard(order.order_id, 1))
            yield complete(OrderResult("ok"))
        finally:
            cleanups.append(order.order_id)

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES, cache_size=1)
    for i in range(5):
        await workflow.execute(orders.init_event(PlaceOrder(f"o-{i}", 1), source="com.shop.web"))
    workflow.evict()
    gc.collect()
    await asyncio.sleep(0)
    assert cleanups == []


async def test_cache_is_bounded() -> None:
    workflow = order_workflow(InMemoryMemory(), cache_size=3)
    for i in range(10):
        await workflow.execute(orders.init_event(PlaceOrder(f"o-{i}", 1), source="com.shop.web"))
    assert len(workflow._cache) == 3


async def test_suspending_await_in_a_workflow_is_reported_with_its_line() -> None:
    async def helper() -> int:
        return 2

    async def wf(ctx, order):
        n = await helper()  # finishes without suspending: allowed
        yield call(payments, ChargeCard(order.order_id, n))
        await asyncio.sleep(0.01)
        yield complete(OrderResult("never"))

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    broker = LocalBroker([*HANDLERS, workflow])
    result = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert result is not None and result.type == "sys.arvo.orc.order.fulfil.error"
    assert result.data["errorName"] == "WorkflowAwaitError"
    assert "test_driver.py" in result.data["errorMessage"]
    assert "yield call(...)" in result.data["errorMessage"]
    assert broker.events[1].data["amount_cents"] == 2


async def test_returning_without_complete_fails_the_workflow() -> None:
    async def wf(ctx, order):
        yield call(payments, ChargeCard(order.order_id, 1))

    broker = LocalBroker([*HANDLERS, Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)])
    result = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert result is not None and "without yielding complete" in result.data["errorMessage"]


async def test_yielding_a_non_request_raises_in_the_workflow() -> None:
    async def wf(ctx, order):
        try:
            yield "charge please"
        except TypeError as error:
            yield complete(OrderResult(str(error)[:40]))

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    (done,) = await workflow.execute(orders.init_event(PlaceOrder("o", 1), source="com.x.y"))
    assert done.data["status"].startswith("workflow yielded 'charge please'")


async def test_deterministic_helpers_survive_replay() -> None:
    seen: list[tuple[str, str, float]] = []

    async def wf(ctx, order):
        yield call(payments, ChargeCard(order.order_id, 1))
        seen.append((str(ctx.uuid()), ctx.now().isoformat(), ctx.random().random()))
        yield call(payments, ChargeCard(order.order_id, 2))
        yield complete(OrderResult("ok"))

    memory = InMemoryMemory()
    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES, memory=memory)
    net = Network([*HANDLERS, workflow])
    net.add([orders.init_event(PlaceOrder("o", 1), source="com.shop.web")])
    while net.inflight:
        workflow.evict()
        await net.deliver()
    assert len(seen) == 2 and seen[0] == seen[1]


# ------------------------------------------------------------------------------------------
# locking


async def test_locked_subject_is_a_transaction_violation() -> None:
    memory = InMemoryMemory()
    workflow = order_workflow(memory)
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web")
    assert await memory.lock(init.subject, "someone-else", 30)
    with pytest.raises(TransactionViolation, match="LOCK_UNACQUIRED") as caught:
        await workflow.execute(init)
    assert caught.value.cause == TransactionViolation.LOCK_UNACQUIRED
    assert await memory.keys() == []


async def test_an_expired_lease_does_not_block() -> None:
    now = [0.0]
    memory = InMemoryMemory(clock=lambda: now[0])
    workflow = order_workflow(memory, lock_ttl=5)
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web")
    assert await memory.lock(init.subject, "crashed-worker", 5)
    now[0] = 6.0
    assert len(await workflow.execute(init)) == 1


async def test_lock_is_released_after_each_step_even_on_violation() -> None:
    memory = InMemoryMemory()
    workflow, init, _request = await _started(memory)
    stray = _charged(init.subject, "nobody")
    with pytest.raises(ExecutionViolation):
        await workflow.execute(stray)
    assert await memory.lock(init.subject, "next", 1)


# ------------------------------------------------------------------------------------------
# child workflows and domains


class Approve(msgspec.Struct):
    order_id: str


class Approved(msgspec.Struct):
    ok: bool


approvals = OrchestratorContract(
    uri="#/orchestrators/approval",
    name="approval",
    versions={"1.0.0": {"init": Approve, "complete": Approved}},
)


async def test_child_workflow_completion_returns_to_the_parent() -> None:
    async def child(ctx, request: Approve):
        yield call(payments, ChargeCard(request.order_id, 1))
        yield complete(Approved(True))

    async def parent(ctx, order):
        reply = yield call(approvals, Approve(order.order_id))
        yield complete(OrderResult(f"approved={reply.data.ok}"))

    memory = InMemoryMemory()
    child_wf = Resumable(approvals, versions={"1.0.0": child}, services=SERVICES, memory=memory)
    parent_wf = Resumable(orders, versions={"1.0.0": parent}, services=[approvals], memory=memory)
    broker = LocalBroker([*HANDLERS, child_wf, parent_wf])
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web")
    done = await broker.resolve(init)
    assert done is not None and done.data == {"status": "approved=True", "payment_id": None}
    child_init = next(e for e in broker.events if e.type == "arvo.orc.approval")
    assert child_init.data["parentSubject$$"] == init.subject
    child_subject = parse_subject(child_init.subject)
    assert child_subject.initiator == "arvo.orc.order.fulfil"
    child_done = next(e for e in broker.events if e.type == "arvo.orc.approval.done")
    assert child_done.subject == init.subject
    assert child_done.to == "arvo.orc.order.fulfil"
    assert child_done.parentid == child_init.id


async def test_child_failure_raises_service_error_in_parent() -> None:
    async def child(ctx, request: Approve):
        raise PermissionError("no")
        yield  # pragma: no cover

    async def parent(ctx, order):
        try:
            yield call(approvals, Approve(order.order_id))
        except ServiceError as error:
            yield complete(OrderResult(f"{error.event.type}:{error.message}"))

    memory = InMemoryMemory()
    broker = LocalBroker(
        [
            Resumable(approvals, versions={"1.0.0": child}, memory=memory),
            Resumable(orders, versions={"1.0.0": parent}, services=[approvals], memory=memory),
        ]
    )
    done = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert done is not None and done.data["status"] == "sys.arvo.orc.approval.error:no"


async def test_domained_request_goes_to_the_domain_and_its_reply_resumes() -> None:
    async def wf(ctx, order):
        reply = yield call(payments, ChargeCard(order.order_id, 1), domain="external")
        yield complete(OrderResult("ok", reply.data.payment_id))

    handed: list[Event] = []

    async def on_domain(event: Event, broker: LocalBroker) -> None:
        handed.append(event)

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    broker = LocalBroker([*HANDLERS, workflow], on_domain=on_domain)
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web")
    assert await broker.resolve(init) is None
    assert [e.domain for e in handed] == ["external"]
    # a person (or another system) answers; the reply is published locally
    (reply,) = await HANDLERS[0].execute(handed[0])
    assert reply.domain is None and reply.to == "arvo.orc.order.fulfil"
    (done,) = await workflow.execute(reply)
    assert done.data == {"status": "ok", "payment_id": "pay-o"}


async def test_init_domain_does_not_leak_into_local_completion() -> None:
    workflow = order_workflow(InMemoryMemory())
    broker = LocalBroker([*HANDLERS, workflow])
    init = orders.init_event(PlaceOrder("o", 1), source="com.shop.web", domain="test.domain")
    done = await broker.resolve(init)
    assert done is not None and done.domain is None


# ------------------------------------------------------------------------------------------
# definition errors


def test_definition_errors_are_clear() -> None:
    async def plain(ctx, order):  # not a generator
        return None

    with pytest.raises(TypeError, match="async generator function"):
        Resumable(orders, versions={"1.0.0": plain})
    with pytest.raises(ValueError, match=re.escape("no version '9.0.0'")):
        Resumable(orders, versions={"9.0.0": fulfil})
    # a mistake in how a workflow is put together is a SetupError (it was ConfigViolation,
    # which is for events that cannot be routed)
    with pytest.raises(SetupError, match="twice"):
        Resumable(orders, versions={"1.0.0": fulfil}, services=[payments, payments])
    with pytest.raises(SetupError, match="itself"):
        Resumable(orders, versions={"1.0.0": fulfil}, services=[orders])
    with pytest.raises(TypeError, match="OrchestratorContract"):
        Resumable(payments, versions={"1.0.0": fulfil})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attrs class"):
        Resumable(orders, versions={"1.0.0": fulfil}, state=dict)
    for options in (
        {"state": dict},
        {"timeout": -1},
        {"run_timeout": 0},
        {"cache_size": -1},
        {"lock_ttl": 0},
        {"executionunits": "1"},
        {"clock": lambda: "yesterday"},
        {"signals": [42]},
    ):
        with pytest.raises(SetupError):
            Resumable(orders, versions={"1.0.0": fulfil}, **options)


async def test_call_to_an_unlisted_service_is_a_config_violation() -> None:
    stranger = Contract(
        uri="#/x", type="com.x.y", versions={"1.0.0": {"accepts": Approve, "emits": {}}}
    )

    async def wf(ctx, order):
        yield call(stranger, Approve("a"))

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    with pytest.raises(ConfigViolation, match="not in its services"):
        await workflow.execute(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))


async def test_handler_with_emits_of_typed_reply() -> None:
    async def wf(ctx, order):
        reply = yield call(payments, ChargeCard(order.order_id, 1))
        assert type(reply.data).__name__ == "CardCharged"
        yield complete(OrderResult("ok", reply.data.payment_id))

    async def charge(event):
        assert isinstance(event.data, ChargeCard)
        return [Emit("evt.payments.charge.success", {"payment_id": "p-1"})]

    broker = LocalBroker(
        [
            EventHandler(payments, versions={"1.0.0": charge}),
            Resumable(orders, versions={"1.0.0": wf}, services=SERVICES),
        ]
    )
    done = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert done is not None and done.data == {"status": "ok", "payment_id": "p-1"}


async def test_two_drivers_racing_on_one_subject_never_both_apply_a_step(tmp_path) -> None:
    """Two Resumables on one SQLite file (two processes' view) get the same reply at once."""
    import anyio

    path = tmp_path / "race.db"
    first_memory, second_memory = SQLiteMemory(path), SQLiteMemory(path)
    first, second = order_workflow(first_memory), order_workflow(second_memory)
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    (request,) = await first.execute(init)
    (reply,) = await HANDLERS[0].execute(request)
    outcomes: list[object] = []

    async def deliver(workflow: Resumable[OrderState]) -> None:
        try:
            outcomes.append(await workflow.execute(reply))
        except TransactionViolation as violation:
            outcomes.append(violation.cause)

    async with anyio.create_task_group() as group:
        group.start_soon(deliver, first)
        group.start_soon(deliver, second)
    applied = [o for o in outcomes if isinstance(o, list)]
    # At least one applied it; the other was locked out, or got the same events back.
    assert applied
    assert all(o == applied[0] for o in applied)
    stored = await first_memory.read(init.subject, journal=True)
    assert stored is not None and stored.journal is not None and len(stored.journal) == 2
    await first_memory.close()
    await second_memory.close()


async def test_replay_repeats_what_a_non_request_yield_did() -> None:
    """A workflow that caught the TypeError for a bad yield replays the same way."""

    async def wf(ctx, order):
        with contextlib.suppress(TypeError):  # thrown in at the bad yield
            yield "charge please"
        reply = yield call(payments, ChargeCard(order.order_id, 1))
        yield complete(OrderResult("ok", reply.data.payment_id))

    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES)
    net = Network([*HANDLERS, workflow])
    net.add([orders.init_event(PlaceOrder("o", 1), source="com.shop.web")])
    while net.inflight:
        workflow.evict()
        await net.deliver()
    assert [e.data for e in net.outside] == [{"status": "ok", "payment_id": "pay-o"}]


def test_clock_and_executionunits_are_checked_at_definition() -> None:
    with pytest.raises(ValueError, match="clock"):
        Resumable(orders, versions={"1.0.0": fulfil}, clock=lambda: "yesterday")
    with pytest.raises(TypeError, match="executionunits"):
        Resumable(orders, versions={"1.0.0": fulfil}, executionunits="3")  # type: ignore[arg-type]


async def test_a_call_that_overrides_a_field_is_validated() -> None:
    """Requests are built unchecked only from validated parts; an override is checked."""

    async def wf(ctx, order):
        yield call(payments, ChargeCard(order.order_id, 1), to="not a topic")

    memory = InMemoryMemory()
    workflow = Resumable(orders, versions={"1.0.0": wf}, services=SERVICES, memory=memory)
    with pytest.raises(ContractViolation, match="could not build the request"):
        await workflow.execute(orders.init_event(PlaceOrder("o", 1), source="com.shop.web"))
    assert await memory.keys() == []
