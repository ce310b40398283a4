"""The demo's order workflow and its contracts: charge the card, then reserve stock and
print a label in parallel; refund the charge if either fails.

Run by ``resumable demo`` (``resumable.demo.runner``) and the example workflow across the
tests and documentation.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgspec

from resumable.contracts import Contract, OrchestratorContract
from resumable.driver import Resumable
from resumable.memory import Memory
from resumable.workflow import Context, WorkflowFunction, call, complete, gather


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


def make_workflow(
    memory: Memory | None, *, fn: WorkflowFunction = fulfil, **options: Any
) -> Resumable[OrderState]:
    """The order workflow on ``memory`` (None: the memory of the ``Runtime`` that runs it):
    ``fulfil``, or another function for version 1.0.0 (a test's variant of it);
    ``options`` go to ``Resumable``."""
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=SERVICES,
        state=OrderState,
        memory=memory,
        **options,
    )
