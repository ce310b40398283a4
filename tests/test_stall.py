"""A stalled worker: SIGSTOPped for longer than its leases while it holds work, then SIGCONT.

Three ``resumable worker stall_worker:handlers`` processes run a workflow of one slow local
step (``STEP`` seconds) with the default lease and ack deadline (5 s each). Once one worker
(the victim) is inside some steps, it is stopped with SIGSTOP. Its leases expire and its
deliveries come back to the other two, which run those steps again (local steps are at
least once) and finish the orders. Then the victim gets SIGCONT: its steps end, and their
writes must be refused by the compare-and-set, since the instances moved on meanwhile.

Checked: every order completed once (one distinct report to the shop, one completion in
its journal), each record decodes and is done, the result kept for each order the victim
held names the process that took it over (the victim's late write was refused), the
victim's log says so, nothing was dead-lettered, and every worker drains and exits 0 on
SIGTERM. Printed: how long the victim's orders stalled (SIGSTOP to the last of them done).
Bounded by ``RUN_LIMIT``; on NATS + PostgreSQL and on Redis + Redis, each run in its own
stream, key prefixes and schema.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from stall_worker import marks

from resumable.brokers import Broker
from resumable.brokers import from_url as broker_from_url
from resumable.demo import PlaceOrder, make_workflow, orders
from resumable.memory import Memory
from resumable.memory import from_url as memory_from_url
from resumable.record import decode_entry

from servers import require_nats, require_postgres, require_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 30
WORKERS = 3
STEP = 3.0
"""Seconds each order's local step takes: long enough to catch the victim inside some."""
PUBLISH_OVER = 2.0
RUN_LIMIT = 90.0
"""Most seconds for one run from start to finish, whatever happens."""
SHOP = "com.shop.web"
REFUSED = b"the compare-and-set refused this step's write"


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), *params.items()])))


def init_for(n: int) -> Any:
    return orders.init_event(
        PlaceOrder(f"stall-{n}", 100 + n),
        source=SHOP,
        execution_id=f"stall-{n}",
        id=f"init-stall-{n}",
    )


@contextlib.asynccontextmanager
async def nats_postgres() -> AsyncIterator[tuple[str, str]]:
    import nats

    nats_url, pg_url = require_nats(), require_postgres()
    suffix = uuid.uuid4().hex[:10]
    stream, schema = f"STALL_{suffix}", f"stall_{suffix}"
    try:
        yield (
            with_query(nats_url, stream=stream, prefix=f"stall{suffix}"),
            with_query(pg_url, schema=schema),
        )
    finally:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()
        connection = await asyncpg.connect(pg_url)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def redis_redis() -> AsyncIterator[tuple[str, str]]:
    import redis.asyncio as aioredis

    redis_url = require_redis()
    prefix = f"stall-{uuid.uuid4().hex[:10]}"
    try:
        yield (
            with_query(redis_url, prefix=f"{prefix}-b"),
            with_query(redis_url, prefix=f"{prefix}-m", allow_volatile="1"),
        )
    finally:
        client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}-*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


PAIRS = {"nats+postgres": nats_postgres, "redis+redis": redis_redis}


class Worker:
    """One worker process and its log."""

    def __init__(self, slot: int, logs: Path, broker_url: str, memory_url: str, marks: Path):
        self.log = logs / f"worker-{slot}.log"
        paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "STALL_MARKS": str(marks),
            "STALL_STEP": str(STEP),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "resumable",
                    "worker",
                    "stall_worker:handlers",
                    "--broker",
                    broker_url,
                    "--memory",
                    memory_url,
                    "--log-level",
                    "WARNING",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def text(self) -> bytes:
        return self.log.read_bytes()

    def tail(self) -> str:
        return f"--- {self.log.name}\n{self.text().decode(errors='replace')[-3000:]}"


async def wait_for(what: str, check: Any, limit: float, workers: list[Worker]) -> None:
    """Poll ``check()`` (sync or async) until true; fail with the workers' logs after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit:.0f}s\n" + "\n".join(w.tail() for w in workers))
        await anyio.sleep(0.05)


async def run_stall(broker_url: str, memory_url: str, tmp_path: Path) -> None:
    mark_file = tmp_path / "marks"
    mark_file.touch()
    broker: Broker = broker_from_url(broker_url)
    memory: Memory = memory_from_url(memory_url)
    workers = [Worker(slot, tmp_path, broker_url, memory_url, mark_file) for slot in range(WORKERS)]
    victim = workers[0]
    stopped = False
    try:
        await wait_for(
            "workers consuming",
            lambda: all(b" consuming " in w.text() for w in workers),
            30,
            workers,
        )

        def held() -> set[str]:
            """Orders whose step the victim began and did not end."""
            state: dict[str, bool] = {}
            for what, pid, order_id, _ in marks(mark_file.read_text()):
                if pid == victim.process.pid:
                    state[order_id] = what == "start"
            return {order_id for order_id, running in state.items() if running}

        async with anyio.create_task_group() as group:

            async def place_orders() -> None:
                for n in range(ORDERS):
                    await broker.publish(init_for(n))
                    await anyio.sleep(PUBLISH_OVER / ORDERS)

            group.start_soon(place_orders)
            await wait_for("the victim inside a step", lambda: len(held()) >= 2, 20, workers)
            victim.process.send_signal(signal.SIGSTOP)
            stopped = True
            stopped_at, stopped_wall = time.monotonic(), time.time()
        victims_orders = held()
        subjects = {f"stall-{n}": init_for(n).subject for n in range(ORDERS)}

        async def all_done(keys: list[str]) -> bool:
            for key in keys:
                stored = await memory.read(key)
                if stored is None or stored.status != "done":
                    return False
            return True

        # The others take over what the stopped victim held, and finish every order.
        taken = [subjects[o] for o in victims_orders]
        await wait_for("the victim's orders taken over", lambda: all_done(taken), 40, workers)
        stall = time.monotonic() - stopped_at
        await wait_for("every order done", lambda: all_done(list(subjects.values())), 20, workers)

        # The victim wakes: its steps end, and their writes are refused.
        victim.process.send_signal(signal.SIGCONT)
        stopped = False
        await wait_for("the victim's refused write", lambda: REFUSED in victim.text(), 20, workers)

        # Every order reported to the shop once (late copies would come within ack_wait).
        reports: dict[str, set[str]] = {}
        quiet_until: float | None = None
        ack_wait = float(getattr(broker, "ack_wait", 5.0))
        deadline = time.monotonic() + 30
        while quiet_until is None or time.monotonic() < quiet_until:
            for delivery in await broker.receive(SHOP, max_messages=100, timeout=0.2):
                reports.setdefault(delivery.event.subject, set()).add(delivery.event.id)
                await delivery.ack()
            if quiet_until is None and len(reports) == ORDERS:
                quiet_until = time.monotonic() + ack_wait + 1.0
            assert time.monotonic() < deadline, f"{len(reports)} of {ORDERS} orders reported"
        assert set(reports) == set(subjects.values())
        assert all(len(ids) == 1 for ids in reports.values()), reports

        # Every record decodes and holds one completion; the victim's results were refused.
        victim_result = f"pid {victim.process.pid}"
        for order_id, subject in subjects.items():
            status = await make_workflow(memory).status(subject, history=True)
            assert status is not None and status.status == "done", order_id
            stored = await memory.read(subject, journal=True)
            assert stored is not None and stored.journal is not None
            completions = [
                e
                for raw in stored.journal
                for e in decode_entry(raw).produced
                if e.type == orders.complete_type
            ]
            assert [e.id for e in completions] == list(reports[subject]), order_id
            if order_id in victims_orders:
                assert completions[0].data["payment_id"] != victim_result, order_id
        for topic in (make_workflow(memory).source, SHOP):
            assert await broker.dead_letters(topic) == [], topic

        ran = marks(mark_file.read_text())
        twice = {o for o in subjects if len({pid for _, pid, oid, _ in ran if oid == o}) > 1}
        assert victims_orders <= twice  # the takeover ran their steps again: at least once
        moved_on = max(
            min(at for what, pid, oid, at in ran if oid == o and pid != victim.process.pid)
            for o in victims_orders
        )

        for w in workers:
            w.process.send_signal(signal.SIGTERM)
        for w in workers:
            code = await anyio.to_thread.run_sync(lambda p=w.process: p.wait(timeout=20))
            assert code == 0, f"a worker exited {code} on SIGTERM\n{w.tail()}"
        print(
            f"\n{broker!r}: the stopped worker held {len(victims_orders)} orders inside their "
            f"step; the others took them over {moved_on - stopped_wall:.1f}s and finished them "
            f"{stall:.1f}s after SIGSTOP (lock_ttl "
            f"{make_workflow(memory).lock_ttl:g}s, ack_wait {ack_wait:g}s); after SIGCONT its "
            f"writes were refused; {len(twice)} steps ran twice, 0 duplicate completions"
        )
    finally:
        for w in workers:
            if w.process.poll() is None:
                if stopped:
                    w.process.send_signal(signal.SIGCONT)
                w.process.kill()
                w.process.wait()
        await broker.close()
        await memory.close()


@pytest.mark.parametrize("pair", sorted(PAIRS))
async def test_a_stalled_worker_is_taken_over_and_its_late_write_refused(
    pair: str, tmp_path: Path
) -> None:
    async with PAIRS[pair]() as (broker_url, memory_url):
        with anyio.fail_after(RUN_LIMIT):
            await run_stall(broker_url, memory_url, tmp_path)
