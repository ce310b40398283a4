"""An app embedding the runtime on SQLite, for the crash test (``test_runtime_crash.py``).

``python tests/crash_app.py DB EFFECTS COUNT`` starts orders ``o-0`` .. ``o-{COUNT-1}``
under their ids, approves each by a signal, and waits for every result; then prints one
``DONE {json}`` line and exits 0. Killed at any point and run again, it does the same: a
start of an existing id returns its handle, a signal with the same id is taken once.

The order workflow charges the card (refunded if the order fails), naps on a timer, waits
for the approval signal, calls a service that fails twice per order (retried with
backoff), then reserves stock and prints a label at once; every fifth order is out of
stock, so it fails and is compensated. Side effects are kept in ``EFFECTS`` once per
request id. Short lease and redelivery settings (``LOCK_TTL``, ``ACK_WAIT``) keep a
killed process's leftovers short.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
from typing import Any

import anyio
import msgspec

from resumable import (
    Contract,
    Emit,
    Event,
    EventHandler,
    Resumable,
    Retry,
    Runtime,
    WorkflowFailed,
    WorkflowFinished,
    call,
    complete,
    gather,
    sleep,
    wait_for,
)
from resumable.brokers import LocalBroker
from resumable.demo import (
    SERVICES,
    ChargeCard,
    EffectLog,
    OrderResult,
    OrderState,
    PlaceOrder,
    PrintLabel,
    RefundCard,
    ReserveStock,
    inventory,
    make_handlers,
    orders,
    payments,
    payments_refund,
    shipping,
)

LOCK_TTL = 1.0
"""The workflow's lease time to live: a killed process's leases block this long at most."""
ACK_WAIT = 1.0
"""The in-process broker's redelivery time (only matters within one process)."""


class Approval(msgspec.Struct):
    by: str


class Check(msgspec.Struct):
    order_id: str


class Checked(msgspec.Struct):
    tries: int


approve = Contract(
    uri="#/signals/approve",
    type="com.crash.approve",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)
fraud_check = Contract(
    uri="#/contracts/fraud",
    type="com.crash.fraud",
    versions={"1.0.0": {"accepts": Check, "emits": {"evt.crash.fraud.done": Checked}}},
)


async def crash_order(ctx: Any, order: PlaceOrder) -> Any:
    reply = yield call(
        payments,
        ChargeCard(order.order_id, order.amount_cents),
        compensate=call(payments_refund, RefundCard(order.order_id)),
    )
    ctx.state.payment_id = reply.data.payment_id
    yield sleep(0.1)
    approval = yield wait_for(approve, timeout=600)
    checked = yield call(
        fraud_check, Check(order.order_id), retry=Retry(attempts=6, initial=0.05, factor=2)
    )
    yield gather(
        call(inventory, ReserveStock(order.order_id, order.sku)),
        call(shipping, PrintLabel(order.order_id)),
    )
    ctx.state.steps = checked.data.tries
    yield complete(OrderResult(f"shipped:{approval.data.by}", ctx.state.payment_id))


def fraud_handler(path: str) -> EventHandler:
    """Fails the first two requests of each order (each retry is a new request id)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("CREATE TABLE IF NOT EXISTS tries (key TEXT PRIMARY KEY, order_id TEXT)")

    async def check(event: Event) -> Emit:
        order_id = event.data.order_id
        db.execute("INSERT OR IGNORE INTO tries VALUES (?, ?)", (event.id, order_id))
        (tries,) = db.execute(
            "SELECT COUNT(*) FROM tries WHERE order_id = ?", (order_id,)
        ).fetchone()
        if tries <= 2:
            raise ConnectionError(f"fraud service down for {order_id} (try {tries})")
        return Emit("evt.crash.fraud.done", Checked(tries))

    return EventHandler(fraud_check, versions={"1.0.0": check})


def order_for(index: int) -> PlaceOrder:
    return PlaceOrder(f"o-{index}", 1000 + index, "out-of-stock" if index % 5 == 0 else "sku-1")


async def main(db: str, effects_path: str, count: int) -> None:
    effects = EffectLog(effects_path)
    workflow = Resumable(
        orders,
        versions={"1.0.0": crash_order},
        services=[*SERVICES, fraud_check],
        signals=[approve],
        state=OrderState,
        lock_ttl=LOCK_TTL,
    )
    handlers = [*make_handlers(effects), fraud_handler(effects_path), workflow]
    broker = LocalBroker(ack_wait=ACK_WAIT)
    began = time.monotonic()
    outcomes: dict[str, str] = {}
    waited: dict[str, float] = {}
    async with Runtime(
        handlers,
        memory=f"sqlite:///{db}",
        broker=broker,
        backoff=(0.02, 2.0, 0.5),
        timer_interval=0.05,
    ) as rt:
        ready = time.monotonic()
        limiter = anyio.CapacityLimiter(50)

        async def one(index: int) -> None:
            async with limiter:
                handle = await rt.start(orders, order_for(index), id=f"o-{index}")
                with contextlib.suppress(WorkflowFinished):  # a run before this one got here
                    await handle.signal(approve, Approval("ops"), id="approval")
            try:
                result = await handle.result(timeout=120)
                outcomes[handle.id] = result.status
            except WorkflowFailed as failed:
                outcomes[handle.id] = f"failed:{failed.error.errorName}"
            waited[handle.id] = time.monotonic() - ready

        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(one, index)
        dead = sum([len(await broker.dead_letters(h.source)) for h in handlers])
    summary = {
        "outcomes": outcomes,
        "slowest": max(waited.values()),
        "startup": ready - began,
        "dead_letters": dead,
    }
    print("DONE " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
