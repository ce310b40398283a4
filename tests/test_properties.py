"""Hypothesis properties of the driver: arrival order, replay, duplicates, crashes, changed
code. They run through the test kit (resumable.testing), as a user's own tests would:
``check`` runs a scenario under a schedule and compares it with the undisturbed run (status,
state, result, journal length, completions, every event the workflows emitted, each
service's requests and its answers to repeated ones); ``WorkflowEnv`` steps by hand."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable import Resumable, call, complete, gather
from resumable.memory import InMemoryMemory
from resumable.testing import (
    Deliver,
    Evict,
    Scenario,
    Schedule,
    Start,
    WorkflowEnv,
    check,
    schedules,
)
from resumable.testing.strategies import payloads

from harness import Number, echo_contract, echo_handler, order_workflow, sqlite_stores
from orders import HANDLERS, SERVICES, OrderResult, PlaceOrder, orders

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

orders_strategy = st.one_of(
    st.builds(  # each path of the order workflow: shipped, declined, out of stock
        PlaceOrder,
        order_id=st.sampled_from(["o-1", "o-2"]),
        amount_cents=st.sampled_from([10, 4200, 500_000]),
        sku=st.sampled_from(["sku-1", "out-of-stock"]),
    ),
    payloads(PlaceOrder),  # and any order the contract accepts
)


instance_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,11}", fullmatch=True)
"""Instance ids: every id an event gets derives from its instance's subject."""


def _one_order(order: PlaceOrder, id: str = "o", **options) -> Scenario:
    return Scenario(
        [order_workflow(InMemoryMemory()), *HANDLERS], start=[Start(orders, order, id)], **options
    )


def _fan_out(width: int):
    async def wf(ctx, order: PlaceOrder):
        replies = yield gather(*(call(echo_contract, Number(i * 10)) for i in range(width)))
        yield complete(OrderResult(",".join(str(r.data.n) for r in replies)))

    return wf


@PROFILE
@given(width=st.integers(1, 8), data=st.data())
def test_any_arrival_order_of_gather_replies_gives_the_same_result(width, data) -> None:
    workflow = Resumable(orders, versions={"1.0.0": _fan_out(width)}, services=[echo_contract])
    scenario = Scenario([workflow, echo_handler()], start=[Start(orders, PlaceOrder("o", 1), "o")])
    # Step 0 sends the requests, steps 1..width answer them; then the replies, in `arrival`.
    arrival = data.draw(st.permutations(range(width)), label="arrival order of the replies")
    in_flight = list(range(width))
    schedule = []
    for step, reply in enumerate(arrival, start=1 + width):
        schedule.append(Deliver(at=step, index=in_flight.index(reply)))
        in_flight.remove(reply)
    outcome = check(scenario, Schedule(schedule))
    assert outcome.schedule == Schedule(op for op in schedule if op.index)  # all applied
    expected = ",".join(str(i * 10 + 1) for i in range(width))
    assert outcome.instances["o"]["result"] == {"status": expected, "payment_id": None}


@PROFILE
@given(order=orders_strategy, id=instance_ids, evict=st.sets(st.integers(0, 15)))
def test_dropping_the_cache_before_any_step_gives_identical_events_and_state(order, id, evict):
    scenario = _one_order(order, id)
    outcome = check(scenario, Schedule(Evict(at=step) for step in sorted(evict)))
    reference = anyio.run(scenario.reference)
    assert list(outcome.sent.items()) == list(reference.sent.items())  # same order, parents
    assert outcome.instances == reference.instances


@PROFILE
@given(
    order=orders_strategy,
    id=instance_ids,
    schedule=schedules(steps=16, max_ops=16, crashes=False, handovers=False),
)
def test_delivering_any_event_twice_has_no_extra_effect(order, id, schedule) -> None:
    """Any order, any event delivered twice, live generators dropped at any point."""
    outcome = check(_one_order(order, id), schedule)
    status = outcome.instances[id]["status"]
    assert status in ("done", "failed") and len(outcome.completions) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=orders_strategy, id=instance_ids, schedule=schedules(steps=16, max_ops=16), data=st.data()
)
def test_replay_on_sqlite_from_a_new_process_view(order, id, schedule, data) -> None:
    """The same on a real SQLite file: each runtime on its own connection, a crash opens
    new ones; with every step's live generators dropped, every step replays from the file."""
    cold = data.draw(st.booleans(), label="drop the live generators before every step")
    if cold:
        schedule = Schedule([*schedule, *(Evict(at=step) for step in range(16))])
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = _one_order(order, id, memory=sqlite_stores(Path(tmp)))
        outcome = check(sqlite, schedule)
        on_file = anyio.run(sqlite.reference)  # what check compared the run with
    in_memory = anyio.run(_one_order(order, id).reference)
    assert outcome.instances == in_memory.instances
    assert (on_file.sent, on_file.completions) == (in_memory.sent, in_memory.completions)


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


def _versioned(diverge_at: int | None, length: int) -> Resumable:
    return Resumable(
        orders,
        versions={"1.0.0": _workflow_with_divergence(diverge_at, length)},
        services=[echo_contract, *SERVICES],
    )


@PROFILE
@given(length=st.integers(1, 6), data=st.data())
def test_changing_the_code_between_steps_parks_at_the_changed_step(length, data) -> None:
    steps_taken = data.draw(st.integers(1, length), label="steps before redeploy")
    diverge_at = data.draw(st.integers(0, steps_taken - 1), label="changed step")

    async def run() -> None:
        env = WorkflowEnv([_versioned(None, length), echo_handler()])
        app = await env.start(orders, PlaceOrder("o", 1), id="o")
        for _ in range(steps_taken):
            await env.step()  # workflow step
            await env.step()  # service reply
        env.add(_versioned(diverge_at, length))  # the new code, deployed: a new process
        await env.restart()
        before = await env.memory.read(app.subject, journal=True)
        reply = env.pending[0]
        assert reply.type == "evt.test.echo.done"
        assert await env.step() == []
        status = await env.status(app)
        assert status.status == "parked" and status.parked is not None
        assert status.parked.step == diverge_at
        assert status.parked.recorded == "call com.test.echo"
        assert status.parked.replayed == "call com.inventory.reserve"
        after = await env.memory.read(app.subject, journal=True)
        assert before is not None and after is not None and after.journal == before.journal

    anyio.run(run)


@PROFILE
@given(order=orders_strategy, schedule=schedules(steps=12))
def test_any_schedule_ends_as_the_undisturbed_run(order, schedule) -> None:
    """Any order, duplicates, crashes before the write and before the publish, evictions
    and handovers, at once, on two instances."""
    scenario = Scenario(
        [order_workflow(InMemoryMemory()), *HANDLERS],
        start=[Start(orders, order, "o"), Start(orders, PlaceOrder("p", 10), "p")],
    )
    outcome = check(scenario, schedule)
    assert outcome.instances["p"]["result"] == {"status": "shipped", "payment_id": "pay-p"}


def test_the_order_paths_each_end_as_expected() -> None:
    """The strategy's three paths are what the properties above compare with."""
    for order, status in [
        (PlaceOrder("o-1", 10), {"status": "shipped", "payment_id": "pay-o-1"}),
        (PlaceOrder("o-1", 500_000), {"status": "declined", "payment_id": None}),
    ]:
        reference = anyio.run(_one_order(order).reference)
        assert reference.instances["o"]["result"] == status
    failed = anyio.run(_one_order(PlaceOrder("o-1", 10, "out-of-stock")).reference)
    assert failed.instances["o"]["status"] == "failed"
    assert msgspec.to_builtins(failed.instances["o"]["compensations"]) == []
