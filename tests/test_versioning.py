"""Versions side by side, ctx.patched, parking and unparking, continue_as_new, status queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest

from resumable import (
    TIMER_TYPE,
    Contract,
    ContractViolation,
    Emit,
    Event,
    EventHandler,
    NonDeterminismError,
    OrchestratorContract,
    Resumable,
    VirtualClock,
    call,
    complete,
    continue_as_new,
    sleep,
    step,
    wait_for,
)
from resumable.brokers import LocalBroker
from resumable.memory import InMemoryMemory, Memory

from harness import SHOP, Host, Number, echo_contract, fixed_clock, service, snapshot
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio


audit = service("audit")


def _handler(contract: Contract) -> EventHandler:
    (done_type,) = contract.latest.emits

    async def run(event: Event) -> Emit:
        return Emit(done_type, Number(event.data.n + 1))

    return EventHandler(contract, versions={"1.0.0": run})


HANDLERS = {c.type: _handler(c) for c in (echo_contract, audit)}


class Approval(msgspec.Struct):
    by: str


approve = Contract(
    uri="#/signals/approve",
    type="com.test.approve",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)


def make(fn: Any, memory: Memory, **options: Any) -> Resumable[Any]:
    options.setdefault("clock", fixed_clock)
    options.setdefault("contract", orders)
    contract = options.pop("contract")
    versions = fn if isinstance(fn, dict) else {"1.0.0": fn}
    return Resumable(
        contract,
        versions=versions,
        services=[echo_contract, audit],
        signals=[approve],
        memory=memory,
        **options,
    )


def start(order_id: str = "o", amount: int = 0) -> Event:
    return orders.init_event(PlaceOrder(order_id, amount), source=SHOP)


async def answer(request: Event) -> Event:
    (reply,) = await HANDLERS[request.type].execute(request)
    return reply


async def drive(workflow: Resumable[Any], events: list[Event]) -> list[Event]:
    """Answer every request until none is left; return what went to the shop."""
    outside: list[Event] = []
    inflight = list(events)
    while inflight:
        event = inflight.pop(0)
        if event.to == SHOP:
            outside.append(event)
        else:
            workflow.evict()
            inflight.extend(await workflow.execute(await answer(event)))
    return outside


# ------------------------------------------------------------------------------------------
# versions side by side


class PlaceOrderV2(msgspec.Struct):
    order_id: str
    amount_cents: int
    rush: bool = False


class OrderResultV2(msgspec.Struct):
    status: str
    rush: bool


shop = OrchestratorContract(
    uri="#/orchestrators/shop",
    name="shop.order",
    versions={
        "1.0.0": {"init": PlaceOrder, "complete": OrderResult},
        "2.0.0": {"init": PlaceOrderV2, "complete": OrderResultV2},
    },
)


async def shop_v1(ctx, order: PlaceOrder):
    reply = yield call(echo_contract, Number(order.amount_cents))
    yield complete(OrderResult(f"v1:{reply.data.n}"))


async def shop_v2(ctx, order: PlaceOrderV2):
    first = yield call(echo_contract, Number(order.amount_cents))
    second = yield call(audit, Number(first.data.n))
    yield complete(OrderResultV2(f"v2:{second.data.n}", order.rush))


async def test_two_versions_run_side_by_side_and_instances_keep_theirs() -> None:
    memory = InMemoryMemory()
    workflow = make({"1.0.0": shop_v1, "2.0.0": shop_v2}, memory, contract=shop)
    old = shop.init_event(PlaceOrder("a", 10), source=SHOP, version="1.0.0")
    new = shop.init_event(PlaceOrderV2("b", 20, rush=True), source=SHOP, version="2.0.0")
    (old_request,) = await workflow.execute(old)
    (new_request,) = await workflow.execute(new)
    assert old_request.type == new_request.type == "com.test.echo"
    workflow.evict()
    (old_done,) = await workflow.execute(await answer(old_request))
    (audit_request,) = await workflow.execute(await answer(new_request))
    assert audit_request.type == "com.test.audit"
    workflow.evict()
    (new_done,) = await workflow.execute(await answer(audit_request))
    assert old_done.data == {"status": "v1:11", "payment_id": None}
    assert old_done.dataschema == "#/orchestrators/shop/1.0.0"
    assert new_done.data == {"status": "v2:22", "rush": True}
    assert new_done.dataschema == "#/orchestrators/shop/2.0.0"
    old_status, new_status = await workflow.status(old.subject), await workflow.status(new.subject)
    assert old_status is not None and old_status.version == "1.0.0"
    assert new_status is not None and new_status.version == "2.0.0"


async def test_an_instance_stays_on_its_version_when_a_new_one_is_deployed() -> None:
    memory = InMemoryMemory()
    before = make({"1.0.0": shop_v1}, memory, contract=shop)
    old = shop.init_event(PlaceOrder("a", 10), source=SHOP, version="1.0.0")
    (request,) = await before.execute(old)
    after = make({"1.0.0": shop_v1, "2.0.0": shop_v2}, memory, contract=shop)
    (done,) = await after.execute(await answer(request))
    assert done.data["status"] == "v1:11"


# ------------------------------------------------------------------------------------------
# ctx.patched


async def before_change(ctx, order):
    reply = yield call(echo_contract, Number(1))
    reply = yield call(echo_contract, Number(reply.data.n))
    yield complete(OrderResult(f"old:{reply.data.n}"))


def after_change(seen: list[tuple[bool, bool]]) -> Any:
    async def wf(ctx, order):
        if ctx.patched("audit"):
            yield call(audit, Number(100))
        seen.append((ctx.is_replaying, ctx.patched("audit")))
        reply = yield call(echo_contract, Number(1))
        seen.append((ctx.is_replaying, ctx.patched("audit")))
        if ctx.patched("audit"):  # a later step, run live
            yield call(audit, Number(200))
        reply = yield call(echo_contract, Number(reply.data.n))
        yield complete(OrderResult(f"patched={ctx.patched('audit')}:{reply.data.n}"))

    return wf


async def test_patched_is_false_for_an_instance_started_before_the_change() -> None:
    memory = InMemoryMemory()
    old_code = make(before_change, memory)
    init = start()
    (request,) = await old_code.execute(init)
    seen: list[tuple[bool, bool]] = []
    new_code = make(after_change(seen), memory)
    (request,) = await new_code.execute(await answer(request))  # replays, then runs live
    assert request.type == "com.test.echo"  # no audit: the instance keeps the old path
    assert seen == [(True, False), (False, False)]
    new_code.evict()
    (done,) = await new_code.execute(await answer(request))
    assert done.data["status"] == "patched=False:3"
    assert all(patched is False for _, patched in seen)


async def test_patched_is_true_for_a_new_instance_and_stays_true_on_replay() -> None:
    memory = InMemoryMemory()
    seen: list[tuple[bool, bool]] = []
    workflow = make(after_change(seen), memory)
    init = start()
    sent = await workflow.execute(init)
    assert [e.type for e in sent] == ["com.test.audit"]
    (done,) = await drive(workflow, sent)  # evicts before every step: replays each time
    assert done.data["status"] == "patched=True:3"
    assert seen and all(patched is True for _, patched in seen)
    assert any(replaying for replaying, _ in seen)


# ------------------------------------------------------------------------------------------
# parking and unparking


async def waits_for_approval(ctx, order):
    reply = yield call(echo_contract, Number(1))
    signal = yield wait_for(approve)
    yield complete(OrderResult(f"{reply.data.n}:{signal.data.by}"))


async def changed_without_patch(ctx, order):
    reply = yield call(audit, Number(1))  # was a call to echo
    signal = yield wait_for(approve)
    yield complete(OrderResult(f"{reply.data.n}:{signal.data.by}"))


async def fixed_with_patch(ctx, order):
    if ctx.patched("use-audit"):
        reply = yield call(audit, Number(1))
    else:
        reply = yield call(echo_contract, Number(1))
    signal = yield wait_for(approve)
    yield complete(OrderResult(f"{reply.data.n}:{signal.data.by}"))


async def test_changed_code_parks_keeps_later_events_and_unpark_applies_them() -> None:
    memory = InMemoryMemory()
    original = make(waits_for_approval, memory)
    init = start()
    (request,) = await original.execute(init)
    reply = await answer(request)

    broken = make(changed_without_patch, memory)
    assert await broken.execute(reply) == []
    status = await broken.status(init.subject)
    assert status is not None and status.status == "parked" and status.parked is not None
    assert (status.parked.step, status.parked.recorded, status.parked.replayed) == (
        0,
        "call com.test.echo",
        "call com.test.audit",
    )
    assert [s.subject for s in await broken.parked()] == [init.subject]
    # events after parking are kept, each once, and nothing runs
    signal = broken.signal_event(init.subject, approve, Approval("ann"), source="com.boss")
    assert await broken.execute(signal) == []
    assert await broken.execute(signal) == []
    assert await broken.execute(reply) == []
    status = await broken.status(init.subject)
    assert status is not None and status.status == "parked"
    assert await broken.wake(init.subject) == []

    fixed = make(fixed_with_patch, memory)
    (done,) = await fixed.unpark(init.subject)
    assert done.type == orders.complete_type and done.data["status"] == "2:ann"
    status = await fixed.status(init.subject)
    assert status is not None and status.status == "done" and status.parked is None
    assert await fixed.parked() == []


async def test_unpark_with_still_wrong_code_raises_and_stays_parked() -> None:
    memory = InMemoryMemory()
    original = make(waits_for_approval, memory)
    init = start()
    (request,) = await original.execute(init)
    reply = await answer(request)
    broken = make(changed_without_patch, memory)
    assert await broken.execute(reply) == []
    before = await memory.read(init.subject, journal=True)

    with pytest.raises(NonDeterminismError, match=r"step 0 was `call com\.test\.echo`"):
        await broken.unpark(init.subject)
    status = await broken.status(init.subject)
    assert status is not None and status.status == "parked"
    assert [s.subject for s in await broken.parked()] == [init.subject]
    after = await memory.read(init.subject, journal=True)
    assert before is not None and after is not None and after.journal == before.journal
    assert await broken.execute(reply) == []  # still parked: kept, not run

    # the kept events survive the failed unpark
    fixed = make(waits_for_approval, memory)
    assert await fixed.unpark(init.subject) == []  # the reply: now waits for the signal
    signal = fixed.signal_event(init.subject, approve, Approval("bob"), source="com.boss")
    (done,) = await fixed.execute(signal)
    assert done.data["status"] == "2:bob"


async def test_unpark_of_an_instance_that_is_not_parked_is_an_error() -> None:
    memory = InMemoryMemory()
    workflow = make(waits_for_approval, memory)
    init = start()
    await workflow.execute(init)
    with pytest.raises(ValueError, match="not parked"):
        await workflow.unpark(init.subject)
    with pytest.raises(ValueError, match="not parked"):
        await workflow.unpark(start("other").subject)


# ------------------------------------------------------------------------------------------
# continue_as_new


@attrs.define
class Tally:
    seen: list[int] = attrs.Factory(list)


TOTAL, EVERY = 10, 3


def counting_loop(fresh: list[list[int]]) -> Any:
    """Counts from order.amount_cents to TOTAL with one echo call per number, continuing
    as new every EVERY numbers."""

    async def wf(ctx, order):
        if not ctx.is_replaying:
            fresh.append(list(ctx.state.seen))
        i = order.amount_cents
        while i < TOTAL:
            reply = yield call(echo_contract, Number(i))
            ctx.state.seen.append(reply.data.n)
            i += 1
            if len(ctx.state.seen) == EVERY:
                yield continue_as_new(PlaceOrder(order.order_id, i))
        yield complete(OrderResult(f"counted to {i}"))

    return wf


@pytest.mark.parametrize("crash", ["none", "evict", "restart"])
async def test_continue_as_new_keeps_the_journal_bounded(tmp_path: Path, crash: str) -> None:
    fresh: list[list[int]] = []
    host = Host(lambda memory: make(counting_loop(fresh), memory, state=Tally), tmp_path / "wf.db")
    init = start()
    inflight = await host.workflow.execute(init)
    requests = list(inflight)
    outside: list[Event] = []
    steps: list[int] = []
    journals: list[int] = []
    generations: list[int] = []
    while inflight:
        event = inflight.pop(0)
        if event.to == SHOP:
            outside.append(event)
            continue
        await host.crash(crash)
        produced = await host.workflow.execute(await answer(event))
        requests.extend(e for e in produced if e.to != SHOP)
        inflight.extend(produced)
        status = await host.workflow.status(init.subject)
        stored = await host.memory.read(init.subject, journal=True)
        assert status is not None and stored is not None and stored.journal is not None
        steps.append(status.steps)
        journals.append(len(stored.journal))
        generations.append(status.generation)
    (done,) = outside
    assert done.type == orders.complete_type and done.data["status"] == "counted to 10"
    assert done.to == SHOP and done.subject == init.subject
    assert [r.data["n"] for r in requests] == list(range(TOTAL))
    assert len({r.id for r in requests}) == TOTAL  # ids derive from the generation too
    # A generation's journal holds its own steps and the previous generation's event ids
    # (without payloads, so their redeliveries are known): never more than two generations.
    assert max(steps) <= 2 * (EVERY + 1) and max(journals) <= 2 * (EVERY + 1)
    assert generations == sorted(generations) and generations[-1] == 3
    assert fresh == [[], [], [], []]  # every generation starts with fresh state
    status = await host.workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.state == Tally([10])
    await host.memory.close()


async def test_redelivering_the_event_that_continued_as_new_returns_the_same_events() -> None:
    memory = InMemoryMemory()
    workflow = make(counting_loop([]), memory, state=Tally)
    init = start(amount=5)  # 5, 6, 7 then continue as new at 8
    (request,) = await workflow.execute(init)
    (request,) = await workflow.execute(await answer(request))
    (request,) = await workflow.execute(await answer(request))
    trigger = await answer(request)
    produced = await workflow.execute(trigger)
    assert [e.data for e in produced] == [{"n": 8}]
    status = await workflow.status(init.subject)
    assert status is not None and status.generation == 1 and status.state == Tally([])
    before = await snapshot(memory)
    assert await workflow.execute(trigger) == produced
    workflow.evict()
    assert await workflow.execute(trigger) == produced
    assert await snapshot(memory) == before
    (done,) = await drive(workflow, produced)
    assert done.data["status"] == "counted to 10"


def _two_generations(wait_first: bool) -> Any:
    async def wf(ctx, order):
        if order.amount_cents == 0:
            yield call(echo_contract, Number(0))
            yield continue_as_new(PlaceOrder(order.order_id, 1))
        if not wait_first:
            yield call(echo_contract, Number(1))
        signal = yield wait_for(approve)
        yield complete(OrderResult(f"gen1:{signal.data.by}"))

    return wf


@pytest.mark.parametrize("wait_first", [True, False])
async def test_a_signal_kept_before_continue_as_new_survives_it(wait_first: bool) -> None:
    memory = InMemoryMemory()
    workflow = make(_two_generations(wait_first), memory)
    init = start()
    (request,) = await workflow.execute(init)
    signal = workflow.signal_event(init.subject, approve, Approval("ann"), source="com.boss")
    assert await workflow.execute(signal) == []  # kept: generation 0 waits on a call
    workflow.evict()
    produced = await workflow.execute(await answer(request))
    if not wait_first:
        (request,) = produced
        workflow.evict()
        produced = await workflow.execute(await answer(request))
    (done,) = produced
    assert done.data["status"] == "gen1:ann"
    # the kept signal, delivered again, is known: it is not kept a second time
    assert await workflow.execute(signal) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.generation == 1


async def test_continue_as_new_data_is_validated() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(0))
        yield continue_as_new({"order_id": 5})

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    (request,) = await workflow.execute(init)
    before = await snapshot(memory)
    with pytest.raises(ContractViolation, match="continue_as_new data"):
        await workflow.execute(await answer(request))
    assert await snapshot(memory) == before


async def test_continue_as_new_first_thing_in_a_generation_is_refused() -> None:
    async def wf(ctx, order):
        if order.amount_cents == 0:
            yield call(echo_contract, Number(0))
        yield continue_as_new(PlaceOrder(order.order_id, 1))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    (request,) = await workflow.execute(init)
    before = await snapshot(memory)
    with pytest.raises(ContractViolation, match="loop forever"):
        await workflow.execute(await answer(request))
    assert await snapshot(memory) == before


async def test_a_child_that_continues_as_new_completes_to_its_parent() -> None:
    class Count(msgspec.Struct):
        start: int

    class Counted(msgspec.Struct):
        to: int

    counter = OrchestratorContract(
        uri="#/orchestrators/counter",
        name="counter",
        versions={"1.0.0": {"init": Count, "complete": Counted}},
    )

    async def child(ctx, request: Count):
        reply = yield call(echo_contract, Number(request.start))
        if reply.data.n < 3:
            yield continue_as_new(Count(reply.data.n))
        yield complete(Counted(reply.data.n))

    async def parent(ctx, order):
        reply = yield call(counter, Count(0))
        yield complete(OrderResult(f"child counted to {reply.data.to}"))

    memory = InMemoryMemory()
    broker = LocalBroker(
        [
            *HANDLERS.values(),
            Resumable(counter, versions={"1.0.0": child}, services=[echo_contract], memory=memory),
            Resumable(orders, versions={"1.0.0": parent}, services=[counter], memory=memory),
        ]
    )
    done = await broker.resolve(start())
    assert broker.errors == []
    assert done is not None and done.data["status"] == "child counted to 3"


async def test_a_signal_consumed_before_continue_as_new_is_not_kept_again() -> None:
    async def wf(ctx, order):
        if order.amount_cents == 0:
            yield wait_for(approve)
            yield call(echo_contract, Number(0))
            yield continue_as_new(PlaceOrder(order.order_id, 1))
        yield call(echo_contract, Number(1))
        signal = yield wait_for(approve)
        yield complete(OrderResult(f"gen1:{signal.data.by}"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    await workflow.execute(init)
    first = workflow.signal_event(init.subject, approve, Approval("first"), source="com.boss")
    (request,) = await workflow.execute(first)
    (request,) = await workflow.execute(await answer(request))  # generation 1 starts
    assert await workflow.execute(first) == []  # redelivered: must have no effect
    assert await workflow.execute(await answer(request)) == []  # so generation 1 still waits
    second = workflow.signal_event(init.subject, approve, Approval("second"), source="com.boss")
    (done,) = await workflow.execute(second)
    assert done.data["status"] == "gen1:second"


async def test_a_reply_consumed_before_continue_as_new_is_answered_quietly() -> None:
    memory = InMemoryMemory()
    workflow = make(counting_loop([]), memory, state=Tally)
    init = start(amount=6)  # 6, 7, 8 then continue as new at 9
    (request,) = await workflow.execute(init)
    early = await answer(request)
    (request,) = await workflow.execute(early)
    (request,) = await workflow.execute(await answer(request))
    (request,) = await workflow.execute(await answer(request))  # generation 1
    before = await snapshot(memory)
    await workflow.execute(early)  # redelivered: no violation, no effect
    assert await snapshot(memory) == before


# ------------------------------------------------------------------------------------------
# status and history


def reserve(n: int) -> int:
    return n * 2


async def test_status_history_lists_every_step() -> None:
    async def wf(ctx, order):
        reply = yield call(echo_contract, Number(1))
        doubled = yield step(reserve, reply.data.n)
        signal = yield wait_for(approve)
        yield sleep(5)
        yield complete(OrderResult(f"{doubled}:{signal.data.by}"))

    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(wf, memory, clock=clock)
    init = start()
    (request,) = await workflow.execute(init)
    signal = workflow.signal_event(init.subject, approve, Approval("ann"), source="com.boss")
    assert await workflow.execute(signal) == []  # kept
    reply = await answer(request)
    assert await workflow.execute(reply) == []  # step, kept signal, then sleeps
    clock.advance(5)
    (done,) = await workflow.wake(init.subject)
    assert done.data["status"] == "4:ann"

    status = await workflow.status(init.subject, history=True)
    assert status is not None and status.history is not None
    assert status.steps == len(status.history) == 4
    rows = [(h.seq, h.event_type, h.woke, h.inline, h.yielded, h.produced) for h in status.history]
    assert rows == [
        (0, orders.type, "start", [], "call com.test.echo", ["com.test.echo"]),
        (1, "com.test.approve", None, [], None, []),
        (
            2,
            "evt.test.echo.done",
            "call",
            ["step reserve", "wait_for com.test.approve"],
            "sleep",
            [],
        ),
        (3, TIMER_TYPE, "sleep", [], "complete", [orders.complete_type]),
    ]
    assert [h.event_id for h in status.history[:3]] == [init.id, signal.id, reply.id]
    assert status.history[1].source == "com.boss"
    plain = await workflow.status(init.subject)
    assert plain is not None and plain.history is None
