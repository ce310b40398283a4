"""SQLiteMemory runs the shared conformance suite, plus checks of durability and batching."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

import resumable.memory.sqlite as sqlite_module
from resumable.errors import ConflictError
from resumable.memory import Listed, SQLiteMemory, Stored
from resumable.memory.listing import check_query, select_page

from .conformance import FakeClock, MemoryConformance, check_two_instances_share, subject

pytestmark = pytest.mark.anyio


class TestSQLiteMemory(MemoryConformance):
    @pytest.fixture
    async def memory(self, tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteMemory]:
        memory = SQLiteMemory(tmp_path / "memory.db", clock=clock)
        yield memory
        await memory.close()


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[SQLiteMemory]:
    memory = SQLiteMemory(tmp_path / "memory.db")
    yield memory
    await memory.close()


async def test_data_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    first = SQLiteMemory(path)
    await first.write("k", revision=0, status="open", header=b"h1", append=[("e1", b"x")])
    await first.write("k", revision=1, status="done", header=b"h2", append=[("e2", b"y")])
    assert await first.lock("k", "alice", ttl=60)
    await first.close()

    second = SQLiteMemory(str(path))
    try:
        assert await second.read("k", journal=True) == Stored(2, "done", b"h2", [b"x", b"y"])
        assert await second.entry("k", "e2") == b"y"
        assert await second.keys(status="done") == ["k"]
        assert await second.lock("k", "bob", ttl=60) is False
        assert await second.write("k", revision=2, status="done", header=b"h3") == 3
    finally:
        await second.close()


async def test_two_instances_on_one_file_share_records_and_leases(tmp_path: Path) -> None:
    clock = FakeClock()
    first = SQLiteMemory(tmp_path / "memory.db", clock=clock)
    second = SQLiteMemory(tmp_path / "memory.db", clock=clock)
    await check_two_instances_share(first, second, clock)


async def test_wal_mode_and_full_synchronous_are_set(memory: SQLiteMemory) -> None:
    await memory.read("k")  # opens the connection
    synchronous = await memory._submit(
        lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0]
    )
    assert synchronous == 2  # FULL
    with sqlite3.connect(memory.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_concurrent_writes_are_group_committed(memory: SQLiteMemory) -> None:
    await memory.read("k")
    before = memory.commits

    async with anyio.create_task_group() as group:
        for index in range(200):
            group.start_soon(
                lambda index: memory.write(f"k{index}", revision=0, status="s", header=b""), index
            )
    assert len(await memory.keys()) == 200
    assert memory.commits - before <= 10, "200 concurrent writes should share a few commits"


async def test_failed_operations_do_not_stop_the_rest_of_their_batch(
    memory: SQLiteMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await memory.write("taken", revision=0, status="s", header=b"h", append=[("e", b"x")])
    batches: list[int] = []
    run_batch = memory._run_batch

    def recording(batch: list[Any]) -> None:
        batches.append(len(batch))
        run_batch(batch)

    monkeypatch.setattr(memory, "_run_batch", recording)
    outcomes: dict[str, object] = {}

    async def call(name: str, **write: Any) -> None:
        try:
            outcomes[name] = await memory.write(**write)
        except Exception as error:
            outcomes[name] = error

    async with anyio.create_task_group() as group:
        group.start_soon(memory.read, "taken")  # leads a first batch alone; the rest queue
        for index in range(10):
            group.start_soon(
                lambda i: call(
                    f"new{i}",
                    key=f"new{i}",
                    revision=0,
                    status="s",
                    header=b"n",
                    append=[("e", b"%d" % i)],
                ),
                index,
            )
        group.start_soon(lambda: call("stale", key="taken", revision=5, status="x", header=b"x"))
        group.start_soon(lambda: call("exists", key="taken", revision=0, status="x", header=b"x"))
        group.start_soon(
            lambda: call(
                "duplicate", key="taken", revision=1, status="x", header=b"x", append=[("e", b"y")]
            )
        )

    assert batches == [1, 13]
    assert isinstance(outcomes.pop("stale"), ConflictError)
    assert isinstance(outcomes.pop("exists"), ConflictError)
    assert isinstance(outcomes.pop("duplicate"), ValueError)
    assert outcomes == {f"new{i}": 1 for i in range(10)}
    for index in range(10):
        assert await memory.read(f"new{index}", journal=True) == Stored(
            1, "s", b"n", [b"%d" % index]
        )
    assert await memory.read("taken", journal=True) == Stored(1, "s", b"h", [b"x"])


def _slow_writes_of(key: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make writes of ``key`` take ``seconds`` inside the batch, in the worker thread."""
    write = sqlite_module._write

    def slow(connection: Any, name: str, *args: Any) -> int:
        if name == key:
            time.sleep(seconds)
        return write(connection, name, *args)

    monkeypatch.setattr(sqlite_module, "_write", slow)


async def test_cancelled_callers_do_not_stall_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_writes_of("slow", 0.05, monkeypatch)
    memory = SQLiteMemory(tmp_path / "memory.db")
    await memory.read("warm-up")  # open the file before timing anything
    with anyio.fail_after(10):  # a stalled queue would hang close() too
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    partial(memory.write, "slow", revision=0, status="s", header=b"")
                )  # a slow first batch
                await anyio.sleep(0)
                with anyio.move_on_after(0.01):
                    await memory.write("withdrawn", revision=0, status="s", header=b"")
                group.start_soon(partial(memory.write, "kept", revision=0, status="s", header=b""))
            assert await memory.read("withdrawn") is None
            assert await memory.read("kept") == Stored(1, "s", b"")
        finally:
            await memory.close()


async def test_caller_cancelled_as_it_is_made_leader_passes_the_lead_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_writes_of("slow", 0.02, monkeypatch)  # keeps the first batch in flight
    memory = SQLiteMemory(tmp_path / "memory.db")
    await memory.read("warm-up")
    scope = anyio.CancelScope()
    hand_over = memory._hand_over

    def cancel_then_hand_over() -> None:
        # `doomed` heads the queue: cancel it just before it is made the next leader.
        if not scope.cancel_called:
            scope.cancel()
        hand_over()

    monkeypatch.setattr(memory, "_hand_over", cancel_then_hand_over)

    async def doomed() -> None:
        with scope:
            await memory.write("doomed", revision=0, status="s", header=b"")

    with anyio.fail_after(10):  # a stalled queue would hang close() too
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(partial(memory.write, "slow", revision=0, status="s", header=b""))
                await anyio.sleep(0)
                group.start_soon(doomed)
                await anyio.sleep(0)
                group.start_soon(partial(memory.write, "after", revision=0, status="s", header=b""))
            assert scope.cancelled_caught
            assert await memory.keys() == ["after", "slow"]
        finally:
            await memory.close()


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "memory.db"
    memory = SQLiteMemory(path)
    with pytest.raises(FileNotFoundError, match="absent"):
        await memory.read("k")
    assert not path.parent.exists()
    await memory.close()


async def test_closed_memory_refuses_calls(memory: SQLiteMemory) -> None:
    await memory.write("k", revision=0, status="s", header=b"")
    await memory.close()
    await memory.close()
    with pytest.raises(RuntimeError, match="closed"):
        await memory.read("k")


async def test_close_lets_queued_operations_finish(memory: SQLiteMemory) -> None:
    results: list[int] = []

    async def write(index: int) -> None:
        results.append(await memory.write(f"k{index}", revision=0, status="s", header=b""))

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(write, index)
        await anyio.sleep(0)  # every write is queued now
        group.start_soon(memory.close)
    assert results == [1] * 20
    reopened = SQLiteMemory(memory.path)
    try:
        assert len(await reopened.keys()) == 20
    finally:
        await reopened.close()


_CRASHING_WRITER = """
import os, signal, sys
import anyio
from resumable.memory import SQLiteMemory

async def main(path: str, total: int) -> None:
    memory = SQLiteMemory(path)
    acknowledged = 0

    async def writer(worker: int) -> None:
        nonlocal acknowledged
        for index in range(total):
            key = f"w{worker}-{index}"
            await memory.write(key, revision=0, status="done", header=key.encode(),
                               append=[("e", key.encode() * 50)])
            print(key, flush=True)
            acknowledged += 1
            if acknowledged == total:  # other writers' batches may still be in flight
                if hasattr(signal, "SIGKILL"):
                    os.kill(os.getpid(), signal.SIGKILL)
                os._exit(1)

    async with anyio.create_task_group() as group:
        for worker in range(8):
            group.start_soon(writer, worker)

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def test_every_acknowledged_write_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    with anyio.fail_after(120):
        child = await anyio.run_process(
            [sys.executable, "-c", _CRASHING_WRITER, str(path), "300"], check=False
        )
    if hasattr(signal, "SIGKILL"):
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    acknowledged = child.stdout.decode().split()
    assert len(acknowledged) == 300

    memory = SQLiteMemory(path)
    try:
        for key in acknowledged:
            stored = await memory.read(key, journal=True)
            assert stored == Stored(1, "done", key.encode(), [key.encode() * 50]), key
        assert set(acknowledged) <= set(await memory.keys())
    finally:
        await memory.close()


async def test_leases_stay_out_of_the_commit_queue(memory: SQLiteMemory) -> None:
    """Leases live in <path>-leases and never wait for (or cost) a record commit."""
    await memory.read("warm-up")
    before = memory.commits
    assert await memory.lock("k", "alice", 30)
    assert await memory.unlock("k", "alice")
    assert memory.commits == before
    assert Path(f"{memory.path}-leases").exists()


# The listing: migration of older files, and an index at scale.

_SCHEMA_BEFORE_LISTING = """
CREATE TABLE records (
    key TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    status TEXT NOT NULL,
    header BLOB NOT NULL,
    due REAL
);
CREATE INDEX records_by_status ON records (status, key);
CREATE TABLE journal (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (key, seq)
);
CREATE UNIQUE INDEX journal_by_event ON journal (key, event_id);
CREATE INDEX records_by_due ON records (due) WHERE due IS NOT NULL;
"""
"""The DDL of the release before the listing, as it made files."""


@pytest.mark.parametrize("timers", [True, False], ids=["with-due", "before-timers"])
async def test_a_file_from_before_the_listing_is_migrated_on_open(
    tmp_path: Path, timers: bool
) -> None:
    path = tmp_path / "old.db"
    order, refund = subject("o1"), subject("r1", orchestrator="arvo.orc.refund")
    ddl = _SCHEMA_BEFORE_LISTING
    if not timers:
        ddl = ddl.replace(",\n    due REAL", "").replace(
            "CREATE INDEX records_by_due ON records (due) WHERE due IS NOT NULL;", ""
        )
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(ddl)
        old.executemany(
            "INSERT INTO records (key, revision, status, header) VALUES (?, ?, ?, ?)",
            [(order, 3, "active", b"o"), (refund, 1, "done", b"r"), ("plain", 2, "failed", b"p")],
        )
        old.execute("INSERT INTO journal VALUES (?, 0, 'e1', x'01')", (order,))
        old.commit()

    clock = FakeClock(2_000.0)
    memory = SQLiteMemory(path, clock=clock)
    try:
        migrated = [
            Listed(order, "arvo.orc.order.fulfil", "active", 2_000.0, 2_000.0),
            Listed(refund, "arvo.orc.refund", "done", 2_000.0, 2_000.0),
            Listed("plain", None, "failed", 2_000.0, 2_000.0),
        ]  # one creation time for all: ties go by key, descending
        assert (await memory.list()).items == sorted(migrated, key=lambda item: item.key)[::-1]
        assert (await memory.list(workflow="arvo.orc.refund", status="done")).items[0].key == refund
        assert await memory.read(order, journal=True) == Stored(3, "active", b"o", [b"\x01"])
        clock.advance(5)
        await memory.write(order, revision=3, status="done", header=b"o2", due=9.0)
        assert await memory.due(10.0) == [(order, 9.0)]
        assert [item.key for item in (await memory.list(status="done")).items] == [order, refund]
        assert (await memory.list(status="active")).items == []
    finally:
        await memory.close()
    with contextlib.closing(sqlite3.connect(path)) as reopened:
        indexes = {row[1] for row in reopened.execute("PRAGMA index_list(records)")}
        assert {"records_listed", "records_listed_by_workflow_status", "records_by_due"} <= indexes

    again = SQLiteMemory(path, clock=FakeClock(9_000.0))  # a second open changes nothing
    try:
        first = (await again.list(status="done")).items[0]
        assert (first.key, first.created, first.updated) == (order, 2_000.0, 2_005.0)
    finally:
        await again.close()


async def test_a_page_of_100k_records_is_read_from_an_index(tmp_path: Path) -> None:
    """Never timed as an assertion (the machine is shared); the plan is what must hold."""
    path = tmp_path / "big.db"
    memory = SQLiteMemory(path)
    workflows = ["arvo.orc.order.fulfil", "arvo.orc.refund", "arvo.orc.ship", None]
    statuses = ["active", "done", "failed", "cancelled", "parked"]
    rows = [
        (f"k{index:06}", statuses[index % 5], workflows[index % 4], 1e9 + index // 3, 1e9 + index)
        for index in range(100_000)
    ]
    try:
        await memory.read("warm-up")  # creates the tables and indexes
        await memory._submit(  # bulk insert of prepared rows on the writer's connection
            lambda connection: connection.executemany(
                "INSERT INTO records (key, revision, status, header, workflow, created, updated)"
                " VALUES (?, 1, ?, x'', ?, ?, ?)",
                rows,
            )
        )
        started = time.perf_counter()
        page = await memory.list(workflow="arvo.orc.refund", status="done", limit=50)
        elapsed = time.perf_counter() - started
        print(f"\nSQLite, 100,000 records: one page of 50 in {elapsed * 1000:.2f} ms")
        expected = sorted(
            (row for row in rows if row[2] == "arvo.orc.refund" and row[1] == "done"),
            key=lambda row: (row[3], row[0]),
            reverse=True,
        )
        assert [item.key for item in page.items] == [row[0] for row in expected[:50]]
        after = await memory.list(workflow="arvo.orc.refund", status="done", cursor=page.cursor)
        assert [item.key for item in after.items] == [row[0] for row in expected[50:150]]
    finally:
        await memory.close()

    with contextlib.closing(sqlite3.connect(path)) as connection:
        for workflow, status in [("arvo.orc.refund", "done"), ("arvo.orc.ship", None)]:
            for cursor in [None, page.cursor]:
                query = check_query(workflow, status, 50, cursor)
                sql, params = select_page("records", query, lambda _: "?")
                plan = " / ".join(
                    row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)
                )
                assert "USING INDEX records_listed_by_workflow" in plan, plan
                assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
        for status in ["parked", None]:
            sql, params = select_page("records", check_query(None, status, 50, None), lambda _: "?")
            plan = " / ".join(
                row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            )
            assert "USING INDEX records_listed" in plan and "TEMP B-TREE" not in plan, plan
