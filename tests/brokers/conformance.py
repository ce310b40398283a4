"""The checks every ``Broker`` transport must pass.

Subclass ``BrokerConformance`` in a ``test_*.py`` module (name the subclass ``Test...``) and
provide a ``broker`` fixture: a fresh broker with ``ack_wait=1.0`` on a namespace no other
test uses (a key prefix, a stream name, ...), closed after the test and its namespace
deleted::

    class TestMyBroker(BrokerConformance):
        @pytest.fixture
        async def broker(self) -> AsyncIterator[Broker]:
            broker = MyBroker(namespace=f"test-{uuid.uuid4().hex}", ack_wait=1.0)
            yield broker
            await broker.close()
            await delete_namespace(broker)

Where two broker objects can consume the same namespace (two processes sharing a
consumer group), also override ``peer``: a second broker on ``broker``'s namespace, closed
after the test. By default ``peer`` is ``broker`` itself, and the sharing checks use two
concurrent ``receive`` calls on it.

The contract beyond ``resumable.brokers``' docstrings: settling a delivery twice raises
``RuntimeError`` whose message says "already settled"; the broker's timeouts are real
seconds; topics are lowercase dotted names (``com.test.alpha``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable.brokers import Broker, DeadLetter, Delivery
from resumable.events import Event

ACK_WAIT = 1.0
"""The ``ack_wait`` every ``broker`` fixture must use."""

ALPHA = "com.test.alpha"
BETA = "com.test.beta"


def make_event(n: int, to: str = ALPHA, **fields: Any) -> Event:
    """An event numbered ``n`` (in ``data['n']``) to the topic ``to``; ``fields`` override."""
    values: dict[str, Any] = {
        "source": "com.test.producer",
        "type": "com.test.thing",
        "subject": f"s-{n}",
        "data": {"n": n},
        "to": to,
    }
    return Event(**(values | fields))


def numbers(deliveries: Iterable[Delivery]) -> list[int]:
    return [delivery.event.data["n"] for delivery in deliveries]


async def receive_all(
    broker: Broker, topic: str, count: int, *, limit: float = 10.0
) -> list[Delivery]:
    """Receive until ``count`` deliveries came, or fail after ``limit`` seconds."""
    got: list[Delivery] = []
    deadline = time.monotonic() + limit
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} deliveries came"
        got += await broker.receive(topic, max_messages=count - len(got), timeout=0.5)
    return got


async def ack_all(deliveries: Iterable[Delivery]) -> None:
    for delivery in deliveries:
        await delivery.ack()


class BrokerConformance:
    """Transport behaviour shared by all brokers: FIFO topics, settling, redelivery."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def broker(self) -> Broker:
        pytest.fail("subclass BrokerConformance and override the `broker` fixture")

    @pytest.fixture
    def peer(self, broker: Broker) -> Broker:
        """A second consumer of ``broker``'s namespace; by default ``broker`` itself."""
        return broker

    # Publish and receive.

    async def test_publish_then_receive_gives_an_equal_event(self, broker: Broker) -> None:
        event = make_event(
            1,
            data={"n": 1, "nested": {"list": [1, 2.5, "three", None, True]}, "text": "ünï"},
            dataschema="com.test.thing/1.0.0",
            accesscontrol="role=admin",
            redirectto="com.test.redirect",
            executionunits=1.5,
            parentid="parent-1",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            tracestate="vendor=value",
            extensions={"tenant": "acme", "priority": 3, "urgent": True, "ratio": 0.5},
        )
        await broker.publish(event)
        (delivery,) = await broker.receive(ALPHA, timeout=5.0)
        assert isinstance(delivery, Delivery)
        assert delivery.event == event
        assert delivery.event.domain is None
        assert type(delivery.event.data) is dict
        assert (delivery.topic, delivery.attempt) == (ALPHA, 1)
        await delivery.ack()

    async def test_fifo_per_topic(self, broker: Broker) -> None:
        for n in range(20):
            await broker.publish(make_event(n))
        got: list[Delivery] = []
        while len(got) < 20:
            batch = await broker.receive(ALPHA, max_messages=7, timeout=2.0)
            assert batch, f"only {len(got)} of 20 came"
            assert len(batch) <= 7
            got += batch
        assert numbers(got) == list(range(20))
        await ack_all(got)

    async def test_topics_are_independent(self, broker: Broker) -> None:
        for n in range(6):
            await broker.publish(make_event(n, to=ALPHA if n % 2 == 0 else BETA))
        alpha = await receive_all(broker, ALPHA, 3)
        assert numbers(alpha) == [0, 2, 4]
        assert await broker.receive(ALPHA, timeout=0.2) == []
        beta = await receive_all(broker, BETA, 3)
        assert numbers(beta) == [1, 3, 5]
        assert {d.topic for d in alpha} == {ALPHA} and {d.topic for d in beta} == {BETA}
        await ack_all(alpha + beta)

    async def test_a_second_publish_of_one_event_is_dropped(self, broker: Broker) -> None:
        """Within the duplicate window, the same event id is queued once: before it is
        received, while it is in flight, and after it was acked."""
        event, other = make_event(1), make_event(1)
        await broker.publish(event)
        await broker.publish(event)
        await broker.publish(other)  # same content, another id: another event
        first = await receive_all(broker, ALPHA, 2)
        assert [d.event.id for d in first] == [event.id, other.id]
        await broker.publish(event)
        await first[0].ack()
        await broker.publish(event)
        await first[1].ack()
        assert await broker.receive(ALPHA, timeout=0.3) == []
        assert await broker.receive("com.test.gamma", timeout=0.1) == []

    async def test_receive_with_nothing_returns_empty_after_its_timeout(
        self, broker: Broker
    ) -> None:
        start = time.monotonic()
        assert await broker.receive(ALPHA, timeout=0.4) == []
        assert 0.35 <= time.monotonic() - start < 3.0

    async def test_receive_waits_for_a_publish(self, broker: Broker) -> None:
        got: list[Delivery] = []

        async def consume() -> None:
            got.extend(await broker.receive(ALPHA, timeout=5.0))

        start = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.sleep(0.2)
            await broker.publish(make_event(7))
        assert numbers(got) == [7]
        assert time.monotonic() - start < 3.0  # woken by the publish, not by the timeout
        await ack_all(got)

    async def test_max_messages_is_respected(self, broker: Broker) -> None:
        for n in range(5):
            await broker.publish(make_event(n))
        await anyio.sleep(0.1)
        first = await broker.receive(ALPHA, max_messages=2, timeout=2.0)
        assert numbers(first) == [0, 1]
        second = await broker.receive(ALPHA, max_messages=2, timeout=2.0)
        assert numbers(second) == [2, 3]
        third = await broker.receive(ALPHA, max_messages=10, timeout=2.0)
        assert numbers(third) == [4]
        await ack_all(first + second + third)

    # Settling.

    async def test_ack_means_never_again(self, broker: Broker) -> None:
        await broker.publish(make_event(1))
        (delivery,) = await broker.receive(ALPHA, timeout=5.0)
        await delivery.ack()
        assert await broker.receive(ALPHA, timeout=ACK_WAIT + 0.7) == []  # nor after ack_wait

    async def test_nack_delivers_again_with_attempt_2(self, broker: Broker) -> None:
        await broker.publish(make_event(1))
        (first,) = await broker.receive(ALPHA, timeout=5.0)
        await first.nack()
        (second,) = await broker.receive(ALPHA, timeout=5.0)
        assert second.event == first.event
        assert (first.attempt, second.attempt) == (1, 2)
        await second.ack()

    async def test_nack_with_delay_waits_that_long(self, broker: Broker) -> None:
        await broker.publish(make_event(1))
        (first,) = await broker.receive(ALPHA, timeout=5.0)
        nacked = time.monotonic()
        await first.nack(delay=1.5)  # longer than ack_wait: the delay, not ack_wait, decides
        assert await broker.receive(ALPHA, timeout=0.5) == []
        again = await broker.receive(ALPHA, timeout=4.0)
        assert numbers(again) == [1]
        assert again[0].attempt == 2
        assert time.monotonic() - nacked >= 1.4
        await again[0].ack()

    async def test_unsettled_delivery_comes_back_after_ack_wait(self, broker: Broker) -> None:
        await broker.publish(make_event(1))
        (first,) = await broker.receive(ALPHA, timeout=5.0)
        received = time.monotonic()
        assert await broker.receive(ALPHA, timeout=0.3) == []  # held by the first delivery
        (second,) = await broker.receive(ALPHA, timeout=ACK_WAIT + 3.0)
        assert time.monotonic() - received >= ACK_WAIT * 0.9
        assert second.event == first.event
        assert second.attempt == 2
        await second.ack()
        assert await broker.receive(ALPHA, timeout=ACK_WAIT + 0.5) == []

    async def test_dead_letter_sets_the_event_aside(self, broker: Broker) -> None:
        event = make_event(1)
        await broker.publish(event)
        await broker.publish(make_event(2, to=BETA))
        (first,) = await broker.receive(ALPHA, timeout=5.0)
        await first.nack()
        (second,) = await broker.receive(ALPHA, timeout=5.0)
        await second.dead_letter("payload is not an order")
        assert await broker.dead_letters(ALPHA) == [
            DeadLetter(event=event, topic=ALPHA, reason="payload is not an order", attempts=2)
        ]
        assert await broker.dead_letters(BETA) == []
        assert await broker.receive(ALPHA, timeout=ACK_WAIT + 0.7) == []
        await ack_all(await receive_all(broker, BETA, 1))

    async def test_dead_letters_keep_their_order(self, broker: Broker) -> None:
        for n in range(3):
            await broker.publish(make_event(n))
        for delivery in await receive_all(broker, ALPHA, 3):
            await delivery.dead_letter(f"reason {delivery.event.data['n']}")
        dead = await broker.dead_letters(ALPHA)
        assert [(d.event.data["n"], d.reason, d.attempts) for d in dead] == [
            (0, "reason 0", 1),
            (1, "reason 1", 1),
            (2, "reason 2", 1),
        ]

    @pytest.mark.parametrize("first", ["ack", "nack", "dead_letter"])
    async def test_settling_twice_raises(self, broker: Broker, first: str) -> None:
        await broker.publish(make_event(1))
        (delivery,) = await broker.receive(ALPHA, timeout=5.0)
        if first == "ack":
            await delivery.ack()
        elif first == "nack":
            await delivery.nack()
        else:
            await delivery.dead_letter("bad")
        with pytest.raises(RuntimeError, match="already settled"):
            await delivery.ack()
        with pytest.raises(RuntimeError, match="already settled"):
            await delivery.nack()
        with pytest.raises(RuntimeError, match="already settled"):
            await delivery.dead_letter("again")
        if first == "nack":
            await ack_all(await receive_all(broker, ALPHA, 1))

    # Extending the ack deadline.

    async def test_an_extended_delivery_is_not_redelivered_while_extended(
        self, broker: Broker, peer: Broker
    ) -> None:
        await broker.publish(make_event(1))
        (held,) = await broker.receive(ALPHA, timeout=5.0)
        until = time.monotonic() + 2.5 * ACK_WAIT  # well past the first deadline
        while time.monotonic() < until:
            await held.extend()
            assert await peer.receive(ALPHA, timeout=ACK_WAIT / 4) == []
        # No longer extended: the event goes to another consumer after ack_wait.
        (again,) = await peer.receive(ALPHA, timeout=ACK_WAIT + 3.0)
        assert (again.event, again.attempt) == (held.event, 2)
        await held.extend()  # too late: harmless, and does not take the event back
        await again.ack()
        assert await broker.receive(ALPHA, timeout=ACK_WAIT + 0.5) == []

    @pytest.mark.parametrize("first", ["ack", "nack", "dead_letter"])
    async def test_extending_a_settled_delivery_does_nothing(
        self, broker: Broker, first: str
    ) -> None:
        await broker.publish(make_event(1))
        (delivery,) = await broker.receive(ALPHA, timeout=5.0)
        await getattr(delivery, first)(*(["bad"] if first == "dead_letter" else []))
        await delivery.extend()
        if first == "nack":
            (again,) = await receive_all(broker, ALPHA, 1)
            assert again.attempt == 2
            await again.ack()
        assert await broker.receive(ALPHA, timeout=ACK_WAIT + 0.5) == []

    # Consumers share a topic's queue.

    async def test_consumers_take_turns_on_the_queue(self, broker: Broker, peer: Broker) -> None:
        for n in range(10):
            await broker.publish(make_event(n))
        mine = await broker.receive(ALPHA, max_messages=3, timeout=5.0)
        theirs = await peer.receive(ALPHA, max_messages=3, timeout=5.0)
        rest = await broker.receive(ALPHA, max_messages=10, timeout=5.0)
        assert numbers(mine) == [0, 1, 2]
        assert numbers(theirs) == [3, 4, 5]
        assert numbers(rest) == [6, 7, 8, 9]
        assert await peer.receive(ALPHA, timeout=0.2) == []
        await ack_all(mine + theirs + rest)

    async def test_concurrent_consumers_get_each_message_once(
        self, broker: Broker, peer: Broker
    ) -> None:
        count = 30
        got: dict[str, list[Delivery]] = {"broker": [], "peer": []}
        done = anyio.Event()

        async def consume(name: str, consumer: Broker) -> None:
            while not done.is_set():
                got[name] += await consumer.receive(ALPHA, max_messages=4, timeout=0.2)
                if len(got["broker"]) + len(got["peer"]) >= count:
                    done.set()
                await anyio.sleep(0)

        start = time.monotonic()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(consume, "broker", broker)
                group.start_soon(consume, "peer", peer)
                for n in range(count):
                    await broker.publish(make_event(n))
        everything = got["broker"] + got["peer"]
        # Nothing was settled: the check only holds while no delivery passed ack_wait.
        assert time.monotonic() - start < ACK_WAIT, "too slow to check sharing within ack_wait"
        assert sorted(numbers(everything)) == list(range(count))
        assert numbers(got["broker"]) == sorted(numbers(got["broker"]))
        assert numbers(got["peer"]) == sorted(numbers(got["peer"]))
        await ack_all(everything)

    # The whole cycle, for any events and any choice of ack or nack.

    @settings(
        max_examples=6,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        topics=st.lists(st.sampled_from(["one", "two"]), min_size=1, max_size=8),
        choices=st.lists(st.sampled_from(["ack", "nack"]), max_size=12),
        batch=st.integers(min_value=1, max_value=4),
    )
    async def test_every_event_is_acked_exactly_once_in_order(
        self, broker: Broker, topics: list[str], choices: list[str], batch: int
    ) -> None:
        suffix = uuid.uuid4().hex[:12]  # the broker outlives examples: fresh topics each time
        published: dict[str, list[str]] = {}
        for n, name in enumerate(topics):
            event = make_event(n, to=f"com.prop{suffix}.{name}")
            published.setdefault(event.to or "", []).append(event.id)
            await broker.publish(event)
        pending = list(choices)
        acked: dict[str, int] = {}
        seen: dict[str, int] = {}
        for topic, ids in published.items():
            first_seen: list[str] = []
            deadline = time.monotonic() + 20.0
            while sum(acked.get(i, 0) for i in ids) < len(ids):
                assert time.monotonic() < deadline, f"not every event on {topic} was acked"
                for delivery in await broker.receive(topic, max_messages=batch, timeout=0.5):
                    event_id = delivery.event.id
                    assert acked.get(event_id, 0) == 0, "an acked event was delivered again"
                    seen[event_id] = seen.get(event_id, 0) + 1
                    assert delivery.attempt == seen[event_id]  # all settled within ack_wait
                    if event_id not in first_seen:
                        first_seen.append(event_id)
                    choice = pending.pop(0) if pending else "ack"
                    if choice == "nack" and delivery.attempt < 3:
                        await delivery.nack()
                    else:
                        await delivery.ack()
                        acked[event_id] = acked.get(event_id, 0) + 1
            assert first_seen == ids
        late: list[Delivery] = []  # nothing comes back, not even after ack_wait

        async def drain(topic: str) -> None:
            late.extend(await broker.receive(topic, timeout=ACK_WAIT + 0.3))

        async with anyio.create_task_group() as group:
            for topic in published:
                group.start_soon(drain, topic)
        assert late == []
        assert all(count == 1 for count in acked.values())
        assert len(acked) == len(topics)
