"""Signals (wait_for, kept signals, race with a timer) and cancellation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from resumable import (
    CANCEL_TYPE,
    Cancelled,
    ConfigViolation,
    Contract,
    ContractViolation,
    Event,
    EventHandler,
    ExecutionViolation,
    Resumable,
    SetupError,
    VirtualClock,
    call,
    complete,
    race,
    sleep,
    wait_for,
)
from resumable.memory import InMemoryMemory, Memory

from harness import SHOP, Host, Number, echo_contract, fixed_clock, plus_one, snapshot
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio


echo = EventHandler(echo_contract, versions={"1.0.0": plus_one})


class Approval(msgspec.Struct):
    by: str
    level: int = 1


approve = Contract(
    uri="#/signals/approve",
    type="com.test.approve",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)
POKE = "com.test.poke"
"""A signal listed as a bare type: its data is untyped."""


def make(fn: Any, memory: Memory | None = None, **options: Any) -> Resumable[Any]:
    options.setdefault("clock", fixed_clock)
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=[echo_contract],
        signals=[approve, POKE],
        memory=memory if memory is not None else InMemoryMemory(),
        **options,
    )


def start(order_id: str = "o") -> Event:
    return orders.init_event(PlaceOrder(order_id, 1), source=SHOP)


async def answer(request: Event) -> Event:
    (reply,) = await echo.execute(request)
    return reply


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "wf.db"


CRASHES = ["none", "evict", "restart"]


# ------------------------------------------------------------------------------------------
# signals


async def test_wait_for_receives_a_typed_signal() -> None:
    seen: list[Event] = []

    async def wf(ctx, order):
        signal = yield wait_for(approve)
        seen.append(signal)
        yield complete(OrderResult(f"{signal.data.by}:{signal.data.level}"))

    workflow = make(wf)
    init = start()
    assert await workflow.execute(init) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "active"
    assert status.waits_for == "wait_for com.test.approve"

    signal = workflow.signal_event(init.subject, approve, Approval("ann", 2), source="com.boss")
    assert signal.type == "com.test.approve"
    assert signal.to == orders.type
    assert signal.subject == init.subject
    assert signal.dataschema == "#/signals/approve/1.0.0"
    assert signal.data == {"by": "ann", "level": 2}
    (done,) = await workflow.execute(signal)
    assert done.type == orders.complete_type
    assert done.to == SHOP and done.subject == init.subject and done.parentid == init.id
    assert done.data == {"status": "ann:2", "payment_id": None}
    (received,) = seen
    assert isinstance(received.data, Approval) and received.data == Approval("ann", 2)
    assert received.id == signal.id and received.source == "com.boss"


async def test_signal_event_validates_data_and_bare_types_stay_untyped() -> None:
    seen: list[Any] = []

    async def wf(ctx, order):
        signal = yield wait_for(POKE)
        seen.append(signal.data)
        yield complete(OrderResult("poked"))

    workflow = make(wf)
    init = start()
    await workflow.execute(init)
    # a dict is validated against the contract too, and sent as given
    typed = workflow.signal_event(init.subject, approve, {"by": "bob"}, source="com.boss")
    assert typed.data == {"by": "bob"}
    with pytest.raises(msgspec.ValidationError):
        workflow.signal_event(init.subject, approve, {"by": 7}, source="com.boss")
    poke = workflow.signal_event(init.subject, POKE, {"anything": [1, 2]}, source="com.boss")
    (done,) = await workflow.execute(poke)
    assert done.data["status"] == "poked"
    assert seen == [{"anything": [1, 2]}]


@pytest.mark.parametrize("crash", CRASHES)
async def test_early_signal_is_kept_and_returned_when_the_workflow_waits(
    sqlite_path: Path, crash: str
) -> None:
    async def wf(ctx, order):
        reply = yield call(echo_contract, Number(1))
        signal = yield wait_for(approve)
        yield complete(OrderResult(f"{reply.data.n}:{signal.data.by}"))

    host = Host(lambda memory: make(wf, memory), sqlite_path)
    init = start()
    (request,) = await host.workflow.execute(init)
    await host.crash(crash)
    signal = host.workflow.signal_event(init.subject, approve, Approval("ann"), source="com.boss")
    assert await host.workflow.execute(signal) == []  # kept: the workflow waits on the call
    status = await host.workflow.status(init.subject)
    assert status is not None and status.waits_for == "call com.test.echo"
    await host.crash(crash)
    (done,) = await host.workflow.execute(await answer(request))
    assert done.data["status"] == "2:ann"
    status = await host.workflow.status(init.subject)
    assert status is not None and status.status == "done"
    await host.close()


@pytest.mark.parametrize("crash", CRASHES)
async def test_two_early_signals_of_one_type_come_out_in_arrival_order(
    sqlite_path: Path, crash: str
) -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        first = yield wait_for(approve)
        second = yield wait_for(approve)
        yield complete(OrderResult(f"{first.data.by},{second.data.by}"))

    host = Host(lambda memory: make(wf, memory), sqlite_path)
    init = start()
    (request,) = await host.workflow.execute(init)
    for who in ("first", "second"):
        signal = host.workflow.signal_event(init.subject, approve, Approval(who), source="com.x")
        assert await host.workflow.execute(signal) == []
        await host.crash(crash)
    (done,) = await host.workflow.execute(await answer(request))
    assert done.data["status"] == "first,second"
    await host.close()


async def test_early_signals_of_other_types_are_skipped_by_a_wait() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        signal = yield wait_for(approve)
        poke = yield wait_for(POKE)
        yield complete(OrderResult(f"{signal.data.by}:{poke.data['n']}"))

    workflow = make(wf)
    init = start()
    (request,) = await workflow.execute(init)
    await workflow.execute(workflow.signal_event(init.subject, POKE, {"n": 5}, source="com.x"))
    await workflow.execute(
        workflow.signal_event(init.subject, approve, Approval("ann"), source="com.x")
    )
    (done,) = await workflow.execute(await answer(request))
    assert done.data["status"] == "ann:5"


async def test_a_redelivered_early_signal_is_kept_once() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        first = yield wait_for(approve)
        second = yield wait_for(approve)
        yield complete(OrderResult(f"{first.data.by},{second.data.by}"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    (request,) = await workflow.execute(init)
    signal = workflow.signal_event(init.subject, approve, Approval("once"), source="com.x")
    assert await workflow.execute(signal) == []
    before = await snapshot(memory)
    assert await workflow.execute(signal) == []
    workflow.evict()
    assert await workflow.execute(signal) == []
    assert await snapshot(memory) == before
    # had the copy been kept too, the second wait would take it and the workflow would end
    assert await workflow.execute(await answer(request)) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.waits_for == "wait_for com.test.approve"
    later = workflow.signal_event(init.subject, approve, Approval("later"), source="com.x")
    (done,) = await workflow.execute(later)
    assert done.data["status"] == "once,later"


async def test_a_redelivered_consumed_signal_returns_what_it_produced() -> None:
    async def wf(ctx, order):
        signal = yield wait_for(approve)
        reply = yield call(echo_contract, Number(len(signal.data.by)))
        yield complete(OrderResult(str(reply.data.n)))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    await workflow.execute(init)
    signal = workflow.signal_event(init.subject, approve, Approval("ann"), source="com.x")
    (request,) = await workflow.execute(signal)
    assert request.data == {"n": 3}
    before = await snapshot(memory)
    assert await workflow.execute(signal) == [request]
    workflow.evict()
    assert await workflow.execute(signal) == [request]
    assert await snapshot(memory) == before
    (done,) = await workflow.execute(await answer(request))
    assert done.data["status"] == "4"
    # and once the instance is done, the signal is still answered the same way
    assert await workflow.execute(signal) == [request]


async def test_waiting_for_an_unlisted_signal_is_a_config_violation() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        yield wait_for("com.test.unlisted")
        yield complete(OrderResult("never"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    (request,) = await workflow.execute(init)
    before = await snapshot(memory)
    with pytest.raises(ConfigViolation, match="not in its signals"):
        await workflow.execute(await answer(request))
    assert await snapshot(memory) == before


async def test_a_signal_of_an_unlisted_type_is_a_config_violation() -> None:
    async def wf(ctx, order):
        yield wait_for(approve)
        yield complete(OrderResult("ok"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    await workflow.execute(init)
    before = await snapshot(memory)
    with pytest.raises(ConfigViolation, match=r"has no signal 'com\.test\.unlisted'"):
        workflow.signal_event(init.subject, "com.test.unlisted", {}, source="com.x")
    stray = Event(
        source="com.x", type="com.test.unlisted", subject=init.subject, data={}, to=orders.type
    )
    with pytest.raises(ConfigViolation, match="matches no contract"):
        await workflow.execute(stray)
    assert await snapshot(memory) == before


async def test_a_signal_with_a_bad_payload_is_a_contract_violation() -> None:
    async def wf(ctx, order):
        yield wait_for(approve)
        yield complete(OrderResult("ok"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    await workflow.execute(init)
    before = await snapshot(memory)
    good = workflow.signal_event(init.subject, approve, Approval("ann"), source="com.x")
    bad = msgspec.structs.replace(good, data={"by": 5})
    with pytest.raises(ContractViolation, match="does not match Approval"):
        await workflow.execute(bad)
    unknown_version = msgspec.structs.replace(good, dataschema="#/signals/approve/9.9.9")
    with pytest.raises(ContractViolation, match="signal_event"):
        await workflow.execute(unknown_version)
    assert await snapshot(memory) == before
    (done,) = await workflow.execute(good)
    assert done.data["status"] == "ok"


def test_signals_are_checked_at_definition() -> None:
    async def wf(ctx, order):
        yield complete(OrderResult("ok"))

    with pytest.raises(SetupError, match="signal type"):  # construction: SetupError
        make_with_signals(wf, [approve, approve])
    with pytest.raises(SetupError, match="signal type"):
        make_with_signals(wf, ["evt.test.echo.done"])  # a reply of a service
    with pytest.raises(TypeError, match="signals must be"):
        make_with_signals(wf, [3])
    with pytest.raises(TypeError, match="wait_for"):
        wait_for(3)  # type: ignore[arg-type]


def make_with_signals(fn: Any, signals: list[Any]) -> Resumable[Any]:
    return Resumable(orders, versions={"1.0.0": fn}, services=[echo_contract], signals=signals)


def _racer(seen: list[Any]) -> Any:
    async def wf(ctx, order):
        index, value = yield race(wait_for(approve), sleep(60))
        seen.append((index, value))
        if index == 0:
            yield complete(OrderResult(f"signal:{value.data.by}"))
        else:
            yield complete(OrderResult("timer"))

    return wf


@pytest.mark.parametrize("evict", [False, True])
async def test_race_of_a_signal_and_a_sleep_the_signal_wins(evict: bool) -> None:
    clock = VirtualClock()
    seen: list[Any] = []
    workflow = make(_racer(seen), clock=clock)
    init = start()
    started = clock.time()
    assert await workflow.execute(init) == []
    status = await workflow.status(init.subject)
    assert status is not None and status.waits_for == "race(wait_for com.test.approve, sleep)"
    assert status.due is not None and status.due.timestamp() == started + 60
    clock.advance(30)
    assert await workflow.wake(init.subject) == []  # not due yet
    if evict:
        workflow.evict()
    signal = workflow.signal_event(init.subject, approve, Approval("ann"), source="com.x")
    (done,) = await workflow.execute(signal)
    assert done.data["status"] == "signal:ann"
    assert seen[-1][0] == 0 and isinstance(seen[-1][1].data, Approval)
    clock.advance(60)
    assert await workflow.wake(init.subject) == []  # the losing timer never fires


@pytest.mark.parametrize("evict", [False, True])
async def test_race_of_a_signal_and_a_sleep_the_sleep_wins(evict: bool) -> None:
    clock = VirtualClock()
    seen: list[Any] = []
    workflow = make(_racer(seen), clock=clock)
    init = start()
    await workflow.execute(init)
    clock.advance(59.9)
    assert await workflow.wake(init.subject) == []
    clock.advance(0.1)
    if evict:
        workflow.evict()
    (done,) = await workflow.wake(init.subject)
    assert done.data["status"] == "timer"
    assert seen[-1] == (1, None)
    assert await workflow.wake(init.subject) == []
    late = workflow.signal_event(init.subject, approve, Approval("late"), source="com.x")
    assert await workflow.execute(late) == []  # quietly ignored
    status = await workflow.status(init.subject)
    assert status is not None and status.result == {"status": "timer", "payment_id": None}


async def test_race_takes_a_signal_that_was_kept_before_it() -> None:
    clock = VirtualClock()

    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        index, value = yield race(sleep(60), wait_for(approve))
        yield complete(OrderResult(f"{index}:{value.data.by}"))

    workflow = make(wf, clock=clock)
    init = start()
    (request,) = await workflow.execute(init)
    await workflow.execute(
        workflow.signal_event(init.subject, approve, Approval("early"), source="com.x")
    )
    (done,) = await workflow.execute(await answer(request))
    assert done.data["status"] == "1:early"
    status = await workflow.status(init.subject)
    assert status is not None and status.due is None


async def test_race_of_a_call_and_a_signal_ignores_the_losing_reply() -> None:
    async def wf(ctx, order):
        index, value = yield race(call(echo_contract, Number(1)), wait_for(approve))
        yield complete(OrderResult(f"{index}:{value.type}"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    (request,) = await workflow.execute(init)
    signal = workflow.signal_event(init.subject, approve, Approval("ann"), source="com.x")
    (done,) = await workflow.execute(signal)
    assert done.data["status"] == "1:com.test.approve"
    before = await snapshot(memory)
    assert await workflow.execute(await answer(request)) == []
    assert await snapshot(memory) == before


async def test_wait_for_with_a_timeout_raises_timeout_error() -> None:
    clock = VirtualClock()

    async def wf(ctx, order):
        try:
            yield wait_for(approve, timeout=30)
        except TimeoutError:
            yield complete(OrderResult("timed out"))

    workflow = make(wf, clock=clock)
    init = start()
    await workflow.execute(init)
    clock.advance(29)
    assert await workflow.wake(init.subject) == []
    clock.advance(1)
    (done,) = await workflow.wake(init.subject)
    assert done.data["status"] == "timed out"


# ------------------------------------------------------------------------------------------
# cancellation


def _with_cleanup(log: list[str]) -> Any:
    async def wf(ctx, order):
        try:
            yield call(echo_contract, Number(1))
        finally:
            if not ctx.is_replaying:
                log.append("finally")
            yield call(echo_contract, Number(100))  # cleanup
        yield complete(OrderResult("finished"))

    return wf


@pytest.mark.parametrize("evict", [False, True])
async def test_cancel_raises_at_the_yield_and_finally_can_clean_up(evict: bool) -> None:
    log: list[str] = []
    memory = InMemoryMemory()
    workflow = make(_with_cleanup(log), memory)
    init = start()
    (request,) = await workflow.execute(init)
    if evict:
        workflow.evict()
    (cleanup,) = await workflow.cancel(init.subject, "customer asked")
    assert log == ["finally"]
    assert cleanup.type == "com.test.echo" and cleanup.data == {"n": 100}
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "active"
    assert status.waits_for == "call com.test.echo"
    # the cancelled call's reply comes late: ignored quietly
    before = await snapshot(memory)
    assert await workflow.execute(await answer(request)) == []
    assert await snapshot(memory) == before
    if evict:
        workflow.evict()
    (error,) = await workflow.execute(await answer(cleanup))
    assert error.type == "sys.arvo.orc.order.fulfil.error"
    assert error.to == SHOP and error.subject == init.subject and error.parentid == init.id
    assert error.data["errorName"] == "Cancelled"
    assert error.data["errorMessage"] == "customer asked"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "cancelled"
    assert status.error is not None and status.error.errorName == "Cancelled"
    assert log == ["finally"]  # replay did not run the live branch again


async def test_cancel_event_through_execute_and_its_redelivery() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        yield complete(OrderResult("finished"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    await workflow.execute(init)
    cancel = workflow.cancel_event(init.subject, "stop", source="com.admin.console")
    assert cancel.type == CANCEL_TYPE and cancel.data == {"reason": "stop"}
    (error,) = await workflow.execute(cancel)
    assert error.data["errorName"] == "Cancelled"
    before = await snapshot(memory)
    assert await workflow.execute(cancel) == [error]
    workflow.evict()
    assert await workflow.execute(cancel) == [error]
    assert await snapshot(memory) == before


async def test_except_exception_does_not_catch_cancelled() -> None:
    caught: list[BaseException] = []

    async def wf(ctx, order):
        try:
            yield call(echo_contract, Number(1))
        except Exception as error:
            caught.append(error)
            yield complete(OrderResult("swallowed"))
            return
        yield complete(OrderResult("finished"))

    workflow = make(wf)
    init = start()
    await workflow.execute(init)
    (error,) = await workflow.cancel(init.subject, "no")
    assert error.data["errorName"] == "Cancelled"
    assert caught == []
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "cancelled"


async def test_catching_cancelled_lets_the_workflow_complete() -> None:
    async def wf(ctx, order):
        try:
            yield call(echo_contract, Number(1))
        except Cancelled as cancelled:
            yield complete(OrderResult(f"stopped:{cancelled.reason}"))
            return
        yield complete(OrderResult("finished"))

    workflow = make(wf)
    init = start()
    await workflow.execute(init)
    (done,) = await workflow.cancel(init.subject, "late")
    assert done.type == orders.complete_type and done.data["status"] == "stopped:late"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done"


async def test_a_second_cancel_is_ignored() -> None:
    log: list[str] = []
    memory = InMemoryMemory()
    workflow = make(_with_cleanup(log), memory)
    init = start()
    await workflow.execute(init)
    (cleanup,) = await workflow.cancel(init.subject, "first")
    assert await workflow.cancel(init.subject, "second") == []
    workflow.evict()
    assert await workflow.cancel(init.subject, "third") == []
    assert log == ["finally"]
    status = await workflow.status(init.subject)
    assert status is not None and status.waits_for == "call com.test.echo"
    (error,) = await workflow.execute(await answer(cleanup))
    assert error.data["errorMessage"] == "first"


async def test_cancelling_a_finished_workflow_does_nothing() -> None:
    async def wf(ctx, order):
        yield complete(OrderResult("quick"))

    memory = InMemoryMemory()
    workflow = make(wf, memory)
    init = start()
    (done,) = await workflow.execute(init)
    assert done.type == orders.complete_type
    before = await snapshot(memory)
    assert await workflow.cancel(init.subject, "too late") == []
    assert await snapshot(memory) == before
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "done"


async def test_cancel_while_waiting_for_a_signal_or_a_timer() -> None:
    clock = VirtualClock()

    async def wf(ctx, order):
        yield race(wait_for(approve), sleep(60))
        yield complete(OrderResult("finished"))

    workflow = make(wf, clock=clock)
    init = start()
    await workflow.execute(init)
    workflow.evict()
    (error,) = await workflow.cancel(init.subject, "bye")
    assert error.data["errorName"] == "Cancelled"
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "cancelled" and status.due is None
    clock.advance(120)
    assert await workflow.wake(init.subject) == []
    late = workflow.signal_event(init.subject, approve, Approval("late"), source="com.x")
    assert await workflow.execute(late) == []


async def test_cancel_of_an_unknown_instance_is_an_execution_violation() -> None:
    workflow = make(_with_cleanup([]))
    with pytest.raises(ExecutionViolation, match="does not exist"):
        await workflow.cancel(start().subject, "who?")
