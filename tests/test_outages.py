"""Infrastructure faults are retried, never dead-lettered (issue 13, item 1).

A memory or broker that is unavailable (``resumable.Unavailable``) says nothing about the
event being handled: the worker nacks it with backoff, does not count it against
``max_attempts``, pauses consuming while a probe waits for the memory, and resumes. Here
with a memory behind a switch, and with this test's own PostgreSQL and Redis servers
stopped under a running worker. Also the periodic outbox sweep.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from resumable import Event, Resumable, Unavailable, call, complete, sleep
from resumable.brokers import LocalBroker
from resumable.demo import SERVICES, ChargeCard, OrderResult, PlaceOrder, make_handlers, orders
from resumable.demo import payments as payments_contract
from resumable.errors import TransactionViolation, is_unavailable
from resumable.memory import InMemoryMemory, Memory, Page, SQLiteMemory, Stored
from resumable.outage import PROBE_KEY
from resumable.sweep import OutboxSweep
from resumable.worker import Worker

from own_servers import own_postgres, own_redis

pytestmark = pytest.mark.anyio

QUICK = (0.01, 2.0, 0.05)
"""Backoff for tests: 10 ms, doubling, at most 50 ms."""


class Switched(Memory):
    """An in-process memory behind a switch: while ``down``, every call raises
    ``Unavailable``, as a backend does for a database that is down."""

    def __init__(self) -> None:
        self.inner = InMemoryMemory()
        self.down = False
        self.probes = 0

    def _gate(self, key: str = "") -> None:
        if key == PROBE_KEY:
            self.probes += 1
        if self.down:
            raise Unavailable("the test's database is down", server="test")

    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        self._gate(key)
        return await self.inner.read(key, journal=journal)

    async def write(self, key: str, **fields: Any) -> int:  # type: ignore[override]
        self._gate(key)
        return await self.inner.write(key, **fields)

    async def entry(self, key: str, event_id: str) -> bytes | None:
        self._gate(key)
        return await self.inner.entry(key, event_id)

    async def keys(self, status: str | None = None) -> list[str]:
        self._gate()
        return await self.inner.keys(status)

    async def due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        self._gate()
        return await self.inner.due(now, limit)

    async def lock(self, key: str, owner: str, ttl: float) -> bool:
        self._gate(key)
        return await self.inner.lock(key, owner, ttl)

    async def unlock(self, key: str, owner: str) -> bool:
        self._gate(key)
        return await self.inner.unlock(key, owner)

    async def list(self, **query: Any) -> Page:  # type: ignore[override]
        self._gate()
        return await self.inner.list(**query)


async def stepping(ctx: Any, order: PlaceOrder) -> Any:
    """A workflow that takes several steps (timers), then calls a service: a database
    outage finds instances in every state."""
    for _ in range(6):
        yield sleep(0.2)
    reply = yield call(payments_contract, ChargeCard(order.order_id, order.amount_cents))
    yield complete(OrderResult("charged", reply.data.payment_id))


def workflow(memory: Memory, function: Any = stepping, lock_ttl: float = 30.0) -> Resumable[Any]:
    return Resumable(
        orders, versions={"1.0.0": function}, services=SERVICES, memory=memory, lock_ttl=lock_ttl
    )


def starts(count: int, prefix: str = "o") -> list[Event]:
    return [
        orders.init_event(PlaceOrder(f"{prefix}-{n}", 100 + n), source="com.shop.web")
        for n in range(count)
    ]


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = 30.0) -> None:
    with anyio.fail_after(limit):
        while not await check():
            await anyio.sleep(0.02)


async def dead_letters(broker: LocalBroker, topics: Sequence[str]) -> list[Any]:
    return [letter for topic in topics for letter in await broker.dead_letters(topic)]


async def test_an_outage_is_never_dead_lettered_and_consuming_pauses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="resumable.worker")
    memory = Switched()
    flow = workflow(memory)
    broker = LocalBroker()
    handlers = [flow, *make_handlers()]
    worker = Worker(
        handlers,
        broker=broker,
        max_attempts=2,
        concurrency=4,
        poll=0.05,
        timer_interval=0.05,
        backoff=QUICK,
        unavailable_backoff=QUICK,
    )
    events = starts(6)

    async def done() -> bool:
        return len(await memory.inner.keys("done")) == len(events)

    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        memory.down = True
        for event in events:
            await broker.publish(event)
        # Paused: the probe reads the memory again and again, and no delivery is taken.
        await eventually(lambda: _true(memory.probes >= 2))
        taken = worker.stats.received
        await eventually(lambda: _true(memory.probes >= 6))
        assert worker.stats.received == taken <= 4
        memory.down = False
        await eventually(done)
        worker.stop()
    assert worker.stats.dead_lettered == 0
    assert await dead_letters(broker, [h.source for h in handlers]) == []
    assert worker.stats.unavailable >= 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("consuming paused" in m for m in messages) == 1
    assert sum("consuming resumed" in m for m in messages) == 1


async def _true(value: bool) -> bool:
    return value


async def test_the_embedded_runtime_waits_out_an_outage() -> None:
    """``Runtime`` runs a worker on the in-process broker: a memory outage after the start
    pauses it, ``result()`` waits it out, and the instance completes."""
    from resumable import Runtime

    memory = Switched()
    flow = workflow(memory, stepping)
    async with Runtime(
        [flow, *make_handlers()],
        memory=memory,
        timer_interval=0.05,
        backoff=QUICK,
        unavailable_backoff=QUICK,
        max_attempts=1,
    ) as rt:
        handle = await rt.start(orders, PlaceOrder("o-embedded", 100), id="o-embedded")
        memory.down = True

        async def restore() -> None:
            await eventually(lambda: _true(memory.probes >= 3))
            memory.down = False

        async with anyio.create_task_group() as group:
            group.start_soon(restore)
            result = await handle.result(timeout=30)
        assert result.status == "charged"
        assert rt.worker is not None and rt.worker.stats.dead_lettered == 0


class Scripted:
    """A service on ``com.test.in`` that fails as the test says, call by call."""

    source = "com.test.in"

    def __init__(self, fail: Callable[[int], Exception | None]) -> None:
        self.fail = fail
        self.calls = 0

    async def execute(self, event: Event) -> list[Event]:
        self.calls += 1
        error = self.fail(self.calls)
        if error is not None:
            raise error
        return []


def _in_event() -> Event:
    return Event(source="com.test", type="com.test.thing", subject="s", data={}, to="com.test.in")


async def test_outages_do_not_count_against_max_attempts() -> None:
    """Four outages (one wrapped in a TransactionViolation, as the driver raises it), then
    real failures: dead-lettered after ``max_attempts`` real failures, on the sixth
    delivery, with the real error as the reason."""

    def fail(call: int) -> Exception:
        if call == 1:
            violation = TransactionViolation(TransactionViolation.READ_FAILURE, "no database")
            violation.__cause__ = Unavailable("the database is down")
            return violation
        if call <= 4:
            return Unavailable("the broker is down")
        return ValueError("a bug")

    handler = Scripted(fail)
    broker = LocalBroker()
    worker = Worker(
        [handler],
        broker=broker,
        max_attempts=2,
        poll=0.05,
        backoff=QUICK,
        unavailable_backoff=QUICK,
    )
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        await broker.publish(_in_event())
        await eventually(lambda: _true(worker.stats.dead_lettered == 1))
        worker.stop()
    (letter,) = await broker.dead_letters("com.test.in")
    assert letter.attempts == 6 and "ValueError: a bug" in letter.reason
    assert worker.stats.unavailable == 4


async def test_a_hosting_local_broker_retries_an_outage_until_it_ends() -> None:
    """``LocalBroker([...])`` hosts handlers with the worker's logic but no running worker:
    the outage is retried with backoff (no pause), and nothing is dead-lettered."""
    handler = Scripted(lambda call: Unavailable("down") if call <= 6 else None)
    broker = LocalBroker([handler])
    await broker.publish(_in_event())
    assert handler.calls == 7
    assert await broker.dead_letters("com.test.in") == [] and broker.errors == []


async def test_is_unavailable_follows_explicit_causes_only() -> None:
    outage = Unavailable("down")
    wrapped = TransactionViolation(TransactionViolation.WRITE_FAILURE, "x")
    wrapped.__cause__ = outage
    assert is_unavailable(outage) and is_unavailable(wrapped)
    assert isinstance(outage, ConnectionError)
    try:
        try:
            raise outage
        except Unavailable:
            raise ValueError("a bug while handling it") from None
    except ValueError as bug:
        assert not is_unavailable(bug)


class UnlockFails(Switched):
    """Its next ``unlock`` meets an outage."""

    fail_unlock = 1

    async def unlock(self, key: str, owner: str) -> bool:
        if self.fail_unlock:
            self.fail_unlock -= 1
            raise Unavailable("the connection broke")
        return await super().unlock(key, owner)


async def test_a_lease_an_outage_kept_from_release_is_given_back() -> None:
    """Each execution has its own lease owner: a lease whose release failed for an outage
    would block the instance for ``lock_ttl`` (10 minutes here); it is released instead."""
    memory = UnlockFails()
    flow = workflow(memory, charge_once, lock_ttl=600.0)
    (start,) = starts(1)
    (request,) = await flow.execute(start)  # its unlock fails
    assert memory.fail_unlock == 0
    assert await flow.execute(start) == [request]  # the redelivery takes the lease at once


class LostReply(Switched):
    """Its first ``lose`` writes land, then report an outage: a connection lost during the
    commit, whose outcome the writer cannot know."""

    def __init__(self, lose: int) -> None:
        super().__init__()
        self.lose = lose

    async def write(self, key: str, **fields: Any) -> int:  # type: ignore[override]
        written = await super().write(key, **fields)
        if self.lose:
            self.lose -= 1
            raise Unavailable("the connection broke during the commit")
        return written


async def test_a_write_whose_outcome_is_unknown_is_safe_to_retry() -> None:
    """Every step's write lands but reports an outage, once: the retry finds the event
    journaled (the compare-and-set moved on) and answers from the journal, with the same
    ids; each workflow completes once, nothing is dead-lettered."""
    memory = LostReply(lose=4)
    broker = LocalBroker(record=True)
    handlers = [workflow(memory, charge_once), *make_handlers()]
    worker = Worker(
        handlers, broker=broker, max_attempts=1, poll=0.05, backoff=QUICK, unavailable_backoff=QUICK
    )
    events = starts(2)

    async def reported() -> bool:  # a step written, then lost, is published on its retry
        return len({e.id for e in broker.events if e.type == orders.complete_type}) == 2

    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        for event in events:
            await broker.publish(event)
        await eventually(reported)
        worker.stop()
    assert len(await memory.inner.keys("done")) == 2
    assert memory.lose == 0 and worker.stats.unavailable >= 1
    assert await dead_letters(broker, [h.source for h in handlers]) == []
    charges = [e for e in broker.events if e.type == payments_contract.type]
    completions = [e for e in broker.events if e.type == orders.complete_type]
    assert len({e.id for e in charges}) == 2 and len({e.id for e in completions}) == 2


# ---------------------------------------------------------------------------------------
# the outbox sweep


class Forgetful(LocalBroker):
    """Drops the first publish of every event to ``lose``: a request lost in transit."""

    def __init__(self, lose: str) -> None:
        super().__init__()
        self.lose = lose
        self.lost: list[str] = []

    async def publish(self, event: Event) -> None:
        if event.to == self.lose and event.id not in self.lost:
            self.lost.append(event.id)
            return
        await super().publish(event)


async def charge_once(ctx: Any, order: PlaceOrder) -> Any:
    reply = yield call(payments_contract, ChargeCard(order.order_id, order.amount_cents))
    yield complete(OrderResult("charged", reply.data.payment_id))


async def test_the_periodic_sweep_resends_a_lost_request_without_a_restart() -> None:
    memory = InMemoryMemory()
    broker = Forgetful(lose=payments_contract.type)
    worker = Worker(
        [workflow(memory, charge_once), *make_handlers()],
        broker=broker,
        poll=0.05,
        backoff=QUICK,
        recover_interval=0.2,
    )
    (start,) = starts(1)

    async def done() -> bool:
        return await memory.keys("done") == [start.subject]

    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        await broker.publish(start)
        await eventually(done)
        worker.stop()
    assert len(broker.lost) == 1 and worker.stats.recovered >= 1


class _Outboxes:
    """A ``Sweepable`` over an in-process memory, counting the records it reads."""

    source = "arvo.orc.order.fulfil"

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.read: list[str] = []

    async def pending_requests(self, subject: str) -> list[Event]:
        self.read.append(subject)
        return [_in_event()]


async def test_the_sweep_skips_fresh_records_and_backs_off_on_unchanged_ones() -> None:
    now = [1000.0]
    memory = InMemoryMemory(clock=lambda: now[0])
    subject = starts(1)[0].subject
    await memory.write(subject, revision=0, status="active", header=b"h")
    outboxes = _Outboxes(memory)
    sweep = OutboxSweep(30.0, clock=lambda: now[0])
    sent: list[Event] = []

    async def publish(event: Event) -> None:
        sent.append(event)

    async def at(moment: float) -> int:
        now[0] = moment
        return await sweep.sweep(outboxes, publish)

    assert await at(1010.0) == 0  # written 10 s ago: its requests are on their way
    assert await at(1030.0) == 1  # idle for the interval: re-sent
    assert await at(1059.0) == 0  # unchanged: not again before 30 s more
    assert await at(1060.0) == 1
    assert await at(1119.0) == 0  # then 60 s
    assert await at(1120.0) == 1
    await memory.write(subject, revision=1, status="active", header=b"h2")  # it moved at 1120
    assert await at(1149.0) == 0
    assert await at(1150.0) == 1  # a new write starts the gaps again
    assert outboxes.read == [subject] * 4


# ---------------------------------------------------------------------------------------
# backends


async def test_a_sqlite_file_locked_past_the_busy_timeout_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resumable.memory.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT", 0.05)
    path = tmp_path / "m.db"
    memory = SQLiteMemory(path)
    try:
        await memory.write("k", revision=0, status="active", header=b"h")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(Unavailable, match="locked by another connection") as caught:
                await memory.write("k", revision=1, status="active", header=b"h2")
            assert is_unavailable(caught.value)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await memory.write("k", revision=1, status="active", header=b"h2") == 2
    finally:
        await memory.close()


async def test_unreachable_servers_are_unavailable() -> None:
    from resumable.brokers.nats import NatsBroker
    from resumable.brokers.redis import RedisBroker
    from resumable.memory.postgres import PostgresMemory
    from resumable.memory.redis import RedisMemory

    from own_servers import spare_port

    port = spare_port()
    nats_broker = NatsBroker(f"nats://127.0.0.1:{port}", connect_timeout=1.0)
    try:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            await nats_broker.publish(_in_event())
    finally:
        await nats_broker.close()
    postgres = PostgresMemory(f"postgresql://u@127.0.0.1:{port}/db")
    redis_memory = RedisMemory(f"redis://127.0.0.1:{port}/0")
    redis_broker = RedisBroker(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(Unavailable):
            await postgres.read("k")
        with pytest.raises(Unavailable):
            await redis_memory.read("k")
        with pytest.raises(Unavailable):
            await redis_broker.publish(_in_event())
        with pytest.raises(Unavailable):
            await redis_broker.receive("com.test.in", timeout=0.01)
    finally:
        await postgres.close()
        await redis_memory.close()
        await redis_broker.close()


# ---------------------------------------------------------------------------------------
# real servers, stopped under a running worker


async def _outage_under_a_worker(
    memory: Memory, stop: Callable[[], None], start: Callable[[], None], count: int = 8
) -> Worker:
    """Run ``count`` stepping workflows on ``memory`` under a worker; once some have moved,
    stop the server for about three seconds, start it again; return the worker once every
    workflow is done. Leases live for 10 minutes: one an outage kept from being released
    must be given back, not waited out."""
    flow = workflow(memory, lock_ttl=600.0)
    broker = LocalBroker()
    handlers = [flow, *make_handlers()]
    worker = Worker(
        handlers,
        broker=broker,
        max_attempts=2,
        poll=0.05,
        timer_interval=0.05,
        backoff=QUICK,
        unavailable_backoff=(0.05, 2.0, 0.5),
    )
    events = starts(count)

    async def done() -> bool:
        try:
            page = await memory.list(status="done", limit=count)
        except Unavailable:
            return False
        return len(page.items) == count

    # A bound on the whole: a hang fails here, with the stack of what it waited on, instead
    # of stalling the suite (asyncpg < 0.32 hung in the memory's close: see CHANGELOG).
    with anyio.fail_after(180):
        async with anyio.create_task_group() as group:
            await group.start(worker.run)
            for event in events:
                await broker.publish(event)
            await eventually(lambda: _true(worker.stats.timers_fired >= count))
            await anyio.to_thread.run_sync(stop)
            await anyio.sleep(3.0)  # the outage
            await anyio.to_thread.run_sync(start)
            await eventually(done, limit=60.0)
            worker.stop()
    assert worker.stats.dead_lettered == 0
    assert await dead_letters(broker, [h.source for h in handlers]) == []
    assert worker.stats.unavailable >= 1
    return worker


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_postgres_restart_under_a_worker_loses_nothing(mode: str) -> None:
    from resumable.memory.postgres import PostgresMemory

    with own_postgres() as server:
        memory = PostgresMemory(server.url)
        try:
            await _outage_under_a_worker(memory, lambda: server.stop(mode), server.start)
        finally:
            await memory.close()


async def test_a_redis_restart_with_aof_under_a_worker_loses_nothing(tmp_path: Path) -> None:
    from resumable.memory.redis import RedisMemory

    options = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
    with own_redis(tmp_path / "redis", *options) as server:
        memory = RedisMemory(server.url)  # persistent: no allow_volatile needed
        try:
            await _outage_under_a_worker(memory, lambda: server.stop(signal.SIGKILL), server.start)
        finally:
            await memory.close()


# ---------------------------------------------------------------------------------------
# refusing to lose data silently


async def test_redis_memory_refuses_a_server_that_keeps_nothing(tmp_path: Path) -> None:
    from resumable.errors import SetupError
    from resumable.memory import from_url
    from resumable.memory.redis import RedisMemory

    with own_redis(tmp_path / "volatile", "--save", "", "--appendonly", "no") as server:
        memory = RedisMemory(server.url)
        try:
            with pytest.raises(SetupError, match="keeps nothing on disk") as caught:
                await memory.read("k")
            assert "appendonly yes" in str(caught.value) and "allow_volatile" in str(caught.value)
            with pytest.raises(SetupError):  # and it stays refused
                await memory.write("k", revision=0, status="active", header=b"h")
        finally:
            await memory.close()
        for opted_in in (
            RedisMemory(server.url, allow_volatile=True),
            from_url(f"{server.url}?allow_volatile=1"),
        ):
            try:
                assert await opted_in.read("k") is None
            finally:
                await opted_in.close()


async def test_a_worker_on_a_volatile_redis_memory_stops_at_start(tmp_path: Path) -> None:
    from resumable.errors import SetupError
    from resumable.memory.redis import RedisMemory

    with own_redis(tmp_path / "volatile", "--save", "", "--appendonly", "no") as server:
        memory = RedisMemory(server.url)
        worker = Worker([workflow(memory)], broker=LocalBroker(), recover=False)
        try:
            with pytest.raises(SetupError, match="keeps nothing on disk"):
                await worker.run()
        finally:
            await memory.close()


async def test_redis_memory_accepts_aof_and_warns_on_snapshots_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from resumable.memory.redis import RedisMemory

    with own_redis(tmp_path / "aof", "--appendonly", "yes", "--save", "") as server:
        memory = RedisMemory(server.url)
        try:
            assert await memory.write("k", revision=0, status="active", header=b"h") == 1
        finally:
            await memory.close()
    with own_redis(tmp_path / "rdb", "--appendonly", "no", "--save", "60 1") as server:
        memory = RedisMemory(server.url)
        try:
            assert await memory.read("k") is None
        finally:
            await memory.close()
    assert any("RDB snapshots only" in r.getMessage() for r in caplog.records)


async def test_redis_memory_says_what_to_do_when_config_is_disabled(tmp_path: Path) -> None:
    from resumable.errors import SetupError
    from resumable.memory.redis import RedisMemory

    with own_redis(tmp_path / "noconfig", "--rename-command", "CONFIG", '""') as server:
        memory = RedisMemory(server.url)
        try:
            with pytest.raises(SetupError, match=r"CONFIG GET was refused.*allow_volatile=True"):
                await memory.read("k")
        finally:
            await memory.close()


async def test_redis_broker_warns_about_a_server_that_keeps_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from resumable.brokers.redis import RedisBroker

    with own_redis(tmp_path / "volatile", "--save", "", "--appendonly", "no") as server:
        for broker, warned in (
            (RedisBroker(server.url), True),
            (RedisBroker.from_url(f"{server.url}?allow_volatile=1"), False),
        ):
            caplog.clear()
            try:
                await broker.publish(_in_event())
            finally:
                await broker.close()
            text = " ".join(r.getMessage() for r in caplog.records)
            assert ("keeps nothing on disk" in text) is warned


def test_postgres_tells_outages_from_other_errors() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    from resumable.memory.postgres import _is_outage

    outages = [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),  # 57P01
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),  # a standby
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        asyncpg.InterfaceError("connection has been released back to the pool"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation"),
    ]
    others = [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedTableError("no such table"),
        asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"),
        asyncpg.InterfaceError("the server expects 2 arguments, 3 were passed"),
        ValueError("a bug"),
    ]
    assert [_is_outage(error) for error in outages] == [True] * len(outages)
    assert [_is_outage(error) for error in others] == [False] * len(others)


class _AckFails(LocalBroker):
    """Its deliveries' first ack meets an outage (the broker went away after the work)."""

    failed = 0

    async def receive(self, topic: str, **options: Any) -> list[Any]:
        got = await super().receive(topic, **options)
        for delivery in got:
            if not self.failed:
                self.failed += 1

                async def ack() -> None:
                    raise Unavailable("the broker went away")

                delivery.ack = ack  # type: ignore[method-assign]
        return got


async def test_a_settle_that_meets_an_outage_is_counted_as_one() -> None:
    broker = _AckFails(ack_wait=0.2)
    handler = Scripted(lambda call: None)
    worker = Worker([handler], broker=broker, poll=0.05, backoff=QUICK)
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        await broker.publish(_in_event())
        await eventually(lambda: _true(worker.stats.acked == 1))  # after ack_wait, again
        worker.stop()
    assert (worker.stats.unavailable, worker.stats.errors) == (1, 0)
    assert handler.calls == 2
