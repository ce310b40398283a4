"""Hypothesis properties of the driver: arrival order, replay, duplicates, changed code."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable import (
    Contract,
    Emit,
    Event,
    EventHandler,
    Resumable,
    call,
    complete,
    gather,
)
from resumable.memory import InMemoryMemory, Memory, SQLiteMemory

from harness import Network, fixed_clock, order_workflow
from orders import HANDLERS, SERVICES, OrderResult, PlaceOrder, orders

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Number(msgspec.Struct):
    n: int


echo_contract = Contract(
    uri="#/contracts/echo",
    type="com.test.echo",
    versions={"1.0.0": {"accepts": Number, "emits": {"evt.test.echo.done": Number}}},
)


async def plus_one(event: Event) -> Emit:
    if event.data.n < 0:
        raise ValueError(f"negative {event.data.n}")
    return Emit("evt.test.echo.done", Number(event.data.n + 1))


echo = EventHandler(echo_contract, versions={"1.0.0": plus_one})


def fan_out(width: int):
    async def wf(ctx, order: PlaceOrder):
        replies = yield gather(*(call(echo_contract, Number(i * 10)) for i in range(width)))
        yield complete(OrderResult(",".join(str(r.data.n) for r in replies)))

    return wf


@PROFILE
@given(width=st.integers(1, 8), data=st.data())
def test_any_arrival_order_of_gather_replies_gives_the_same_result(width, data) -> None:
    async def run() -> None:
        workflow = Resumable(
            orders, versions={"1.0.0": fan_out(width)}, services=[echo_contract], clock=fixed_clock
        )
        net = Network([echo, workflow])
        net.add([orders.init_event(PlaceOrder("o", 1), source="com.shop.web")])
        await net.deliver()  # init -> width requests
        for _ in range(width):  # every service answers
            await net.deliver(0)
        replies = list(net.inflight)
        order = data.draw(st.permutations(range(width)))
        net.inflight = [replies[i] for i in order]
        await net.run()
        (done,) = net.outside
        assert done.data["status"] == ",".join(str(i * 10 + 1) for i in range(width))

    anyio.run(run)


async def _reference_run(memory: Memory, init: Event) -> tuple[list[Event], dict]:
    workflow = order_workflow(memory)
    net = Network([*HANDLERS, workflow])
    net.add([init])
    await net.run()
    status = await workflow.status(init.subject)
    assert status is not None
    return net.outside, msgspec.to_builtins(status.state)


orders_strategy = st.builds(
    PlaceOrder,
    order_id=st.sampled_from(["o-1", "o-2"]),
    amount_cents=st.sampled_from([10, 4200, 500_000]),
    sku=st.sampled_from(["sku-1", "out-of-stock"]),
)


def _produced(net: Network) -> list[Event]:
    return [e for e in net.delivered if e.source == orders.type] + net.outside


@PROFILE
@given(order=orders_strategy, data=st.data())
def test_dropping_the_cache_before_any_step_gives_identical_events_and_state(order, data):
    async def run() -> None:
        init = orders.init_event(order, source="com.shop.web", execution_id="fixed")
        ref_memory = InMemoryMemory()
        ref_net = Network([*HANDLERS, order_workflow(ref_memory)])
        ref_net.add([init])
        await ref_net.run()
        memory = InMemoryMemory()
        workflow = order_workflow(memory)
        net = Network([*HANDLERS, workflow])
        net.add([init])
        while net.inflight:
            if data.draw(st.booleans(), label="evict before this step"):
                workflow.evict()
            await net.deliver(0)
        assert [e for e in _produced(net) if e.source == orders.type] == [
            e for e in _produced(ref_net) if e.source == orders.type
        ]
        ref = await order_workflow(ref_memory).status(init.subject)
        got = await workflow.status(init.subject)
        assert ref is not None and got is not None
        assert (got.state, got.status, got.steps) == (ref.state, ref.status, ref.steps)

    anyio.run(run)


@PROFILE
@given(order=orders_strategy, data=st.data())
def test_delivering_any_event_twice_has_no_extra_effect(order, data) -> None:
    async def run() -> None:
        init = orders.init_event(order, source="com.shop.web", execution_id="fixed")
        ref_memory = InMemoryMemory()
        ref_outside, ref_state = await _reference_run(ref_memory, init)
        memory = InMemoryMemory()
        workflow = order_workflow(memory)
        net = Network([*HANDLERS, workflow])
        net.add([init])
        while net.inflight:
            index = data.draw(st.integers(0, len(net.inflight) - 1), label="deliver")
            event = net.inflight[index]
            await net.deliver(index)
            if data.draw(st.booleans(), label="duplicate it"):
                if data.draw(st.booleans(), label="evict first"):
                    workflow.evict()
                await net.redeliver(event)
        distinct = {e.id: e for e in net.outside}
        assert list(distinct.values()) == list({e.id: e for e in ref_outside}.values())
        status = await workflow.status(init.subject)
        assert status is not None
        assert msgspec.to_builtins(status.state) == ref_state
        ref_keys = await ref_memory.read(init.subject, journal=True)
        got = await memory.read(init.subject, journal=True)
        assert ref_keys is not None and got is not None
        assert got.journal is not None and ref_keys.journal is not None
        assert len(got.journal) == len(ref_keys.journal)

    anyio.run(run)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=orders_strategy, data=st.data())
def test_replay_on_sqlite_from_a_new_process_view(order, data) -> None:
    """The same property on a real SQLite file, with a new memory object per step."""

    async def run(path: Path) -> None:
        init = orders.init_event(order, source="com.shop.web", execution_id="fixed")
        ref_outside, ref_state = await _reference_run(InMemoryMemory(), init)
        net = Network(list(HANDLERS))
        net.inflight.append(init)
        outside: list[Event] = []
        while net.inflight:
            event = net.inflight.pop(0)
            if event.to == orders.type:
                memory = SQLiteMemory(path)
                outputs = await order_workflow(memory, cache_size=0).execute(event)
                if data.draw(st.booleans(), label="redeliver"):
                    assert await order_workflow(memory).execute(event) == outputs
                await memory.close()
            else:
                outputs = await net.handlers[event.to].execute(event)
            for out in outputs:
                (outside if out.to == "com.shop.web" else net.inflight).append(out)
        assert outside == ref_outside
        memory = SQLiteMemory(path)
        status = await order_workflow(memory).status(init.subject)
        await memory.close()
        assert status is not None and msgspec.to_builtins(status.state) == ref_state

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp) / "wf.db")


# Two versions of one workflow's code: the second takes a different path at a chosen step.


def _workflow_with_divergence(diverge_at: int | None, length: int):
    async def wf(ctx, order: PlaceOrder):
        for i in range(length):
            target = echo_contract if i != diverge_at else SERVICES[2]
            if target is echo_contract:
                yield call(echo_contract, Number(i))
            else:
                yield call(target, {"order_id": order.order_id, "sku": "s"})
        yield complete(OrderResult("done"))

    return wf


@PROFILE
@given(length=st.integers(1, 6), data=st.data())
def test_changing_the_code_between_steps_parks_at_the_changed_step(length, data) -> None:
    async def run() -> None:
        steps_taken = data.draw(st.integers(1, length), label="steps before redeploy")
        diverge_at = data.draw(st.integers(0, steps_taken - 1), label="changed step")
        memory = InMemoryMemory()
        original = Resumable(
            orders,
            versions={"1.0.0": _workflow_with_divergence(None, length)},
            services=[echo_contract, *SERVICES],
            memory=memory,
        )
        net = Network([echo, original])
        net.add([orders.init_event(PlaceOrder("o", 1), source="com.shop.web")])
        for _ in range(steps_taken):
            await net.deliver(0)  # workflow step
            await net.deliver(0)  # service reply
        changed = Resumable(
            orders,
            versions={"1.0.0": _workflow_with_divergence(diverge_at, length)},
            services=[echo_contract, *SERVICES],
            memory=memory,
        )
        reply = net.inflight.pop(0)
        before = await memory.read(reply.subject, journal=True)
        assert await changed.execute(reply) == []
        status = await changed.status(reply.subject)
        assert status is not None and status.status == "parked" and status.parked is not None
        assert status.parked.step == diverge_at
        assert status.parked.recorded == "call com.test.echo"
        assert status.parked.replayed == "call com.inventory.reserve"
        after = await memory.read(reply.subject, journal=True)
        assert before is not None and after is not None and after.journal == before.journal

    anyio.run(run)


# The same properties through the test kit (resumable.testing): any order, duplicates,
# crashes before the write and before the publish, evictions and handovers, at once.

from resumable.testing import Scenario, Start, check, schedules  # noqa: E402


@PROFILE
@given(order=orders_strategy, schedule=schedules(steps=12))
def test_any_schedule_ends_as_the_undisturbed_run(order, schedule) -> None:
    scenario = Scenario(
        [order_workflow(InMemoryMemory()), *HANDLERS],
        start=[Start(orders, order, "o"), Start(orders, PlaceOrder("p", 10), "p")],
    )
    outcome = check(scenario, schedule)
    assert outcome.instances["p"]["result"] == {"status": "shipped", "payment_id": "pay-p"}
