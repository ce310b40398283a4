"""The baselines: minimal hand-written drivers, the physical line each workload is held to.

They use no part of resumable. A workflow is an async generator stepped with ``asend``;
the service is called directly.

- **floor-mem**: after every step the state is encoded with msgspec into a dict. Nothing else.
- **floor-mem-events**: plus the work no correct implementation can skip. Per step, two
  event objects (request and reply), each with a unique id (uuid4), a UTC timestamp and a
  payload validated by msgspec against its Struct (the service validates the request, the
  workflow the reply). The stored record is the state plus the request awaiting its reply
  (what a restart must re-send), and the consumed reply is appended to a journal (what a
  restart replays). Both encoded with msgspec.
- **floor-sqlite**: the same record and journal written to SQLite (WAL, ``synchronous=FULL``),
  one transaction and commit per step; **floor-sqlite-group** advances every one of N
  concurrent workflows by a step, then writes all N steps in one transaction (group commit).
- **floor-replay** (R1k): a cold resume, from the journal of a workflow that took N steps:
  read the journal, re-run the generator feeding it the N recorded replies (decoded and
  validated), then take the new step and persist it.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec

from benchmarks.common import (
    KEEP,
    W10_STEPS,
    N,
    Row,
    Sizes,
    count_label,
    file_bytes,
    row,
    sample,
)

__all__ = [
    "floor_mem",
    "floor_mem_events",
    "floor_replay_mem",
    "floor_replay_sqlite",
    "floor_sqlite",
    "floor_sqlite_group",
]

REQUEST_TYPE = "com.bench.inc"
REPLY_TYPE = "evt.bench.inc.done"
DONE_TYPE = "arvo.orc.bench.floor.done"


class FloorState(msgspec.Struct):
    n: int = 0


class FloorEvent(msgspec.Struct):
    id: str
    type: str
    time: str
    data: Any


class Record(msgspec.Struct):
    """What floor-mem-events and floor-sqlite store per workflow, rewritten every step."""

    state: FloorState
    waiting: FloorEvent | None = None
    result: FloorEvent | None = None


class Done(msgspec.Struct):
    result: N


_encode = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(FloorEvent).decode
_decode_record = msgspec.msgpack.Decoder(Record).decode


async def chain(state: FloorState, calls: int) -> AsyncGenerator[N | Done, N | None]:
    """The workflow: ``calls`` sequential calls to the service, each passing on its answer."""
    n = 0
    for _ in range(calls):
        reply = yield N(n)
        assert reply is not None
        n = reply.n
        state.n = n
    yield Done(N(n))


async def inc(request: N) -> N:
    """The trivial service."""
    return N(request.n + 1)


async def finish(gen: AsyncGenerator[N | Done, N | None]) -> None:
    """Run a generator that yielded ``Done`` to its end, as any driver must check it ends.

    (A suspended async generator left to the garbage collector makes asyncio schedule its
    ``aclose`` on the loop; finishing it keeps that cost and memory out of the floor.)
    """
    try:
        await gen.asend(None)
    except StopAsyncIteration:
        return
    raise RuntimeError("the floor workflow yielded after Done")


def _event(type_: str, payload: msgspec.Struct) -> FloorEvent:
    return FloorEvent(
        id=str(uuid.uuid4()),
        type=type_,
        time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        data=msgspec.to_builtins(payload),
    )


async def serve(request: FloorEvent) -> FloorEvent:
    """The service called directly: validate the request payload, answer with a reply event."""
    return _event(REPLY_TYPE, await inc(msgspec.convert(request.data, N)))


class Run:
    """One floor-mem-events workflow: its generator, state and the request it waits on."""

    __slots__ = ("gen", "pending", "result", "state")

    def __init__(self, calls: int) -> None:
        self.state = FloorState()
        self.gen = chain(self.state, calls)
        self.pending: FloorEvent | None = None
        self.result: FloorEvent | None = None

    async def start(self) -> bytes:
        """The first step; returns the record to store."""
        return await self._after(await self.gen.asend(None))

    async def step(self, reply: FloorEvent) -> tuple[bytes, bytes]:
        """Feed one reply; returns the record to store and the journal entry to append."""
        out = await self.gen.asend(msgspec.convert(reply.data, N))
        return await self._after(out), _encode(reply)

    async def replay(self, record: bytes, entries: Iterable[bytes]) -> None:
        """Rebuild the generator from the stored journal (no events are made again)."""
        await self.gen.asend(None)
        for raw in entries:
            await self.gen.asend(msgspec.convert(_decode_event(raw).data, N))
        self.pending = _decode_record(record).waiting

    async def _after(self, out: N | Done) -> bytes:
        if isinstance(out, Done):
            await finish(self.gen)
            self.pending = None
            self.result = _event(DONE_TYPE, out.result)
            return _encode(Record(self.state, None, self.result))
        self.pending = _event(REQUEST_TYPE, out)
        return _encode(Record(self.state, self.pending))


# --- floor-mem ------------------------------------------------------------------------------


async def floor_mem(sizes: Sizes, tmp: Path) -> list[Row]:
    """W10, state encoded after every step into a dict, the service called directly."""
    store: dict[int, bytes] = {}
    encode = msgspec.msgpack.Encoder().encode
    counter = 0

    async def once() -> float:
        nonlocal counter
        counter += 1
        key = counter
        if len(store) * W10_STEPS >= KEEP:
            store.clear()
        start = time.perf_counter()
        state = FloorState()
        gen = chain(state, 10)
        out = await gen.asend(None)
        store[key] = encode(state)
        while not isinstance(out, Done):
            out = await gen.asend(await inc(out))
            store[key] = encode(state)
        await finish(gen)
        elapsed = time.perf_counter() - start
        assert out.result.n == 10
        return elapsed * 1e6 / W10_STEPS

    samples = await sample(once, sizes)
    stored = len(store[counter]) / W10_STEPS
    return [row("W10", "floor-mem", "mem", "-", 1, W10_STEPS, samples, record_bytes=stored)]


# --- floor-mem-events -----------------------------------------------------------------------


async def _run_events(run: Run, key: int, store: dict[int, bytes], journal: list[bytes]) -> None:
    store[key] = await run.start()
    while run.pending is not None:
        reply = await serve(run.pending)
        record, entry = await run.step(reply)
        store[key] = record
        journal.append(entry)


async def floor_mem_events(sizes: Sizes, tmp: Path) -> list[Row]:
    """W10 with events: two validated events per step, record and journal kept in dicts."""
    store: dict[int, bytes] = {}
    journals: dict[int, list[bytes]] = {}
    counter = 0

    async def once() -> float:
        nonlocal counter
        counter += 1
        key = counter
        if len(store) * W10_STEPS >= KEEP:
            store.clear()
            journals.clear()
        start = time.perf_counter()
        run = Run(10)
        journal = journals[key] = []
        await _run_events(run, key, store, journal)
        elapsed = time.perf_counter() - start
        assert run.result is not None and run.result.data == {"n": 10}
        return elapsed * 1e6 / W10_STEPS

    samples = await sample(once, sizes)
    stored = (len(store[counter]) + sum(map(len, journals[counter]))) / W10_STEPS
    return [row("W10", "floor-mem-events", "mem", "-", 1, W10_STEPS, samples, record_bytes=stored)]


# --- floor-sqlite ---------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    key TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL, PRIMARY KEY (key, seq)
);
"""
_UPSERT = (
    "INSERT INTO records (key, record) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET record = excluded.record"
)
_APPEND = "INSERT INTO journal (key, seq, entry) VALUES (?, ?, ?)"

Write = tuple[str, int, bytes, bytes | None]
"""One step to persist: key, journal seq, record, journal entry (None for the start)."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns."""
    connection = sqlite3.connect(path, isolation_level=None)
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    assert mode == "wal", mode
    connection.execute("PRAGMA synchronous = FULL")
    connection.executescript(_SCHEMA)
    return connection


def commit(connection: sqlite3.Connection, writes: list[Write]) -> None:
    """Write steps in one transaction with one commit."""
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(_UPSERT, [(key, record) for key, _, record, _ in writes])
    connection.executemany(
        _APPEND, [(key, seq, entry) for key, seq, _, entry in writes if entry is not None]
    )
    connection.execute("COMMIT")


def _stored_bytes(connection: sqlite3.Connection, key: str) -> int:
    (record,) = connection.execute("SELECT record FROM records WHERE key = ?", (key,)).fetchone()
    (entries,) = connection.execute(
        "SELECT COALESCE(SUM(LENGTH(entry)), 0) FROM journal WHERE key = ?", (key,)
    ).fetchone()
    return len(record) + int(entries)


async def floor_sqlite(sizes: Sizes, tmp: Path) -> list[Row]:
    """W10 with events, one workflow at a time, each step committed on its own."""
    path = tmp / "floor-sqlite.db"
    connection = connect(path)
    counter = 0

    async def once() -> float:
        nonlocal counter
        counter += 1
        key = f"w{counter}"
        start = time.perf_counter()
        run = Run(10)
        commit(connection, [(key, 0, await run.start(), None)])
        seq = 0
        while run.pending is not None:
            reply = await serve(run.pending)
            record, entry = await run.step(reply)
            seq += 1
            commit(connection, [(key, seq, record, entry)])
        elapsed = time.perf_counter() - start
        assert run.result is not None and run.result.data == {"n": 10}
        return elapsed * 1e6 / W10_STEPS

    samples = await sample(once, sizes)
    stored = _stored_bytes(connection, f"w{counter}") / W10_STEPS
    connection.close()
    on_disk = file_bytes(path) / (counter * W10_STEPS)
    return [
        row(
            "W10",
            "floor-sqlite",
            "sqlite",
            "-",
            1,
            W10_STEPS,
            samples,
            record_bytes=stored,
            file_bytes=on_disk,
        )
    ]


async def _group(
    connection: sqlite3.Connection, keys: list[str], calls: int, stop_after: int | None = None
) -> list[Run]:
    """Run one workflow per key, all at once: every round advances each active workflow by
    one step, then commits the round's steps together. Stops early after ``stop_after``
    steps, leaving each run with the request it waits on."""
    runs = [Run(calls) for _ in keys]
    commit(
        connection, [(key, 0, await run.start(), None) for key, run in zip(keys, runs, strict=True)]
    )
    seq = 0
    while any(run.pending is not None for run in runs):
        seq += 1
        if stop_after is not None and seq >= stop_after:
            break
        writes: list[Write] = []
        for key, run in zip(keys, runs, strict=True):
            if run.pending is None:
                continue
            reply = await serve(run.pending)
            record, entry = await run.step(reply)
            writes.append((key, seq, record, entry))
        commit(connection, writes)
    return runs


async def floor_sqlite_group(sizes: Sizes, tmp: Path) -> list[Row]:
    """W10 with events, ``concurrency`` workflows at a time, one commit per round of steps."""
    path = tmp / "floor-sqlite-group.db"
    connection = connect(path)
    batches = 0
    width = sizes.concurrency

    async def once() -> float:
        nonlocal batches
        batches += 1
        keys = [f"b{batches}w{i}" for i in range(width)]
        start = time.perf_counter()
        runs = await _group(connection, keys, 10)
        elapsed = time.perf_counter() - start
        assert all(run.result is not None and run.result.data == {"n": 10} for run in runs)
        return elapsed * 1e6 / (width * W10_STEPS)

    samples = await sample(once, sizes, min_samples=sizes.concurrent_min_rounds, warmup=1)
    stored = _stored_bytes(connection, f"b{batches}w0") / W10_STEPS
    connection.close()
    on_disk = file_bytes(path) / (batches * width * W10_STEPS)
    return [
        row(
            "W10",
            "floor-sqlite-group",
            "sqlite",
            "-",
            width,
            W10_STEPS,
            samples,
            record_bytes=stored,
            file_bytes=on_disk,
        )
    ]


# --- floor-replay (R1k) ---------------------------------------------------------------------


async def floor_replay_mem(sizes: Sizes, tmp: Path) -> list[Row]:
    """Cold resume in memory: replay a stored journal of ``resume_steps`` steps, then step."""
    steps = sizes.resume_steps
    calls = steps + 1

    async def once() -> float:
        store: dict[int, bytes] = {}
        journal: list[bytes] = []
        run = Run(calls)
        store[0] = await run.start()
        for _ in range(steps - 1):
            assert run.pending is not None
            record, entry = await run.step(await serve(run.pending))
            store[0] = record
            journal.append(entry)
        assert run.pending is not None
        reply = await serve(run.pending)
        await run.gen.aclose()
        start = time.perf_counter()
        fresh = Run(calls)
        await fresh.replay(store[0], journal)
        record, entry = await fresh.step(reply)
        store[0] = record
        journal.append(entry)
        elapsed = time.perf_counter() - start
        await fresh.gen.aclose()
        assert fresh.state.n == steps
        return elapsed * 1e6 / steps

    samples = await sample(once, sizes, min_samples=sizes.resume_samples_mem, warmup=1)
    label = count_label("R", steps)
    return [row(label, "floor-replay", "mem", "-", 1, steps, samples)]


async def floor_replay_sqlite(sizes: Sizes, tmp: Path) -> list[Row]:
    """Cold resume from SQLite: a new connection reads the journal, replays, steps, commits."""
    steps = sizes.resume_steps
    calls = steps + 1
    count = sizes.resume_samples_sqlite + 1  # one to warm up
    path = tmp / "floor-replay.db"
    connection = connect(path)
    keys = [f"r{i}" for i in range(count)]
    runs = await _group(connection, keys, calls, stop_after=steps)
    replies = [await serve(run.pending) for run in runs if run.pending is not None]
    for run in runs:
        await run.gen.aclose()
    connection.close()
    samples: list[float] = []
    for key, reply in zip(keys, replies, strict=True):
        await anyio.lowlevel.checkpoint()
        start = time.perf_counter()
        db = connect(path)
        (record,) = db.execute("SELECT record FROM records WHERE key = ?", (key,)).fetchone()
        rows = db.execute("SELECT entry FROM journal WHERE key = ? ORDER BY seq", (key,))
        entries = [entry for (entry,) in rows]
        fresh = Run(calls)
        await fresh.replay(record, entries)
        new_record, entry = await fresh.step(reply)
        commit(db, [(key, len(entries) + 1, new_record, entry)])
        db.close()
        elapsed = time.perf_counter() - start
        await fresh.gen.aclose()
        assert fresh.state.n == steps, (fresh.state.n, steps)
        samples.append(elapsed * 1e6 / steps)
    label = count_label("R", steps)
    return [row(label, "floor-replay", "sqlite", "-", 1, steps, samples[1:])]
