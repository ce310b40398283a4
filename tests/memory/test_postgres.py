"""PostgresMemory runs the shared conformance suite, plus checks of its schema, batching and URLs.

Every test gets a schema of its own (``t_<hex>``), dropped afterwards, so tests never see
each other's rows and can run against a shared server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import anyio
import asyncpg
import pytest

import resumable.memory.postgres as postgres_module
from resumable.errors import ConflictError, DuplicateEntryError
from resumable.memory import Listed, Stored
from resumable.memory.listing import check_query, select_page
from resumable.memory.postgres import SCHEMA_VERSION, PostgresMemory

from .conformance import FakeClock, MemoryConformance, check_two_instances_share, subject
from servers import require_postgres

pytestmark = pytest.mark.anyio


async def _drop(url: str, *schemas: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for schema in schemas:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
def url() -> str:
    return require_postgres()


@pytest.fixture
async def new_schema(url: str) -> AsyncIterator[Callable[[], str]]:
    """Makes fresh schema names, and drops every one made when the test ends."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t_{uuid.uuid4().hex}")
        return made[-1]

    yield make
    await _drop(url, *made)


class TestPostgresMemory(MemoryConformance):
    @pytest.fixture
    async def memory(
        self, url: str, new_schema: Callable[[], str], clock: FakeClock
    ) -> AsyncIterator[PostgresMemory]:
        memory = PostgresMemory(url, schema=new_schema(), clock=clock)
        yield memory
        await memory.close()


@pytest.fixture
async def memory(url: str, new_schema: Callable[[], str]) -> AsyncIterator[PostgresMemory]:
    memory = PostgresMemory(url, schema=new_schema())
    yield memory
    await memory.close()


async def _versions(url: str, schema: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(f'SELECT version FROM "{schema}".schema_version')
        return sorted(row[0] for row in rows)
    finally:
        await connection.close()


# Schema: created once, versioned, safe to race.


async def test_constructor_does_no_io() -> None:
    memory = PostgresMemory("postgresql://nobody:secret@127.0.0.1:1/none")  # nothing listens
    await memory.close()


async def test_schema_creation_is_idempotent(url: str, new_schema: Callable[[], str]) -> None:
    schema = new_schema()
    first = PostgresMemory(url, schema=schema)
    try:
        await first.write("k", revision=0, status="s", header=b"h", append=[("e", b"x")])
    finally:
        await first.close()
    for revision in (1, 2):  # a second and third first connect find the schema in place
        again = PostgresMemory(url, schema=schema)
        try:
            assert await again.read("k", journal=True) == Stored(revision, "s", b"h", [b"x"])
            assert (
                await again.write("k", revision=revision, status="s", header=b"h") == revision + 1
            )
        finally:
            await again.close()
    assert await _versions(url, schema) == list(range(1, SCHEMA_VERSION + 1))


async def test_instances_connecting_at_once_share_the_new_schema(
    url: str, new_schema: Callable[[], str]
) -> None:
    """Without the advisory lock, racing CREATE statements fail one of the instances."""
    for _ in range(3):
        schema = new_schema()
        memories = [PostgresMemory(url, schema=schema) for _ in range(6)]
        try:
            async with anyio.create_task_group() as group:
                for index, memory in enumerate(memories):
                    group.start_soon(
                        partial(memory.write, f"k{index}", revision=0, status="s", header=b"")
                    )
            assert await memories[0].keys() == [f"k{index}" for index in range(6)]
        finally:
            for memory in memories:
                await memory.close()
        assert await _versions(url, schema) == list(range(1, SCHEMA_VERSION + 1))


async def test_a_newer_schema_version_is_a_clear_error(
    url: str, new_schema: Callable[[], str]
) -> None:
    schema = new_schema()
    first = PostgresMemory(url, schema=schema)
    try:
        await first.write("k", revision=0, status="s", header=b"")
    finally:
        await first.close()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f'INSERT INTO "{schema}".schema_version (version) VALUES ($1)', SCHEMA_VERSION + 1
        )
    finally:
        await connection.close()

    newer = PostgresMemory(url, schema=schema)
    try:
        message = rf"at version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}.*Upgrade resumable"
        with pytest.raises(RuntimeError, match=message):
            await newer.read("k")
        with pytest.raises(RuntimeError, match=message):  # and again: a failed connect retries
            await newer.write("k", revision=1, status="s", header=b"")
    finally:
        await newer.close()


async def test_schemas_isolate_memories(url: str, new_schema: Callable[[], str]) -> None:
    one = PostgresMemory(url, schema=new_schema())
    two = PostgresMemory(url, schema=new_schema())
    try:
        await one.write("k", revision=0, status="s", header=b"one")
        assert await two.read("k") is None
        assert await two.write("k", revision=0, status="s", header=b"two") == 1
        assert await one.lock("k", "alice", ttl=60)
        assert await two.lock("k", "bob", ttl=60)
        assert await one.read("k") == Stored(1, "s", b"one")
    finally:
        await one.close()
        await two.close()


# Group commit.


async def test_concurrent_writes_are_group_committed(url: str, memory: PostgresMemory) -> None:
    await memory.read("warm-up")  # connect first, so no batch waits on it
    before = memory.commits

    async with anyio.create_task_group() as group:
        for index in range(100):
            group.start_soon(
                partial(
                    memory.write,
                    f"k{index:03}",
                    revision=0,
                    status="s",
                    header=b"h%d" % index,
                    append=[("e", b"x%d" % index)],
                )
            )
    assert 1 <= memory.commits - before <= 5, "100 concurrent writes should share a few commits"

    other = PostgresMemory(url, schema=memory.schema)
    try:
        assert await other.keys() == [f"k{index:03}" for index in range(100)]
        for index in range(100):
            assert await other.read(f"k{index:03}", journal=True) == Stored(
                1, "s", b"h%d" % index, [b"x%d" % index]
            )
    finally:
        await other.close()


async def test_failed_writes_do_not_stop_the_rest_of_their_batch(
    memory: PostgresMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await memory.write("taken", revision=0, status="s", header=b"h", append=[("e", b"x")])
    batches: list[int] = []
    commits: list[int] = []
    run_batch = memory._run_batch

    async def recording(batch: list[Any]) -> None:
        batches.append(len(batch))
        await run_batch(batch)
        commits.append(memory.commits)

    monkeypatch.setattr(memory, "_run_batch", recording)
    outcomes: dict[str, object] = {}

    async def call(name: str, **write: Any) -> None:
        try:
            outcomes[name] = await memory.write(**write)
        except Exception as error:
            outcomes[name] = error

    async with anyio.create_task_group() as group:
        # Leads a first batch alone (a caller finding no batch running writes at once);
        # the rest queue behind it and share the next batch.
        group.start_soon(partial(memory.write, "first", revision=0, status="s", header=b""))
        for index in range(10):
            group.start_soon(
                partial(
                    call,
                    f"new{index}",
                    key=f"new{index}",
                    revision=0,
                    status="s",
                    header=b"n",
                    append=[("e", b"%d" % index)],
                )
            )
        group.start_soon(partial(call, "stale", key="taken", revision=5, status="x", header=b"x"))
        group.start_soon(partial(call, "exists", key="taken", revision=0, status="x", header=b"x"))
        group.start_soon(
            partial(
                call,
                "duplicate",
                key="taken",
                revision=1,
                status="x",
                header=b"x",
                append=[("fresh", b"y"), ("e", b"y")],
            )
        )

    assert batches == [1, 13] and len(commits) == 2
    assert isinstance(outcomes.pop("stale"), ConflictError)
    assert isinstance(outcomes.pop("exists"), ConflictError)
    assert isinstance(outcomes.pop("duplicate"), DuplicateEntryError)
    assert outcomes == {f"new{index}": 1 for index in range(10)}
    for index in range(10):
        assert await memory.read(f"new{index}", journal=True) == Stored(
            1, "s", b"n", [b"%d" % index]
        )
    assert await memory.read("taken", journal=True) == Stored(1, "s", b"h", [b"x"])
    assert await memory.entry("taken", "fresh") is None


async def test_a_batch_runs_its_writes_in_key_order(
    memory: PostgresMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process locks records in one order, so two batches cannot deadlock."""
    await memory.read("warm-up")
    ran: list[str] = []
    write = postgres_module._write

    async def recording(connection: Any, sql: Any, key: str, *args: Any) -> int:
        ran.append(key)
        return await write(connection, sql, key, *args)

    monkeypatch.setattr(postgres_module, "_write", recording)
    async with anyio.create_task_group() as group:
        # Leads a first batch alone; the four others queue behind it and share the next.
        group.start_soon(partial(memory.write, "first", revision=0, status="s", header=b""))
        for key in ["c", "a", "d", "b"]:
            group.start_soon(partial(memory.write, key, revision=0, status="s", header=b""))
    assert ran == ["first", "a", "b", "c", "d"]


def _hold_writes_of(key: str, monkeypatch: pytest.MonkeyPatch) -> tuple[anyio.Event, anyio.Event]:
    """Make a batch stop, transaction open, right after it wrote ``key``, until released.

    Returns ``(held, release)``: ``held`` is set once the batch stopped.
    """
    held, release = anyio.Event(), anyio.Event()
    write = postgres_module._write

    async def holding(connection: Any, sql: Any, name: str, *args: Any) -> int:
        result = await write(connection, sql, name, *args)
        if name == key:
            held.set()
            with anyio.move_on_after(120):  # a safety net: a broken test must not hang the run
                await release.wait()
        return result

    monkeypatch.setattr(postgres_module, "_write", holding)
    return held, release


async def _queued(memory: PostgresMemory, *keys: str) -> None:
    """Wait until writes of exactly ``keys`` wait in the queue for the next batch."""
    while [op.key for op in memory._queue] != list(keys):
        await anyio.sleep(0)


async def test_reads_and_leases_do_not_wait_behind_a_batch(
    memory: PostgresMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await memory.write("done", revision=0, status="s", header=b"d")
    held, release = _hold_writes_of("slow", monkeypatch)
    with anyio.fail_after(30):  # waiting behind the batch would hang until then
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(partial(memory.write, "slow", revision=0, status="s", header=b""))
                await held.wait()
                assert await memory.read("done") == Stored(1, "s", b"d")
                assert await memory.read("slow") is None  # not committed yet
                assert await memory.keys() == ["done"]
                assert await memory.lock("slow", "alice", ttl=60)
                release.set()
        finally:
            release.set()  # a failed test must not leave the batch hanging
    assert await memory.read("slow") == Stored(1, "s", b"")


async def test_a_cancelled_queued_write_is_withdrawn(
    memory: PostgresMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, release = _hold_writes_of("slow", monkeypatch)
    scope = anyio.CancelScope()

    async def withdrawn() -> None:
        with scope:
            await memory.write("withdrawn", revision=0, status="s", header=b"")

    with anyio.fail_after(30):  # a stalled queue would hang
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(partial(memory.write, "slow", revision=0, status="s", header=b""))
                await held.wait()
                group.start_soon(withdrawn)
                await _queued(memory, "withdrawn")
                scope.cancel()
                group.start_soon(partial(memory.write, "kept", revision=0, status="s", header=b""))
                await _queued(memory, "kept")
                release.set()
        finally:
            release.set()  # a failed test must not leave the batch hanging
    assert scope.cancelled_caught
    assert await memory.keys() == ["kept", "slow"]


async def test_close_lets_queued_writes_finish(url: str, memory: PostgresMemory) -> None:
    results: list[int] = []

    async def write(index: int) -> None:
        results.append(await memory.write(f"k{index}", revision=0, status="s", header=b""))

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(write, index)
        await anyio.sleep(0)  # every write is queued now, and a batch may have begun
        group.start_soon(memory.close)
    assert results == [1] * 20
    reopened = PostgresMemory(url, schema=memory.schema)
    try:
        assert len(await reopened.keys()) == 20
    finally:
        await reopened.close()


async def test_close_ends_despite_a_connection_never_given_back(
    memory: PostgresMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection stuck in use (as asyncpg < 0.32 left one whose query was cancelled while
    # the server was down) must not make close wait forever: it is dropped after the grace.
    monkeypatch.setattr(postgres_module, "_CLOSE_GRACE", 0.5)
    await memory.write("k", revision=0, status="s", header=b"")
    pool = await memory._connect()
    held = await pool.acquire()
    with anyio.fail_after(30):
        await memory.close()
    with pytest.raises(asyncpg.InterfaceError):  # dropped, not left open
        await held.fetchval("SELECT 1")


async def test_closed_memory_refuses_calls(memory: PostgresMemory) -> None:
    await memory.write("k", revision=0, status="s", header=b"")
    await memory.close()
    await memory.close()
    with pytest.raises(RuntimeError, match="closed"):
        await memory.read("k")
    with pytest.raises(RuntimeError, match="closed"):
        await memory.write("k", revision=1, status="s", header=b"")


# Durability.


async def test_data_survives_closing_and_reopening(url: str, new_schema: Callable[[], str]) -> None:
    schema = new_schema()
    first = PostgresMemory(url, schema=schema)
    await first.write("k", revision=0, status="open", header=b"h1", append=[("e1", b"x")])
    await first.write("k", revision=1, status="done", header=b"h2", append=[("e2", b"y")], due=5.0)
    assert await first.lock("k", "alice", ttl=3600)
    await first.close()

    second = PostgresMemory(url, schema=schema)
    try:
        assert await second.read("k", journal=True) == Stored(2, "done", b"h2", [b"x", b"y"])
        assert await second.entry("k", "e2") == b"y"
        assert await second.keys(status="done") == ["k"]
        assert await second.due(10.0) == [("k", 5.0)]
        assert await second.lock("k", "bob", ttl=60) is False
        assert await second.write("k", revision=2, status="done", header=b"h3") == 3
    finally:
        await second.close()


async def test_two_instances_share_records_and_leases(
    url: str, new_schema: Callable[[], str]
) -> None:
    clock = FakeClock()
    schema = new_schema()
    first = PostgresMemory(url, schema=schema, clock=clock)
    second = PostgresMemory(url, schema=schema, clock=clock)
    await check_two_instances_share(first, second, clock)


# URLs and errors.


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_from_url_takes_the_schema_out_of_the_query(scheme: str) -> None:
    memory = PostgresMemory.from_url(
        f"{scheme}://u:p@db.example:6543/app?sslmode=disable&schema=wf&application_name=a%20b"
    )
    assert memory.schema == "wf"
    assert (
        memory.dsn == f"{scheme}://u:p@db.example:6543/app?sslmode=disable&application_name=a%20b"
    )


def test_from_url_defaults_the_schema() -> None:
    memory = PostgresMemory.from_url("postgres://db.example/app")
    assert (memory.schema, memory.dsn) == ("resumable", "postgres://db.example/app")
    assert PostgresMemory.from_url("postgresql://h/d?schema=my%20wf").schema == "my wf"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:secret@h/d", "not a PostgreSQL URL"),
        ("postgresql://u:secret@h/d?schema=a&schema=b", "names the schema 2 times"),
        ("postgresql://u:secret@h/d?schema=", "schema name ''"),
    ],
)
def test_from_url_rejects_bad_urls_without_showing_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        PostgresMemory.from_url(url)
    assert "secret" not in str(caught.value)


async def test_from_url_connects_to_the_named_schema(
    url: str, new_schema: Callable[[], str]
) -> None:
    schema = new_schema()
    memory = PostgresMemory.from_url(f"{url}?schema={schema}")
    try:
        await memory.write("k", revision=0, status="s", header=b"h")
    finally:
        await memory.close()
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval(f'SELECT header FROM "{schema}".records') == b"h"
    finally:
        await connection.close()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]  # bound but not listening: connections are refused


async def test_cannot_connect_names_the_server_but_not_the_password(refusing_port: int) -> None:
    memory = PostgresMemory(f"postgresql://alice:secret@127.0.0.1:{refusing_port}/db")
    try:
        with pytest.raises(ConnectionError) as caught:
            await memory.read("k")
    finally:
        await memory.close()
    message = str(caught.value)
    assert f"alice:***@127.0.0.1:{refusing_port}/db" in message
    assert "secret" not in message and "server runs" in message


async def test_unknown_database_is_a_clear_error(url: str) -> None:
    missing = f"absent_{uuid.uuid4().hex}"
    memory = PostgresMemory(url.rsplit("/", 1)[0] + f"/{missing}")
    try:
        with pytest.raises(ConnectionError, match=rf"{missing}.*database in the URL"):
            await memory.read("k")
    finally:
        await memory.close()


def test_bad_arguments_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="pool_size must be at least 2"):
        PostgresMemory("postgresql://h/d", pool_size=1)
    with pytest.raises(ValueError, match="63 bytes"):
        PostgresMemory("postgresql://h/d", schema="x" * 64)


# The listing: migration of older schemas, and an index at scale.

_SCHEMA_VERSION_1 = """
CREATE SCHEMA {s};
CREATE TABLE {s}.schema_version (version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO {s}.schema_version (version) VALUES (1);
CREATE TABLE {s}.records (
    key text COLLATE "C" PRIMARY KEY,
    revision bigint NOT NULL,
    status text NOT NULL,
    header bytea NOT NULL,
    due double precision
);
CREATE INDEX records_by_status ON {s}.records (status, key);
CREATE INDEX records_by_due ON {s}.records (due, key) WHERE due IS NOT NULL;
CREATE TABLE {s}.journal (
    key text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    event_id text NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (key, seq),
    UNIQUE (key, event_id)
);
CREATE TABLE {s}.locks (
    key text COLLATE "C" PRIMARY KEY,
    owner text NOT NULL,
    expires double precision NOT NULL
);
"""
"""The schema at version 1, before the listing, as the release before it made it."""


async def test_a_schema_from_before_the_listing_is_migrated_on_open(
    url: str, new_schema: Callable[[], str]
) -> None:
    schema = new_schema()
    order, refund = subject("o1"), subject("r1", orchestrator="arvo.orc.refund")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(_SCHEMA_VERSION_1.format(s=f'"{schema}"'))
        await connection.executemany(
            f'INSERT INTO "{schema}".records (key, revision, status, header)'
            " VALUES ($1, $2, $3, $4)",
            [(order, 3, "active", b"o"), (refund, 1, "done", b"r"), ("plain", 2, "failed", b"p")],
        )
    finally:
        await connection.close()

    clock = FakeClock(2_000.0)
    memory = PostgresMemory(url, schema=schema, clock=clock)
    try:
        migrated = [
            Listed(order, "arvo.orc.order.fulfil", "active", 2_000.0, 2_000.0),
            Listed(refund, "arvo.orc.refund", "done", 2_000.0, 2_000.0),
            Listed("plain", None, "failed", 2_000.0, 2_000.0),
        ]  # one creation time for all: ties go by key, descending
        assert (await memory.list()).items == sorted(migrated, key=lambda item: item.key)[::-1]
        assert (await memory.list(workflow="arvo.orc.refund", status="done")).items == [migrated[1]]
        clock.advance(5)
        await memory.write(order, revision=3, status="done", header=b"o2")
        assert [item.key for item in (await memory.list(status="done")).items] == [order, refund]
        assert (await memory.list(status="active")).items == []
    finally:
        await memory.close()
    assert await _versions(url, schema) == list(range(1, SCHEMA_VERSION + 1))


async def test_a_page_of_100k_records_is_read_from_an_index(
    url: str, new_schema: Callable[[], str]
) -> None:
    """Never timed as an assertion (the server is shared); the plan is what must hold."""
    memory = PostgresMemory(url, schema=new_schema())
    workflows = ["arvo.orc.order.fulfil", "arvo.orc.refund", "arvo.orc.ship", None]
    statuses = ["active", "done", "failed", "cancelled", "parked"]
    rows = [
        (f"k{index:06}", statuses[index % 5], workflows[index % 4], 1e9 + index // 3, 1e9 + index)
        for index in range(100_000)
    ]
    try:
        await memory.read("warm-up")  # creates the tables and indexes
        pool = await memory._ready()
        records = memory._sql.records
        async with pool.acquire() as connection:  # bulk insert of prepared rows
            await connection.execute(
                f"INSERT INTO {records} (key, revision, status, header, workflow, created, updated)"
                " SELECT key, 1, status, '', workflow, created, updated"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[])"
                " AS r(key, status, workflow, created, updated)",
                *map(list, zip(*rows, strict=True)),
            )
            await connection.execute(f"ANALYZE {records}")  # as autovacuum would, in time
        started = time.perf_counter()
        page = await memory.list(workflow="arvo.orc.refund", status="done", limit=50)
        elapsed = time.perf_counter() - started
        print(f"\nPostgreSQL, 100,000 records: one page of 50 in {elapsed * 1000:.2f} ms")
        expected = sorted(
            (row for row in rows if row[2] == "arvo.orc.refund" and row[1] == "done"),
            key=lambda row: (row[3], row[0]),
            reverse=True,
        )
        assert [item.key for item in page.items] == [row[0] for row in expected[:50]]
        after = await memory.list(workflow="arvo.orc.refund", status="done", cursor=page.cursor)
        assert [item.key for item in after.items] == [row[0] for row in expected[50:150]]

        async with pool.acquire() as connection:
            for workflow, status in [("arvo.orc.refund", "done"), ("arvo.orc.ship", None)]:
                for status_, cursor in [(status, None), (status, page.cursor), (None, None)]:
                    query = check_query(workflow, status_, 50, cursor)
                    sql, params = select_page(records, query, lambda n: f"${n}")
                    plan = "\n".join(
                        row[0] for row in await connection.fetch(f"EXPLAIN {sql}", *params)
                    )
                    assert "Index Scan" in plan and "records_listed" in plan, plan
                    assert "Seq Scan" not in plan and "Sort" not in plan, plan
                    assert "Filter" not in plan, plan  # every condition is an Index Cond
    finally:
        await memory.close()
