"""The compensation stack: call(x, compensate=call(undo)) run in reverse on failure."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable import (
    Contract,
    ContractViolation,
    Emit,
    Event,
    EventHandler,
    Resumable,
    Retry,
    ServiceError,
    VirtualClock,
    call,
    complete,
    gather,
)
from resumable.memory import InMemoryMemory, Memory
from resumable.testing import Scenario, Start, check, schedules

from harness import SHOP, Network, Number, fixed_clock, service, snapshot, sqlite_stores
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio

ERROR_TYPE = "sys.arvo.orc.order.fulfil.error"


book, unbook, charge, refund, ship = (
    service(name) for name in ("book", "unbook", "charge", "refund", "ship")
)
ALL = [book, unbook, charge, refund, ship]


def handler(contract: Contract, fails: Callable[[int], bool] = lambda n: n < 0) -> EventHandler:
    """Answers with the request's number; a system error when ``fails(n)``."""
    (done_type,) = contract.latest.emits

    async def run(event: Event) -> Emit:
        if fails(event.data.n):
            raise ValueError(f"{contract.type} failed for {event.data.n}")
        return Emit(done_type, Number(event.data.n))

    return EventHandler(contract, versions={"1.0.0": run})


HANDLERS = {c.type: handler(c) for c in ALL}


async def answer(request: Event, handlers: dict[str, EventHandler] = HANDLERS) -> Event:
    (reply,) = await handlers[request.type].execute(request)
    return reply


def make(fn: Any, memory: Memory | None = None, **options: Any) -> Resumable[Any]:
    options.setdefault("clock", fixed_clock)
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=ALL,
        memory=memory if memory is not None else InMemoryMemory(),
        **options,
    )


def start(amount: int = 1) -> Event:
    return orders.init_event(PlaceOrder("o", amount), source=SHOP)


async def trip(ctx, order):
    """Book, charge (both compensable), then ship: shipping fails for a negative amount."""
    yield call(book, Number(1), compensate=call(unbook, Number(1)))
    yield call(charge, Number(2), compensate=call(refund, Number(2)))
    yield call(ship, Number(order.amount_cents))
    yield complete(OrderResult("shipped"))


async def compensations(workflow: Resumable[Any], subject: str) -> list[str]:
    status = await workflow.status(subject)
    assert status is not None
    return status.compensations


@pytest.mark.parametrize("evict", [False, True])
async def test_failure_runs_the_compensations_in_reverse_one_at_a_time(evict: bool) -> None:
    workflow = make(trip)
    init = start(amount=-1)

    async def step(event: Event) -> list[Event]:
        if evict:
            workflow.evict()
        return await workflow.execute(event)

    (booking,) = await step(init)
    assert await compensations(workflow, init.subject) == []
    (charging,) = await step(await answer(booking))
    assert await compensations(workflow, init.subject) == [unbook.uri]
    (shipping,) = await step(await answer(charging))
    assert await compensations(workflow, init.subject) == [refund.uri, unbook.uri]
    failure = await answer(shipping)
    assert failure.type == "sys.com.test.ship.error"
    (refunding,) = await step(failure)  # only the last compensation is sent
    assert refunding.type == "com.test.refund" and refunding.data == {"n": 2}
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "active"
    assert status.waits_for == "compensate com.test.refund"
    assert status.compensations == [unbook.uri]
    assert await workflow.cancel(init.subject, "too late") == []  # ignored while unwinding
    (unbooking,) = await step(await answer(refunding))  # sent after the refund's reply
    assert unbooking.type == "com.test.unbook" and unbooking.data == {"n": 1}
    assert await compensations(workflow, init.subject) == []
    (error,) = await step(await answer(unbooking))
    assert error.type == ERROR_TYPE and error.to == SHOP and error.parentid == init.id
    assert error.data["errorName"] == "ValueError"  # the service's own error name
    assert "com.test.ship failed for -1" in error.data["errorMessage"]
    assert "compensation(s) failed" not in error.data["errorMessage"]
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"
    assert status.error is not None and status.error.errorName == "ValueError"
    assert status.compensations == [] and status.waits_for is None


async def test_complete_discards_the_stack() -> None:
    workflow = make(trip)
    net = Network([*HANDLERS.values(), workflow])
    init = start(amount=5)
    net.add([init])
    await net.run()
    assert [e.type for e in net.delivered] == [
        orders.type,
        "com.test.book",
        "evt.test.book.done",
        "com.test.charge",
        "evt.test.charge.done",
        "com.test.ship",
        "evt.test.ship.done",
    ]
    assert [e.data["status"] for e in net.outside] == ["shipped"]
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.compensations == []


async def test_a_call_that_failed_pushes_nothing() -> None:
    async def wf(ctx, order):
        yield call(book, Number(1), compensate=call(unbook, Number(1)))
        yield call(charge, Number(-2), compensate=call(refund, Number(-2)))
        yield complete(OrderResult("never"))

    workflow = make(wf)
    net = Network([*HANDLERS.values(), workflow])
    init = start()
    net.add([init])
    await net.run()
    requests = [e for e in net.delivered if e.source == orders.type]
    assert [(e.type, e.data) for e in requests] == [
        ("com.test.book", {"n": 1}),
        ("com.test.charge", {"n": -2}),
        ("com.test.unbook", {"n": 1}),
    ]
    (error,) = net.outside
    assert error.type == ERROR_TYPE
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"


async def test_a_caught_service_error_does_not_run_the_stack() -> None:
    async def wf(ctx, order):
        yield call(book, Number(1), compensate=call(unbook, Number(1)))
        with contextlib.suppress(ServiceError):
            yield call(ship, Number(-1))
        yield call(ship, Number(3))
        yield complete(OrderResult("handled"))

    workflow = make(wf)
    init = start()
    (booking,) = await workflow.execute(init)
    (shipping,) = await workflow.execute(await answer(booking))
    (again,) = await workflow.execute(await answer(shipping))
    assert again.type == "com.test.ship" and again.data == {"n": 3}
    assert await compensations(workflow, init.subject) == [unbook.uri]  # still on the stack
    (done,) = await workflow.execute(await answer(again))
    assert done.data["status"] == "handled"
    assert await compensations(workflow, init.subject) == []


@pytest.mark.parametrize("evict", [False, True])
async def test_cancellation_runs_the_stack_and_ends_cancelled(evict: bool) -> None:
    memory = InMemoryMemory()
    workflow = make(trip, memory)
    init = start(amount=5)
    (booking,) = await workflow.execute(init)
    (charging,) = await workflow.execute(await answer(booking))
    (shipping,) = await workflow.execute(await answer(charging))
    if evict:
        workflow.evict()
    (refunding,) = await workflow.cancel(init.subject, "changed my mind")
    assert refunding.type == "com.test.refund"
    # the cancelled call's late reply, and another cancel, change nothing
    before = await snapshot(memory)
    assert await workflow.execute(await answer(shipping)) == []
    assert await snapshot(memory) == before
    assert await workflow.cancel(init.subject, "again") == []
    if evict:
        workflow.evict()
    (unbooking,) = await workflow.execute(await answer(refunding))
    assert unbooking.type == "com.test.unbook"
    (error,) = await workflow.execute(await answer(unbooking))
    assert error.type == ERROR_TYPE
    assert error.data["errorName"] == "Cancelled"
    assert error.data["errorMessage"] == "changed my mind"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "cancelled"


async def test_a_failed_compensation_is_reported_and_the_rest_still_run() -> None:
    async def wf(ctx, order):
        yield call(book, Number(1), compensate=call(unbook, Number(1)))
        yield call(charge, Number(2), compensate=call(refund, Number(-2)))  # refund fails
        yield call(ship, Number(-1))
        yield complete(OrderResult("never"))

    workflow = make(wf)
    net = Network([*HANDLERS.values(), workflow])
    init = start()
    net.add([init])
    await net.run()
    requests = [e.type for e in net.delivered if e.source == orders.type]
    assert requests[-2:] == ["com.test.refund", "com.test.unbook"]
    (error,) = net.outside
    message = error.data["errorMessage"]
    assert error.data["errorName"] == "ValueError"  # the service's own error name
    assert "com.test.ship failed for -1" in message
    assert "(and 1 compensation(s) failed: ValueError: com.test.refund failed for -2)" in message
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"
    assert status.error is not None and status.error.errorMessage == message


def _flaky(failures: int) -> tuple[EventHandler, list[str]]:
    """A refund service failing the first ``failures`` distinct requests (by event id),
    and answering a repeated request as it did the first time; records each request id."""
    seen: list[str] = []

    async def run(event: Event) -> Emit:
        seen.append(event.id)
        if list(dict.fromkeys(seen)).index(event.id) < failures:
            raise ValueError(f"refund {event.data.n} failed")
        return Emit("evt.test.refund.done", Number(event.data.n))

    return EventHandler(refund, versions={"1.0.0": run}), seen


@pytest.mark.parametrize("evict", [False, True])
async def test_a_compensation_with_retry_is_retried_on_its_backoff(evict: bool) -> None:
    clock = VirtualClock()

    async def wf(ctx, order):
        yield call(book, Number(1), compensate=call(unbook, Number(1)))
        yield call(
            charge,
            Number(2),
            compensate=call(refund, Number(2), retry=Retry(attempts=3, initial=5, factor=2)),
        )
        yield call(ship, Number(-1))
        yield complete(OrderResult("never"))

    flaky, seen = _flaky(2)
    handlers = {**HANDLERS, refund.type: flaky}
    workflow = make(wf, clock=clock)
    init = start()
    (booking,) = await workflow.execute(init)
    (charging,) = await workflow.execute(await answer(booking))
    (shipping,) = await workflow.execute(await answer(charging))
    (first,) = await workflow.execute(await answer(shipping))
    assert first.type == "com.test.refund"
    assert await workflow.execute(await answer(first, handlers)) == []  # backoff 5s
    status = await workflow.status(init.subject)
    assert status is not None and status.due is not None
    assert status.due.timestamp() == clock.time() + 5
    clock.advance(4)
    assert await workflow.wake(init.subject) == []
    clock.advance(1)
    if evict:
        workflow.evict()
    (second,) = await workflow.wake(init.subject)
    assert second.type == "com.test.refund" and second.id != first.id
    assert second.data == {"n": 2}
    assert await workflow.execute(await answer(first, handlers)) == []  # the old id: ignored
    assert await workflow.execute(await answer(second, handlers)) == []  # backoff 10s
    clock.advance(10)
    (third,) = await workflow.wake(init.subject)
    assert third.id not in (first.id, second.id)
    (unbooking,) = await workflow.execute(await answer(third, handlers))
    assert unbooking.type == "com.test.unbook"
    (error,) = await workflow.execute(await answer(unbooking))
    assert "compensation(s) failed" not in error.data["errorMessage"]
    assert seen == [first.id, first.id, second.id, third.id]  # the old id was repeated


async def test_a_compensation_whose_retries_run_out_is_reported() -> None:
    clock = VirtualClock()

    async def wf(ctx, order):
        yield call(book, Number(1), compensate=call(unbook, Number(1)))
        yield call(charge, Number(2), compensate=call(refund, Number(2), retry=Retry(attempts=2)))
        yield call(ship, Number(-1))
        yield complete(OrderResult("never"))

    flaky, _ = _flaky(10)
    handlers = {**HANDLERS, refund.type: flaky}
    workflow = make(wf, clock=clock)
    init = start()
    (booking,) = await workflow.execute(init)
    (charging,) = await workflow.execute(await answer(booking))
    (shipping,) = await workflow.execute(await answer(charging))
    (first,) = await workflow.execute(await answer(shipping))
    assert await workflow.execute(await answer(first, handlers)) == []
    clock.advance(1)
    (second,) = await workflow.wake(init.subject)
    (unbooking,) = await workflow.execute(await answer(second, handlers))
    assert unbooking.type == "com.test.unbook"
    (error,) = await workflow.execute(await answer(unbooking))
    assert "(and 1 compensation(s) failed" in error.data["errorMessage"]


async def test_gather_pushes_the_calls_that_succeeded_in_call_order() -> None:
    async def wf(ctx, order):
        yield gather(
            call(book, Number(1), compensate=call(unbook, Number(1))),
            call(charge, Number(order.amount_cents), compensate=call(refund, Number(2))),
        )
        yield call(ship, Number(-1))
        yield complete(OrderResult("never"))

    for amount, undone in ((5, ["com.test.refund", "com.test.unbook"]), (-1, ["com.test.unbook"])):
        workflow = make(wf)
        net = Network([*HANDLERS.values(), workflow])
        net.add([start(amount)])
        await net.run()
        sent = [e.type for e in net.delivered if e.source == orders.type]
        assert [t for t in sent if t in ("com.test.refund", "com.test.unbook")] == undone
        (error,) = net.outside
        assert error.type == ERROR_TYPE


async def test_the_workflow_timeout_runs_the_stack() -> None:
    clock = VirtualClock()
    workflow = make(trip, clock=clock, timeout=100)
    init = start(amount=5)
    (booking,) = await workflow.execute(init)
    (charging,) = await workflow.execute(await answer(booking))
    await workflow.execute(await answer(charging))  # now waits on shipping
    clock.advance(100)
    (refunding,) = await workflow.wake(init.subject)
    assert refunding.type == "com.test.refund"
    (unbooking,) = await workflow.execute(await answer(refunding))
    (error,) = await workflow.execute(await answer(unbooking))
    assert error.data["errorName"] == "TimeoutError"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"


async def test_a_bad_compensation_payload_is_a_contract_violation() -> None:
    async def wf(ctx, order):
        yield call(book, Number(1), compensate=call(unbook, {"n": "one"}))
        yield complete(OrderResult("never"))

    memory = InMemoryMemory()
    with pytest.raises(ContractViolation, match="compensation payload"):
        await make(wf, memory).execute(start())
    assert await memory.keys() == []


def test_compensate_takes_a_plain_call() -> None:
    with pytest.raises(TypeError, match="compensate"):
        call(book, Number(1), compensate=complete(OrderResult("x")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot itself"):
        call(book, Number(1), compensate=call(unbook, Number(1), timeout=5))
    nested = call(unbook, Number(1), compensate=call(book, Number(1)))
    with pytest.raises(ValueError, match="cannot itself"):
        call(book, Number(1), compensate=nested)


# ------------------------------------------------------------------------------------------
# property: crashes anywhere never repeat or lose a compensation

do_step = service("step")
undo_step = service("undostep")
PROPERTY_HANDLERS = {c.type: handler(c) for c in (do_step, undo_step)}


def chain(n: int, fail_at: int) -> Any:
    async def wf(ctx, order):
        for i in range(n):
            target = -1 if i == fail_at else i
            yield call(do_step, Number(target), compensate=call(undo_step, Number(i)))
        yield complete(OrderResult(f"did {n}"))

    return wf


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 5), data=st.data())
def test_crashes_anywhere_send_each_compensation_once_in_reverse(n: int, data) -> None:
    """On a SQLite file, any schedule (crashes before the write or the publish, evictions,
    handovers, duplicates, reordering) sends each compensation once, last first."""
    fail_at = data.draw(st.integers(0, n), label="failing step (n: none fails)")
    schedule = data.draw(schedules(steps=4 * n + 4), label="schedule")
    workflow = Resumable(
        orders, versions={"1.0.0": chain(n, fail_at)}, services=[do_step, undo_step]
    )
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Scenario(
            [workflow, *PROPERTY_HANDLERS.values()],
            start=[Start(orders, PlaceOrder("o", 1), "o")],
            memory=sqlite_stores(Path(tmp)),
        )
        outcome = check(scenario, schedule)
    undo_requests = [e for e in outcome.sent.values() if e["type"] == undo_step.type]
    completed = fail_at if fail_at < n else 0  # none is undone when all succeed
    assert [e["data"]["n"] for e in undo_requests] == list(reversed(range(completed)))
    assert len(outcome.requests.get(undo_step.type, [])) == completed  # each asked for once
    (last,) = outcome.completions.values()
    instance = outcome.instances["o"]
    if fail_at < n:
        assert last["type"] == ERROR_TYPE and instance["status"] == "failed"
    else:
        assert last["type"] == orders.complete_type and instance["status"] == "done"
    assert instance["compensations"] == []
