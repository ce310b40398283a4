"""``Runtime`` and workflow handles on a real SQLite file: start under the user's id,
result, signal, cancel, status, list; the errors for unknown and ended instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from resumable import (
    Contract,
    Resumable,
    Runtime,
    VirtualClock,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowFinished,
    WorkflowHandle,
    WorkflowIdConflict,
    WorkflowNotFound,
    complete,
    sleep,
    wait_for,
)
from resumable.brokers import LocalBroker
from resumable.demo import make_handlers, make_workflow

from orders import OrderResult, OrderState, PlaceOrder, orders

pytestmark = pytest.mark.anyio


class Approval(msgspec.Struct):
    by: str


approve = Contract(
    uri="#/signals/approve",
    type="com.test.approve",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)


async def waits_for_approval(ctx: Any, order: PlaceOrder) -> Any:
    first = yield wait_for(approve)
    second = yield wait_for(approve, timeout=3600)
    by = [first.data.by, "timeout" if second is None else second.data.by]
    yield complete(OrderResult("+".join(by)))


def approvals() -> Resumable[Any]:
    return Resumable(orders, versions={"1.0.0": waits_for_approval}, signals=[approve])


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


async def test_start_then_result_on_sqlite(db: str) -> None:
    async with Runtime([*make_handlers(), make_workflow(None)], memory=db) as rt:
        handle = await rt.start(orders, PlaceOrder("o-1", 4200), id="loan-42")
        assert isinstance(handle, WorkflowHandle) and handle.id == "loan-42"
        status = await handle.status()  # durable when start returns: never "no such"
        assert status.status in ("active", "done")
        with anyio.fail_after(10):
            result = await handle.result(timeout=10)
        assert result == OrderResult("shipped", "pay-o-1")
        done = await handle.status()
        assert done.status == "done" and done.state == OrderState(payment_id="pay-o-1", steps=2)


async def test_the_users_id_is_the_subjects_execution_id(db: str) -> None:
    from resumable.subject import parse_subject

    async with Runtime([*make_handlers(), make_workflow(None)], memory=db) as rt:
        handle = await rt.start(orders, PlaceOrder("o-1", 10), id="order-7")
        subject = parse_subject(await handle.subject())
        assert (subject.execution_id, subject.name, subject.initiator) == (
            "order-7",
            "arvo.orc.order.fulfil",
            "com.resumable.client",
        )


async def test_the_same_id_twice_is_one_instance_and_another_payload_is_an_error(
    db: str,
) -> None:
    runs: list[str] = []

    async def counted(ctx: Any, order: PlaceOrder) -> Any:
        runs.append(order.order_id)
        yield complete(OrderResult("ok"))

    workflow = Resumable(orders, versions={"1.0.0": counted}, state=OrderState)
    async with Runtime([workflow], memory=db) as rt:
        first = await rt.start(orders, PlaceOrder("o-1", 10), id="same")
        again = await rt.start(workflow, {"amount_cents": 10, "order_id": "o-1"}, id="same")
        assert await first.subject() == await again.subject()
        assert await again.result(timeout=5) == OrderResult("ok")
        assert runs == ["o-1"]  # ran once (no replay: the live generator was used)
        with pytest.raises(WorkflowIdConflict, match=r"'same'.*another payload"):
            await rt.start(orders, PlaceOrder("o-2", 10), id="same")


async def test_concurrent_starts_of_one_id_run_it_once(db: str) -> None:
    async def one(ctx: Any, order: PlaceOrder) -> Any:
        yield complete(OrderResult(order.order_id))

    workflow = Resumable(orders, versions={"1.0.0": one})
    async with Runtime([workflow], memory=db) as rt:
        handles: list[WorkflowHandle] = []

        async def start() -> None:
            handles.append(await rt.start(orders, PlaceOrder("x", 1), id="dup"))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(start)
        assert len({await h.subject() for h in handles}) == 1
        assert await handles[0].result(timeout=5) == OrderResult("x")
        status = await handles[0].status()
        assert status.steps == 1


async def test_signal_is_idempotent_by_id_and_the_result_waits_for_it(db: str) -> None:
    async with Runtime([approvals()], memory=db) as rt:
        handle = await rt.start(orders, PlaceOrder("o", 1), id="approve-me")
        await handle.signal(approve, Approval("ada"), id="sig-1")
        await handle.signal(approve, Approval("ada"), id="sig-1")  # the same: taken once
        status = await handle.status()
        assert status.waits_for == "wait_for com.test.approve"  # the second wait, not done
        await handle.signal(approve, Approval("bob"), id="sig-2")
        assert await handle.result(timeout=5) == OrderResult("ada+bob")
        with pytest.raises(WorkflowFinished, match=r"cannot signal .* 'approve-me'.*ended"):
            await handle.signal(approve, Approval("eve"))
        with pytest.raises(WorkflowFinished, match="cannot cancel"):
            await handle.cancel("too late")


async def test_cancel_makes_result_raise_cancelled(db: str) -> None:
    async with Runtime([approvals()], memory=db) as rt:
        handle = await rt.start(orders, PlaceOrder("o", 1), id="to-cancel")
        await handle.cancel("customer changed their mind")
        with pytest.raises(WorkflowCancelled, match=r"'to-cancel'.*changed their mind") as info:
            await handle.result(timeout=5)
        assert info.value.reason == "customer changed their mind"
        assert (await handle.status()).status == "cancelled"


async def test_a_failed_workflow_raises_workflow_failed_with_the_system_error(db: str) -> None:
    async def broken(ctx: Any, order: PlaceOrder) -> Any:
        yield sleep(0)
        raise ValueError(f"no stock for {order.sku}")

    async with Runtime([Resumable(orders, versions={"1.0.0": broken})], memory=db) as rt:
        handle = await rt.start(orders, PlaceOrder("o", 1), id="fails")
        with pytest.raises(WorkflowFailed, match="'fails' failed: ValueError: no stock") as info:
            await handle.result(timeout=5)
        assert info.value.error.errorName == "ValueError"


async def test_unknown_instances_give_clear_errors(db: str) -> None:
    async with Runtime([approvals()], memory=db) as rt:
        ghost = rt.handle(orders, "ghost")
        for action in (
            ghost.status(),
            ghost.result(timeout=1),
            ghost.signal(approve, Approval("x")),
            ghost.cancel(),
        ):
            with pytest.raises(WorkflowNotFound, match="no instance 'ghost'"):
                await action


async def test_a_handle_made_later_reaches_the_instance_and_a_timeout_says_so(db: str) -> None:
    async with Runtime([approvals()], memory=db) as rt:
        await rt.start(orders, PlaceOrder("o", 1), id="later")
    async with Runtime([approvals()], memory=db) as rt:  # a restart
        handle = rt.handle(orders, "later")
        assert (await handle.status()).status == "active"
        with pytest.raises(TimeoutError, match=r"'later' did not end within 0\.2s"):
            await handle.result(timeout=0.2)
        await handle.signal(approve, Approval("a"))
        await handle.signal(approve, Approval("b"))
        assert await handle.result(timeout=5) == OrderResult("a+b")


async def test_list_shows_ids_statuses_and_pages(db: str) -> None:
    async with Runtime([approvals()], memory=db) as rt:
        for n in range(5):
            await rt.start(orders, PlaceOrder(f"o-{n}", 1), id=f"item-{n}")
        await rt.handle(orders, "item-3").cancel()
        seen: list[str] = []
        page = await rt.list(orders, limit=2)
        while True:
            seen += [info.id for info in page.items]
            assert len(page.items) <= 2
            if page.cursor is None:
                break
            page = await rt.list(orders, limit=2, cursor=page.cursor)
        assert sorted(seen) == [f"item-{n}" for n in range(5)]
        cancelled = await rt.list(status="cancelled")
        assert [(i.id, i.workflow, i.version) for i in cancelled.items] == [
            ("item-3", "arvo.orc.order.fulfil", "1.0.0")
        ]


async def test_start_needs_a_running_runtime(db: str) -> None:
    rt = Runtime([approvals()], memory=db)
    with pytest.raises(RuntimeError, match="async with Runtime"):
        await rt.start(orders, PlaceOrder("o", 1), id="x")


async def test_a_virtual_clock_stamps_everything_and_moves_to_timers(db: str) -> None:
    """``ctx.now()`` is virtual after the init event, a service reply and a timer; a retry
    backoff of 0.05 s doubling terminates."""
    from test_local_hosting import flaky, flaky_handler

    from resumable import Retry, call

    seen: list[float] = []

    async def wf(ctx: Any, order: PlaceOrder) -> Any:
        seen.append(ctx.now().timestamp())
        reply = yield call(flaky, order_number(), retry=Retry(attempts=4, initial=0.05, factor=2))
        seen.append(ctx.now().timestamp())
        yield sleep(7 * 24 * 3600)
        seen.append(ctx.now().timestamp())
        yield complete(OrderResult(f"after {reply.data.n}"))

    def order_number() -> Any:
        from harness import Number

        return Number(1)

    clock = VirtualClock()
    start = clock.time()
    workflow = Resumable(orders, versions={"1.0.0": wf}, services=[flaky], state=OrderState)
    async with Runtime([flaky_handler(3), workflow], memory=db, clock=clock) as rt:
        handle = await rt.start(orders, PlaceOrder("o", 1), id="virtual")
        with anyio.fail_after(20):
            assert await handle.result() == OrderResult("after 4")
    week = 7 * 24 * 3600
    assert all(start <= moment <= start + week + 1 for moment in seen), seen
    assert seen[-1] - start >= week


async def test_a_runtime_on_a_local_broker_object_drains_and_keeps_no_history(db: str) -> None:
    broker = LocalBroker()
    async with Runtime([*make_handlers(), make_workflow(None)], memory=db, broker=broker) as rt:
        handles = [await rt.start(orders, PlaceOrder(f"o-{n}", 10), id=f"h-{n}") for n in range(20)]
        for handle in handles:
            assert (await handle.result(timeout=10)).status == "shipped"
    assert broker.events == [] and broker.unsettled == 0
