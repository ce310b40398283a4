"""The order-fulfilment demo: DESIGN.md's workflow, complete, on SQLite in one file.

Charge the card; reserve stock and print a shipping label in parallel; refund if either
fails. Services record their effects in the same file under the request's event id (an
idempotency key), so a request re-sent after a crash is answered, not done twice.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import anyio
import attrs
import msgspec

from resumable.contracts import Contract, OrchestratorContract
from resumable.driver import Resumable
from resumable.events import Event
from resumable.handler import Emit, EventHandler
from resumable.memory import Memory, SQLiteMemory
from resumable.record import decode_entry
from resumable.workflow import Context, WorkflowFunction, call, complete, gather

# --- contracts ------------------------------------------------------------------------------


class ChargeCard(msgspec.Struct):
    order_id: str
    amount_cents: int


class CardCharged(msgspec.Struct):
    payment_id: str


class CardDeclined(msgspec.Struct):
    reason: str


class RefundCard(msgspec.Struct):
    order_id: str
    """Refund whatever was charged for this order (the refund is idempotent per order)."""


class CardRefunded(msgspec.Struct):
    refund_id: str


class ReserveStock(msgspec.Struct):
    order_id: str
    sku: str


class StockReserved(msgspec.Struct):
    reservation_id: str


class PrintLabel(msgspec.Struct):
    order_id: str


class LabelPrinted(msgspec.Struct):
    tracking: str


payments = Contract(
    uri="#/contracts/payments/charge",
    type="com.payments.charge",
    versions={
        "1.0.0": {
            "accepts": ChargeCard,
            "emits": {
                "evt.payments.charge.success": CardCharged,
                "evt.payments.charge.declined": CardDeclined,
            },
        }
    },
)
payments_refund = Contract(
    uri="#/contracts/payments/refund",
    type="com.payments.refund",
    versions={
        "1.0.0": {
            "accepts": RefundCard,
            "emits": {"evt.payments.refund.success": CardRefunded},
        }
    },
)
inventory = Contract(
    uri="#/contracts/inventory/reserve",
    type="com.inventory.reserve",
    versions={
        "1.0.0": {
            "accepts": ReserveStock,
            "emits": {"evt.inventory.reserve.success": StockReserved},
        }
    },
)
shipping = Contract(
    uri="#/contracts/shipping/label",
    type="com.shipping.label",
    versions={
        "1.0.0": {
            "accepts": PrintLabel,
            "emits": {"evt.shipping.label.success": LabelPrinted},
        }
    },
)


class PlaceOrder(msgspec.Struct):
    order_id: str
    amount_cents: int
    sku: str = "sku-1"


class OrderResult(msgspec.Struct):
    status: str
    payment_id: str | None = None


orders = OrchestratorContract(
    uri="#/orchestrators/order",
    name="order.fulfil",
    versions={"1.0.0": {"init": PlaceOrder, "complete": OrderResult}},
)

SERVICES = [payments, payments_refund, inventory, shipping]

# --- the workflow ---------------------------------------------------------------------------


@attrs.define
class OrderState:
    """Explicit state, persisted after every step."""

    payment_id: str | None = None
    steps: int = 0


async def fulfil(ctx: Context[OrderState], order: PlaceOrder) -> Any:
    reply = yield call(
        payments,
        ChargeCard(order.order_id, order.amount_cents),
        compensate=call(payments_refund, RefundCard(order.order_id)),  # undone if we fail
    )
    ctx.state.steps += 1
    if reply.type == "evt.payments.charge.declined":
        yield complete(OrderResult("declined"))
        return
    ctx.state.payment_id = reply.data.payment_id
    # Out of stock (a ServiceError) or no answer within the timeout (a TimeoutError) is not
    # handled here: the driver runs the compensation stack (the refund), then reports.
    yield gather(
        call(inventory, ReserveStock(order.order_id, order.sku)),
        call(shipping, PrintLabel(order.order_id)),
        timeout=STOCK_AND_LABEL_TIMEOUT,
    )
    ctx.state.steps += 1
    yield complete(OrderResult("shipped", ctx.state.payment_id))


STOCK_AND_LABEL_TIMEOUT = 300.0
"""Seconds to wait for the stock reservation and the label before refunding."""


# --- services -------------------------------------------------------------------------------


class EffectLog:
    """Service side effects keyed by the request's event id: each is done once per key."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS demo_effects "
            "(key TEXT PRIMARY KEY, kind TEXT NOT NULL, order_id TEXT NOT NULL, result TEXT)"
        )
        self.repeats = 0

    def once(self, key: str, kind: str, order_id: str, result: str) -> str:
        """Record the effect unless ``key`` was done already; return the recorded result."""
        row = self._db.execute("SELECT result FROM demo_effects WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self.repeats += 1
            return str(row[0])
        self._db.execute(
            "INSERT INTO demo_effects (key, kind, order_id, result) VALUES (?, ?, ?, ?)",
            (key, kind, order_id, result),
        )
        return result

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT kind, COUNT(*) FROM demo_effects GROUP BY kind")
        return {str(kind): int(n) for kind, n in rows}

    def close(self) -> None:
        self._db.close()


def make_handlers(effects: EffectLog | None = None) -> list[EventHandler]:
    """The four services; with an effect log, each effect is recorded once per request id."""

    def once(event: Event, kind: str, order_id: str, result: str) -> str:
        return result if effects is None else effects.once(event.id, kind, order_id, result)

    async def charge_card(event: Event) -> Emit:
        order: ChargeCard = event.data
        if order.amount_cents > 100_000:
            return Emit("evt.payments.charge.declined", CardDeclined("over limit"))
        payment = once(event, "charge", order.order_id, f"pay-{order.order_id}")
        return Emit("evt.payments.charge.success", CardCharged(payment))

    async def refund_card(event: Event) -> Emit:
        refund = once(event, "refund", event.data.order_id, f"ref-{event.data.order_id}")
        return Emit("evt.payments.refund.success", CardRefunded(refund))

    async def reserve_stock(event: Event) -> Emit:
        request: ReserveStock = event.data
        if request.sku == "out-of-stock":
            raise RuntimeError(f"no stock left for {request.sku}")
        reservation = once(event, "reserve", request.order_id, f"res-{request.order_id}")
        return Emit("evt.inventory.reserve.success", StockReserved(reservation))

    async def print_label(event: Event) -> Emit:
        tracking = once(event, "label", event.data.order_id, f"trk-{event.data.order_id}")
        return Emit("evt.shipping.label.success", LabelPrinted(tracking))

    return [
        EventHandler(payments, versions={"1.0.0": charge_card}),
        EventHandler(payments_refund, versions={"1.0.0": refund_card}),
        EventHandler(inventory, versions={"1.0.0": reserve_stock}),
        EventHandler(shipping, versions={"1.0.0": print_label}),
    ]


def make_workflow(
    memory: Memory, *, fn: WorkflowFunction = fulfil, **options: Any
) -> Resumable[OrderState]:
    """The order workflow on ``memory``: ``fulfil``, or another function for version 1.0.0
    (a test's variant of it); ``options`` go to ``Resumable``."""
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=SERVICES,
        state=OrderState,
        memory=memory,
        **options,
    )


def demo_order(index: int) -> PlaceOrder:
    """Order ``index`` of the demo: about 1 in 10 declined, 1 in 20 out of stock."""
    amount = 500 + (index * 7919) % 20_000
    if index % 10 == 3:
        amount = 250_000
    sku = "out-of-stock" if index % 20 == 7 else "sku-1"
    return PlaceOrder(f"o-{index}", amount, sku)


def init_for(index: int) -> Event:
    """The init event of order ``index``: its subject is fixed, so a rerun can find it."""
    return orders.init_event(
        demo_order(index),
        source="com.shop.web",
        execution_id=f"order-{index}",
        id=f"init-order-{index}",
    )


# --- the command ----------------------------------------------------------------------------


class _Counted:
    """Wraps the workflow for the broker: counts steps and can crash after N of them."""

    def __init__(
        self, workflow: Resumable[OrderState], crash_after: int | None, out: TextIO
    ) -> None:
        self.workflow = workflow
        self.source = workflow.source
        self.crash_after = crash_after
        self.out = out
        self.steps = 0

    async def outbox(self) -> list[Event]:
        return await self.workflow.outbox()

    async def execute(self, event: Event) -> list[Event]:
        events = await self.workflow.execute(event)
        self.steps += 1
        if self.crash_after is not None and self.steps >= self.crash_after:
            self.out.write(
                f"\n!! simulated crash after {self.steps} steps: the process exits now, "
                "before this step's events are published\n"
            )
            self.out.flush()
            os._exit(3)
        return events


class _Progress:
    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.last = 0.0
        self.start = time.perf_counter()

    def show(self, done: int, steps: int, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        rate = steps / max(now - self.start, 1e-9)
        self.out.write(f"\r  {done:>6}/{self.total} orders finished   {rate:>8,.0f} steps/s")
        self.out.flush()


async def run(
    path: str | os.PathLike[str] = "resumable-demo.db",
    *,
    count: int = 1000,
    crash_after: int | None = None,
    out: TextIO = sys.stdout,
) -> dict[str, int]:
    """Run ``count`` orders on the SQLite file at ``path``, resuming any earlier run."""
    memory = SQLiteMemory(path)
    effects = EffectLog(path)
    workflow = make_workflow(memory)
    counted = _Counted(workflow, crash_after, out)
    finished: dict[str, Event] = {}

    class Shop:
        source = "com.shop.web"

        async def execute(self, event: Event) -> list[Event]:
            finished[event.subject] = event
            return []

    from resumable.brokers import LocalBroker

    broker = LocalBroker([*make_handlers(effects), counted, Shop()])
    started_before = 0
    for i in range(count):
        if await memory.read(init_for(i).subject) is not None:
            started_before += 1
    out.write(f"resumable demo: {count} orders on {Path(path).resolve()}\n")
    resent = 0
    if started_before:
        active = len(await memory.keys(status="active"))
        out.write(
            f"  found {started_before} orders from an earlier run ({active} unfinished); "
            "resuming them from their journals\n"
        )
        resent = await broker.recover()
        out.write(
            f"  re-sent {_count(resent, 'request whose reply was', 'requests whose replies were')}"
            " lost with the process\n"
        )
    progress = _Progress(count, out)
    started_at = time.perf_counter()
    for i in range(count):
        init = init_for(i)
        if await memory.read(init.subject) is None:
            await broker.publish(init)
        progress.show(i + 1, counted.steps)
    progress.show(count, counted.steps, force=True)
    elapsed = time.perf_counter() - started_at
    summary = await _summarise(memory, count)
    summary["steps"] = counted.steps
    summary["events"] = len(broker.events)
    summary["resent"] = resent
    summary["errors"] = len(broker.errors)
    summary["repeated_effects"] = effects.repeats
    effect_counts = effects.counts()
    out.write(
        f"\n  completed {summary['done']} of {count} orders: {summary['shipped']} shipped, "
        f"{summary['declined']} declined, {summary['compensated']} failed and compensated "
        "(refunded)\n"
        f"  this run: {counted.steps} workflow steps, {len(broker.events)} events, "
        f"{counted.steps / max(elapsed, 1e-9):,.0f} steps/s\n"
        f"  effects: {effect_counts.get('charge', 0)} charges, "
        f"{effect_counts.get('reserve', 0)} reservations, "
        f"{effect_counts.get('label', 0)} labels, {effect_counts.get('refund', 0)} refunds; "
        f"{_count(effects.repeats, 'repeated request', 'repeated requests')} answered from the "
        "effect log, not redone\n"
    )
    if summary["completions"] == summary["done"] and summary["done"] == count:
        out.write("  every order completed exactly once; no completed step was run again\n")
    else:
        out.write(
            f"  {count - summary['done']} orders unfinished, "
            f"{summary['completions'] - summary['done']} extra completions\n"
        )
    if broker.errors:
        out.write(f"  {len(broker.errors)} delivery errors, first: {broker.errors[0][0]}\n")
    effects.close()
    await memory.close()
    return summary


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


async def _summarise(memory: Memory, count: int) -> dict[str, int]:
    """Outcomes read back from the records: statuses, results and reports journaled.

    A finished order is ``done`` (shipped or declined) or ``failed`` (it could not ship and
    its charge was refunded by the compensation stack); each reports to the shop once."""
    summary = {"done": 0, "shipped": 0, "declined": 0, "compensated": 0, "completions": 0}
    for i in range(count):
        stored = await memory.read(init_for(i).subject, journal=True)
        if stored is None or stored.status not in ("done", "failed") or stored.journal is None:
            continue
        summary["done"] += 1
        for raw in stored.journal:
            for event in decode_entry(raw).produced:
                if event.type == orders.complete_type:
                    summary["completions"] += 1
                    summary[event.data["status"]] += 1
                elif event.type == orders.system_error_type:
                    summary["completions"] += 1
                    summary["compensated"] += 1
    return summary


def main(
    path: str,
    count: int,
    crash_after: int | None,
    fresh: bool,
    out: TextIO = sys.stdout,
    runner: Callable[..., Any] = anyio.run,
) -> int:
    if fresh:
        for suffix in ("", "-wal", "-shm", "-leases", "-leases-wal", "-leases-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    summary: dict[str, int] = runner(
        lambda: run(path, count=count, crash_after=crash_after, out=out)
    )
    return 0 if summary["done"] == count and not summary["errors"] else 1
