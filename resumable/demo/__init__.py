"""The order-fulfilment demo: a complete workflow with its services, durably on SQLite.

Charge the card; reserve stock and print a shipping label in parallel; refund if either
fails. ``workflow`` holds the contracts and the workflow, ``services`` the four services,
``runner`` what ``resumable demo`` runs. Every name is importable from here.
"""

from resumable.demo.runner import demo_order, init_for, main, run
from resumable.demo.services import EffectLog, make_handlers
from resumable.demo.workflow import (
    SERVICES,
    STOCK_AND_LABEL_TIMEOUT,
    CardCharged,
    CardDeclined,
    CardRefunded,
    ChargeCard,
    LabelPrinted,
    OrderResult,
    OrderState,
    PlaceOrder,
    PrintLabel,
    RefundCard,
    ReserveStock,
    StockReserved,
    fulfil,
    inventory,
    make_workflow,
    orders,
    payments,
    payments_refund,
    shipping,
)

__all__ = [
    "SERVICES",
    "STOCK_AND_LABEL_TIMEOUT",
    "CardCharged",
    "CardDeclined",
    "CardRefunded",
    "ChargeCard",
    "EffectLog",
    "LabelPrinted",
    "OrderResult",
    "OrderState",
    "PlaceOrder",
    "PrintLabel",
    "RefundCard",
    "ReserveStock",
    "StockReserved",
    "demo_order",
    "fulfil",
    "init_for",
    "inventory",
    "main",
    "make_handlers",
    "make_workflow",
    "orders",
    "payments",
    "payments_refund",
    "run",
    "shipping",
]
