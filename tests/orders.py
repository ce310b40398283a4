"""The order workflow used across the tests (charge, then stock and label in parallel,
refund on failure): the demo's own definitions."""

from __future__ import annotations

from resumable.demo import (
    SERVICES,
    CardCharged,
    ChargeCard,
    OrderResult,
    OrderState,
    PlaceOrder,
    fulfil,
    inventory,
    make_handlers,
    orders,
    payments,
    payments_refund,
    shipping,
)

HANDLERS = make_handlers()

__all__ = [
    "HANDLERS",
    "SERVICES",
    "CardCharged",
    "ChargeCard",
    "OrderResult",
    "OrderState",
    "PlaceOrder",
    "fulfil",
    "inventory",
    "orders",
    "payments",
    "payments_refund",
    "shipping",
]
