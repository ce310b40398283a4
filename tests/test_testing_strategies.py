"""resumable.testing.strategies: what they draw can be sent, as an event's payload."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings

from resumable.demo import PlaceOrder, orders
from resumable.events import from_json, to_json
from resumable.testing.strategies import events, payloads


class Counts(msgspec.Struct):
    any: int
    small: int = 0


@settings(max_examples=200, deadline=None)
@given(payloads(Counts))
def test_an_unbounded_int_is_drawn_only_from_the_ints_msgspec_encodes(counts: Counts) -> None:
    assert -(2**63) <= counts.any <= 2**64 - 1
    assert msgspec.json.decode(msgspec.json.encode(counts), type=Counts) == counts


@settings(max_examples=100, deadline=None)
@given(payloads(PlaceOrder))
def test_a_drawn_payload_makes_an_event_that_round_trips(order: PlaceOrder) -> None:
    event = orders.init_event(order, source="com.test.web")
    data = from_json(to_json(event)).data
    assert (data["order_id"], data["amount_cents"]) == (order.order_id, order.amount_cents)


@settings(max_examples=50, deadline=None)
@given(events(orders))
def test_drawn_events_encode(event) -> None:
    assert from_json(to_json(event)).id == event.id
