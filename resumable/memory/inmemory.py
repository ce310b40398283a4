"""Memory in process dictionaries: for tests, and for workflows that need not survive a restart.

``list`` reads sorted lists of ``(created, key)``, one for all records and one per status,
workflow and both, kept in order with ``bisect``: a page costs a binary search and a slice.
A record enters them at its first write and moves between status lists when its status
changes; a write that keeps the status touches none of them.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import anyio.lowlevel
import attrs

from resumable.errors import ConflictError, DuplicateEntryError
from resumable.memory.base import Listed, Memory, Page, Stored
from resumable.memory.listing import STATUSES, check_query, page_of, workflow_of

__all__ = ["InMemoryMemory"]


@attrs.define
class _Record:
    """One record: the latest header plus its append-only journal and event-id index."""

    revision: int
    status: str
    header: bytes
    workflow: str | None
    created: float
    updated: float
    due: float | None = None
    journal: list[bytes] = attrs.field(factory=list)
    index: dict[str, bytes] = attrs.field(factory=dict)


class InMemoryMemory(Memory):
    """Records and leases in dictionaries, lost when the process ends.

    Operations do not suspend, so each is atomic with respect to other tasks; a loop that
    only runs in-memory workflows should yield now and then (``LocalBroker`` does).
    ``clock`` (the wall clock) times leases and stamps records; inject one to test expiry.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        # Ascending (created, key) of the records each listing filter keeps; read backwards.
        self._listed: dict[tuple[str | None, str | None], list[tuple[float, str]]] = defaultdict(
            list
        )

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
        now = self._clock()
        if record is None:
            record = self._records[key] = _Record(0, status, header, workflow_of(key), now, now)
            for name in _filters(record.workflow, None) + _filters(record.workflow, status):
                bisect.insort(self._listed[name], (now, key))
        else:
            if reset:
                record.journal = []
                record.index = {}
            if record.status != status:
                position = (record.created, key)
                for name in _filters(record.workflow, record.status):
                    listed = self._listed[name]
                    del listed[bisect.bisect_left(listed, position)]
                for name in _filters(record.workflow, status):
                    bisect.insort(self._listed[name], position)
            record.updated = now
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

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        query = check_query(workflow, status, limit, cursor)
        listed = self._listed.get((query.workflow, query.status), [])
        end = len(listed) if query.after is None else bisect.bisect_left(listed, query.after)
        rows = []
        for created, key in reversed(listed[max(0, end - limit - 1) : end]):
            record = self._records[key]
            rows.append(Listed(key, record.workflow, record.status, created, record.updated))
        return page_of(rows, limit)

    async def count(self, *, workflow: str | None = None) -> dict[str, int]:
        query = check_query(workflow, None, 1, None)
        found = ((s, len(self._listed.get((query.workflow, s), ()))) for s in STATUSES)
        return {status: number for status, number in found if number}


def _filters(workflow: str | None, status: str | None) -> list[tuple[str | None, str | None]]:
    """The ``(workflow, status)`` listing filters that keep a record of ``workflow`` with
    ``status``: with and without its workflow (None: the filter ignores that field)."""
    if workflow is None:
        return [(None, status)]
    return [(None, status), (workflow, status)]


def _check_new_event_ids(
    key: str, entries: list[tuple[str, bytes]], known: dict[str, bytes]
) -> None:
    """Raise DuplicateEntryError if an event id of ``entries`` is already journaled or repeated."""
    seen: set[str] = set()
    for event_id, _ in entries:
        if event_id in known or event_id in seen:
            raise DuplicateEntryError(key, event_id)
        seen.add(event_id)
