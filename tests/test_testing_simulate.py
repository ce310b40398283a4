"""resumable.testing's simulator: every disturbance keeps a correct workflow's outcome, a
broken service or workflow is caught, and the printed schedule replays exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, settings

from resumable import Resumable, call, complete, step
from resumable.demo import (
    CardCharged,
    OrderResult,
    PlaceOrder,
    make_handlers,
    make_workflow,
    orders,
    payments,
)
from resumable.memory import InMemoryMemory, SQLiteMemory
from resumable.testing import (
    Crash,
    Deliver,
    Duplicate,
    Evict,
    Handover,
    Scenario,
    Schedule,
    ScheduleFailed,
    Start,
    WorkflowEnv,
    check,
    fake,
    run_once,
    simulate,
)
from resumable.testing.simulate import _sent_differently

QUICK = settings(  # derandomized: a test that expects a bug to be found must not be flaky
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _orders() -> Scenario:
    return Scenario(
        [make_workflow(InMemoryMemory()), *make_handlers()],
        start=[
            Start(orders, PlaceOrder("o-1", 4200), "o-1"),
            Start(orders, PlaceOrder("o-2", 4200, "out-of-stock"), "o-2"),
        ],
    )


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule([Deliver(at=1, index=1)]),
        Schedule([Duplicate(at=0), Duplicate(at=3, index=1)]),
        Schedule([Crash(at=1, point="before-write"), Crash(at=4, point="before-publish")]),
        Schedule([Evict(at=2), Handover(at=3), Evict(at=5), Handover(at=6)]),
    ],
    ids=["reorder", "duplicate", "crash", "evict-handover"],
)
def test_each_disturbance_keeps_the_order_workflows_outcome(schedule: Schedule) -> None:
    outcome = check(_orders(), schedule)
    assert [op.at for op in outcome.schedule] == [op.at for op in schedule]  # all applied
    assert outcome.instances["o-1"]["result"] == {"status": "shipped", "payment_id": "pay-o-1"}
    assert outcome.instances["o-2"]["status"] == "failed"
    assert len(outcome.trace) > len(schedule)


def test_simulate_runs_the_schedules_it_reports() -> None:
    report = simulate(_orders(), settings=QUICK)
    assert report.schedules == 60 and report.per_second > 0


def _charge_then_step(counter):
    async def wf(ctx, order: PlaceOrder):
        yield call(payments, {"order_id": order.order_id, "amount_cents": 1})
        receipt = yield step(lambda: f"receipt-{next(counter)}")  # not idempotent
        yield complete(OrderResult(receipt))

    return wf


def test_a_local_step_that_is_not_idempotent_is_caught_by_a_crash_before_the_write() -> None:
    def handlers():
        workflow = Resumable(
            orders, versions={"1.0.0": _charge_then_step(itertools.count())}, services=[payments]
        )
        return [workflow, fake(payments, lambda r: CardCharged("pay"))]

    scenario = Scenario(handlers, start=[Start(orders, PlaceOrder("o-1", 1), "o-1")])
    with pytest.raises(ScheduleFailed) as failure:
        simulate(scenario, settings=QUICK)
    message = str(failure.value)
    assert "result is {'status': 'receipt-1'" in message
    printed = message.rsplit("replay it with: check(scenario, ", 1)[1][:-1]
    shrunk = eval(printed)  # the printed schedule is code
    assert (
        len(shrunk) <= 2
        and not any(isinstance(op, Deliver) for op in shrunk)
        and any(isinstance(op, Crash) for op in shrunk)
    )
    with pytest.raises(ScheduleFailed):
        check(scenario, shrunk)
    with pytest.raises(ScheduleFailed):
        check(scenario, Schedule([Crash(at=2, point="before-write")]))


def test_the_printed_schedule_replays_the_same_run() -> None:
    scenario = _orders()
    first = run_once(scenario, Schedule([Duplicate(at=1, index=5), Crash(at=3), Handover(at=4)]))
    again = run_once(scenario, first.schedule)
    assert (again.trace, again.instances, again.completions) == (
        first.trace,
        first.instances,
        first.completions,
    )


def test_a_violation_during_a_run_is_a_failure() -> None:
    async def asks_an_unlisted_service(ctx, order: PlaceOrder):
        yield call(payments, {"order_id": order.order_id, "amount_cents": 1})
        yield complete(OrderResult("done"))

    broken = Resumable(orders, versions={"1.0.0": asks_an_unlisted_service}, services=[])
    scenario = Scenario([broken], start=[Start(orders, PlaceOrder("o-1", 1), "o-1")])
    with pytest.raises(ScheduleFailed, match="undisturbed run itself fails: ConfigViolation"):
        check(scenario, Schedule())


def test_a_scenario_runs_each_time_on_a_new_store_of_its_memory(tmp_path) -> None:
    files: list[Path] = []

    def sqlite_store():
        files.append(tmp_path / f"run-{len(files)}.db")
        path = files[-1]
        return lambda: SQLiteMemory(path)

    scenario = Scenario(
        [make_workflow(None), *make_handlers()],
        start=[Start(orders, PlaceOrder("o-1", 4200), "o-1")],
        memory=sqlite_store,
    )
    outcome = check(scenario, Schedule([Crash(at=2), Handover(at=3), Evict(at=4)]))
    assert outcome.instances["o-1"]["result"] == {"status": "shipped", "payment_id": "pay-o-1"}
    assert len(files) == 2 and all(path.exists() for path in files)  # the undisturbed run, this


def _remembers_a_number_across_a_step(counter):
    async def wf(ctx, order: PlaceOrder):
        first = next(counter)  # runs again when the generator is rebuilt: not deterministic
        yield call(payments, {"order_id": order.order_id, "amount_cents": 1})
        yield call(payments, {"order_id": order.order_id, "amount_cents": 2 + first})
        yield complete(OrderResult("done"))

    return wf


def test_an_event_a_workflow_emits_differently_after_a_replay_is_caught() -> None:
    def handlers():
        workflow = Resumable(
            orders,
            versions={"1.0.0": _remembers_a_number_across_a_step(itertools.count())},
            services=[payments],
        )
        return [workflow, fake(payments, lambda r: CardCharged(f"pay-{r.amount_cents}"))]

    scenario = Scenario(handlers, start=[Start(orders, PlaceOrder("o-1", 1), "o-1")])
    check(scenario, Schedule([Duplicate(at=1), Crash(at=3)]))  # the step is not redone
    with pytest.raises(ScheduleFailed) as failure:
        check(scenario, Schedule([Evict(at=2)]))  # the same status, result and request ids
    message = str(failure.value)
    assert "events the workflows emitted differ: 0 extra, 0 missing, 1 changed" in message
    assert "'amount_cents': 2" in message and "'amount_cents': 3" in message


def test_an_outcome_counts_each_instances_journal_and_pending_compensations() -> None:
    outcome = run_once(_orders(), Schedule([Duplicate(at=4), Crash(at=6)]))
    assert outcome.instances["o-1"]["steps"] == 4  # init, charge, stock, label
    assert outcome.instances["o-2"]["compensations"] == []  # refunded: the stack is empty
    assert [e["type"] for e in outcome.sent.values()].count("com.payments.refund") == 1


@pytest.mark.anyio
async def test_a_redelivery_answered_with_other_events_is_named() -> None:
    """The check behind every redelivery: a workflow's events for an event it consumed
    are the ones it produced the first time (this env's are tampered with to see it)."""
    env = WorkflowEnv([make_workflow(None), *make_handlers()])
    await env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
    await env.settle()
    assert _sent_differently(env) is None
    charge = next(e for e in env.emitted if e.type == "com.payments.charge")
    env.emitted.append(msgspec.structs.replace(charge, data={"order_id": "o-1", "amount_cents": 1}))
    problem = _sent_differently(env)
    assert (
        problem is not None and f"emitted event {charge.id} (com.payments.charge) again" in problem
    )
    assert "'amount_cents': 4200} -> {'order_id': 'o-1', 'amount_cents': 1}" in problem
