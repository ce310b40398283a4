"""RedisBroker runs the shared conformance suite on a real Redis, plus checks of what only
Redis has: consumers in other processes that die holding messages, and its keys."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from resumable.brokers import Broker
from resumable.brokers.redis import RedisBroker
from resumable.events import to_json

from .conformance import ACK_WAIT, ALPHA, BrokerConformance, make_event, numbers, receive_all
from servers import require_redis

pytestmark = pytest.mark.anyio


async def delete_namespace(url: str, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    client: aioredis.Redis = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def namespace() -> AsyncIterator[tuple[str, str]]:
    """A Redis URL and a prefix no other test uses, deleted afterwards."""
    url = require_redis()
    prefix = f"test-{uuid.uuid4().hex}"
    yield url, prefix
    await delete_namespace(url, prefix)


class TestRedisBroker(BrokerConformance):
    @pytest.fixture
    async def broker(self, namespace: tuple[str, str]) -> AsyncIterator[Broker]:
        url, prefix = namespace
        broker = RedisBroker(url, prefix=prefix, ack_wait=ACK_WAIT)
        yield broker
        await broker.close()

    @pytest.fixture
    async def peer(self, broker: Broker) -> AsyncIterator[Broker]:
        assert isinstance(broker, RedisBroker)
        peer = RedisBroker(broker.url, prefix=broker.prefix, ack_wait=ACK_WAIT)
        yield peer
        await peer.close()


def consumer(namespace: tuple[str, str], name: str, ack_wait: float = ACK_WAIT) -> RedisBroker:
    url, prefix = namespace
    return RedisBroker(url, prefix=prefix, consumer=name, ack_wait=ack_wait)


async def test_a_dead_consumers_messages_go_to_another_after_ack_wait(
    namespace: tuple[str, str],
) -> None:
    dying, survivor = consumer(namespace, "dying"), consumer(namespace, "survivor")
    try:
        for n in range(3):
            await dying.publish(make_event(n))
        held = await dying.receive(ALPHA, max_messages=10, timeout=5.0)
        assert numbers(held) == [0, 1, 2]
        received = time.monotonic()
        await dying.close()  # never settled: they stay pending with "dying"
        assert await survivor.receive(ALPHA, timeout=0.3) == []
        taken = await receive_all(survivor, ALPHA, 3)
        assert time.monotonic() - received >= ACK_WAIT * 0.9
        assert numbers(taken) == [0, 1, 2]
        assert [d.attempt for d in taken] == [2, 2, 2]
        for delivery in taken:
            await delivery.ack()
        assert await survivor.receive(ALPHA, timeout=ACK_WAIT + 0.5) == []
    finally:
        await survivor.close()


async def test_autoclaim_moves_ownership_in_the_group(namespace: tuple[str, str]) -> None:
    dying, survivor = consumer(namespace, "dying"), consumer(namespace, "survivor")
    try:
        await dying.publish(make_event(1))
        assert len(await dying.receive(ALPHA, timeout=5.0)) == 1
        await dying.close()
        (taken,) = await survivor.receive(ALPHA, timeout=ACK_WAIT + 3.0)
        stream, _, _ = survivor.keys(ALPHA)
        pending = await survivor.client.xpending_range(stream, "workers", "-", "+", 10)
        assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(b"survivor", 2)]
        await taken.ack()
        assert await survivor.client.xpending_range(stream, "workers", "-", "+", 10) == []
        assert await survivor.client.xlen(stream) == 0  # acked entries are deleted
    finally:
        await survivor.close()


async def test_a_delay_longer_than_ack_wait_survives_the_nacking_consumer(
    namespace: tuple[str, str],
) -> None:
    """The delayed entry stays pending: neither taken early by XAUTOCLAIM nor lost."""
    dying, survivor = consumer(namespace, "dying"), consumer(namespace, "survivor")
    try:
        await dying.publish(make_event(1))
        (delivery,) = await dying.receive(ALPHA, timeout=5.0)
        nacked = time.monotonic()
        await delivery.nack(delay=2.5)
        await dying.close()
        assert await survivor.receive(ALPHA, timeout=1.8) == []  # past ack_wait: still waits
        (again,) = await survivor.receive(ALPHA, timeout=4.0)
        assert time.monotonic() - nacked >= 2.4
        assert again.attempt == 2
        await again.ack()
    finally:
        await survivor.close()


async def test_a_late_nack_from_a_consumer_that_lost_the_entry_is_ignored(
    namespace: tuple[str, str],
) -> None:
    slow, fast = consumer(namespace, "slow"), consumer(namespace, "fast")
    try:
        await slow.publish(make_event(1))
        (late,) = await slow.receive(ALPHA, timeout=5.0)
        (taken,) = await fast.receive(ALPHA, timeout=ACK_WAIT + 3.0)  # after ack_wait
        await late.nack()  # "fast" holds it now: no second copy is scheduled
        assert await fast.receive(ALPHA, timeout=0.3) == []
        await taken.ack()
        assert await fast.receive(ALPHA, timeout=ACK_WAIT + 0.5) == []
    finally:
        await slow.close()
        await fast.close()


async def test_many_nacked_entries_come_back_in_batches(namespace: tuple[str, str]) -> None:
    broker = consumer(namespace, "one")
    try:
        for n in range(40):
            await broker.publish(make_event(n))
        first = await receive_all(broker, ALPHA, 40)
        for delivery in first:
            await delivery.nack()
        again = await receive_all(broker, ALPHA, 40)
        assert numbers(again) == list(range(40))
        assert {d.attempt for d in again} == {2}
        for delivery in again:
            await delivery.ack()
    finally:
        await broker.close()


async def test_an_entry_that_is_not_an_event_is_set_aside(namespace: tuple[str, str]) -> None:
    broker = consumer(namespace, "one")
    try:
        stream, _, dead = broker.keys(ALPHA)
        await broker.client.xadd(stream, {"event": b"{not json"})
        await broker.publish(make_event(1))
        (delivery,) = await broker.receive(ALPHA, timeout=5.0)
        assert numbers([delivery]) == [1]
        assert await broker.client.xlen(dead) == 1
        assert await broker.dead_letters(ALPHA) == []  # not an event: logged, not returned
        await delivery.ack()
    finally:
        await broker.close()


async def test_events_travel_as_json(namespace: tuple[str, str]) -> None:
    broker = consumer(namespace, "one")
    try:
        event = make_event(1)
        await broker.publish(event)
        stream, _, _ = broker.keys(ALPHA)
        entries: Any = await broker.client.xrange(stream)
        ((_, fields),) = entries
        assert fields == {b"event": to_json(event)}
    finally:
        await broker.close()


async def test_the_group_comes_back_if_the_stream_is_deleted(namespace: tuple[str, str]) -> None:
    broker = consumer(namespace, "one")
    try:
        assert await broker.receive(ALPHA, timeout=0) == []
        await broker.client.delete(broker.keys(ALPHA)[0])
        await broker.publish(make_event(1))
        assert numbers(await broker.receive(ALPHA, timeout=2.0)) == [1]
    finally:
        await broker.close()


async def test_from_url_reads_prefix_and_group() -> None:
    broker = RedisBroker.from_url(
        "redis://127.0.0.1:6379/2?prefix=shop&group=billing&ack_wait=5&socket_timeout=3"
    )
    try:
        assert (broker.prefix, broker.group, broker.ack_wait) == ("shop", "billing", 5.0)
        assert broker.url == "redis://127.0.0.1:6379/2?socket_timeout=3"
        assert broker.client.connection_pool.connection_kwargs["db"] == 2
        plain = RedisBroker.from_url("redis://127.0.0.1:6379/0")
        assert (plain.prefix, plain.group, plain.ack_wait) == ("resumable", "workers", 5.0)
        assert plain.consumer != broker.consumer  # hostname-pid-random
        await plain.close()
    finally:
        await broker.close()
    with pytest.raises(ValueError, match=r"ack_wait in .* must be a number"):
        RedisBroker.from_url("redis://127.0.0.1:6379/0?ack_wait=soon")


async def test_closed_broker_says_so(namespace: tuple[str, str]) -> None:
    broker = consumer(namespace, "one")
    await broker.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await broker.receive(ALPHA, timeout=0)
    with anyio.fail_after(1):
        await broker.close()  # twice is fine


async def test_the_duplicate_window_ends_and_can_be_turned_off(
    namespace: tuple[str, str],
) -> None:
    url, prefix = namespace
    broker = RedisBroker(url, prefix=prefix, ack_wait=ACK_WAIT, duplicate_window=0.3)
    off = RedisBroker(url, prefix=f"{prefix}:off", ack_wait=ACK_WAIT, duplicate_window=0)
    try:
        event = make_event(1)
        await broker.publish(event)
        await broker.publish(event)
        (first,) = await receive_all(broker, ALPHA, 1)
        await first.ack()
        await anyio.sleep(0.4)
        await broker.publish(event)  # the window is over: a new message
        (second,) = await receive_all(broker, ALPHA, 1)
        assert second.event == event and second.attempt == 1
        await second.ack()
        await off.publish(event)
        await off.publish(event)
        assert len(await receive_all(off, ALPHA, 2)) == 2
        seen = [key async for key in off.client.scan_iter(match=f"{prefix}:off:seen:*")]
        assert seen == []
    finally:
        await broker.close()
        await off.close()


def test_the_url_takes_the_duplicate_window() -> None:
    broker = RedisBroker.from_url("redis://127.0.0.1:6379/0?prefix=p&duplicate_window=5")
    assert (broker.prefix, broker.duplicate_window) == ("p", 5.0)
    with pytest.raises(ValueError, match=r"duplicate_window in .* must be a number"):
        RedisBroker.from_url("redis://127.0.0.1:6379/0?duplicate_window=soon")
    with pytest.raises(ValueError, match="duplicate_window must be 0 or more"):
        RedisBroker(duplicate_window=-1)


def test_a_bad_url_parameter_is_reported_without_the_password() -> None:
    with pytest.raises(ValueError, match="ack_wait") as caught:
        RedisBroker.from_url("redis://app:hunter2@127.0.0.1:6379/0?ack_wait=soon")
    assert "hunter2" not in str(caught.value)
    assert "redis://app:***@127.0.0.1:6379/0" in str(caught.value)
