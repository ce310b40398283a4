"""The checks every ``Memory`` backend must pass.

Subclass ``MemoryConformance`` in a ``test_*.py`` module (name the subclass ``Test...``) and
provide a ``memory`` fixture that builds the backend with the ``clock`` fixture as its lease
clock, closing it after the test::

    class TestMyMemory(MemoryConformance):
        @pytest.fixture
        async def memory(self, clock: FakeClock) -> AsyncIterator[Memory]:
            memory = MyMemory(clock=clock)
            yield memory
            await memory.close()
"""

from __future__ import annotations

import math
import os
import random
import string
import uuid
from collections.abc import Iterable
from functools import partial
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable.errors import ConflictError, DuplicateEntryError
from resumable.limits import MAX_ID_BYTES, MAX_SUBJECT_BYTES
from resumable.memory import Listed, Memory, Page, Stored
from resumable.subject import new_subject


class FakeClock:
    """A lease clock the tests move by hand, so expiry needs no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def check_two_instances_share(first: Memory, second: Memory, clock: FakeClock) -> None:
    """Two memory objects on one store (two processes) see each other's records, lose
    compare-and-set races to each other and respect each other's leases; both are closed."""
    try:
        await first.write("k", revision=0, status="open", header=b"h")
        assert await second.read("k") == Stored(1, "open", b"h")
        with pytest.raises(ConflictError):
            await second.write("k", revision=0, status="open", header=b"other")
        assert await first.lock("k", "alice", ttl=5)
        assert await second.lock("k", "bob", ttl=5) is False
        clock.advance(6)
        assert await second.lock("k", "bob", ttl=5)
    finally:
        await first.close()
        await second.close()


def subject(execution_id: str, orchestrator: str = "arvo.orc.order.fulfil") -> str:
    """An orchestration subject naming ``orchestrator``, as the driver's records have."""
    return new_subject(
        orchestrator=orchestrator,
        version="1.0.0",
        initiator="com.shop.web",
        execution_id=execution_id,
    )


async def list_all(memory: Memory, limit: int, **filters: Any) -> list[Listed]:
    """Every record ``list`` gives for ``filters``, page after page of ``limit``."""
    items: list[Listed] = []
    cursor: str | None = None
    while True:
        page = await memory.list(limit=limit, cursor=cursor, **filters)
        assert len(page.items) <= limit
        assert page.items or cursor is None, "a cursor must lead to a page with items"
        items += page.items
        if page.cursor is None:
            return items
        assert len(page.items) == limit, "only the last page may be short"
        cursor = page.cursor


def _newest_first(items: list[Listed]) -> list[Listed]:
    return sorted(items, key=lambda item: (item.created, item.key), reverse=True)


async def _snapshot(memory: Memory, key: str) -> Stored | None:
    return await memory.read(key, journal=True)


# The model for the property test.

_KEYS = st.sampled_from(["a", "b", "c"])
_OWNERS = st.sampled_from(["alice", "bob"])
_EVENT_IDS = st.sampled_from(["e1", "e2", "e3", "e4", "e5", "e6"])
_STATUSES = st.sampled_from(["open", "done"])


@attrs.frozen
class _Write:
    key: str
    offset: int  # the revision written is the model's current one plus this
    status: str
    header: bytes
    event_ids: list[str]
    due: float | None = None
    reset: bool = False


@attrs.frozen
class _Due:
    now: float


@attrs.frozen
class _Read:
    key: str
    journal: bool


@attrs.frozen
class _Entry:
    key: str
    event_id: str


@attrs.frozen
class _Keys:
    status: str | None


@attrs.frozen
class _Lock:
    key: str
    owner: str
    ttl: float


@attrs.frozen
class _Unlock:
    key: str
    owner: str


@attrs.frozen
class _Advance:
    seconds: float


_OPERATIONS = (
    st.builds(
        _Write,
        _KEYS,
        st.sampled_from([0, 0, 0, -1, 1]),
        _STATUSES,
        st.binary(max_size=8),
        st.lists(_EVENT_IDS, max_size=3),
        st.one_of(st.none(), st.sampled_from([5.0, 10.0, 20.0])),
        st.booleans(),
    ),
    st.builds(_Due, st.sampled_from([0.0, 5.0, 10.0, 15.0, math.inf])),
    st.builds(_Read, _KEYS, st.booleans()),
    st.builds(_Entry, _KEYS, _EVENT_IDS),
    st.builds(_Keys, st.one_of(st.none(), _STATUSES)),
    st.builds(_Lock, _KEYS, _OWNERS, st.sampled_from([1.0, 5.0])),
    st.builds(_Unlock, _KEYS, _OWNERS),
    st.builds(_Advance, st.sampled_from([0.5, 2.0, 10.0])),
)


@attrs.define
class _ModelRecord:
    revision: int
    status: str
    header: bytes
    journal: list[tuple[str, bytes]]
    due: float | None = None


@attrs.define
class _Model:
    """What a correct memory holds after the same operations, under keys ``prefix + key``."""

    prefix: str
    records: dict[str, _ModelRecord] = attrs.field(factory=dict)
    locks: dict[str, tuple[str, float]] = attrs.field(factory=dict)
    step: int = 0

    def stored(self, key: str, journal: bool = True) -> Stored | None:
        record = self.records.get(key)
        if record is None:
            return None
        entries = [entry for _, entry in record.journal] if journal else None
        return Stored(record.revision, record.status, record.header, entries)

    async def check(self, memory: Memory, clock: FakeClock, operation: Any) -> None:
        self.step += 1
        p = self.prefix
        match operation:
            case _Write():
                await self._check_write(memory, operation)
            case _Read(key, journal):
                assert await memory.read(p + key, journal=journal) == self.stored(key, journal)
            case _Entry(key, event_id):
                record = self.records.get(key)
                expected = None if record is None else dict(record.journal).get(event_id)
                assert await memory.entry(p + key, event_id) == expected
            case _Keys(status):
                found = [k for k in await memory.keys(status) if k.startswith(p)]
                assert found == sorted(
                    p + k for k, r in self.records.items() if status in (None, r.status)
                )
            case _Lock(key, owner, ttl):
                held = self.locks.get(key)
                free = held is None or held[0] == owner or held[1] <= clock.now
                if free:
                    self.locks[key] = (owner, clock.now + ttl)
                assert await memory.lock(p + key, owner, ttl) is free
            case _Unlock(key, owner):
                held = self.locks.get(key)
                mine = held is not None and held[0] == owner
                if held is not None and mine:
                    del self.locks[key]
                # An expired lease is no longer held, even if nobody took it since.
                unexpired = held is not None and mine and held[1] > clock.now
                assert await memory.unlock(p + key, owner) is unexpired
            case _Advance(seconds):
                clock.advance(seconds)
            case _Due(now):
                found = [(k, d) for k, d in await memory.due(now, limit=10_000) if k.startswith(p)]
                expected = sorted(
                    (r.due, p + k)
                    for k, r in self.records.items()
                    if r.due is not None and r.due <= now
                )
                assert found == [(k, d) for d, k in expected]

    async def _check_write(self, memory: Memory, write: _Write) -> None:
        record = self.records.get(write.key)
        current = 0 if record is None else record.revision
        revision = current + write.offset
        append = [
            (event_id, b"%s@%d" % (event_id.encode(), self.step)) for event_id in write.event_ids
        ]
        known = (
            set() if record is None or write.reset else {event_id for event_id, _ in record.journal}
        )
        call = memory.write(
            self.prefix + write.key,
            revision=revision,
            status=write.status,
            header=write.header,
            append=append,
            due=write.due,
            reset=write.reset,
        )
        if revision != current:
            with pytest.raises(ConflictError):
                await call
        elif _has_duplicates(write.event_ids, known):
            with pytest.raises(DuplicateEntryError):
                await call
        else:
            assert await call == revision + 1
            if record is None:
                record = self.records[write.key] = _ModelRecord(0, write.status, b"", [])
            record.revision, record.status, record.header = revision + 1, write.status, write.header
            record.due = write.due
            record.journal = append if write.reset else record.journal + append


def _has_duplicates(event_ids: Iterable[str], known: set[str]) -> bool:
    seen = set(known)
    for event_id in event_ids:
        if event_id in seen:
            return True
        seen.add(event_id)
    return False


class MemoryConformance:
    """Behaviour shared by all backends: CAS writes, append-only journals, keys and leases."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def memory(self, clock: FakeClock) -> Memory:
        pytest.fail("subclass MemoryConformance and override the `memory` fixture")

    # Reads and compare-and-set writes.

    async def test_read_missing_key_is_none(self, memory: Memory) -> None:
        assert await memory.read("nothing") is None
        assert await memory.read("nothing", journal=True) is None

    async def test_first_write_at_revision_0_returns_1(self, memory: Memory) -> None:
        assert await memory.write("k", revision=0, status="running", header=b"h1") == 1
        assert await memory.read("k") == Stored(1, "running", b"h1", None)
        assert await memory.read("k", journal=True) == Stored(1, "running", b"h1", [])

    async def test_write_at_current_revision_advances_it(self, memory: Memory) -> None:
        revision = 0
        for step in range(5):
            revision = await memory.write(
                "k", revision=revision, status=f"s{step}", header=b"%d" % step
            )
            assert revision == step + 1
        assert await memory.read("k") == Stored(5, "s4", b"4", None)

    async def test_stale_revision_conflicts_and_changes_nothing(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="a", header=b"one", append=[("e1", b"x")])
        await memory.write("k", revision=1, status="b", header=b"two", append=[("e2", b"y")])
        before = await _snapshot(memory, "k")
        with pytest.raises(ConflictError) as caught:
            await memory.write("k", revision=1, status="c", header=b"three", append=[("e3", b"z")])
        assert (caught.value.key, caught.value.expected, caught.value.found) == ("k", 1, 2)
        assert await _snapshot(memory, "k") == before
        assert await memory.entry("k", "e3") is None
        assert await memory.keys(status="c") == []

    async def test_revision_0_on_existing_key_conflicts(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="a", header=b"one", append=[("e1", b"x")])
        before = await _snapshot(memory, "k")
        with pytest.raises(ConflictError) as caught:
            await memory.write("k", revision=0, status="b", header=b"two", append=[("e2", b"y")])
        assert (caught.value.expected, caught.value.found) == (0, 1)
        assert await _snapshot(memory, "k") == before
        assert await memory.entry("k", "e2") is None

    async def test_nonzero_revision_on_missing_key_conflicts(self, memory: Memory) -> None:
        with pytest.raises(ConflictError) as caught:
            await memory.write("k", revision=3, status="a", header=b"h", append=[("e1", b"x")])
        assert (caught.value.key, caught.value.expected, caught.value.found) == ("k", 3, None)
        assert await memory.read("k") is None
        assert await memory.entry("k", "e1") is None
        assert await memory.keys() == []

    async def test_future_revision_conflicts(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="a", header=b"h")
        with pytest.raises(ConflictError):
            await memory.write("k", revision=2, status="b", header=b"x")
        assert await memory.read("k") == Stored(1, "a", b"h", None)

    # The journal.

    async def test_journal_is_appended_in_order_across_writes(self, memory: Memory) -> None:
        expected: list[bytes] = []
        revision = 0
        for step in range(30):
            append = [(f"e{step}.{i}", b"entry %d.%d" % (step, i)) for i in range(step % 4)]
            revision = await memory.write(
                "k", revision=revision, status="s", header=b"", append=append
            )
            expected += [entry for _, entry in append]
            assert (await _snapshot(memory, "k")) == Stored(revision, "s", b"", expected)
        stored = await memory.read("k", journal=False)
        assert stored is not None and stored.journal is None

    async def test_journal_returned_is_a_fresh_list(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="s", header=b"", append=[("e1", b"x")])
        first = await memory.read("k", journal=True)
        assert first is not None and first.journal is not None
        first.journal.append(b"mutated")
        first.journal[0] = b"changed"
        assert await memory.read("k", journal=True) == Stored(1, "s", b"", [b"x"])

    async def test_entry_finds_by_event_id(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="s", header=b"", append=[("e1", b"one")])
        await memory.write(
            "k", revision=1, status="s", header=b"", append=[("e2", b"two"), ("e3", b"")]
        )
        assert await memory.entry("k", "e1") == b"one"
        assert await memory.entry("k", "e2") == b"two"
        assert await memory.entry("k", "e3") == b""
        assert await memory.entry("k", "unknown") is None
        assert await memory.entry("missing", "e1") is None

    async def test_the_longest_subject_and_event_id_are_stored(self, memory: Memory) -> None:
        """What ``resumable.limits`` lets through, every backend stores: a subject of
        MAX_SUBJECT_BYTES and an event id of MAX_ID_BYTES, incompressible, non-ASCII too
        (PostgreSQL limits an index entry to about 2.7 KB)."""
        rng = random.Random(7)
        alphabet = string.ascii_letters + string.digits
        execution_id = "".join(rng.choice(alphabet) for _ in range(2000))
        key = subject(execution_id)
        while len(key) > MAX_SUBJECT_BYTES:
            execution_id = execution_id[:-1]
            key = subject(execution_id)
        assert len(key) > MAX_SUBJECT_BYTES - 16
        event_id = "".join(rng.choice(alphabet + "éü€") for _ in range(MAX_ID_BYTES))
        event_id = event_id.encode()[:MAX_ID_BYTES].decode(errors="ignore")
        assert await memory.lock(key, "owner", ttl=5)
        await memory.write(key, revision=0, status="active", header=b"h", append=[(event_id, b"e")])
        assert await memory.entry(key, event_id) == b"e"
        assert await memory.read(key) == Stored(1, "active", b"h")
        assert await memory.unlock(key, "owner")

    async def test_event_ids_are_scoped_to_their_key(self, memory: Memory) -> None:
        await memory.write("a", revision=0, status="s", header=b"", append=[("e", b"for a")])
        await memory.write("b", revision=0, status="s", header=b"", append=[("e", b"for b")])
        assert await memory.entry("a", "e") == b"for a"
        assert await memory.entry("b", "e") == b"for b"

    async def test_duplicate_event_id_fails_the_whole_write(self, memory: Memory) -> None:
        """Appending an already journaled event id raises DuplicateEntryError, applying nothing."""
        await memory.write("k", revision=0, status="a", header=b"one", append=[("e1", b"x")])
        before = await _snapshot(memory, "k")
        with pytest.raises(DuplicateEntryError, match="e1"):
            await memory.write(
                "k", revision=1, status="b", header=b"two", append=[("e2", b"y"), ("e1", b"again")]
            )
        assert await _snapshot(memory, "k") == before
        assert await memory.entry("k", "e1") == b"x"
        assert await memory.entry("k", "e2") is None
        assert await memory.write("k", revision=1, status="b", header=b"two") == 2

    async def test_duplicate_event_id_within_one_append_fails(self, memory: Memory) -> None:
        with pytest.raises(DuplicateEntryError, match="e1"):
            await memory.write(
                "k", revision=0, status="a", header=b"", append=[("e1", b"x"), ("e1", b"y")]
            )
        assert await memory.read("k") is None
        assert await memory.entry("k", "e1") is None

    # Keys.

    async def test_keys_in_order_and_by_status(self, memory: Memory) -> None:
        assert await memory.keys() == []
        names = ["b", "a", "é", "Z", "c/1", "日本", "c"]
        for index, key in enumerate(names):
            await memory.write(key, revision=0, status="done" if index % 2 else "open", header=b"")
        assert await memory.keys() == sorted(names)
        assert await memory.keys(status="open") == sorted(names[0::2])
        assert await memory.keys(status="done") == sorted(names[1::2])
        assert await memory.keys(status="unknown") == []
        await memory.write("a", revision=1, status="open", header=b"")
        assert "a" in await memory.keys(status="open")
        assert "a" not in await memory.keys(status="done")

    # Leases.

    async def test_lock_is_exclusive_until_unlocked(self, memory: Memory) -> None:
        assert await memory.lock("k", "alice", ttl=10) is True
        assert await memory.lock("k", "bob", ttl=10) is False
        assert await memory.lock("other", "bob", ttl=10) is True
        assert await memory.unlock("k", "bob") is False
        assert await memory.lock("k", "bob", ttl=10) is False
        assert await memory.unlock("k", "alice") is True
        assert await memory.unlock("k", "alice") is False
        assert await memory.lock("k", "bob", ttl=10) is True

    async def test_unlock_of_a_key_never_locked_is_false(self, memory: Memory) -> None:
        assert await memory.unlock("k", "alice") is False

    async def test_lock_is_reentrant_and_renews(self, memory: Memory, clock: FakeClock) -> None:
        assert await memory.lock("k", "alice", ttl=10) is True
        clock.advance(8)
        assert await memory.lock("k", "alice", ttl=10) is True
        clock.advance(8)  # 16s after the first lock, 8s after the renewal
        assert await memory.lock("k", "bob", ttl=10) is False

    async def test_expired_lease_lets_another_owner_in(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        assert await memory.lock("k", "alice", ttl=5) is True
        clock.advance(4.9)
        assert await memory.lock("k", "bob", ttl=5) is False
        clock.advance(0.2)
        assert await memory.lock("k", "bob", ttl=5) is True
        assert await memory.lock("k", "alice", ttl=5) is False
        assert await memory.unlock("k", "alice") is False
        assert await memory.unlock("k", "bob") is True

    async def test_unlock_after_expiry_is_false(self, memory: Memory, clock: FakeClock) -> None:
        """A lease that ran out is no longer held, even if nobody took it since."""
        assert await memory.lock("k", "alice", ttl=5) is True
        clock.advance(6)
        assert await memory.unlock("k", "alice") is False
        assert await memory.lock("k", "bob", ttl=5) is True

    async def test_lease_expires_by_the_injected_clock(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        """A short real sleep alone must not expire a lease: the backend uses ``clock``."""
        assert await memory.lock("k", "alice", ttl=0.001) is True
        await anyio.sleep(0.005)
        assert await memory.lock("k", "bob", ttl=1) is False
        clock.advance(0.002)
        assert await memory.lock("k", "bob", ttl=1) is True

    async def test_locks_are_independent_of_records(self, memory: Memory) -> None:
        assert await memory.lock("k", "alice", ttl=10) is True
        assert await memory.read("k") is None
        assert await memory.keys() == []
        assert await memory.write("k", revision=0, status="s", header=b"") == 1

    # Concurrency.

    async def test_concurrent_cas_on_one_key_has_one_winner(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="start", header=b"")
        winners: list[int] = []
        conflicts: list[int] = []

        async def attempt(index: int) -> None:
            try:
                await memory.write(
                    "k",
                    revision=1,
                    status="won",
                    header=b"%d" % index,
                    append=[(f"e{index}", b"%d" % index)],
                )
            except ConflictError:
                conflicts.append(index)
            else:
                winners.append(index)

        async with anyio.create_task_group() as group:
            for index in range(50):
                group.start_soon(attempt, index)
        assert len(winners) == 1 and len(conflicts) == 49
        (winner,) = winners
        assert await _snapshot(memory, "k") == Stored(2, "won", b"%d" % winner, [b"%d" % winner])

    async def test_concurrent_writes_to_different_keys_all_land(self, memory: Memory) -> None:
        async def create(index: int) -> None:
            key = f"key-{index:03}"
            await memory.write(
                key, revision=0, status="new", header=b"a%d" % index, append=[("e0", b"x")]
            )
            await memory.write(
                key, revision=1, status="done", header=b"b%d" % index, append=[("e1", b"y")]
            )

        async with anyio.create_task_group() as group:
            for index in range(200):
                group.start_soon(create, index)
        assert await memory.keys(status="done") == [f"key-{index:03}" for index in range(200)]
        for index in range(200):
            stored = await _snapshot(memory, f"key-{index:03}")
            assert stored == Stored(2, "done", b"b%d" % index, [b"x", b"y"])

    async def test_concurrent_lockers_have_one_winner(self, memory: Memory) -> None:
        results: dict[str, bool] = {}

        async def take(owner: str) -> None:
            results[owner] = await memory.lock("k", owner, ttl=60)

        async with anyio.create_task_group() as group:
            for index in range(50):
                group.start_soon(take, f"owner-{index}")
        assert sum(results.values()) == 1

    # Due times (timers) and journal reset (continue-as-new).

    async def test_due_lists_past_records_earliest_first(self, memory: Memory) -> None:
        await memory.write("b", revision=0, status="s", header=b"", due=20.0)
        await memory.write("a", revision=0, status="s", header=b"", due=10.0)
        await memory.write("c", revision=0, status="s", header=b"", due=10.0)
        await memory.write("d", revision=0, status="s", header=b"")
        assert await memory.due(5.0) == []
        assert await memory.due(10.0) == [("a", 10.0), ("c", 10.0)]
        assert await memory.due(25.0) == [("a", 10.0), ("c", 10.0), ("b", 20.0)]
        assert await memory.due(25.0, limit=2) == [("a", 10.0), ("c", 10.0)]
        assert await memory.due(math.inf, limit=1) == [("a", 10.0)]

    async def test_each_write_replaces_the_due_time(self, memory: Memory) -> None:
        revision = await memory.write("k", revision=0, status="s", header=b"", due=10.0)
        revision = await memory.write("k", revision=revision, status="s", header=b"", due=30.0)
        assert await memory.due(20.0) == []
        assert await memory.due(30.0) == [("k", 30.0)]
        await memory.write("k", revision=revision, status="s", header=b"")
        assert await memory.due(math.inf) == []

    async def test_a_conflicting_write_keeps_the_due_time(self, memory: Memory) -> None:
        await memory.write("k", revision=0, status="s", header=b"", due=10.0)
        with pytest.raises(ConflictError):
            await memory.write("k", revision=5, status="s", header=b"", due=1.0)
        assert await memory.due(math.inf) == [("k", 10.0)]

    async def test_reset_replaces_the_journal(self, memory: Memory) -> None:
        revision = await memory.write(
            "k", revision=0, status="s", header=b"", append=[("e1", b"1"), ("e2", b"2")]
        )
        revision = await memory.write(
            "k", revision=revision, status="s", header=b"h", append=[("e1", b"new")], reset=True
        )
        assert revision == 2
        stored = await memory.read("k", journal=True)
        assert stored is not None and stored.journal == [b"new"]
        assert await memory.entry("k", "e1") == b"new"
        assert await memory.entry("k", "e2") is None
        with pytest.raises(DuplicateEntryError):
            await memory.write(
                "k",
                revision=revision,
                status="s",
                header=b"",
                append=[("e3", b""), ("e3", b"")],
                reset=True,
            )
        assert await memory.read("k", journal=True) == stored

    # Listing.

    async def test_list_of_nothing_is_one_empty_page(self, memory: Memory) -> None:
        assert await memory.list() == Page(items=[], cursor=None)
        assert await memory.list(workflow="arvo.orc.order.fulfil", status="active") == Page(
            [], None
        )

    async def test_list_shows_records_newest_first(self, memory: Memory, clock: FakeClock) -> None:
        order, refund = subject("o1"), subject("r1", orchestrator="arvo.orc.refund")
        start = clock.now
        await memory.write(order, revision=0, status="active", header=b"")
        clock.advance(1)
        await memory.write(refund, revision=0, status="active", header=b"")
        clock.advance(1)
        await memory.write("plain-key", revision=0, status="done", header=b"")
        clock.advance(5)
        await memory.write(order, revision=1, status="active", header=b"h", append=[("e", b"")])
        assert (await memory.list()).items == [
            Listed("plain-key", None, "done", start + 2, start + 2),
            Listed(refund, "arvo.orc.refund", "active", start + 1, start + 1),
            Listed(order, "arvo.orc.order.fulfil", "active", start, start + 7),
        ]

    async def test_list_ties_in_creation_go_by_key_descending(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        keys = [subject(f"t{index}") for index in range(5)] + ["a", "é", "日本", "Z"]
        for key in keys:
            await memory.write(key, revision=0, status="active", header=b"")
        clock.advance(1)
        await memory.write("later", revision=0, status="active", header=b"")
        listed = [item.key for item in (await memory.list()).items]
        assert listed == ["later", *sorted(keys, reverse=True)]

    async def test_list_filters_by_workflow_and_status(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        made: dict[str, tuple[str | None, str]] = {}
        statuses = ["active", "done", "failed", "cancelled", "parked"]
        for index in range(30):
            workflow = ["arvo.orc.order.fulfil", "arvo.orc.refund", None][index % 3]
            status = statuses[index % 5]
            key = f"plain-{index}" if workflow is None else subject(f"f{index}", workflow)
            await memory.write(key, revision=0, status=status, header=b"")
            made[key] = (workflow, status)
            clock.advance(0.5)
        for workflow in [None, "arvo.orc.order.fulfil", "arvo.orc.refund", "arvo.orc.none"]:
            for status in [None, *statuses]:
                items = await list_all(memory, 4, workflow=workflow, status=status)
                expected = [
                    key
                    for key, (w, s) in made.items()
                    if workflow in (None, w) and status in (None, s)
                ]
                assert [item.key for item in items] == expected[::-1], (workflow, status)
                assert all(made[item.key] == (item.workflow, item.status) for item in items)

    async def test_count_tallies_statuses_overall_and_per_workflow(self, memory: Memory) -> None:
        assert await memory.count() == {}
        order, refund = "arvo.orc.order.fulfil", "arvo.orc.refund"
        made = [
            (subject("c1"), "active"),
            (subject("c2"), "active"),
            (subject("c3"), "done"),
            (subject("c4", refund), "active"),
            (subject("c5", refund), "parked"),
            ("plain-key", "failed"),
        ]
        for key, status in made:
            await memory.write(key, revision=0, status="active", header=b"")
            if status != "active":
                await memory.write(key, revision=1, status=status, header=b"")
        assert await memory.count() == {"active": 3, "done": 1, "parked": 1, "failed": 1}
        assert await memory.count(workflow=order) == {"active": 2, "done": 1}
        assert await memory.count(workflow=refund) == {"active": 1, "parked": 1}
        assert await memory.count(workflow="arvo.orc.none") == {}

    async def test_list_pages_with_a_cursor(self, memory: Memory, clock: FakeClock) -> None:
        for index in range(23):
            await memory.write(subject(f"p{index:02}"), revision=0, status="active", header=b"")
            if index % 4 == 0:  # some records share a creation time
                clock.advance(1)
        everything = (await memory.list(limit=1000)).items
        assert len(everything) == 23 and everything == _newest_first(everything)
        for limit in [1, 5, 7, 23, 24]:
            assert await list_all(memory, limit) == everything, limit
        first = await memory.list(limit=10)
        second = await memory.list(limit=10, cursor=first.cursor)
        assert first.items + second.items == everything[:20]
        assert second == await memory.list(limit=10, cursor=first.cursor)  # a cursor is reusable
        third = await memory.list(limit=3, cursor=second.cursor)
        assert third.items == everything[20:] and third.cursor is None

    async def test_list_exactly_full_last_page_has_no_cursor(self, memory: Memory) -> None:
        for index in range(6):
            await memory.write(f"k{index}", revision=0, status="done", header=b"")
        first = await memory.list(limit=3)
        assert first.cursor is not None
        assert (await memory.list(limit=3, cursor=first.cursor)).cursor is None
        assert (await memory.list(limit=6)).cursor is None

    async def test_paging_while_records_are_written_repeats_and_skips_nothing(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        existing = set()
        for index in range(20):
            key = subject(f"old{index:02}")
            await memory.write(key, revision=0, status="active", header=b"")
            existing.add(key)
            if index % 3 == 0:
                clock.advance(1)
        seen: list[str] = []
        page = await memory.list(limit=6, status="active")
        seen += [item.key for item in page.items]
        written = 0
        while page.cursor is not None:
            for _ in range(3):  # new records, some at the very time the cursor stopped at
                written += 1
                await memory.write(
                    subject(f"new{written:02}"), revision=0, status="active", header=b""
                )
            clock.advance(0.25)
            page = await memory.list(limit=6, status="active", cursor=page.cursor)
            seen += [item.key for item in page.items]
        old = [key for key in seen if key in existing]
        assert sorted(old) == sorted(existing) and len(old) == len(set(old))

    async def test_a_status_change_moves_the_record_between_filters(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        key, other = subject("s1"), subject("s2")
        created = clock.now
        revision = await memory.write(key, revision=0, status="active", header=b"")
        await memory.write(other, revision=0, status="active", header=b"")
        clock.advance(3)
        revision = await memory.write(key, revision=revision, status="parked", header=b"")

        async def keys(**filters: Any) -> list[str]:
            return [item.key for item in await list_all(memory, 1, **filters)]

        workflow = "arvo.orc.order.fulfil"
        assert await keys(status="active") == [other]
        assert await keys(status="parked") == [key]
        assert await keys(workflow=workflow, status="active") == [other]
        assert await keys(workflow=workflow, status="parked") == [key]
        assert sorted(await keys(workflow=workflow)) == sorted([key, other])
        clock.advance(1)
        await memory.write(key, revision=revision, status="active", header=b"", reset=True)
        assert sorted(await keys(workflow=workflow, status="active")) == sorted([key, other])
        assert await keys(status="parked") == []
        (listed,) = [item for item in (await memory.list()).items if item.key == key]
        assert (listed.created, listed.updated) == (created, created + 4)

    async def test_a_failed_write_changes_nothing_listed(
        self, memory: Memory, clock: FakeClock
    ) -> None:
        key = subject("f1")
        await memory.write(key, revision=0, status="active", header=b"", append=[("e", b"")])
        before = await memory.list()
        clock.advance(1)
        with pytest.raises(ConflictError):
            await memory.write(key, revision=0, status="done", header=b"")
        with pytest.raises(DuplicateEntryError):
            await memory.write(key, revision=1, status="done", header=b"", append=[("e", b"")])
        with pytest.raises(ConflictError):
            await memory.write("never", revision=2, status="done", header=b"")
        assert await memory.list() == before
        assert await memory.list(status="done") == Page([], None)

    async def test_list_limits(self, memory: Memory) -> None:
        async with anyio.create_task_group() as group:  # at once: they share commits
            for index in range(1001):
                group.start_soon(
                    partial(memory.write, f"k{index:04}", revision=0, status="done", header=b"")
                )
        full = await memory.list(limit=1000)
        assert len(full.items) == 1000 and full.cursor is not None
        assert (await memory.list(limit=1000, cursor=full.cursor)).items == [
            Listed("k0000", None, "done", full.items[0].created, full.items[0].created)
        ]
        assert len((await memory.list()).items) == 100
        assert len((await memory.list(limit=1)).items) == 1

    @pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5, "10", None])
    async def test_list_refuses_a_bad_limit(self, memory: Memory, limit: Any) -> None:
        with pytest.raises(ValueError, match=r"limit must be an int from 1 to 1000"):
            await memory.list(limit=limit)

    @pytest.mark.parametrize("status", ["open", "", "ACTIVE", 1])
    async def test_list_refuses_an_unknown_status(self, memory: Memory, status: Any) -> None:
        with pytest.raises(ValueError, match=r"status must be None or one of 'active'.*'parked'"):
            await memory.list(status=status)

    @pytest.mark.parametrize(
        "cursor",
        ["", "not a cursor", "W10=", "WyJhIiwxXQ==", "WzEuMCwyXQ==", "WzFlOTk5LCJrIl0=", 7],
        ids=["empty", "text", "json-list", "swapped", "key-not-str", "infinite", "int"],
    )
    async def test_list_refuses_a_malformed_cursor(self, memory: Memory, cursor: Any) -> None:
        with pytest.raises(ValueError, match=r"cursor .* is not one list\(\) returned"):
            await memory.list(cursor=cursor)

    async def test_list_refuses_a_workflow_that_is_not_a_string(self, memory: Memory) -> None:
        with pytest.raises(ValueError, match="workflow must be None or an orchestrator name"):
            await memory.list(workflow=b"arvo.orc.x")  # type: ignore[arg-type]

    # Bytes.

    @pytest.mark.parametrize(
        "blob",
        [b"", b"\x00", bytes(range(256)), b"\x00" * 1000, os.urandom(1 << 20)],
        ids=["empty", "nul", "all-bytes", "nuls", "1MB"],
    )
    async def test_bytes_round_trip_exactly(self, memory: Memory, blob: bytes) -> None:
        await memory.write("k", revision=0, status="s", header=blob, append=[("e", blob)])
        stored = await memory.read("k", journal=True)
        assert stored is not None
        assert type(stored.header) is bytes and stored.header == blob
        assert stored.journal == [blob] and type(stored.journal[0]) is bytes
        assert await memory.entry("k", "e") == blob

    # Random operations against a model.

    @settings(
        max_examples=75,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(operations=st.lists(st.one_of(*_OPERATIONS), max_size=25))
    async def test_matches_a_simple_model(
        self, memory: Memory, clock: FakeClock, operations: list[Any]
    ) -> None:
        # The fixtures live across examples: each example gets its own key prefix.
        model = _Model(prefix=f"{uuid.uuid4().hex}/")
        for operation in operations:
            await model.check(memory, clock, operation)
        for key in model.records:
            assert await _snapshot(memory, model.prefix + key) == model.stored(key)
