"""resumable.state: the one converter for explicit state, for the engine and status queries."""

from __future__ import annotations

from typing import Any

import anyio
import attrs

from resumable.memory import InMemoryMemory
from resumable.queries import read_status
from resumable.record import Header, encode_header
from resumable.state import converter, new_state, structure_state, unstructure_state


class Cents:
    """Not attrs: cattrs needs a hook for it, registered on the shared converter."""

    def __init__(self, value: int) -> None:
        self.value = value


converter.register_structure_hook(Cents, lambda data, _: Cents(int(data)))
converter.register_unstructure_hook(Cents, lambda cents: cents.value)


@attrs.define
class Account:
    owner: str = ""
    balance: Cents = attrs.field(factory=lambda: Cents(0))
    tags: list[str] = attrs.Factory(list)


def test_state_round_trips_through_plain_data() -> None:
    account = Account("ann", Cents(250), ["vip"])
    plain = unstructure_state(account)
    assert plain == {"owner": "ann", "balance": 250, "tags": ["vip"]}
    back = structure_state(plain, Account)
    assert (back.owner, back.balance.value, back.tags) == ("ann", 250, ["vip"])
    assert unstructure_state(None) is None
    assert structure_state(None, Account) is None
    assert structure_state(plain, None) is plain
    assert isinstance(new_state(Account), Account) and new_state(None) is None


def test_read_status_structures_state_with_the_shared_converter() -> None:
    async def main() -> None:
        memory = InMemoryMemory()
        header = Header(
            status="active",
            version="1.0.0",
            seq=1,
            init_event_id="init",
            parent_subject=None,
            state={"owner": "bo", "balance": 99, "tags": []},
        )
        await memory.write("k", revision=0, status="active", header=encode_header(header))
        status = await read_status(memory, "k", state_type=Account)
        assert status is not None
        assert isinstance(status.state.balance, Cents) and status.state.balance.value == 99

    anyio.run(main)


def test_the_engine_stores_state_with_the_shared_converter() -> None:
    from resumable.demo import OrderResult, PlaceOrder, orders
    from resumable.driver import Resumable
    from resumable.workflow import complete

    async def flow(ctx: Any, order: PlaceOrder) -> Any:
        ctx.state.owner = order.order_id
        ctx.state.balance = Cents(order.amount_cents)
        yield complete(OrderResult("ok"))

    async def main() -> None:
        workflow = Resumable(orders, versions={"1.0.0": flow}, state=Account)
        init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
        await workflow.execute(init)
        status = await workflow.status(init.subject)
        assert status is not None and status.status == "done"
        assert status.state.balance.value == 4200  # stored as 4200 by the Cents hook
        raw = await read_status(workflow.memory, init.subject)
        assert raw is not None and raw.state == {"owner": "o-1", "balance": 4200, "tags": []}

    anyio.run(main)
