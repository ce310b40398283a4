"""Poison messages end in the dead letters, alone, on every broker, with a Worker running
the demo's workflow and services: a batch holding deep-nested JSON, invalid UTF-8 and
garbage among ten good orders completes the ten; the poisons are listed; an event over
the limits and one whose subject names another workflow are dead-lettered at once; and
a dead letter replayed right after (well inside the duplicate window) is delivered and
completes its order."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest

from resumable import OrchestratorContract
from resumable.brokers import Broker, LocalBroker
from resumable.demo import PlaceOrder, init_for, make_handlers, make_workflow, orders
from resumable.events import Event, to_json
from resumable.memory import InMemoryMemory
from resumable.worker import Worker

from servers import require_nats, require_redis

pytestmark = pytest.mark.anyio

Inject = Callable[[str, bytes], Awaitable[None]]

POISONS = {
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "utf8": to_json(init_for(900)).replace(b'"com.shop.web"', b'"com.shop.\xff\xfeweb"'),
    "garbage": b"\x00\x9f\x92\x96 not an event \xff",
}


@pytest.fixture(params=["local", "nats", "redis"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Inject]]:
    """A broker on a namespace of its own, and how to put raw bytes on one of its topics."""
    if request.param == "local":
        local = LocalBroker(ack_wait=5.0)

        async def inject_local(topic: str, raw: bytes) -> None:
            local.publish_raw(topic, raw)

        yield local, inject_local
        await local.close()
    elif request.param == "nats":
        import nats

        from resumable.brokers.nats import NatsBroker

        url, suffix = require_nats(), uuid.uuid4().hex[:12]
        broker = NatsBroker(url, stream=f"P_{suffix}", subject_prefix=f"p{suffix}", ack_wait=5.0)
        nc = await nats.connect(url)

        async def inject_nats(topic: str, raw: bytes) -> None:
            await broker._jetstream()  # the stream exists
            await nc.jetstream().publish(broker.subject(topic), raw, stream=broker.stream)

        try:
            yield broker, inject_nats
        finally:
            await broker.close()
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(broker.stream)
            await nc.close()
    else:
        from resumable.brokers.redis import RedisBroker

        redis_broker = RedisBroker(require_redis(), prefix=f"p-{uuid.uuid4().hex}", ack_wait=5.0)

        async def inject_redis(topic: str, raw: bytes) -> None:
            await redis_broker.client.xadd(redis_broker.keys(topic)[0], {"event": raw})

        try:
            yield redis_broker, inject_redis
        finally:
            keys = [k async for k in redis_broker.client.scan_iter(f"{redis_broker.prefix}:*")]
            if keys:
                await redis_broker.client.delete(*keys)
            await redis_broker.close()


async def wait_finished(workflow: Any, events: list[Event]) -> list[str]:
    """The statuses of the instances ``events`` started, once none is active (bounded,
    not a speed check)."""
    with anyio.fail_after(60):
        while True:
            found = [await workflow.status(e.subject) for e in events]
            statuses = [s.status if s is not None else "missing" for s in found]
            if not {"active", "missing"} & set(statuses):
                return statuses
            await anyio.sleep(0.05)


async def test_poison_in_a_batch_ends_in_the_dead_letters_alone(
    transport: tuple[Broker, Inject],
) -> None:
    broker, inject = transport
    memory = InMemoryMemory()
    workflow = make_workflow(memory)
    topic = workflow.source
    good = [init_for(n) for n in range(10)]

    # An order dead-lettered earlier (by an outage, say), to replay once the rest is done.
    earlier = init_for(10)
    await broker.publish(earlier)
    (delivery,) = await broker.receive(topic, max_messages=1, timeout=5.0)
    await delivery.dead_letter("TransactionViolation: the database was down")

    other = OrchestratorContract(
        uri="#/orchestrators/other",
        name="other.flow",
        versions={"1.0.0": {"init": PlaceOrder, "complete": PlaceOrder}},
    )
    stray = other.init_event(PlaceOrder("o-stray", 1), source="com.shop.web")
    stray = msgspec.structs.replace(stray, type=orders.type, to=topic)
    nul_id = msgspec.structs.replace(init_for(11), id="evt\x00nul")

    # One batch: poisons and violations among the good orders.
    for n, event in enumerate(good):
        await broker.publish(event)
        if n < len(POISONS):
            await inject(topic, list(POISONS.values())[n])
    await broker.publish(stray)
    await inject(topic, to_json(nul_id))  # publish() refuses it; a foreign producer need not

    worker = Worker(
        [*make_handlers(), workflow], broker=broker, poll=0.2, timer_interval=0.1, max_attempts=5
    )
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        statuses = await wait_finished(workflow, good)
        assert statuses == ["failed" if n == 7 else "done" for n in range(10)]  # 7: no stock
        letters = await broker.dead_letters(topic)
        assert [d.raw for d in letters if d.event is None] == list(POISONS.values())
        assert all(d.reason.startswith("undecodable: ") for d in letters if d.event is None)
        assert "RecursionError" in letters[1].reason
        by_id = {d.event.id: d for d in letters if d.event is not None}
        assert set(by_id) == {earlier.id, stray.id, nul_id.id}
        assert "subject names workflow arvo.orc.other.flow" in by_id[stray.id].reason
        assert "control character" in by_id[nul_id.id].reason
        assert by_id[stray.id].attempts == by_id[nul_id.id].attempts == 1  # at once
        assert await workflow.status(stray.subject) is None

        # Replayed right after, well inside the duplicate window: delivered and done.
        assert await broker.replay_dead_letter(topic, by_id[earlier.id].id) == earlier
        assert await wait_finished(workflow, [earlier]) == ["done"]
        assert earlier.id not in {d.event.id for d in await broker.dead_letters(topic) if d.event}
        worker.stop()
    assert worker.stats.dead_lettered == 2


async def test_an_instance_id_too_long_for_the_subject_is_refused_at_start() -> None:
    """``Runtime.start`` checks the limits up front: nothing is stored or published."""
    from resumable import Runtime
    from resumable.limits import LimitViolation

    memory = InMemoryMemory()
    async with Runtime([*make_handlers(), make_workflow(None)], memory=memory) as runtime:
        with pytest.raises(LimitViolation, match=r"subject is .* over the limit of 2,048"):
            long_id = secrets.token_hex(1500)  # incompressible: a long subject
            await runtime.start(orders, PlaceOrder("o-1", 10), id=long_id)
        assert await memory.keys() == []
