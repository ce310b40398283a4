"""The demo's four services, which record their effects once per request.

Each service records its effect in the same SQLite file as the workflows, under the
request's event id (an idempotency key), so a request re-sent after a crash is answered
from the record, not done twice.
"""

from __future__ import annotations

import os
import sqlite3

from resumable.demo.workflow import (
    CardCharged,
    CardDeclined,
    CardRefunded,
    ChargeCard,
    LabelPrinted,
    ReserveStock,
    StockReserved,
    inventory,
    payments,
    payments_refund,
    shipping,
)
from resumable.events import Event
from resumable.handler import Emit, EventHandler


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
