"""Memory in process dictionaries: for tests, and for workflows that need not survive a restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import anyio.lowlevel
import attrs

from resumable.errors import ConflictError, DuplicateEntryError
from resumable.memory.base import Memory, Stored

__all__ = ["InMemoryMemory"]


@attrs.define
class _Record:
    """One record: the latest header plus its append-only journal and event-id index."""

    revision: int
    status: str
    header: bytes
    due: float | None = None
    journal: list[bytes] = attrs.field(factory=list)
    index: dict[str, bytes] = attrs.field(factory=dict)


class InMemoryMemory(Memory):
    """Records and leases in dictionaries, lost when the process ends.

    Operations do not suspend, so each is atomic with respect to other tasks; a loop that
    only runs in-memory workflows should yield now and then (``LocalBroker`` does).
    ``clock`` gives the lease time; inject one to test expiry.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._locks: dict[str, tuple[str, float]] = {}

    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        record = self._records.get(key)
        if record is None:
            return None
        return Stored(
            revision=record.revision,
            status=record.status,
            header=record.header,
            journal=list(record.journal) if journal else None,
        )

    async def write(
        self,
        key: str,
        *,
        revision: int,
        status: str,
        header: bytes,
        append: Sequence[tuple[str, bytes]] = (),
        due: float | None = None,
        reset: bool = False,
    ) -> int:
        # Snapshot the arguments first: a caller's bytearray must not change what was stored.
        header = bytes(header)
        entries = [(event_id, bytes(entry)) for event_id, entry in append]
        record = self._records.get(key)
        found = None if record is None else record.revision
        if found != (revision if revision != 0 else None):
            raise ConflictError(key, revision, found)
        _check_new_event_ids(key, entries, {} if record is None or reset else record.index)
        if record is None:
            record = self._records[key] = _Record(0, status, header)
        elif reset:
            record.journal = []
            record.index = {}
        record.revision = revision + 1
        record.status = status
        record.header = header
        record.due = due
        for event_id, entry in entries:
            record.journal.append(entry)
            record.index[event_id] = entry
        return record.revision

    async def entry(self, key: str, event_id: str) -> bytes | None:
        record = self._records.get(key)
        return None if record is None else record.index.get(event_id)

    async def keys(self, status: str | None = None) -> list[str]:
        await anyio.lowlevel.checkpoint()
        return sorted(
            key for key, record in self._records.items() if status in (None, record.status)
        )

    async def due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        found = sorted(
            (record.due, key)
            for key, record in self._records.items()
            if record.due is not None and record.due <= now
        )
        return [(key, due) for due, key in found[:limit]]

    async def lock(self, key: str, owner: str, ttl: float) -> bool:
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._locks[key] = (owner, now + ttl)
        return True

    async def unlock(self, key: str, owner: str) -> bool:
        held = self._locks.get(key)
        if held is None or held[0] != owner:
            return False
        del self._locks[key]
        return held[1] > self._clock()


def _check_new_event_ids(
    key: str, entries: list[tuple[str, bytes]], known: dict[str, bytes]
) -> None:
    """Raise DuplicateEntryError if an event id of ``entries`` is already journaled or repeated."""
    seen: set[str] = set()
    for event_id, _ in entries:
        if event_id in known or event_id in seen:
            raise DuplicateEntryError(key, event_id)
        seen.add(event_id)
