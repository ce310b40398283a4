"""The same Runtime and Client code on real servers: NATS JetStream + PostgreSQL, and
Redis + Redis. A Runtime runs the workflow and its services; a Client in the same test
(as another process would) starts orders and waits on them through the shared memory."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from resumable import Client, Runtime, WorkflowIdConflict
from resumable.brokers import Broker
from resumable.demo import make_handlers, make_workflow
from resumable.memory import Memory

from orders import OrderResult, PlaceOrder, orders
from servers import require_nats, require_postgres, require_redis

pytestmark = pytest.mark.anyio


async def run_both(make_broker: Callable[[], Broker], make_memory: Callable[[], Memory]) -> None:
    runtime_memory, client_memory = make_memory(), make_memory()
    runtime_broker = make_broker()
    runtime = Runtime(
        [*make_handlers(), make_workflow(None)],
        broker=runtime_broker,
        memory=runtime_memory,
        timer_interval=0.1,
    )
    client_broker = make_broker()
    try:
        async with runtime as rt, Client(broker=client_broker, memory=client_memory) as client:
            by_runtime = await rt.start(orders, PlaceOrder("r-1", 10), id="r-1")
            by_client = [
                await client.start(orders, PlaceOrder(f"c-{n}", 10), id=f"c-{n}") for n in range(5)
            ]
            assert (await by_client[0].status()).status in ("active", "done")
            with anyio.fail_after(30):
                assert await by_runtime.result() == OrderResult("shipped", "pay-r-1")
                for n, handle in enumerate(by_client):
                    assert await handle.result() == OrderResult("shipped", f"pay-c-{n}")
            again = await client.start(orders, PlaceOrder("c-0", 10), id="c-0")
            assert await again.result(timeout=5) == OrderResult("shipped", "pay-c-0")
            with pytest.raises(WorkflowIdConflict):
                await client.start(orders, PlaceOrder("c-0", 99), id="c-0")
            listed = await client.list(orders, status="done")
            assert sorted(i.id for i in listed.items) == ["c-0", "c-1", "c-2", "c-3", "c-4", "r-1"]
    finally:
        for closing in (
            client_broker.close,
            runtime_broker.close,
            runtime_memory.close,
            client_memory.close,
        ):
            with contextlib.suppress(Exception):
                await closing()


async def _cleanup(*steps: Callable[[], Awaitable[Any]]) -> None:
    for step in steps:
        with contextlib.suppress(Exception):
            await step()


async def test_runtime_and_client_on_nats_and_postgres() -> None:
    import asyncpg
    import nats

    from resumable.brokers.nats import NatsBroker
    from resumable.memory.postgres import PostgresMemory

    nats_url, pg_url = require_nats(), require_postgres()
    suffix = uuid.uuid4().hex[:12]
    stream, schema = f"RT_{suffix}", f"rt_{suffix}"
    try:
        await run_both(
            lambda: NatsBroker(nats_url, stream=stream, subject_prefix=f"rt{suffix}"),
            lambda: PostgresMemory(pg_url, schema=schema),
        )
    finally:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()
        connection = await asyncpg.connect(pg_url)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


async def test_runtime_and_client_on_redis_and_redis() -> None:
    import redis.asyncio as aioredis

    from resumable.brokers.redis import RedisBroker
    from resumable.memory.redis import RedisMemory

    url = require_redis()
    prefix = f"rt-{uuid.uuid4().hex}"
    try:
        await run_both(
            lambda: RedisBroker(url, prefix=f"{prefix}-b"),
            lambda: RedisMemory(url, prefix=f"{prefix}-m", allow_volatile=True),
        )
    finally:
        client: aioredis.Redis = aioredis.Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
