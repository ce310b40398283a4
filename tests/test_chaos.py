"""Chaos: three ``resumable worker`` processes, one SIGKILLed about every second, run 500 orders.

For each pair of (broker, memory): (NATS JetStream, PostgreSQL) and (Redis Streams, Redis),
three worker processes (``python -m resumable worker chaos_worker:handlers``) run the demo's
order workflow (with a short sleep before it completes: ``NAP``) and its four services,
whose side effects are counted in PostgreSQL (``tests/chaos_worker.py``). The test
publishes 500 orders (evenly over eight seconds) and meanwhile kills a random worker with
SIGKILL about every second (one that is consuming, so that a machine slow to start
processes still makes progress) and starts it again, until nine in ten orders' records are
finished (``KILL_UNTIL``); then it stops killing, lets the workers finish the rest and
deliver what the killed ones left behind, and stops them with SIGTERM (each drains and
exits 0). Leases and ack deadlines are the defaults
(``lock_ttl`` and ``ack_wait`` 5 s, kept alive by the workers' heartbeat while work runs).

Measured and printed, and written to ``.artifacts/chaos/`` as JSON (one file per run): the
drain time, seconds from the last kill to the last order's first report to the shop: how
long the instances and deliveries the last killed worker held took to move on, plus the
little work left. With the defaults it is a few seconds (a killed worker's leases and
deliveries expire within 5 s; it was 40 s and more with 30 s ones); it is reported, not
asserted.

Checked afterwards: every order reported to the shop exactly once (one distinct report
event per order, on a topic nobody consumes, and one report in its journal), with the
outcome the demo's mix says; every service effect happened once per order (one row per
(kind, order), whatever the number of requests for it); nothing was dead-lettered.

Bounded so that it runs in the normal suite: each pair gets at most ``CHAOS_LIMIT`` seconds
of chaos, ``SETTLE_LIMIT`` seconds to settle and ``RUN_LIMIT`` seconds in all, so the whole
file stays under four minutes even when both run out (a run takes about 30 seconds per pair
here); a test that runs out fails, with the workers' logs.
Every run uses its own stream, key prefixes and schemas, removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from chaos_worker import create_effects_table, expected_outcome, outcome, split_schema

from resumable.brokers import Broker
from resumable.brokers import from_url as broker_from_url
from resumable.clock import to_epoch
from resumable.demo import init_for, make_handlers, make_workflow, orders
from resumable.memory import Memory
from resumable.memory import from_url as memory_from_url
from resumable.record import decode_entry

from servers import require_nats, require_postgres, require_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 500
WORKERS = 3
PUBLISH_OVER = 8.0
"""Seconds over which the orders arrive (evenly)."""
KILL_EVERY = 1.0
"""Seconds between kills, on average (uniform between half and one and a half of it)."""
KILL_UNTIL = 0.9
"""The share of orders finished at which the killing stops: the rest finish after it, so the
drain time measures how soon what the last killed worker held moves on."""
CHAOS_LIMIT = 75.0
"""Most seconds of killing per pair before the test gives up."""
SETTLE_LIMIT = 25.0
"""Most seconds, after the last kill, for every report to reach the shop."""
RUN_LIMIT = 110.0
"""Most seconds for one pair from start to finish, whatever happens: two pairs fit in four
minutes."""
NAP = 0.3
"""Seconds the workflow sleeps before completing: shipped and declined orders report from
a timer's step, so kills also land between a timer step's write and its publish."""
SHOP = "com.shop.web"


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Pair:
    """One deployment under test: the URLs the workers get, and how to clean up after."""

    name: str
    broker_url: str
    memory_url: str
    effects_url: str
    cleanup: list[Callable[[], Any]] = field(default_factory=list)


@dataclass
class Process:
    """One worker slot: its current process and log, and how many times it was killed."""

    slot: int
    logs: Path
    pair: Pair
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    incarnation: int = 0
    kills: int = 0

    def start(self) -> None:
        self.incarnation += 1
        self.log = self.logs / f"worker-{self.slot}-{self.incarnation}.log"
        paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "CHAOS_EFFECTS": self.pair.effects_url,
            "CHAOS_NAP": str(NAP),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "resumable",
                    "worker",
                    "chaos_worker:handlers",
                    "--broker",
                    self.pair.broker_url,
                    "--memory",
                    self.pair.memory_url,
                    "--concurrency",
                    "16",
                    "--log-level",
                    "ERROR",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.kills += 1

    def ready(self) -> bool:
        return self.log is not None and b" consuming " in self.log.read_bytes()

    def tail(self) -> str:
        if self.log is None:
            return ""
        text = self.log.read_text(errors="replace")
        return f"--- {self.log.name}\n{text[-3000:]}"


@pytest.fixture
async def nats_postgres() -> AsyncIterator[Pair]:
    import nats

    nats_url, pg_url = require_nats(), require_postgres()
    suffix = uuid.uuid4().hex[:10]
    stream = f"CHAOS_{suffix}"
    pair = Pair(
        "NATS + PostgreSQL",
        with_query(
            nats_url,
            stream=stream,
            prefix=f"chaos{suffix}",
            max_deliver="100",
        ),
        with_query(pg_url, schema=f"chaos_{suffix}"),
        with_query(pg_url, schema=f"chaos_fx_{suffix}"),
    )
    yield pair

    async def delete_stream() -> None:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    await delete_stream()
    await drop_schemas(pg_url, f"chaos_{suffix}", f"chaos_fx_{suffix}")


@pytest.fixture
async def redis_redis() -> AsyncIterator[Pair]:
    import redis.asyncio as aioredis

    redis_url, pg_url = require_redis(), require_postgres()
    suffix = uuid.uuid4().hex[:10]
    prefix = f"chaos-{suffix}"
    pair = Pair(
        "Redis + Redis",
        with_query(redis_url, prefix=f"{prefix}-b"),
        with_query(redis_url, prefix=f"{prefix}-m", allow_volatile="1"),
        with_query(pg_url, schema=f"chaos_fx_{suffix}"),
    )
    yield pair
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}-*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await drop_schemas(pg_url, f"chaos_fx_{suffix}")


ARTIFACTS = Path(os.environ.get("RESUMABLE_CHAOS_ARTIFACTS", ROOT / ".artifacts" / "chaos"))
"""Where each run's figures go, one JSON file per run."""


def record_run(pair: Pair, **figures: Any) -> Path:
    """Write one run's figures to ``ARTIFACTS`` as JSON; returns the file."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    slug = "".join(c if c.isalnum() else "-" for c in pair.name.lower()).replace("---", "-")
    path = ARTIFACTS / f"{stamp}-{slug}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"pair": pair.name, "at": stamp, **figures}, indent=2) + "\n")
    return path


async def steps_after(memory: Memory, subject: str, since: float) -> list[str]:
    """The steps of one order after ``since`` (wall clock): what each consumed, sent when,
    and when the step ran, in seconds from ``since``: where a slow drain spent its time."""
    stored = await memory.read(subject, journal=True) if subject else None
    out: list[str] = []
    for raw in [] if stored is None or stored.journal is None else stored.journal:
        entry = decode_entry(raw)
        ran = min((to_epoch(e.time) for e in entry.produced), default=None)
        sent = to_epoch(entry.event.time)
        if ran is not None and ran < since:
            continue
        ran_at = "-" if ran is None else f"{ran - since:+.2f}s"
        out.append(f"{entry.event.type} sent {sent - since:+.2f}s, step ran {ran_at}")
    return out


async def drop_schemas(url: str, *schemas: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for schema in schemas:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


async def finished(memory: Memory) -> int:
    return len(await memory.keys(status="done")) + len(await memory.keys(status="failed"))


async def wait_ready(workers: list[Process], limit: float = 30.0) -> None:
    with anyio.fail_after(limit):
        while not all(w.ready() for w in workers):
            for w in workers:
                assert w.process is not None
                if w.process.poll() is not None:
                    pytest.fail(f"worker {w.slot} exited at start:\n{w.tail()}")
            await anyio.sleep(0.05)


async def run_chaos(pair: Pair, tmp_path: Path) -> None:
    """The whole scenario on one pair; prints a summary line."""
    rng = random.Random()
    began = time.monotonic()
    workers = [Process(slot, tmp_path, pair) for slot in range(WORKERS)]
    broker: Broker = broker_from_url(pair.broker_url)
    memory: Memory = memory_from_url(pair.memory_url)
    try:
        dsn, schema = split_schema(pair.effects_url)
        connection = await asyncpg.connect(dsn)
        try:
            await create_effects_table(connection, schema)
        finally:
            await connection.close()
        for w in workers:
            w.start()
        await wait_ready(workers)
        published = time.monotonic()

        async def place_orders() -> None:
            """Orders arrive over ``PUBLISH_OVER`` seconds, so that kills land throughout."""
            for n in range(ORDERS):
                await broker.publish(init_for(n))
                await anyio.sleep(PUBLISH_OVER / ORDERS)

        # Chaos: SIGKILL a random worker about every second, start it again at once.
        kills = 0
        last_kill, last_kill_wall = published, time.time()
        next_kill = published + rng.uniform(0.5, 1.5) * KILL_EVERY
        done = 0
        async with anyio.create_task_group() as orders_arriving:
            orders_arriving.start_soon(place_orders)
            while (done := await finished(memory)) < KILL_UNTIL * ORDERS:
                now = time.monotonic()
                if now - published > CHAOS_LIMIT:
                    pytest.fail(
                        f"{pair.name}: only {done} of {ORDERS} orders finished after "
                        f"{CHAOS_LIMIT:.0f}s of chaos\n" + "\n".join(w.tail() for w in workers)
                    )
                running = [w for w in workers if w.ready()]  # a slow start is not killed again
                if now >= next_kill and running:
                    victim = rng.choice(running)
                    victim.kill()
                    last_kill, last_kill_wall = time.monotonic(), time.time()
                    victim.start()
                    kills += 1
                    next_kill = now + rng.uniform(0.5, 1.5) * KILL_EVERY
                await anyio.sleep(0.1)
        assert kills >= PUBLISH_OVER / KILL_EVERY / 2, "the chaos was too mild to count"
        calm_at = time.monotonic()

        # Settle: no more kills; what the killed workers left comes back after ack_wait.
        reports: dict[str, list[Any]] = defaultdict(list)
        ack_wait = float(getattr(broker, "ack_wait", 5.0))
        last_report, last_subject = calm_at, ""
        copies = 0
        settle_deadline = time.monotonic() + SETTLE_LIMIT
        quiet_until: float | None = None
        while True:
            deliveries = await broker.receive(SHOP, max_messages=200, timeout=0.2)
            for delivery in deliveries:
                if delivery.event.subject not in reports:
                    last_report, last_subject = time.monotonic(), delivery.event.subject
                reports[delivery.event.subject].append(delivery.event)
                copies += 1
                await delivery.ack()
            now = time.monotonic()
            if len(reports) >= ORDERS and quiet_until is None:
                quiet_until = now + ack_wait + 1.0  # any late copy would come by then
            if quiet_until is not None and now >= quiet_until:
                break
            if now > settle_deadline:
                pytest.fail(
                    f"{pair.name}: {len(reports)} of {ORDERS} orders reported to the shop "
                    f"{SETTLE_LIMIT:.0f}s after the chaos\n" + "\n".join(w.tail() for w in workers)
                )

        # Stop: SIGTERM drains every worker, which exits 0.
        await wait_ready(workers)
        for w in workers:
            assert w.process is not None
            w.process.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.process is not None
            code = await anyio.to_thread.run_sync(lambda p=w.process: p.wait(timeout=20))
            assert code == 0, f"worker {w.slot} exited {code} on SIGTERM\n{w.tail()}"
            assert w.log is not None and b"SIGTERM: draining" in w.log.read_bytes()

        # Every order reported once, with its expected outcome.
        subjects = {init_for(n).subject: n for n in range(ORDERS)}
        assert set(reports) == set(subjects)
        for subject, events in reports.items():
            assert len({e.id for e in events}) == 1, f"order {subjects[subject]}: {events}"
            assert outcome(events[0]) == expected_outcome(subjects[subject]), events[0].data
        mix = Counter(outcome(events[0]) for events in reports.values())
        assert mix == Counter(expected_outcome(n) for n in range(ORDERS))

        # The records agree: finished as expected, one report each in the journal.
        for subject, n in subjects.items():
            stored = await memory.read(subject, journal=True)
            assert stored is not None and stored.journal is not None
            wanted = "failed" if expected_outcome(n) == "compensated" else "done"
            assert stored.status == wanted, f"order {n} is {stored.status}"
            journaled = [
                e.id
                for raw in stored.journal
                for e in decode_entry(raw).produced
                if e.type in (orders.complete_type, orders.system_error_type)
            ]
            assert journaled == [reports[subject][0].id], f"order {n}: {journaled}"

        # Every effect happened once per order, however often it was asked for.
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(
                f'SELECT kind, order_id, count(*) AS keys, sum(attempts) AS asked FROM "{schema}"'
                ".effects GROUP BY kind, order_id"
            )
        finally:
            await connection.close()
        assert [dict(r) for r in rows if r["keys"] != 1] == []
        per_kind = Counter(r["kind"] for r in rows)
        mix_n = Counter(expected_outcome(n) for n in range(ORDERS))
        charged = mix_n["shipped"] + mix_n["compensated"]
        assert per_kind == {
            "charge": charged,
            "label": charged,
            "reserve": mix_n["shipped"],
            "refund": mix_n["compensated"],
        }
        repeated = sum(r["asked"] for r in rows) - len(rows)

        # Nothing was set aside.
        topics = [make_workflow(memory).source, *(h.source for h in make_handlers())]
        for topic in topics:
            assert await broker.dead_letters(topic) == [], topic

        drain = last_report - last_kill
        record_run(
            pair,
            orders=ORDERS,
            workers=WORKERS,
            kills=kills,
            drain_after_last_kill=round(drain, 2),
            kills_stopped_after_first_publish=round(calm_at - published, 2),
            reported_after_first_publish=round(last_report - published, 2),
            duplicate_report_deliveries=copies - ORDERS,
            repeated_service_requests=repeated,
            ack_wait=ack_wait,
            lock_ttl=make_workflow(memory).lock_ttl,
            seconds_in_all=round(time.monotonic() - began, 1),
            load_average=os.getloadavg()[0],
            last_order_steps=await steps_after(memory, last_subject, last_kill_wall),
        )
        print(
            f"\n{pair.name}: drained {drain:.1f}s after the last kill (lock_ttl "
            f"{make_workflow(memory).lock_ttl:g}s, ack_wait {ack_wait:g}s); {ORDERS} orders "
            f"reported {last_report - published:.1f}s after the first was published, through "
            f"{kills} SIGKILLs and restarts (until {calm_at - published:.1f}s); "
            f"{copies - ORDERS} duplicate report deliveries (same ids); {repeated} repeated "
            "service requests answered from the effect table; "
            f"{time.monotonic() - began:.1f}s in all"
        )
    finally:
        for w in workers:
            if w.process is not None and w.process.poll() is None:
                w.process.kill()
                w.process.wait()
        await broker.close()
        await memory.close()


async def test_chaos_on_nats_and_postgres(nats_postgres: Pair, tmp_path: Path) -> None:
    with anyio.fail_after(RUN_LIMIT):
        await run_chaos(nats_postgres, tmp_path)


async def test_chaos_on_redis_and_redis(redis_redis: Pair, tmp_path: Path) -> None:
    with anyio.fail_after(RUN_LIMIT):
        await run_chaos(redis_redis, tmp_path)
