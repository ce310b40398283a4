"""Wait semantics at the edges: what succeeded is compensated whatever ends a gather,
deadlines hold on every event, children go when their parent stops waiting, and the
report says what happened."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from test_compensation import ALL, answer, book, charge, refund, unbook

from resumable import (
    Cancelled,
    OrchestratorContract,
    Resumable,
    Retry,
    VirtualClock,
    call,
    complete,
    continue_as_new,
    gather,
    race,
    sleep,
    wait_for,
)
from resumable.events import Event
from resumable.memory import InMemoryMemory, Memory
from resumable.record import decode_header, encode_header

from harness import SHOP, Number
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio

ERROR_TYPE = orders.system_error_type
PING = "com.test.ping"


def make(fn: Any, clock: VirtualClock, memory: Memory | None = None, **options: Any) -> Any:
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=options.pop("services", ALL),
        signals=[PING],
        memory=memory if memory is not None else InMemoryMemory(),
        clock=clock,
        **options,
    )


def start(clock: VirtualClock, amount: int = 1) -> Event:
    return orders.init_event(PlaceOrder("o", amount), source=SHOP, time=clock())


async def timer(workflow: Resumable[Any], subject: str) -> list[Event]:
    event = await workflow.timer_event(subject)
    assert event is not None, "nothing is due"
    return await workflow.execute(event)


# ----------------------------------------------------------------------------------
# a gather that partly succeeded


async def book_and_charge(ctx, order):
    yield gather(
        call(book, Number(1), compensate=call(unbook, Number(1))),
        call(charge, Number(2), compensate=call(refund, Number(2))),
        timeout=10,
    )
    yield complete(OrderResult("booked and charged"))


@pytest.mark.parametrize("ends_by", ["gather timeout", "cancel", "workflow timeout"])
@pytest.mark.parametrize("evict", [False, True])
async def test_the_calls_of_a_gather_that_succeeded_are_compensated(
    ends_by: str, evict: bool
) -> None:
    clock = VirtualClock()
    options = {"timeout": 5} if ends_by == "workflow timeout" else {}
    workflow = make(book_and_charge, clock, **options)
    init = start(clock)
    booking, _charging = await workflow.execute(init)
    assert await workflow.execute(await answer(booking)) == []  # stored: one of two in
    if evict:
        workflow.evict()
    if ends_by == "cancel":
        (undo,) = await workflow.cancel(init.subject, "no longer needed")
    else:
        clock.advance(11)
        (undo,) = await timer(workflow, init.subject)
    assert undo.type == unbook.type and undo.data == {"n": 1}  # the charge never answered
    (report,) = await workflow.execute(await answer(undo))
    assert report.type == ERROR_TYPE
    expected = "Cancelled" if ends_by == "cancel" else "TimeoutError"
    assert report.data["errorName"] == expected


# ----------------------------------------------------------------------------------
# deadlines are checked on every event, not only when a timer event comes


async def call_with_timeout(ctx, order):
    try:
        reply = yield call(book, Number(1), timeout=5)
    except TimeoutError:
        yield complete(OrderResult("timed out"))
        return
    yield complete(OrderResult(f"booked {reply.data.n}"))


async def test_a_reply_after_its_calls_deadline_is_a_timeout() -> None:
    clock = VirtualClock()
    workflow = make(call_with_timeout, clock)
    init = start(clock)
    (booking,) = await workflow.execute(init)
    clock.advance(6)  # past the deadline; no timer event was processed yet
    (done,) = await workflow.execute(await answer(booking))
    assert done.data == {"status": "timed out", "payment_id": None}


async def test_a_reply_before_its_deadline_is_taken() -> None:
    clock = VirtualClock()
    workflow = make(call_with_timeout, clock)
    init = start(clock)
    (booking,) = await workflow.execute(init)
    clock.advance(4)
    (done,) = await workflow.execute(await answer(booking))
    assert done.data == {"status": "booked 1", "payment_id": None}


async def test_a_reply_after_the_workflows_deadline_ends_it() -> None:
    async def one_call(ctx, order):
        yield call(book, Number(1))
        yield complete(OrderResult("booked"))

    clock = VirtualClock()
    workflow = make(one_call, clock, timeout=5)
    init = start(clock)
    (booking,) = await workflow.execute(init)
    clock.advance(6)
    (report,) = await workflow.execute(await answer(booking))
    assert report.type == ERROR_TYPE and report.data["errorName"] == "TimeoutError"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"


async def test_a_race_whose_timer_is_due_is_won_by_the_timer_though_a_reply_came_first() -> None:
    async def racing(ctx, order):
        index, _ = yield race(call(book, Number(1)), sleep(5))
        yield complete(OrderResult(f"arm {index}"))

    clock = VirtualClock()
    workflow = make(racing, clock)
    init = start(clock)
    (booking,) = await workflow.execute(init)
    clock.advance(6)
    (done,) = await workflow.execute(await answer(booking))
    assert done.data["status"] == "arm 1"
    workflow.evict()  # the journal replays to the same winner
    assert await workflow.execute(await answer(booking)) == [done]


async def test_a_signal_after_its_waits_timeout_is_kept_for_the_next_wait() -> None:
    async def waiting(ctx, order):
        try:
            yield wait_for(PING, timeout=5)
        except TimeoutError:
            signal = yield wait_for(PING)
            yield complete(OrderResult(f"late {signal.data['n']}"))
            return
        yield complete(OrderResult("in time"))

    clock = VirtualClock()
    workflow = make(waiting, clock)
    init = start(clock)
    assert await workflow.execute(init) == []
    clock.advance(6)
    ping = workflow.signal_event(init.subject, PING, {"n": 7}, source=SHOP)
    (done,) = await workflow.execute(ping)
    assert done.data["status"] == "late 7"


# ----------------------------------------------------------------------------------
# child workflows go when their parent stops waiting for them


class Job(msgspec.Struct):
    n: int


children = OrchestratorContract(
    uri="#/orchestrators/child", name="child", versions={"1.0.0": {"init": Job, "complete": Job}}
)


async def slow_child(ctx, job: Job):
    yield wait_for(PING)
    yield complete(Job(job.n))


def family(parent: Any, clock: VirtualClock) -> tuple[Resumable[Any], Resumable[Any]]:
    memory = InMemoryMemory()
    child = Resumable(
        children, versions={"1.0.0": slow_child}, signals=[PING], memory=memory, clock=clock
    )
    return make(parent, clock, memory, services=[children, *ALL]), child


@pytest.mark.parametrize("policy", ["cancel", "abandon"])
async def test_a_child_that_loses_a_race_is_cancelled_unless_abandoned(policy: str) -> None:
    async def parent(ctx, order):
        index, _ = yield race(call(children, Job(1), on_parent_close=policy), sleep(5))
        yield complete(OrderResult(f"arm {index}"))

    clock = VirtualClock()
    parent_wf, child_wf = family(parent, clock)
    init = start(clock)
    (child_init,) = await parent_wf.execute(init)
    assert await child_wf.execute(child_init) == []
    clock.advance(6)
    emitted = await timer(parent_wf, init.subject)
    cancels = [e for e in emitted if e.type == "resumable.workflow.cancel"]
    assert [e.type for e in emitted if e not in cancels] == [orders.complete_type]
    if policy == "abandon":
        assert cancels == []
        return
    (cancel,) = cancels
    assert cancel.subject == child_init.subject and cancel.to == children.type
    (report,) = await child_wf.execute(cancel)
    assert report.type == children.system_error_type and report.data["errorName"] == "Cancelled"
    status = await child_wf.status(child_init.subject)
    assert status is not None and status.status == "cancelled"
    assert await parent_wf.execute(report) == []  # the parent is done: dropped quietly


async def test_cancelling_a_parent_cancels_its_child() -> None:
    async def parent(ctx, order):
        yield call(children, Job(1))
        yield complete(OrderResult("child done"))

    clock = VirtualClock()
    parent_wf, child_wf = family(parent, clock)
    init = start(clock)
    (child_init,) = await parent_wf.execute(init)
    await child_wf.execute(child_init)
    emitted = await parent_wf.cancel(init.subject, "user left")
    assert {e.type for e in emitted} == {ERROR_TYPE, "resumable.workflow.cancel"}
    (cancel,) = [e for e in emitted if e.type == "resumable.workflow.cancel"]
    assert cancel.subject == child_init.subject
    assert "no longer waits" in cancel.data["reason"]


# ----------------------------------------------------------------------------------
# what the report says


async def test_an_unhandled_service_error_reports_the_services_own_error() -> None:
    async def one_call(ctx, order):
        yield call(book, Number(order.amount_cents))
        yield complete(OrderResult("booked"))

    clock = VirtualClock()
    workflow = make(one_call, clock)
    (booking,) = await workflow.execute(start(clock, amount=-3))
    (report,) = await workflow.execute(await answer(booking))
    assert report.data["errorName"] == "ValueError"
    assert report.data["errorMessage"] == "com.test.book failed for -3"


async def test_a_cleanup_that_fails_after_a_cancel_still_ends_cancelled() -> None:
    async def cleanup_fails(ctx, order):
        try:
            yield wait_for(PING)
        except Cancelled:
            yield call(book, Number(-1))  # the cleanup's call fails: a ServiceError here
        yield complete(OrderResult("unreachable"))

    clock = VirtualClock()
    workflow = make(cleanup_fails, clock)
    init = start(clock)
    await workflow.execute(init)
    (cleanup,) = await workflow.cancel(init.subject, "user left")
    (report,) = await workflow.execute(await answer(cleanup))
    assert report.data["errorName"] == "Cancelled"
    message = report.data["errorMessage"]
    assert message.startswith("user left (and the cleanup after the cancellation failed")
    assert "ValueError: com.test.book failed for -1" in message
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "cancelled"


async def test_catching_cancelled_and_completing_ends_done() -> None:
    async def gives_up_gracefully(ctx, order):
        try:
            yield wait_for(PING)
        except Cancelled as cancelled:
            yield complete(OrderResult(f"stopped: {cancelled.reason}"))

    clock = VirtualClock()
    workflow = make(gives_up_gracefully, clock)
    init = start(clock)
    await workflow.execute(init)
    (done,) = await workflow.cancel(init.subject, "user left")
    assert done.type == orders.complete_type and done.data["status"] == "stopped: user left"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done"


async def test_a_finally_that_yields_after_complete_is_rejected_with_the_reason() -> None:
    async def yields_in_finally(ctx, order):
        try:
            yield complete(OrderResult("done"))
        finally:
            yield call(book, Number(1))

    clock = VirtualClock()
    workflow = make(yields_in_finally, clock)
    (report,) = await workflow.execute(start(clock))
    assert report.type == ERROR_TYPE
    message = report.data["errorMessage"]
    assert "`call com.test.book` after complete(...)" in message
    assert "A `finally` block runs after complete(...) too" in message


# ----------------------------------------------------------------------------------
# timeouts across continue_as_new


async def looping(ctx, order):
    yield sleep(4)
    if order.amount_cents < 3:
        yield continue_as_new(PlaceOrder("o", order.amount_cents + 1))
    yield complete(OrderResult("looped"))


async def test_timeout_spans_generations() -> None:
    clock = VirtualClock()
    workflow = make(looping, clock, timeout=10)  # three generations of 4s each: 12s
    init = start(clock)
    await workflow.execute(init)
    reports: list[Event] = []
    for _ in range(3):
        clock.advance(4)
        reports = await timer(workflow, init.subject)
    (report,) = reports
    assert report.data["errorName"] == "TimeoutError"
    assert "its timeout of 10.0s" in report.data["errorMessage"]


async def test_run_timeout_restarts_with_each_generation() -> None:
    clock = VirtualClock()
    workflow = make(looping, clock, run_timeout=5)  # each 4s generation fits in 5s
    init = start(clock)
    await workflow.execute(init)
    for _ in range(3):
        clock.advance(4)
        emitted = await timer(workflow, init.subject)
    assert [e.type for e in emitted] == [orders.complete_type]
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done"


async def test_run_timeout_ends_a_generation_that_runs_long() -> None:
    async def slow(ctx, order):
        yield sleep(10)
        yield complete(OrderResult("slept"))

    clock = VirtualClock()
    workflow = make(slow, clock, run_timeout=5)
    init = start(clock)
    await workflow.execute(init)
    clock.advance(6)
    (report,) = await timer(workflow, init.subject)
    assert report.data["errorName"] == "TimeoutError"
    assert "run_timeout of 5.0s of its generation 0" in report.data["errorMessage"]


# ----------------------------------------------------------------------------------
# due times and clocks at one precision


async def test_a_retry_due_at_a_fraction_of_a_second_fires_when_the_clock_reaches_it() -> None:
    async def retried(ctx, order):
        yield call(book, Number(-1), retry=Retry(attempts=4, initial=0.05, factor=2))
        yield complete(OrderResult("unreachable"))

    clock = VirtualClock()
    workflow = make(retried, clock)
    init = start(clock)
    (request,) = await workflow.execute(init)
    for _ in range(3):  # due 0.05, 0.1, 0.2 s after each failure: 0.35 s in all
        assert await workflow.execute(await answer(request)) == []
        status = await workflow.status(init.subject)
        assert status is not None and status.due is not None
        clock.set(status.due)  # exactly the due time, as a runtime's clock would jump
        (request,) = await timer(workflow, init.subject)
    (report,) = await workflow.execute(await answer(request))
    assert report.type == ERROR_TYPE and report.data["errorName"] == "ValueError"


@pytest.mark.parametrize("evict", [False, True])
async def test_a_retry_policy_in_whole_numbers_is_stored_as_it_reads_back(evict: bool) -> None:
    async def retried(ctx, order):
        yield call(book, Number(-1), retry=Retry(attempts=3, initial=2, factor=3))
        yield complete(OrderResult("unreachable"))

    clock = VirtualClock()
    workflow = make(retried, clock)
    init = start(clock)
    (request,) = await workflow.execute(init)
    if evict:
        workflow.evict()
    await workflow.execute(await answer(request))  # the retry's header is written now
    stored = await workflow.memory.read(init.subject)
    assert stored is not None
    assert encode_header(decode_header(stored.header)) == stored.header


# ----------------------------------------------------------------------------------
# logs name instances by the user's id


def test_logs_name_an_instance_by_its_workflow_and_id() -> None:
    from resumable.subject import instance_name, new_subject

    subject = new_subject(
        orchestrator=orders.type, version="1.0.0", initiator=SHOP, execution_id="order-7"
    )
    assert instance_name(subject) == "arvo.orc.order.fulfil 'order-7'"
    assert instance_name("x" * 100) == repr("x" * 57 + "...")


async def test_a_parked_instance_is_logged_by_its_id(caplog: pytest.LogCaptureFixture) -> None:
    async def one_call(ctx, order):
        yield call(book, Number(1))
        yield complete(OrderResult("booked"))

    async def changed(ctx, order):
        yield call(charge, Number(1))
        yield complete(OrderResult("charged"))

    clock = VirtualClock()
    memory = InMemoryMemory()
    init = orders.init_event(PlaceOrder("o", 1), source=SHOP, execution_id="order-9", time=clock())
    (request,) = await make(one_call, clock, memory).execute(init)
    with caplog.at_level("ERROR", logger="resumable"):
        assert await make(changed, clock, memory).execute(await answer(request)) == []
    assert "workflow arvo.orc.order.fulfil 'order-9' parked" in caplog.text
