"""Retries: a system-error reply re-sends the call after a durable backoff timer."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable import (
    TIMER_TYPE,
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
from resumable.memory import InMemoryMemory, Memory, SQLiteMemory
from resumable.testing import Fail, Scenario, Start, check, schedules, script

from harness import SHOP, Number, service, snapshot, sqlite_stores
from orders import OrderResult, OrderState, PlaceOrder, orders

pytestmark = pytest.mark.anyio

START = datetime(2026, 1, 1, tzinfo=UTC)


flaky_contract = service("flaky")
other_contract = service("other")


class Flaky:
    """A service that fails its first ``failures`` requests (raising ``error``), then answers
    ``n + 1``. Its replies derive from the request id, as any EventHandler's do."""

    def __init__(self, failures: int, error: type[Exception] = RuntimeError) -> None:
        self.failures = failures
        self.error = error
        self.requests: list[Event] = []
        self.handler = EventHandler(flaky_contract, versions={"1.0.0": self._handle})

    async def _handle(self, event: Event) -> Emit:
        self.requests.append(event)
        if len(self.requests) <= self.failures:
            raise self.error(f"attempt {len(self.requests)} failed")
        return Emit("evt.test.flaky.done", Number(event.data.n + 1))

    async def reply(self, request: Event) -> Event:
        (reply,) = await self.handler.execute(request)
        return reply


async def succeed(event: Event) -> Emit:
    return Emit("evt.test.flaky.done", Number(event.data.n + 1))


always_ok = EventHandler(flaky_contract, versions={"1.0.0": succeed})


async def other_ok(event: Event) -> Emit:
    return Emit("evt.test.other.done", Number(event.data.n + 1))


other = EventHandler(other_contract, versions={"1.0.0": other_ok})


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def retrying(retry: Retry | None) -> Callable[..., Any]:
    async def wf(ctx, order):
        try:
            reply = yield call(flaky_contract, Number(7), retry=retry)
        except ServiceError as error:
            yield complete(OrderResult(f"failed:{error.name}:{error.message}"))
            return
        yield complete(OrderResult(f"ok:{reply.data.n}"))

    return wf


def make(
    fn: Callable[..., Any], memory: Memory | None = None, clock: VirtualClock | None = None
) -> Resumable[OrderState]:
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=[flaky_contract, other_contract],
        state=OrderState,
        memory=memory if memory is not None else InMemoryMemory(),
        clock=clock if clock is not None else VirtualClock(),
    )


def start_event() -> Event:
    return orders.init_event(
        PlaceOrder("o-1", 1),
        source=SHOP,
        execution_id="fixed",
        id="init-fixed",
        time=START.isoformat(),
    )


async def due_of(workflow: Resumable[Any], subject: str) -> datetime | None:
    status = await workflow.status(subject)
    assert status is not None
    return status.due


# ---------------------------------------------------------------------------------------------
# the retry cycle, step by step


async def test_an_error_reply_waits_out_the_backoff_then_resends_with_a_new_id() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    service = Flaky(failures=2)
    workflow = make(retrying(Retry(attempts=3, initial=1, factor=2)), memory, clock)
    init = start_event()
    (first,) = await workflow.execute(init)
    error = await service.reply(first)
    assert error.type == "sys.com.test.flaky.error"
    assert await workflow.execute(error) == []  # no ServiceError yet: a retry is scheduled
    assert await due_of(workflow, init.subject) == at(1)
    assert await memory.due(math.inf) == [(init.subject, at(1).timestamp())]
    assert await workflow.pending_requests(init.subject) == []  # the timer re-sends it

    clock.advance(0.5)
    before = await snapshot(memory)
    assert await workflow.wake(init.subject) == []
    assert await snapshot(memory) == before

    clock.advance(0.5)
    (second,) = await workflow.wake(init.subject)
    assert second.id != first.id
    assert (second.type, second.data, second.to, second.subject) == (
        first.type,
        first.data,
        first.to,
        first.subject,
    )
    assert second.dataschema == first.dataschema
    assert await due_of(workflow, init.subject) is None
    assert await workflow.pending_requests(init.subject) == [second]

    before = await snapshot(memory)
    late = (await always_ok.execute(first))[0]  # the first request answered after all
    assert await workflow.execute(late) == []
    assert await workflow.execute(error) == []  # the first error, redelivered
    workflow.evict()
    assert await workflow.execute(late) == []
    assert await snapshot(memory) == before

    clock.advance(10)
    assert await workflow.execute(await service.reply(second)) == []
    assert await due_of(workflow, init.subject) == at(11 + 2)  # 1 * 2 ** 1 after the error
    clock.advance(2)
    (third,) = await workflow.wake(init.subject)
    assert len({first.id, second.id, third.id}) == 3
    (done,) = await workflow.execute(await service.reply(third))
    assert done.data == {"status": "ok:8", "payment_id": None}
    assert len(service.requests) == 3


async def test_after_the_last_attempt_the_error_raises_service_error() -> None:
    clock = VirtualClock()
    service = Flaky(failures=10)
    workflow = make(retrying(Retry(attempts=3, initial=1, factor=2)), clock=clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    sent = [request]
    for delay in (1, 2):
        assert await workflow.execute(await service.reply(request)) == []
        assert await due_of(workflow, init.subject) == datetime.fromtimestamp(
            clock.time() + delay, UTC
        )
        clock.advance(delay)
        (request,) = await workflow.wake(init.subject)
        sent.append(request)
    (done,) = await workflow.execute(await service.reply(request))
    assert done.data["status"] == "failed:RuntimeError:attempt 3 failed"
    assert len({r.id for r in sent}) == 3
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.due is None
    clock.advance(100)
    assert await workflow.wake(init.subject) == []


async def test_without_retry_the_first_error_raises() -> None:
    service = Flaky(failures=1)
    workflow = make(retrying(None))
    init = start_event()
    (request,) = await workflow.execute(init)
    (done,) = await workflow.execute(await service.reply(request))
    assert done.data["status"] == "failed:RuntimeError:attempt 1 failed"


async def test_a_non_retryable_error_raises_at_once() -> None:
    service = Flaky(failures=5, error=ValueError)
    retry = Retry(attempts=5, non_retryable=("ValueError", "KeyError"))
    workflow = make(retrying(retry))
    init = start_event()
    (request,) = await workflow.execute(init)
    (done,) = await workflow.execute(await service.reply(request))
    assert done.data["status"] == "failed:ValueError:attempt 1 failed"
    assert len(service.requests) == 1


async def test_other_errors_are_still_retried_with_non_retryable_set() -> None:
    service = Flaky(failures=1)  # RuntimeError, not listed
    workflow = make(retrying(Retry(attempts=2, non_retryable=("ValueError",))))
    init = start_event()
    (request,) = await workflow.execute(init)
    assert await workflow.execute(await service.reply(request)) == []


async def test_max_interval_caps_the_backoff() -> None:
    clock = VirtualClock()
    service = Flaky(failures=10)
    retry = Retry(attempts=5, initial=10, factor=10, max_interval=15)
    workflow = make(retrying(retry), clock=clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    delays = []
    for _ in range(4):
        assert await workflow.execute(await service.reply(request)) == []
        due = await due_of(workflow, init.subject)
        assert due is not None
        delays.append(due.timestamp() - clock.time())
        clock.set(due)
        (request,) = await workflow.wake(init.subject)
    assert delays == [10, 15, 15, 15]
    assert [retry.delay(n) for n in (1, 2, 3)] == [10, 15, 15]


async def test_a_redelivered_error_reply_during_the_backoff_changes_nothing() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    service = Flaky(failures=1)
    workflow = make(retrying(Retry(attempts=3, initial=5)), memory, clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    error = await service.reply(request)
    assert await workflow.execute(error) == []
    before = await snapshot(memory)
    clock.advance(3)
    assert await workflow.execute(error) == []  # neither moves the timer nor fails
    workflow.evict()
    assert await workflow.execute(error) == []
    assert await snapshot(memory) == before
    assert await due_of(workflow, init.subject) == at(5)
    clock.advance(2)
    (again,) = await workflow.wake(init.subject)
    (done,) = await workflow.execute(await service.reply(again))
    assert done.data["status"] == "ok:8"


async def test_a_success_for_the_failed_attempt_during_the_backoff_is_taken() -> None:
    """The failed request was delivered again and succeeded before the re-send: that reply
    is the call's answer, and the backoff timer is dropped."""
    clock = VirtualClock()
    memory = InMemoryMemory()
    service = Flaky(failures=1)
    workflow = make(retrying(Retry(attempts=3, initial=5)), memory, clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    assert await workflow.execute(await service.reply(request)) == []
    clock.advance(1)
    (done,) = await workflow.execute(await service.reply(request))
    assert done.data["status"] == "ok:8"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.due is None
    clock.advance(10)
    assert await workflow.wake(init.subject) == []


async def test_a_timer_event_from_before_the_backoff_ends_resends_nothing() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    service = Flaky(failures=1)
    workflow = make(retrying(Retry(attempts=2, initial=5)), memory, clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    assert await workflow.execute(await service.reply(request)) == []
    clock.advance(6)
    before = await snapshot(memory)
    early = Event(
        id="early-timer",
        source=workflow.source,
        type=TIMER_TYPE,
        subject=init.subject,
        data={"now": at(2).timestamp()},
        time=at(2).isoformat(),
        to=workflow.source,
    )
    assert await workflow.execute(early) == []
    assert await snapshot(memory) == before
    assert len(await workflow.wake(init.subject)) == 1


async def test_the_attempt_count_survives_a_crash(tmp_path) -> None:
    """Every step on a new SQLiteMemory object and a new Resumable over the same file: the
    count goes on, neither reset (a fourth request) nor lost (an early failure)."""
    path = tmp_path / "wf.db"
    clock = VirtualClock()
    service = Flaky(failures=10)
    retry = Retry(attempts=3, initial=1, factor=2)

    async def step(action: Callable[[Resumable[Any]], Any]) -> Any:
        memory = SQLiteMemory(path)
        try:
            return await action(make(retrying(retry), memory, clock))
        finally:
            await memory.close()

    init = start_event()
    (request,) = await step(lambda wf: wf.execute(init))
    sent = [request]
    for delay in (1, 2):
        error = await service.reply(request)
        assert await step(lambda wf, error=error: wf.execute(error)) == []
        clock.advance(delay - 0.001)
        assert await step(lambda wf: wf.wake(init.subject)) == []
        clock.advance(0.001)
        (request,) = await step(lambda wf: wf.wake(init.subject))
        sent.append(request)
    error = await service.reply(request)
    (done,) = await step(lambda wf: wf.execute(error))
    assert done.data["status"] == "failed:RuntimeError:attempt 3 failed"
    assert len({r.id for r in sent}) == 3 and len(service.requests) == 3


async def test_a_retried_call_inside_a_gather() -> None:
    clock = VirtualClock()
    service = Flaky(failures=1)

    async def wf(ctx, order):
        a, b = yield gather(
            call(flaky_contract, Number(1), retry=Retry(attempts=2, initial=3)),
            call(other_contract, Number(10)),
        )
        yield complete(OrderResult(f"{a.data.n},{b.data.n}"))

    workflow = make(wf, clock=clock)
    init = start_event()
    flaky_request, other_request = await workflow.execute(init)
    assert await workflow.execute(await service.reply(flaky_request)) == []
    assert await due_of(workflow, init.subject) == at(3)
    assert await workflow.execute((await other.execute(other_request))[0]) == []
    clock.advance(3)
    (again,) = await workflow.wake(init.subject)
    assert again.id != flaky_request.id
    workflow.evict()
    (done,) = await workflow.execute(await service.reply(again))
    assert done.data["status"] == "2,11"


async def test_a_compensation_is_retried_too() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    service = Flaky(failures=1)

    async def wf(ctx, order):
        undo = call(flaky_contract, Number(7), retry=Retry(attempts=2, initial=4))
        yield call(other_contract, Number(1), compensate=undo)
        raise RuntimeError("boom")
        yield complete(OrderResult("unreachable"))

    workflow = make(wf, memory, clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    (undo,) = await workflow.execute((await other.execute(request))[0])
    assert undo.type == flaky_contract.type
    error = await service.reply(undo)
    assert await workflow.execute(error) == []
    assert await due_of(workflow, init.subject) == at(4)
    before = await snapshot(memory)
    assert await workflow.execute(error) == []
    assert await snapshot(memory) == before
    clock.advance(4)
    (again,) = await workflow.wake(init.subject)
    assert again.id != undo.id and again.data == undo.data
    (failed,) = await workflow.execute(await service.reply(again))
    assert failed.type == orders.system_error_type and failed.to == SHOP
    assert failed.data["errorName"] == "RuntimeError" and failed.data["errorMessage"] == "boom"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"


def test_retry_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Retry(attempts=0)
    with pytest.raises(ValueError):
        Retry(factor=0.5)
    with pytest.raises(ValueError):
        Retry(initial=-1)
    with pytest.raises(TypeError, match="Retry"):
        call(flaky_contract, Number(1), retry=3)  # type: ignore[arg-type]
    assert Retry(non_retryable=["ValueError"]).non_retryable == ("ValueError",)  # type: ignore[arg-type]
    assert [Retry(initial=1, factor=2).delay(n) for n in (1, 2, 3)] == [1, 2, 4]


# ---------------------------------------------------------------------------------------------
# the property: crashes anywhere change nothing


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attempts=st.integers(1, 4), failures=st.integers(0, 5), schedule=schedules(steps=16))
def test_crashes_anywhere_give_the_same_retries_and_outcome(attempts, failures, schedule) -> None:
    """On a SQLite file, any schedule (crashes before the write or the publish, evictions,
    handovers, duplicates, reordering) ends as the undisturbed run, with the same retries."""

    def handlers():
        fails = [Fail(f"attempt {n} failed", name="RuntimeError") for n in range(1, failures + 1)]
        flaky = script(flaky_contract, [*fails, Number(8)])  # by request: a retry is a new one
        return [make(retrying(Retry(attempts=attempts, initial=1, factor=2))), flaky]

    with tempfile.TemporaryDirectory() as tmp:
        scenario = Scenario(
            handlers,
            start=[Start(orders, PlaceOrder("o-1", 1), "o")],
            memory=sqlite_stores(Path(tmp)),
        )
        outcome = check(scenario, schedule)
    requests = [e for e in outcome.sent.values() if e["type"] == flaky_contract.type]
    assert (
        len(requests) == len(outcome.requests[flaky_contract.type]) == min(failures + 1, attempts)
    )
    assert all(e["data"] == {"n": 7} for e in requests)
    expected = "ok:8" if failures < attempts else f"failed:RuntimeError:attempt {attempts} failed"
    assert outcome.instances["o"]["result"] == {"status": expected, "payment_id": None}
