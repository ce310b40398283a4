"""resumable.testing.WorkflowEnv: stepping, choosing the order, time, signals, crashes,
fake and scripted services, inspection."""

from __future__ import annotations

import msgspec
import pytest

from resumable import Contract, OrchestratorContract, Resumable, call, complete, gather
from resumable.demo import (
    OrderResult,
    OrderState,
    PlaceOrder,
    make_handlers,
    make_workflow,
    orders,
    payments,
)
from resumable.memory import InMemoryMemory, SQLiteMemory
from resumable.testing import NEVER, Fail, ScriptExhausted, WorkflowEnv, fake, script
from resumable.testing.compare import differences

from harness import Number

pytestmark = pytest.mark.anyio

echo = Contract(
    uri="#/contracts/echo",
    type="com.test.echo",
    versions={"1.0.0": {"accepts": Number, "emits": {"evt.test.echo.done": Number}}},
)
twice = OrchestratorContract(
    uri="#/orchestrators/twice",
    name="test.twice",
    versions={"1.0.0": {"init": Number, "complete": Number}},
)


async def _two_echoes(ctx, start: Number):
    a, b = yield gather(call(echo, Number(start.n)), call(echo, Number(start.n + 10)))
    yield complete(Number(a.data.n * 100 + b.data.n))


def _twice(**options) -> Resumable:
    return Resumable(twice, versions={"1.0.0": _two_echoes}, services=[echo], **options)


def _orders_env() -> WorkflowEnv:
    return WorkflowEnv([make_workflow(InMemoryMemory()), *make_handlers()])


async def test_settle_runs_the_order_workflow_to_its_result_with_typed_state() -> None:
    env = _orders_env()
    order = await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    assert env.pending and not env.outside  # nothing runs until delivered
    await env.settle()
    assert await env.result(order) == OrderResult("shipped", "pay-o-1")
    status = await env.status(order)
    assert status.state == OrderState(payment_id="pay-o-1", steps=2)
    assert [step.woke for step in await env.history(order)] == ["start", "call", None, "gather"]
    (done,) = env.outside
    assert done.type == "arvo.orc.order.fulfil.done" and done.to == env.source


async def test_step_delivers_the_chosen_pending_event() -> None:
    env = WorkflowEnv([_twice(), fake(echo, lambda r: Number(r.n + 1))])
    instance = await env.start(twice, Number(1), id="t")
    await env.step()  # init: two requests
    await env.step(1)  # the second request first
    await env.step(0)
    assert [e.data["n"] for e in env.pending] == [12, 2]
    await env.step(0)  # the reply to the second call arrives first
    assert (await env.status(instance)).status == "active"
    await env.run()
    assert await env.result(instance) == Number(2 * 100 + 12)


async def test_script_answers_in_order_with_errors_and_silence() -> None:
    env = WorkflowEnv([_twice(), script(echo, [Number(5), Fail("down", name="Outage")])])
    instance = await env.start(twice, Number(1), id="t")
    await env.run()
    status = await env.status(instance)
    assert status.status == "failed"
    assert status.error is not None
    assert (status.error.errorName, status.error.errorMessage) == ("Outage", "down")

    env = WorkflowEnv([_twice(), script(echo, [Number(5), NEVER])])
    instance = await env.start(twice, Number(1), id="t")
    await env.settle()
    assert (await env.status(instance)).waits_for is not None  # still waiting, forever
    assert len(env.calls) == 2 and env.calls[1].replies == ()


async def test_a_script_that_runs_out_says_so() -> None:
    env = WorkflowEnv([_twice(), script(echo, [Number(5)])])
    await env.start(twice, Number(1), id="t")
    with pytest.raises(ScriptExhausted, match="has 1 replies"):
        await env.run()


async def test_a_scripted_request_delivered_again_gets_the_same_answer() -> None:
    env = WorkflowEnv([_twice(), script(echo, [Number(5), Number(6)])])
    await env.start(twice, Number(1), id="t")
    await env.step()
    request = env.pending[0]
    first = await env.deliver(request)
    again = await env.deliver(request)
    assert differences(first[0], again[0]) == []


async def test_advance_fires_due_timers_as_pending_timer_events() -> None:
    env = WorkflowEnv([make_workflow(InMemoryMemory()), fake(payments, lambda r: NEVER)])
    order = await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    await env.run()
    assert await env.next_due() is None  # the charge has no timeout: nothing is due
    env2 = _orders_env()
    order = await env2.start(orders, PlaceOrder("o-2", 4200), id="o-2")
    for _ in range(3):
        await env2.step()  # init, charge, its reply: the gather is sent (300s timeout)
    env2.pending.clear()  # the stock and label requests are lost
    await env2.advance(299)
    assert env2.pending == []
    await env2.advance(1)
    assert [e.type for e in env2.pending] == ["resumable.workflow.timer"]
    await env2.settle()
    status = await env2.status(order)
    assert status.status == "failed" and status.error is not None
    assert status.error.errorName == "TimeoutError"
    assert "com.payments.refund" in [e.type for e in env2.emitted]  # compensated


async def test_a_crash_before_the_write_loses_the_step_and_the_event_comes_again() -> None:
    env = _orders_env()
    order = await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    assert await env.step(crash="before-write") == []
    with pytest.raises(LookupError):
        await env.status(order)  # nothing was written
    assert len(env.pending) == 1  # the init is still in flight
    await env.settle()
    assert await env.result(order) == OrderResult("shipped", "pay-o-1")


async def test_a_crash_before_publish_is_recovered_from_the_journal_and_the_outbox() -> None:
    env = _orders_env()
    order = await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    await env.step()
    await env.step()  # the charge request is answered
    assert await env.step(crash="before-publish") == []  # the gather requests are lost...
    resent = [e.type for e in env.pending]
    # ...the reply is still in flight, and the restart re-sent the two requests
    assert resent == ["evt.payments.charge.success", "com.inventory.reserve", "com.shipping.label"]
    await env.settle()
    assert await env.result(order) == OrderResult("shipped", "pay-o-1")
    requests = {e.id for e in env.emitted if e.type == "com.inventory.reserve"}
    assert len(requests) == 1  # re-sent and redelivered under one id


async def test_two_runtimes_on_one_memory_hand_over_an_instance() -> None:
    env = WorkflowEnv([make_workflow(InMemoryMemory()), *make_handlers()], runtimes=2)
    order = await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    await env.step()
    await env.step()
    env.runtime = 1  # its cache does not hold the instance: it replays
    await env.step()
    env.runtime = 0  # its live generator is stale (an older revision): it replays too
    await env.settle()
    assert await env.result(order) == OrderResult("shipped", "pay-o-1")


async def test_signals_and_cancellation() -> None:
    from resumable import wait_for

    class Go(msgspec.Struct):
        n: int

    go = Contract(
        uri="#/signals/go", type="com.test.go", versions={"1.0.0": {"accepts": Go, "emits": {}}}
    )

    async def waits(ctx, start: Number):
        signal = yield wait_for(go, timeout=60)
        yield complete(Number(start.n + signal.data.n))

    workflow = Resumable(twice, versions={"1.0.0": waits}, signals=[go])
    env = WorkflowEnv([workflow])
    early = await env.start(twice, Number(1), id="early")
    env.signal(early, go, Go(10))  # before the workflow waits: kept
    await env.run()
    assert await env.result(early) == Number(11)

    late = await env.start(twice, Number(1), id="late")
    await env.run()
    await env.advance(61)
    env.signal(late, go, Go(10))
    await env.run()  # the timer event is ahead of the signal
    assert (await env.status(late)).error.errorName == "TimeoutError"

    stopped = await env.start(twice, Number(1), id="stopped")
    await env.run()
    env.cancel(stopped, "no longer needed")
    await env.run()
    assert (await env.status(stopped)).status == "cancelled"


async def test_virtual_time_everywhere() -> None:
    env = _orders_env()
    await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    await env.settle()
    assert {e.time for e in env.emitted} == {"2026-01-01T00:00:00.000+00:00"}


def test_a_workflow_env_hosts_only_workflows_and_handlers() -> None:
    with pytest.raises(TypeError, match="hosts Resumable workflows"):
        WorkflowEnv([object()])  # type: ignore[list-item]


async def test_a_memory_opener_gives_each_runtime_its_connection_and_a_restart_new_ones(
    tmp_path,
) -> None:
    opened: list[SQLiteMemory] = []

    def open_file() -> SQLiteMemory:
        opened.append(SQLiteMemory(tmp_path / "wf.db"))
        return opened[-1]

    env = WorkflowEnv([make_workflow(None), *make_handlers()], memory=open_file, runtimes=2)
    assert env.memory is opened[0] and [h.memory for h in env.hosts] == opened[1:3]
    order = await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    await env.step()
    await env.step()
    env.runtime = 1
    await env.step(crash="before-publish")  # both processes die; new ones open the file
    assert [h.memory for h in env.hosts] == opened[3:5]
    for dead in opened[1:3]:
        with pytest.raises(RuntimeError, match="is closed"):
            await dead.keys()
    await env.settle()
    assert await env.result(order) == OrderResult("shipped", "pay-o-1")
    await env.close()
    for connection in [opened[0], *opened[3:]]:
        with pytest.raises(RuntimeError, match="is closed"):
            await connection.keys()
    on_file = SQLiteMemory(tmp_path / "wf.db")
    assert await on_file.keys() == [order.subject]
    await on_file.close()


def test_a_memory_opener_that_opens_no_memory_is_named() -> None:
    with pytest.raises(TypeError, match=r"returned 'wf\.db'"):
        WorkflowEnv(memory=lambda: "wf.db")  # type: ignore[arg-type,return-value]


async def test_the_kit_admits_events_as_the_driver_does() -> None:
    """The kit's processes check an event as ``Resumable.execute`` does (one admission):
    an id over the limits is refused before anything is read or written."""
    from msgspec.structs import replace

    from resumable.demo import init_for, orders
    from resumable.limits import LimitViolation

    env = _orders_env()
    init = replace(init_for(1), id="x" * 513)
    with pytest.raises(LimitViolation, match="over the limit"):
        await env.deliver(init)
    assert await env.memory.read(init.subject) is None
    assert orders.type == init.to
