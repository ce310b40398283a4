"""Durable timers, timeouts and race, driven by a VirtualClock and ``Resumable.wake``.

No test waits for real time: the clock moves only when a test advances it, and a timer
fires only when the test calls ``wake``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

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
    race,
    sleep,
    sleep_until,
    wait_for,
)
from resumable.memory import InMemoryMemory, Memory, SQLiteMemory

from harness import SHOP, Number, echo_contract, plus_one, snapshot
from orders import OrderResult, OrderState, PlaceOrder, orders

pytestmark = pytest.mark.anyio

START = datetime(2026, 1, 1, tzinfo=UTC)
"""Where a fresh VirtualClock starts."""
PING = "com.test.ping"
"""A signal type (untyped data) the workflows here may wait for."""


echo = EventHandler(echo_contract, versions={"1.0.0": plus_one})


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def make(
    fn: Callable[..., Any],
    memory: Memory | None = None,
    clock: VirtualClock | None = None,
    **options: Any,
) -> Resumable[OrderState]:
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=[echo_contract],
        signals=[PING],
        state=OrderState,
        memory=memory if memory is not None else InMemoryMemory(),
        clock=clock if clock is not None else VirtualClock(),
        **options,
    )


def start_event(execution_id: str = "fixed") -> Event:
    return orders.init_event(
        PlaceOrder("o-1", 1), source=SHOP, execution_id=execution_id, time=START.isoformat()
    )


async def reply_to(request: Event) -> Event:
    (reply,) = await echo.execute(request)
    return reply


async def state_of(workflow: Resumable[OrderState], subject: str) -> OrderState:
    status = await workflow.status(subject)
    assert status is not None
    return status.state


# ---------------------------------------------------------------------------------------------
# sleep, sleep_until


def sleeper(wait: Any) -> Callable[..., Any]:
    """Sleeps, records ctx.now() in its state, calls echo, and completes with that time."""

    async def wf(ctx, order):
        ctx.state.steps += 1
        woke = yield wait
        assert woke is None
        ctx.state.payment_id = ctx.now().isoformat()
        yield call(echo_contract, Number(1))
        yield complete(OrderResult("woke", ctx.state.payment_id))

    return wf


SLEEPS = {
    "seconds": lambda: sleep(30),
    "float": lambda: sleep(30.0),
    "timedelta": lambda: sleep(timedelta(seconds=30)),
    "until": lambda: sleep_until(at(30)),
    "until-other-zone": lambda: sleep_until(at(30).astimezone(timezone(timedelta(hours=5)))),
}


@pytest.mark.parametrize("kind", SLEEPS)
async def test_sleep_fires_only_after_the_clock_passes_its_due_time(kind: str) -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(sleeper(SLEEPS[kind]()), memory, clock)
    init = start_event()
    assert await workflow.execute(init) == []
    status = await workflow.status(init.subject)
    assert status is not None
    assert (status.status, status.waits_for, status.due) == ("active", "sleep", at(30))
    assert await memory.due(clock.time()) == []
    assert await memory.due(math.inf) == [(init.subject, at(30).timestamp())]

    before = await snapshot(memory)
    clock.advance(29.999)
    assert await workflow.wake(init.subject) == []
    assert await snapshot(memory) == before

    clock.advance(1.001)  # 31s after the start: past due
    assert await memory.due(clock.time()) == [(init.subject, at(30).timestamp())]
    (request,) = await workflow.wake(init.subject)
    assert request.type == echo_contract.type and request.data == {"n": 1}
    state = await state_of(workflow, init.subject)
    assert state == OrderState(payment_id="2026-01-01T00:00:31+00:00", steps=1)
    status = await workflow.status(init.subject)
    assert status is not None and status.due is None and status.waits_for == "call com.test.echo"
    assert await memory.due(math.inf) == []

    clock.advance(100)  # ctx.now() is the wake's time, also when replayed later
    workflow.evict()
    (done,) = await workflow.execute(await reply_to(request))
    assert done.data == {"status": "woke", "payment_id": "2026-01-01T00:00:31+00:00"}
    status = await workflow.status(init.subject, history=True)
    assert status is not None and status.history is not None
    assert [step.woke for step in status.history] == ["start", "sleep", "call"]


async def test_sleep_fires_at_exactly_its_due_time() -> None:
    clock = VirtualClock()
    workflow = make(sleeper(sleep(30)), clock=clock)
    init = start_event()
    await workflow.execute(init)
    clock.advance(30)
    assert len(await workflow.wake(init.subject)) == 1


async def test_a_timer_survives_a_crash(tmp_path) -> None:
    """Each step on a brand-new Resumable and a new SQLiteMemory object on the same file."""
    sqlite_path = tmp_path / "wf.db"
    clock = VirtualClock()
    init = start_event()
    memory = SQLiteMemory(sqlite_path)
    assert await make(sleeper(sleep(30)), memory, clock).execute(init) == []
    await memory.close()

    clock.advance(45)
    memory = SQLiteMemory(sqlite_path)
    assert await memory.due(clock.time()) == [(init.subject, at(30).timestamp())]
    workflow = make(sleeper(sleep(30)), memory, clock)
    (request,) = await workflow.wake(init.subject)
    assert request.data == {"n": 1}
    await memory.close()

    later = VirtualClock(at(500))  # another process, whose clock reads later still
    memory = SQLiteMemory(sqlite_path)
    workflow = make(sleeper(sleep(30)), memory, later)
    (done,) = await workflow.execute(await reply_to(request))
    assert done.data == {"status": "woke", "payment_id": "2026-01-01T00:00:45+00:00"}
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.due is None
    assert await memory.due(math.inf) == []
    await memory.close()


async def test_waking_twice_and_a_redelivered_timer_are_harmless() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(sleeper(sleep(30)), memory, clock)
    timers: list[Event] = []
    execute = workflow.execute

    async def spy(event: Event) -> list[Event]:
        if event.type == TIMER_TYPE:
            timers.append(event)
        return await execute(event)

    workflow.execute = spy  # type: ignore[method-assign]
    init = start_event()
    await workflow.execute(init)
    clock.advance(31)
    first = await workflow.wake(init.subject)
    assert len(first) == 1
    (timer,) = timers
    assert timer.data == {"now": at(31).timestamp()}
    before = await snapshot(memory)
    assert await workflow.wake(init.subject) == []  # nothing due any more
    assert len(timers) == 1
    assert await workflow.execute(timer) == first  # the same timer again: same events
    workflow.evict()
    assert await execute(timer) == first
    other = make(sleeper(sleep(30)), memory, clock)  # a second worker that woke it too
    assert await other.execute(timer) == first
    assert await snapshot(memory) == before
    (done,) = await workflow.execute(await reply_to(first[0]))
    assert done.data["status"] == "woke"
    assert await other.execute(timer) == first  # still known after the instance ended


async def test_ctx_now_is_the_timers_time_even_if_running_it_lags() -> None:
    """The clock moves on while the timer event is applied: ctx.now() is still the timer's
    time, and a replay (which can only use the journal) agrees."""
    clock = VirtualClock()
    workflow = make(sleeper(sleep(30)), clock=clock)
    execute = workflow.execute

    async def slow(event: Event) -> list[Event]:
        clock.advance(7)
        return await execute(event)

    init = start_event()
    await workflow.execute(init)
    clock.advance(31)
    workflow.execute = slow  # type: ignore[method-assign]
    (request,) = await workflow.wake(init.subject)
    workflow.execute = execute  # type: ignore[method-assign]
    state = await state_of(workflow, init.subject)
    assert state.payment_id == "2026-01-01T00:00:31+00:00"
    workflow.evict()
    (done,) = await workflow.execute(await reply_to(request))
    assert done.data == {"status": "woke", "payment_id": "2026-01-01T00:00:31+00:00"}


def test_sleep_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sleep_until(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        sleep_until("2026-01-01T00:00:00Z")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        sleep(-1)
    with pytest.raises(ValueError, match=">= 0"):
        sleep(timedelta(seconds=-1))
    with pytest.raises(ValueError):
        sleep(True)
    assert sleep_until(at(30).astimezone(timezone(timedelta(hours=-3)))).until == at(30)


async def test_sleep_until_a_past_moment_is_due_at_once() -> None:
    clock = VirtualClock(at(100))
    workflow = make(sleeper(sleep_until(at(30))), clock=clock)
    init = start_event()
    assert await workflow.execute(init) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.due == at(30)
    assert len(await workflow.wake(init.subject)) == 1


# ---------------------------------------------------------------------------------------------
# timeouts on call, gather, wait_for


def waiting(kind: str) -> Callable[..., Any]:
    """Waits with a 10s timeout, catches TimeoutError, then makes one more call (keeping the
    instance active, so late replies meet a live record) and completes with what it got."""

    async def wf(ctx, order):
        try:
            if kind == "call":
                reply = yield call(echo_contract, Number(1), timeout=10)
                got = str(reply.data.n)
            elif kind == "gather":
                replies = yield gather(
                    call(echo_contract, Number(1)),
                    call(echo_contract, Number(2)),
                    timeout=timedelta(seconds=10),
                )
                got = ",".join(str(r.data.n) for r in replies)
            else:
                signal = yield wait_for(PING, timeout=10)
                got = str(signal.data["n"])
        except TimeoutError as error:
            got = f"timeout: {error}"
        ctx.state.payment_id = got
        yield call(echo_contract, Number(100))
        yield complete(OrderResult("ok", got))

    return wf


WAITS = {
    "call": "call com.test.echo",
    "gather": "gather(call com.test.echo, call com.test.echo)",
    "wait_for": "wait_for com.test.ping",
}


@pytest.mark.parametrize("cold", [False, True], ids=["cached", "evicted"])
@pytest.mark.parametrize("kind", WAITS)
async def test_timeout_raises_at_the_yield_and_late_replies_are_ignored(
    kind: str, cold: bool
) -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(waiting(kind), memory, clock)
    init = start_event()
    requests = await workflow.execute(init)
    assert len(requests) == {"call": 1, "gather": 2, "wait_for": 0}[kind]
    status = await workflow.status(init.subject)
    assert status is not None and status.due == at(10) and status.waits_for == WAITS[kind]
    replies = [await reply_to(r) for r in requests]
    if kind == "gather":  # one of the two is in before the deadline
        assert await workflow.execute(replies.pop(0)) == []

    clock.advance(9.5)
    before = await snapshot(memory)
    assert await workflow.wake(init.subject) == []
    assert await snapshot(memory) == before

    clock.advance(1)
    if cold:  # the timeout fires on a generator rebuilt from the journal
        workflow.evict()
    (follow_up,) = await workflow.wake(init.subject)
    assert follow_up.data == {"n": 100}
    state = await state_of(workflow, init.subject)
    assert state.payment_id == f"timeout: timed out waiting for {WAITS[kind]}"
    status = await workflow.status(init.subject, history=True)
    assert status is not None and status.due is None and status.history is not None
    assert status.history[-1].woke == "timeout"

    before = await snapshot(memory)
    for late in replies:  # replies to the timed-out requests: dropped quietly
        assert await workflow.execute(late) == []
        workflow.evict()
        assert await workflow.execute(late) == []
    assert await snapshot(memory) == before
    if kind == "wait_for":  # a late signal is not an error either
        signal = workflow.signal_event(init.subject, PING, {"n": 5}, source="com.test.pinger")
        assert await workflow.execute(signal) == []

    workflow.evict()  # the timeout is replayed too
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data == {"status": "ok", "payment_id": state.payment_id}


@pytest.mark.parametrize("kind", WAITS)
async def test_an_answer_before_the_deadline_wins_and_clears_it(kind: str) -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(waiting(kind), memory, clock)
    init = start_event()
    requests = await workflow.execute(init)
    clock.advance(9)
    if kind == "wait_for":
        signal = workflow.signal_event(init.subject, PING, {"n": 5}, source="com.test.pinger")
        (follow_up,) = await workflow.execute(signal)
    else:
        outputs = [await workflow.execute(await reply_to(r)) for r in requests]
        follow_up = outputs[-1][0]
    assert follow_up.data == {"n": 100}
    status = await workflow.status(init.subject)
    assert status is not None and status.due is None
    assert await memory.due(math.inf) == []

    clock.advance(100)
    before = await snapshot(memory)
    assert await workflow.wake(init.subject) == []
    assert await snapshot(memory) == before
    (done,) = await workflow.execute(await reply_to(follow_up))
    expected = {"call": "2", "gather": "2,3", "wait_for": "5"}[kind]
    assert done.data == {"status": "ok", "payment_id": expected}


async def test_an_uncaught_timeout_fails_the_instance() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1), timeout=5)
        yield complete(OrderResult("unreachable"))

    clock = VirtualClock()
    workflow = make(wf, clock=clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    clock.advance(6)
    (error,) = await workflow.wake(init.subject)
    assert error.type == orders.system_error_type and error.to == SHOP
    assert error.data["errorName"] == "TimeoutError"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"
    assert await workflow.execute(await reply_to(request)) == []


def timer_event(workflow: Resumable[Any], subject: str, now: float) -> Event:
    """A timer event as ``wake`` builds one, here for a moment the test chooses."""
    return Event(
        id=f"timer-at-{now}",
        source=workflow.source,
        type=TIMER_TYPE,
        subject=subject,
        data={"now": now},
        time=datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        to=workflow.source,
    )


@pytest.mark.parametrize("fn", [sleeper(sleep(30)), waiting("call")], ids=["sleep", "timeout"])
async def test_a_timer_event_from_before_the_due_time_changes_nothing(fn) -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(fn, memory, clock)
    init = start_event()
    await workflow.execute(init)
    clock.advance(31)
    before = await snapshot(memory)
    assert await workflow.execute(timer_event(workflow, init.subject, at(5).timestamp())) == []
    assert await snapshot(memory) == before
    assert len(await workflow.wake(init.subject)) == 1


# ---------------------------------------------------------------------------------------------
# the workflow's own deadline: Resumable(timeout=...)


async def test_workflow_timeout_ends_the_instance_with_a_timeout_error() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        yield sleep(3600)  # would outlast the workflow's deadline
        yield complete(OrderResult("unreachable"))

    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(wf, memory, clock, timeout=timedelta(minutes=1))
    init = start_event()
    (request,) = await workflow.execute(init)
    status = await workflow.status(init.subject)
    assert status is not None and status.due == at(60)
    clock.advance(5)
    assert await workflow.execute(await reply_to(request)) == []  # now sleeping an hour
    status = await workflow.status(init.subject)
    assert status is not None and status.due == at(60) and status.waits_for == "sleep"

    clock.advance(50)
    assert await workflow.wake(init.subject) == []
    clock.advance(10)
    (error,) = await workflow.wake(init.subject)
    assert error.type == "sys.arvo.orc.order.fulfil.error"
    assert error.to == SHOP and error.parentid == init.id and error.subject == init.subject
    assert error.data["errorName"] == "TimeoutError"
    assert "timeout of 60.0s" in error.data["errorMessage"]
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed" and status.due is None
    assert status.error is not None and status.error.errorName == "TimeoutError"
    assert await memory.due(math.inf) == []
    clock.advance(7200)
    assert await workflow.wake(init.subject) == []


async def test_workflow_timeout_runs_the_compensations_first_and_ignores_late_replies() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1), compensate=call(echo_contract, Number(-99)))
        yield call(echo_contract, Number(2))
        yield complete(OrderResult("unreachable"))

    async def undo_ok(event: Event) -> Emit:
        return Emit("evt.test.echo.done", Number(0))

    undoer = EventHandler(echo_contract, versions={"1.0.0": undo_ok})
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(wf, memory, clock, timeout=60)
    init = start_event()
    (first,) = await workflow.execute(init)
    (second,) = await workflow.execute(await reply_to(first))
    clock.advance(61)
    (undo,) = await workflow.wake(init.subject)
    assert undo.type == echo_contract.type and undo.data == {"n": -99}
    before = await snapshot(memory)
    assert await workflow.execute(await reply_to(second)) == []  # abandoned by the timeout
    assert await snapshot(memory) == before
    (error,) = await workflow.execute((await undoer.execute(undo))[0])
    assert error.data["errorName"] == "TimeoutError"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"


# ---------------------------------------------------------------------------------------------
# race


def racer(*arms: Callable[[], Any]) -> Callable[..., Any]:
    """Races the arms, records the outcome in its state, makes one more call (so the
    instance is still active when losers reply), then completes with the outcome."""

    async def wf(ctx, order):
        try:
            index, value = yield race(*(arm() for arm in arms))
            if value is None:
                outcome = f"{index}:timer"
            elif value.type == PING:
                outcome = f"{index}:signal:{value.data['n']}:{value.id}"
            else:
                outcome = f"{index}:{value.data.n}:{value.id}"
        except ServiceError as error:
            outcome = f"error:{error.name}:{error.message}"
        ctx.state.payment_id = outcome
        yield call(echo_contract, Number(100))
        yield complete(OrderResult("raced", outcome))

    return wf


def two_calls(a: int = 1, b: int = 2) -> Callable[..., Any]:
    return racer(lambda: call(echo_contract, Number(a)), lambda: call(echo_contract, Number(b)))


@pytest.mark.parametrize("winner", [0, 1])
async def test_race_of_two_calls_the_first_reply_wins(winner: int) -> None:
    memory = InMemoryMemory()
    workflow = make(two_calls(), memory)
    init = start_event()
    requests = await workflow.execute(init)
    assert [r.data for r in requests] == [{"n": 1}, {"n": 2}]
    assert len({r.id for r in requests}) == 2
    status = await workflow.status(init.subject)
    assert status is not None and status.waits_for == "race(call com.test.echo, call com.test.echo)"
    win = await reply_to(requests[winner])
    lose = await reply_to(requests[1 - winner])
    (follow_up,) = await workflow.execute(win)
    state = await state_of(workflow, init.subject)
    assert state.payment_id == f"{winner}:{winner + 2}:{win.id}"
    status = await workflow.status(init.subject, history=True)
    assert status is not None and status.history is not None
    assert status.history[-1].woke == f"race:{winner}"

    before = await snapshot(memory)
    assert await workflow.execute(lose) == []  # the loser: ignored quietly, while active
    workflow.evict()
    assert await workflow.execute(lose) == []
    assert await snapshot(memory) == before
    assert await workflow.execute(win) == [follow_up]  # the winner redelivered: same events
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data["payment_id"] == state.payment_id


def call_or_sleep() -> Callable[..., Any]:
    return racer(lambda: call(echo_contract, Number(1)), lambda: sleep(30))


async def test_race_call_against_sleep_the_sleep_wins_when_the_clock_passes_first() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(call_or_sleep(), memory, clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    status = await workflow.status(init.subject)
    assert status is not None and status.due == at(30)
    clock.advance(29)
    assert await workflow.wake(init.subject) == []
    clock.advance(2)
    workflow.evict()  # fired on a generator rebuilt from the journal
    (follow_up,) = await workflow.wake(init.subject)
    assert (await state_of(workflow, init.subject)).payment_id == "1:timer"
    status = await workflow.status(init.subject)
    assert status is not None and status.due is None

    before = await snapshot(memory)
    assert await workflow.execute(await reply_to(request)) == []  # the call lost
    assert await snapshot(memory) == before
    workflow.evict()
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data == {"status": "raced", "payment_id": "1:timer"}


async def test_race_call_against_sleep_the_call_wins_when_it_replies_first() -> None:
    clock = VirtualClock()
    memory = InMemoryMemory()
    workflow = make(call_or_sleep(), memory, clock)
    init = start_event()
    (request,) = await workflow.execute(init)
    clock.advance(29)
    reply = await reply_to(request)
    (follow_up,) = await workflow.execute(reply)
    assert (await state_of(workflow, init.subject)).payment_id == f"0:2:{reply.id}"
    status = await workflow.status(init.subject)
    assert status is not None and status.due is None
    clock.advance(100)
    before = await snapshot(memory)
    assert await workflow.wake(init.subject) == []  # the sleep lost: it never fires
    assert await snapshot(memory) == before
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data == {"status": "raced", "payment_id": f"0:2:{reply.id}"}


async def test_race_a_signal_against_a_sleep() -> None:
    clock = VirtualClock()
    workflow = make(racer(lambda: wait_for(PING), lambda: sleep(30)), clock=clock)
    init = start_event()
    assert await workflow.execute(init) == []
    clock.advance(10)
    signal = workflow.signal_event(init.subject, PING, {"n": 7}, source="com.test.pinger")
    (follow_up,) = await workflow.execute(signal)
    assert follow_up.data == {"n": 100}
    assert (await state_of(workflow, init.subject)).payment_id == f"0:signal:7:{signal.id}"
    clock.advance(100)
    assert await workflow.wake(init.subject) == []


async def test_race_of_two_sleeps_the_earlier_wins() -> None:
    clock = VirtualClock()
    workflow = make(racer(lambda: sleep(20), lambda: sleep(10)), clock=clock)
    init = start_event()
    assert await workflow.execute(init) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.due == at(10)
    clock.advance(25)  # both are due by now: the one due first wins
    (follow_up,) = await workflow.wake(init.subject)
    assert (await state_of(workflow, init.subject)).payment_id == "1:timer"
    status = await workflow.status(init.subject)
    assert status is not None and status.due is None
    workflow.evict()
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data["payment_id"] == "1:timer"


RACES: dict[str, Callable[[], Callable[..., Any]]] = {
    "call 0": two_calls,
    "call 1": two_calls,
    "sleep": call_or_sleep,
}


@pytest.mark.parametrize("crash", ["none", "evict", "new process"])
@pytest.mark.parametrize("winner", RACES)
async def test_the_race_winner_is_replayed_identically(winner: str, crash: str, tmp_path) -> None:
    """After the race, the next step replays it: on the cached generator, after evict(),
    or on a brand-new Resumable and SQLiteMemory over the same file."""
    path = tmp_path / "wf.db"
    clock = VirtualClock()
    fn = RACES[winner]()
    memory = SQLiteMemory(path)
    workflow = make(fn, memory, clock)
    init = start_event()
    requests = await workflow.execute(init)
    if winner == "sleep":
        clock.advance(31)
        (follow_up,) = await workflow.wake(init.subject)
    else:
        index = int(winner[-1])
        (follow_up,) = await workflow.execute(await reply_to(requests[index]))
    recorded = (await state_of(workflow, init.subject)).payment_id
    if crash == "evict":
        workflow.evict()
    elif crash == "new process":
        await memory.close()
        memory = SQLiteMemory(path)
        workflow = make(RACES[winner](), memory, VirtualClock(at(1000)))
    for loser in requests[1:] if winner == "call 0" else requests[:1]:
        assert await workflow.execute(await reply_to(loser)) == []
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data == {"status": "raced", "payment_id": recorded}
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done" and status.state.payment_id == recorded
    await memory.close()


async def test_a_winning_error_reply_raises_service_error() -> None:
    workflow = make(two_calls(-1, 2))
    init = start_event()
    first, second = await workflow.execute(init)
    error = await reply_to(first)
    assert error.type == "sys.com.test.echo.error"
    (follow_up,) = await workflow.execute(error)
    assert (await state_of(workflow, init.subject)).payment_id == "error:ValueError:negative -1"
    assert await workflow.execute(await reply_to(second)) == []
    workflow.evict()
    (done,) = await workflow.execute(await reply_to(follow_up))
    assert done.data["payment_id"] == "error:ValueError:negative -1"


def test_race_arguments_are_checked() -> None:
    one = call(echo_contract, Number(1))
    with pytest.raises(ValueError, match="at least two arms"):
        race()
    with pytest.raises(ValueError, match="at least two arms"):
        race(one)
    with pytest.raises(TypeError, match="race\\(\\) takes"):
        race(one, "com.test.ping")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="race\\(\\) takes"):
        race(one, gather(one))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        race(call(echo_contract, Number(1), timeout=5), sleep(10))
    with pytest.raises(ValueError, match="timeout"):
        race(one, wait_for(PING, timeout=5))
    with pytest.raises(ValueError, match="retry"):
        race(call(echo_contract, Number(1), retry=Retry()), sleep(10))
    assert len(race(one, sleep(1), wait_for(PING)).arms) == 3
