"""LocalBroker hosting handlers runs them with the Worker's delivery logic: lease contention
is retried, failures are dead-lettered with their reason, concurrent ``resolve`` calls work,
a virtual clock's timers fire, and only a broker that hosts handlers keeps a history."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from resumable import (
    Contract,
    Emit,
    Event,
    EventHandler,
    Resumable,
    Retry,
    VirtualClock,
    call,
    complete,
)
from resumable.brokers import LocalBroker
from resumable.memory import InMemoryMemory

from harness import SHOP, Number, order_workflow
from orders import HANDLERS, OrderResult, OrderState, PlaceOrder, orders

pytestmark = pytest.mark.anyio


async def test_concurrent_resolves_from_one_initiator_each_get_their_reply() -> None:
    broker = LocalBroker([*HANDLERS, order_workflow(InMemoryMemory())])
    results: dict[int, Any] = {}

    async def one(n: int) -> None:
        done = await broker.resolve(orders.init_event(PlaceOrder(f"o-{n}", 10), source=SHOP))
        results[n] = None if done is None else done.data["payment_id"]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for n in range(200):
                group.start_soon(one, n)
    assert results == {n: f"pay-o-{n}" for n in range(200)}
    assert broker.errors == []
    assert SHOP not in broker.topics  # the shared collector is gone once nobody waits


async def test_an_event_meeting_a_dead_processs_lease_is_retried_not_dropped() -> None:
    memory = InMemoryMemory()
    broker = LocalBroker([*HANDLERS, order_workflow(memory)])
    init = orders.init_event(PlaceOrder("o-1", 10), source=SHOP, execution_id="o-1")
    assert await memory.lock(init.subject, "a-process-that-died", 0.3)
    with anyio.fail_after(10):
        done = await broker.resolve(init)
    assert done is not None and done.data["status"] == "shipped"
    assert broker.errors == []
    assert await broker.dead_letters(orders.type) == []


async def test_a_failing_handler_is_dead_lettered_with_its_reason() -> None:
    class Failing:
        source = "com.fail.fail"

        async def execute(self, event: Event) -> list[Event]:
            raise RuntimeError("handler broke")

    broker = LocalBroker([Failing()])
    event = Event(source="com.test.src", type="com.fail.fail", subject="s", data={})
    await broker.publish(event)
    (dead,) = await broker.dead_letters("com.fail.fail")
    assert dead.event == event
    assert dead.attempts == 3  # retried with backoff first
    assert "RuntimeError: handler broke" in dead.reason
    assert [str(e) for e, _ in broker.errors] == ["handler broke"]


async def test_a_transport_keeps_no_history_and_a_host_records_for_tests() -> None:
    transport = LocalBroker()
    event = Event(source="com.test.src", type="com.test.thing", subject="s", data={})
    await transport.publish(event)
    assert transport.events == [] and transport.record is False
    assert transport.unsettled == 1
    (delivery,) = await transport.receive("com.test.thing", timeout=0)
    await delivery.ack()
    assert transport.unsettled == 0
    host = LocalBroker([*HANDLERS])
    assert host.record is True
    quiet = LocalBroker([*HANDLERS], record=False)
    await quiet.publish(event)
    assert quiet.events == []


async def test_the_duplicate_memory_is_bounded_by_count() -> None:
    broker = LocalBroker(duplicate_limit=100)
    for n in range(1000):
        await broker.publish(
            Event(source="com.test.src", type="com.test.thing", subject="s", data={"n": n})
        )
    assert len(broker._seen) <= 100
    with pytest.raises(ValueError, match="duplicate_limit must be 1 or more"):
        LocalBroker(duplicate_limit=0)


flaky = Contract(
    uri="#/contracts/flaky",
    type="com.test.flaky",
    versions={"1.0.0": {"accepts": Number, "emits": {"evt.test.flaky.done": Number}}},
)


def flaky_handler(failures: int) -> EventHandler:
    calls = {"n": 0}

    async def answer(event: Event) -> Emit:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError(f"down ({calls['n']})")
        return Emit("evt.test.flaky.done", Number(calls["n"]))

    return EventHandler(flaky, versions={"1.0.0": answer})


async def test_a_retry_backoff_on_a_virtual_clock_fires_and_terminates() -> None:
    """Retry(initial=0.05, factor=2) after three failures: due times such as …0.3500001
    against a clock read to the millisecond used to spin for ever."""

    async def wf(ctx: Any, order: PlaceOrder) -> Any:
        reply = yield call(flaky, Number(1), retry=Retry(attempts=4, initial=0.05, factor=2))
        yield complete(OrderResult(f"after {reply.data.n}"))

    clock = VirtualClock()
    workflow = Resumable(
        orders, versions={"1.0.0": wf}, services=[flaky], state=OrderState, clock=clock
    )
    broker = LocalBroker([flaky_handler(3), workflow])
    start = clock.time()
    with anyio.fail_after(10):
        done = await broker.resolve(orders.init_event(PlaceOrder("o", 1), source=SHOP))
    assert done is not None and done.data["status"] == "after 4"
    assert round(clock.time() - start, 3) == 0.35  # due times are kept to the millisecond
