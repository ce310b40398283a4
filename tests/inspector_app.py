"""The application the inspector's tests look at: the demo's orders, plus expenses that
wait for an approval signal and pay out through a child workflow.

``fill(path)`` runs the demo on a SQLite file and adds expenses in every interesting
state: waiting for a signal (one with ``<script>`` in its state), approved with a
``<script>`` in the signal's payload (done, with a child), and parked (started by an
older version of the code). ``handlers(memory)`` is what ``resumable ui --app`` loads.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import attrs
import msgspec

from resumable import Contract, OrchestratorContract, Resumable, call, complete, wait_for
from resumable.brokers import LocalBroker
from resumable.demo import runner
from resumable.demo.services import make_handlers
from resumable.demo.workflow import ChargeCard, make_workflow, payments
from resumable.memory import Memory, SQLiteMemory
from resumable.subject import new_subject
from resumable.types import Handler

SHOP = "com.shop.web"
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


class Expense(msgspec.Struct):
    expense_id: str
    amount_cents: int
    note: str = ""


class Decision(msgspec.Struct):
    status: str
    by: str | None = None


class Approval(msgspec.Struct):
    by: str
    level: int = 1
    note: str | None = None
    urgent: bool = False


class Payout(msgspec.Struct):
    expense_id: str
    amount_cents: int


class Paid(msgspec.Struct):
    payment_id: str


expenses = OrchestratorContract(
    uri="#/orchestrators/expense",
    name="expense.approve",
    versions={"1.0.0": {"init": Expense, "complete": Decision}},
)
payouts = OrchestratorContract(
    uri="#/orchestrators/payout",
    name="expense.payout",
    versions={"1.0.0": {"init": Payout, "complete": Paid}},
)
approve = Contract(
    uri="#/signals/expense/approve",
    type="com.expense.approve",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)


@attrs.define
class ExpenseState:
    note: str = ""
    approved_by: str | None = None
    remark: str | None = None


async def approve_then_pay(ctx: Any, expense: Expense) -> Any:
    ctx.state.note = expense.note
    signal = yield wait_for(approve)
    ctx.state.approved_by = signal.data.by
    ctx.state.remark = signal.data.note
    yield call(payouts, Payout(expense.expense_id, expense.amount_cents))
    yield complete(Decision("paid", signal.data.by))


async def charge_first(ctx: Any, expense: Expense) -> Any:
    """An older version of the code: it charged before asking for the approval."""
    ctx.state.note = expense.note
    yield call(payments, ChargeCard(expense.expense_id, expense.amount_cents))
    signal = yield wait_for(approve)
    yield complete(Decision("paid", signal.data.by))


async def pay(ctx: Any, payout: Payout) -> Any:
    reply = yield call(payments, ChargeCard(payout.expense_id, payout.amount_cents))
    yield complete(Paid(reply.data.payment_id))


def make_expenses(memory: Memory, fn: Any = approve_then_pay) -> Resumable[ExpenseState]:
    return Resumable(
        expenses,
        versions={"1.0.0": fn},
        services=[payouts, payments],
        signals=[approve],
        state=ExpenseState,
        memory=memory,
    )


def make_payouts(memory: Memory) -> Resumable[Any]:
    return Resumable(payouts, versions={"1.0.0": pay}, services=[payments], memory=memory)


def handlers(memory: Memory) -> list[Handler]:
    """The handlers of the application, as ``resumable ui --app inspector_app:handlers``."""
    return [*make_handlers(), make_workflow(memory), make_expenses(memory), make_payouts(memory)]


def expense_subject(expense_id: str) -> str:
    return new_subject(
        orchestrator=expenses.type, version="1.0.0", initiator=SHOP, execution_id=expense_id
    )


def _init(expense_id: str, note: str = "") -> Any:
    return expenses.init_event(
        Expense(expense_id, 1200, note), source=SHOP, execution_id=expense_id
    )


async def fill(path: Path, orders: int = 40) -> dict[str, str]:
    """Fill the SQLite file at ``path``; returns the subjects of the expenses by name."""
    await runner.run(path, count=orders, out=io.StringIO())
    memory = SQLiteMemory(path)
    try:
        old = LocalBroker([*make_handlers(), make_expenses(memory, charge_first)])
        await old.publish(_init("exp-parked", "bought before the rules changed"))
        broker = LocalBroker(handlers(memory))
        await broker.publish(_init("exp-waiting", XSS))
        await broker.publish(_init("exp-signal", "a team lunch"))
        await broker.publish(_init("exp-approved", "train tickets"))
        current = make_expenses(memory)
        approval = Approval(by="dora", level=2, note=XSS, urgent=True)
        await broker.publish(
            current.signal_event(expense_subject("exp-approved"), approve, approval, source=SHOP)
        )
        # An approval reaching the parked one's new code: replay diverges, it parks.
        late = Approval(by="carol")
        await current.execute(
            current.signal_event(expense_subject("exp-parked"), approve, late, source=SHOP)
        )
    finally:
        await memory.close()
    return {
        name: expense_subject(name)
        for name in ("exp-parked", "exp-waiting", "exp-signal", "exp-approved")
    }
