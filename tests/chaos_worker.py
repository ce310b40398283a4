"""The handlers the chaos test's worker processes run: ``resumable worker chaos_worker:handlers``.

The demo's order workflow on the memory the command was given, and the demo's four
services, whose side effects are counted in PostgreSQL when ``CHAOS_EFFECTS`` names a
database (``postgresql://...?schema=name``): one row per (kind, idempotency key) with the
number of times the service was asked, so a duplicate request shows as ``attempts > 1``
and a duplicate *effect* (two keys for one order) as a second row.

``CHAOS_LOCK_TTL`` sets the workflow's lease time to live (seconds): a worker killed while
holding leases blocks those workflows only that long. ``CHAOS_NAP`` (seconds) makes the
workflow sleep before it completes, so every report is emitted by a timer's step.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from resumable import Emit, Event, EventHandler, sleep
from resumable.demo import (
    CardCharged,
    CardDeclined,
    CardRefunded,
    ChargeCard,
    LabelPrinted,
    ReserveStock,
    StockReserved,
    demo_order,
    fulfil,
    inventory,
    make_handlers,
    make_workflow,
    orders,
    payments,
    payments_refund,
    shipping,
)
from resumable.memory import Memory
from resumable.workflow import Complete, WorkflowFunction

__all__ = [
    "PostgresEffects",
    "create_effects_table",
    "expected_outcome",
    "handlers",
    "outcome",
    "split_schema",
]


def outcome(report: Event) -> str:
    """What an order's report to the shop says: its completion's status, or
    ``compensated`` for the system error of an order that could not ship (refunded)."""
    if report.type == orders.complete_type:
        return str(report.data["status"])
    if report.type == orders.system_error_type:
        return "compensated"
    raise ValueError(f"{report.type} is not a report of the order workflow")


def expected_outcome(index: int) -> str:
    """What the demo's order ``index`` must end as."""
    order = demo_order(index)
    if order.amount_cents > 100_000:
        return "declined"
    return "compensated" if order.sku == "out-of-stock" else "shipped"


def split_schema(url: str) -> tuple[str, str]:
    """``postgresql://...?schema=s`` as (the DSN without ``schema``, the schema name)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), "chaos")
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    return dsn, schema


async def create_effects_table(connection: Any, schema: str) -> None:
    """Create the effects table if missing. Under an advisory lock: processes starting
    together would otherwise race in ``CREATE SCHEMA IF NOT EXISTS`` (a unique violation)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", schema)
        await connection.execute(
            f'CREATE SCHEMA IF NOT EXISTS "{schema}";'
            f'CREATE TABLE IF NOT EXISTS "{schema}".effects ('
            " kind text NOT NULL, key text NOT NULL, order_id text NOT NULL,"
            " result text NOT NULL, attempts integer NOT NULL DEFAULT 1,"
            " PRIMARY KEY (kind, key))"
        )


class PostgresEffects:
    """Side effects keyed by (kind, idempotency key), counted in a PostgreSQL table."""

    def __init__(self, url: str) -> None:
        self.dsn, self.schema = split_schema(url)
        self._pool: Any = None

    async def _ready(self) -> Any:
        if self._pool is None:
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
            async with pool.acquire() as connection:
                await create_effects_table(connection, self.schema)
            self._pool = pool
        return self._pool

    async def once(self, key: str, kind: str, order_id: str, result: str) -> str:
        """Do the effect unless ``(kind, key)`` was done already; count the request either
        way; return the recorded result."""
        pool = await self._ready()
        recorded: str = await pool.fetchval(
            f'INSERT INTO "{self.schema}".effects AS e (kind, key, order_id, result)'
            " VALUES ($1, $2, $3, $4) ON CONFLICT (kind, key)"
            " DO UPDATE SET attempts = e.attempts + 1 RETURNING e.result",
            kind,
            key,
            order_id,
            result,
        )
        return recorded


def services(effects: PostgresEffects) -> list[EventHandler]:
    """The demo's services (same outcomes as ``resumable.demo.make_handlers``), recording
    their effects in PostgreSQL."""

    async def charge_card(event: Event) -> Emit:
        order: ChargeCard = event.data
        if order.amount_cents > 100_000:
            return Emit("evt.payments.charge.declined", CardDeclined("over limit"))
        payment = await effects.once(event.id, "charge", order.order_id, f"pay-{order.order_id}")
        return Emit("evt.payments.charge.success", CardCharged(payment))

    async def refund_card(event: Event) -> Emit:
        order_id = event.data.order_id
        refund = await effects.once(event.id, "refund", order_id, f"ref-{order_id}")
        return Emit("evt.payments.refund.success", CardRefunded(refund))

    async def reserve_stock(event: Event) -> Emit:
        request: ReserveStock = event.data
        if request.sku == "out-of-stock":
            raise RuntimeError(f"no stock left for {request.sku}")
        reservation = await effects.once(
            event.id, "reserve", request.order_id, f"res-{request.order_id}"
        )
        return Emit("evt.inventory.reserve.success", StockReserved(reservation))

    async def print_label(event: Event) -> Emit:
        order_id = event.data.order_id
        tracking = await effects.once(event.id, "label", order_id, f"trk-{order_id}")
        return Emit("evt.shipping.label.success", LabelPrinted(tracking))

    return [
        EventHandler(payments, versions={"1.0.0": charge_card}),
        EventHandler(payments_refund, versions={"1.0.0": refund_card}),
        EventHandler(inventory, versions={"1.0.0": reserve_stock}),
        EventHandler(shipping, versions={"1.0.0": print_label}),
    ]


def nap_before_completing(fn: WorkflowFunction, seconds: float) -> WorkflowFunction:
    """``fn`` with a ``sleep(seconds)`` before each ``complete``: what ``fn`` yields is
    passed on, and what the driver sends or throws back goes to ``fn``."""

    async def napping(ctx: Any, data: Any) -> Any:
        inner = fn(ctx, data)
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                request = await (inner.athrow(error) if error else inner.asend(value))
            except StopAsyncIteration:
                return
            if isinstance(request, Complete):
                yield sleep(seconds)
            try:
                value, error = (yield request), None
            except Exception as thrown:  # a ServiceError or TimeoutError at this yield
                value, error = None, thrown

    return napping


def handlers(memory: Memory) -> list[Any]:
    """The order workflow on ``memory`` and its services (a HANDLERS factory)."""
    options: dict[str, Any] = {}
    if "CHAOS_LOCK_TTL" in os.environ:
        options["lock_ttl"] = float(os.environ["CHAOS_LOCK_TTL"])
    nap = float(os.environ.get("CHAOS_NAP", "0"))
    fn = nap_before_completing(fulfil, nap) if nap else fulfil
    workflow = make_workflow(memory, fn=fn, **options)
    url = os.environ.get("CHAOS_EFFECTS")
    return [workflow, *(services(PostgresEffects(url)) if url else make_handlers())]
