"""NatsBroker on a real nats-server with JetStream: the shared conformance suite, plus what
only NATS does (durable consumers across broker objects, the duplicate window, subjects)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import nats
import pytest
from nats.js import api
from nats.js.errors import NotFoundError

from resumable.brokers import Broker, DeadLetter
from resumable.brokers.nats import NatsBroker, consumer_name

from .conformance import ACK_WAIT, ALPHA, BrokerConformance, make_event, numbers, receive_all
from servers import require_nats

pytestmark = pytest.mark.anyio

Make = Callable[..., NatsBroker]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds brokers on one namespace of their own (stream ``T_<hex>``, prefix ``t<hex>``);
    closes them and deletes the stream after the test."""
    url = require_nats()
    suffix = uuid.uuid4().hex[:12]
    stream = f"T_{suffix}"
    made: list[NatsBroker] = []

    def build(**options: Any) -> NatsBroker:
        settings = {"stream": stream, "subject_prefix": f"t{suffix}", "ack_wait": ACK_WAIT}
        broker = NatsBroker(url, **(settings | options))
        made.append(broker)
        return broker

    try:
        yield build
    finally:
        for broker in made:
            await broker.close()
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(stream)
        except NotFoundError:
            pass
        finally:
            await nc.close()


class TestNatsBroker(BrokerConformance):
    @pytest.fixture
    async def broker(self, make: Make) -> Broker:
        return make()

    @pytest.fixture
    async def peer(self, make: Make) -> Broker:
        """Another broker object (another connection) on the same stream and durable name:
        two processes sharing one consumer group."""
        return make()


async def _raw(broker: NatsBroker) -> Any:
    assert broker.url
    return await nats.connect(broker.url)


async def test_the_durable_consumer_outlives_a_broker_object(make: Make) -> None:
    first = make()
    await first.publish(make_event(1))
    await first.publish(make_event(2))
    (one,) = await first.receive(ALPHA, max_messages=1, timeout=5.0)
    await one.ack()
    (two,) = await first.receive(ALPHA, max_messages=1, timeout=5.0)
    assert (numbers([one]), numbers([two])) == ([1], [2])
    await first.close()  # `two` is left unsettled, as by a crashed process

    second = make()
    (again,) = await receive_all(second, ALPHA, 1, limit=ACK_WAIT + 10.0)
    # The same consumer: the acked event stays acked, the unsettled one comes back as a
    # redelivery (an ephemeral consumer would start over at event 1, attempt 1).
    assert (numbers([again]), again.attempt) == ([2], 2)
    await again.ack()
    assert await second.receive(ALPHA, timeout=ACK_WAIT + 0.5) == []


async def test_a_republished_event_is_dropped_by_the_duplicate_window(make: Make) -> None:
    broker = make()
    event = make_event(1)
    await broker.publish(event)
    await broker.publish(event)  # a retried publish: same event id
    await broker.publish(make_event(2))
    got = await receive_all(broker, ALPHA, 2)
    assert numbers(got) == [1, 2]
    for delivery in got:
        await delivery.ack()
    assert await broker.receive(ALPHA, timeout=0.5) == []
    raw = await _raw(broker)
    try:
        info = await raw.jetstream().stream_info(broker.stream)
    finally:
        await raw.close()
    assert info.state.messages == 2


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("com..alpha", "empty token"),
        (".com.alpha", "empty token"),
        ("com.alpha.", "empty token"),
        ("com.*.alpha", "'\\*' and '>'"),
        ("com.alpha.>", "'\\*' and '>'"),
        ("com.al pha", "no spaces"),
        ("com.\u00e4lpha", "printable ASCII"),
        ("", "non-empty"),
    ],
)
async def test_a_bad_topic_is_rejected_naming_the_problem(
    make: Make, topic: str, problem: str
) -> None:
    broker = make()
    with pytest.raises(ValueError, match=problem):
        await broker.receive(topic, timeout=0.1)
    with pytest.raises(ValueError, match=problem):
        await broker.dead_letters(topic)
    with pytest.raises(ValueError, match=r"com\.payments\.charge"):
        broker.subject(topic)
    if topic in ("com..alpha", "com.alpha.", "com.*.alpha"):  # valid URIs, so valid events
        with pytest.raises(ValueError, match="not a valid NATS subject"):
            await broker.publish(make_event(1, to=topic))


async def test_other_durable_names_are_other_groups_that_get_every_event(make: Make) -> None:
    workers, auditors = make(), make(durable="auditors")
    for n in range(3):
        await workers.publish(make_event(n))
    for broker in (workers, auditors):
        got = await receive_all(broker, ALPHA, 3)
        assert [(n, d.attempt) for n, d in zip(numbers(got), got, strict=True)] == [
            (0, 1),
            (1, 1),
            (2, 1),
        ]
        for delivery in got:
            await delivery.ack()
    names = {consumer_name("workers", ALPHA), consumer_name("auditors", ALPHA)}
    raw = await _raw(workers)
    try:
        consumers = await raw.jetstream().consumers_info(workers.stream)
    finally:
        await raw.close()
    assert {c.name for c in consumers} == names
    for info in consumers:
        assert info.config.ack_policy == api.AckPolicy.EXPLICIT
        assert info.config.ack_wait == ACK_WAIT
        assert info.config.max_deliver == -1  # unlimited: outages are retried for ever
        assert info.config.filter_subject == workers.subject(ALPHA)


async def test_max_deliver_is_a_backstop_that_stops_redelivery(make: Make) -> None:
    broker = make(max_deliver=2)
    await broker.publish(make_event(1))
    (first,) = await broker.receive(ALPHA, timeout=5.0)
    (second,) = await broker.receive(ALPHA, timeout=ACK_WAIT + 3.0)
    assert (first.attempt, second.attempt) == (1, 2)
    # Neither was settled: a third delivery would come after ack_wait, but max_deliver=2.
    assert await broker.receive(ALPHA, timeout=ACK_WAIT + 1.5) == []


async def test_a_dead_letter_reason_keeps_line_breaks_and_unicode(make: Make) -> None:
    broker = make()
    event = make_event(1)
    await broker.publish(event)
    (delivery,) = await broker.receive(ALPHA, timeout=5.0)
    reason = 'Traceback:\r\n  ValueError: "bad" — ünï\n' + "x" * 2000
    await delivery.dead_letter(reason)
    assert await broker.dead_letters(ALPHA) == [
        DeadLetter(event=event, topic=ALPHA, reason=reason, attempts=1)
    ]


async def test_a_payload_that_is_not_an_event_is_set_aside(make: Make) -> None:
    broker = make()
    raw = await _raw(broker)
    try:
        await broker.publish(make_event(0, to="com.test.other"))  # creates the stream
        await raw.jetstream().publish(broker.subject(ALPHA), b"{not json")
    finally:
        await raw.close()
    await broker.publish(make_event(1))
    got = await receive_all(broker, ALPHA, 1)
    assert numbers(got) == [1]  # the bad message neither blocks the queue nor is delivered
    await got[0].ack()
    assert await broker.receive(ALPHA, timeout=ACK_WAIT + 0.7) == []
    assert await broker.dead_letters(ALPHA) == []  # kept on the dead subject, not an event
    raw = await _raw(broker)
    try:
        kept = await raw.jetstream().get_last_msg(broker.stream, broker.dead_subject(ALPHA))
    finally:
        await raw.close()
    assert kept.data == b"{not json"
    assert "not an event" in kept.headers["Resumable-Reason"]


async def test_the_stream_is_created_once_with_file_storage(make: Make) -> None:
    first, second = make(), make()
    await first.publish(make_event(1))
    await second.publish(make_event(2))  # finds the stream and uses it
    raw = await _raw(first)
    try:
        info = await raw.jetstream().stream_info(first.stream)
    finally:
        await raw.close()
    prefix = first.subject_prefix
    assert sorted(info.config.subjects) == [f"{prefix}.dead.>", f"{prefix}.topic.>"]
    assert info.config.storage == api.StorageType.FILE
    assert info.state.messages == 2


async def test_a_stream_with_other_subjects_is_refused(make: Make) -> None:
    broker = make()
    raw = await _raw(broker)
    try:
        await raw.jetstream().add_stream(name=broker.stream, subjects=[f"x{uuid.uuid4().hex}"])
    finally:
        await raw.close()
    with pytest.raises(ValueError, match="exists without the subjects"):
        await broker.publish(make_event(1))


async def test_close_wakes_a_waiting_receive_and_stops_receiving(make: Make) -> None:
    broker = make()
    got: list[list[object]] = []

    async def consume() -> None:
        got.append(list(await broker.receive(ALPHA, timeout=30.0)))

    with anyio.fail_after(10):  # a guard against hanging, not a speed check
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.sleep(0.3)
            await broker.close()
    assert got == [[]]
    with pytest.raises(RuntimeError, match="closed"):
        await broker.receive(ALPHA, timeout=0.1)


async def test_settling_with_a_negative_delay_is_refused_and_does_not_settle(
    make: Make,
) -> None:
    broker = make()
    await broker.publish(make_event(1))
    (delivery,) = await broker.receive(ALPHA, timeout=5.0)
    with pytest.raises(ValueError, match="nack delay must be 0 or more"):
        await delivery.nack(delay=-1)
    await delivery.ack()


async def test_an_unreachable_server_names_the_url_and_how_to_start_one() -> None:
    broker = NatsBroker("nats://user:secret@127.0.0.1:1", connect_timeout=0.5)
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1") as caught:
        await broker.publish(make_event(1))
    assert "nats-server" in str(caught.value) and "-js" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_from_url_reads_the_namespace_from_the_query() -> None:
    broker = NatsBroker.from_url(
        "nats://127.0.0.1:4222?stream=ORDERS&prefix=shop.events&durable=billing&ack_wait=5"
    )
    assert broker.url == "nats://127.0.0.1:4222"
    assert (broker.stream, broker.subject_prefix, broker.durable) == (
        "ORDERS",
        "shop.events",
        "billing",
    )
    assert broker.ack_wait == 5.0
    assert broker.subject("com.payments.charge") == "shop.events.topic.com.payments.charge"
    assert broker.dead_subject("com.payments.charge") == "shop.events.dead.com.payments.charge"
    default = NatsBroker.from_url("nats://127.0.0.1:4222")
    assert (default.stream, default.subject_prefix, default.durable) == (
        "RESUMABLE",
        "resumable",
        "workers",
    )
    with pytest.raises(ValueError, match="unknown NATS broker URL parameter"):
        NatsBroker.from_url("nats://127.0.0.1:4222?steam=X")


def test_bad_settings_are_rejected_naming_the_problem() -> None:
    with pytest.raises(ValueError, match=r"stream 'A\.B'"):
        NatsBroker(stream="A.B")
    with pytest.raises(ValueError, match="durable 'a b'"):
        NatsBroker(durable="a b")
    with pytest.raises(ValueError, match="subject_prefix"):
        NatsBroker(subject_prefix="a.>")
    with pytest.raises(ValueError, match="ack_wait must be more than 0"):
        NatsBroker(ack_wait=0)


def test_consumer_names_are_valid_and_distinct_per_topic() -> None:
    a, b = consumer_name("workers", "com.a_b.c"), consumer_name("workers", "com_a.b.c")
    assert a != b
    for name in (a, b, consumer_name("workers", "com.x/y:z.c")):
        assert not set(name) & set(">*. /\\\t\r\n")
