"""LocalBroker's transport (topics without an in-process subscriber) runs the shared
conformance suite, plus checks that need its clock or its in-process side."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from resumable.brokers import Broker, LocalBroker
from resumable.events import Event

from .conformance import ACK_WAIT, ALPHA, BrokerConformance, make_event, numbers

pytestmark = pytest.mark.anyio


class FakeClock:
    """A clock the tests move by hand, so ack_wait and nack delays need no sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TestLocalBroker(BrokerConformance):
    @pytest.fixture
    async def broker(self) -> AsyncIterator[Broker]:
        broker = LocalBroker(ack_wait=ACK_WAIT)
        yield broker
        await broker.close()


async def test_ack_wait_and_nack_delay_follow_the_clock() -> None:
    clock = FakeClock()
    broker = LocalBroker(ack_wait=30.0, clock=clock)
    await broker.publish(make_event(1))
    await broker.publish(make_event(2))
    first, _second = await broker.receive(ALPHA, timeout=0)
    await first.nack(delay=10.0)
    clock.advance(9.9)
    assert await broker.receive(ALPHA, timeout=0) == []
    clock.advance(0.1)
    (again,) = await broker.receive(ALPHA, timeout=0)
    assert (numbers([again]), again.attempt) == ([1], 2)
    clock.advance(20.0)  # 30 s since `second` was received
    (expired,) = await broker.receive(ALPHA, timeout=0)
    assert (numbers([expired]), expired.attempt) == ([2], 2)
    clock.advance(10.0)  # 30 s since `again`
    (expired_again,) = await broker.receive(ALPHA, timeout=0)
    assert (numbers([expired_again]), expired_again.attempt) == ([1], 3)


async def test_redelivered_messages_go_before_newer_ones() -> None:
    clock = FakeClock()
    broker = LocalBroker(ack_wait=5.0, clock=clock)
    await broker.publish(make_event(1))
    (first,) = await broker.receive(ALPHA, timeout=0)
    await broker.publish(make_event(2))
    await first.nack()
    assert numbers(await broker.receive(ALPHA, timeout=0)) == [1, 2]


async def test_a_late_ack_still_counts() -> None:
    """Acked after ack_wait, when the event was redelivered already: it is handled, so the
    redelivery's settle changes nothing and nothing comes again."""
    clock = FakeClock()
    broker = LocalBroker(ack_wait=5.0, clock=clock)
    await broker.publish(make_event(1))
    (late,) = await broker.receive(ALPHA, timeout=0)
    clock.advance(5.0)
    (redelivered,) = await broker.receive(ALPHA, timeout=0)
    await late.ack()
    await redelivered.nack()
    clock.advance(60.0)
    assert await broker.receive(ALPHA, timeout=0) == []
    assert await broker.dead_letters(ALPHA) == []


async def test_a_stale_nack_does_not_deliver_twice() -> None:
    clock = FakeClock()
    broker = LocalBroker(ack_wait=5.0, clock=clock)
    await broker.publish(make_event(1))
    (late,) = await broker.receive(ALPHA, timeout=0)
    clock.advance(5.0)
    (redelivered,) = await broker.receive(ALPHA, timeout=0)
    await late.nack()  # it was redelivered already: the nack has nothing left to do
    assert await broker.receive(ALPHA, timeout=0) == []
    await redelivered.ack()


async def test_the_duplicate_window_ends_and_can_be_turned_off() -> None:
    clock = FakeClock()
    broker = LocalBroker(duplicate_window=60.0, clock=clock)
    event = make_event(1)
    await broker.publish(event)
    clock.advance(59.9)
    await broker.publish(event)  # dropped: 59.9 s after the first
    (first,) = await broker.receive(ALPHA, max_messages=5, timeout=0)
    await first.ack()
    clock.advance(0.1)
    await broker.publish(event)  # 60 s after the first: a new message
    (second,) = await broker.receive(ALPHA, max_messages=5, timeout=0)
    assert second.event == event and second.attempt == 1
    await second.ack()
    off = LocalBroker(duplicate_window=0, clock=clock)
    await off.publish(event)
    await off.publish(event)
    assert len(await off.receive(ALPHA, max_messages=5, timeout=0)) == 2


async def test_handlers_in_process_see_every_publish_of_an_event() -> None:
    """The duplicate window is the transport's: a subscribed handler gets each publish (the
    workflows' journals drop the copies), as before."""
    seen: list[str] = []

    class Handler:
        source = ALPHA

        async def execute(self, event: Event) -> list[Event]:
            seen.append(event.id)
            return []

    broker = LocalBroker([Handler()])
    event = make_event(1)
    await broker.publish(event)
    await broker.publish(event)
    assert seen == [event.id, event.id]


async def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="ack_wait must be more than 0"):
        LocalBroker(ack_wait=0)
    with pytest.raises(ValueError, match="duplicate_window must be 0 or more"):
        LocalBroker(duplicate_window=-1)
    broker = LocalBroker()
    with pytest.raises(ValueError, match="max_messages must be 1 or more"):
        await broker.receive(ALPHA, max_messages=0)
    await broker.publish(make_event(1))
    (delivery,) = await broker.receive(ALPHA, timeout=0)
    with pytest.raises(ValueError, match="nack delay must be 0 or more"):
        await delivery.nack(delay=-1)
    await delivery.ack()  # the bad nack did not settle it


async def test_close_wakes_waiting_receivers_and_stops_receiving() -> None:
    broker = LocalBroker()
    got: list[list[object]] = []

    async def consume() -> None:
        got.append(list(await broker.receive(ALPHA, timeout=30.0)))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.sleep(0.05)
            await broker.close()
    assert got == [[]]
    with pytest.raises(RuntimeError, match="closed"):
        await broker.receive(ALPHA, timeout=0)


async def test_handler_outputs_to_other_processes_wait_on_the_transport() -> None:
    class Forward:
        source = "com.test.forward"

        async def execute(self, event: Event) -> list[Event]:
            return [make_event(event.data["n"] + 100)]

    broker = LocalBroker([Forward()])
    await broker.publish(make_event(1, to="com.test.forward"))
    (delivery,) = await broker.receive(ALPHA, timeout=0)
    assert numbers([delivery]) == [101]
    assert [e.to for e in broker.events] == ["com.test.forward", ALPHA]


async def test_many_settled_deliveries_do_not_pile_up_timers() -> None:
    broker = LocalBroker()
    for n in range(500):
        await broker.publish(make_event(n))
    for delivery in await broker.receive(ALPHA, max_messages=500, timeout=0):
        await delivery.ack()
    assert len(broker._topics[ALPHA].timers) < 300


async def test_extend_restarts_the_ack_wait_from_now() -> None:
    clock = FakeClock()
    broker = LocalBroker(ack_wait=30.0, clock=clock)
    await broker.publish(make_event(1))
    (held,) = await broker.receive(ALPHA, timeout=0)
    clock.advance(20.0)
    await held.extend()
    clock.advance(20.0)  # 40 s since it was received, 20 s since it was extended
    assert await broker.receive(ALPHA, timeout=0) == []
    clock.advance(10.0)
    (again,) = await broker.receive(ALPHA, timeout=0)
    assert (numbers([again]), again.attempt) == ([1], 2)
