"""The storage interface: ``Memory`` and the records it returns.

Its own module so that the backends import the interface without importing the package
that lists them (``resumable.memory`` re-exports everything here).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import msgspec

__all__ = ["Listed", "Memory", "Page", "Stored"]


class Stored(msgspec.Struct, frozen=True):
    """One record as read from memory."""

    revision: int
    status: str
    header: bytes
    journal: list[bytes] | None = None
    """All journal entries in append order, or None when ``read(journal=False)``."""


class Listed(msgspec.Struct, frozen=True):
    """One record as ``Memory.list`` shows it: what it is and when it was written."""

    key: str
    """The record's key (the workflow's subject)."""
    workflow: str | None
    """The orchestrator's name in the subject (``arvo.orc.order.fulfil``), derived from the
    key at the first write; None for a key that is not an orchestration subject."""
    status: str
    """``active``, ``done``, ``failed``, ``cancelled`` or ``parked``."""
    created: float
    """Seconds since the epoch (the memory's clock, a wall clock) of the first write."""
    updated: float
    """Seconds since the epoch of the latest write."""


class Page(msgspec.Struct, frozen=True):
    """One page of ``Memory.list``: newest first, and where the next page starts."""

    items: list[Listed]
    cursor: str | None
    """Pass as ``cursor=`` to get the next page; None when there are no more."""


class Memory(abc.ABC):
    """The storage interface the driver runs on. All methods are safe under concurrent tasks."""

    @abc.abstractmethod
    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        """The record under ``key`` (with its journal if asked), or None if there is none."""

    @abc.abstractmethod
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
        """Replace the header and append journal entries, if the record is at ``revision``.

        ``revision`` is the revision the caller read (0 for a record that must not exist
        yet). ``append`` holds ``(event_id, entry)`` pairs, appended in order and found
        again by ``entry``. Returns the new revision (``revision + 1``). Raises
        ``ConflictError`` and changes nothing if the stored revision differs, and
        ``DuplicateEntryError`` (changing nothing) if an event id in ``append`` is already
        journaled under ``key`` or repeated. When this returns, the write is durable to
        the backend's promise.

        ``due`` replaces the record's due time (seconds since the epoch; None: nothing to
        wake). ``reset`` drops the whole journal before appending (``continue_as_new``):
        the event ids of ``append`` are then checked only against each other.

        Every write stamps the record's ``updated`` time from the memory's clock; the first
        also its ``created`` time and the workflow its key names (for ``list``).
        """

    @abc.abstractmethod
    async def entry(self, key: str, event_id: str) -> bytes | None:
        """The journal entry appended for ``event_id`` under ``key``, or None."""

    @abc.abstractmethod
    async def keys(self, status: str | None = None) -> list[str]:
        """Keys of all records, or of those whose status is ``status``, in key order.

        Reads every matching key at once: fine for tools and tests; ``list`` is the indexed,
        paged way to show records to people."""

    @abc.abstractmethod
    async def due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        """Up to ``limit`` ``(key, due)`` pairs whose due time is at or before ``now``,
        earliest first (ties in key order). ``now=math.inf`` finds the next one to come."""

    @abc.abstractmethod
    async def lock(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease on ``key`` for ``owner`` for ``ttl`` seconds.

        True if taken (or already held by ``owner``, whose lease is then renewed); False if
        another owner holds an unexpired lease. Raises only for an operational failure.
        """

    @abc.abstractmethod
    async def unlock(self, key: str, owner: str) -> bool:
        """Release ``owner``'s lease on ``key``. False if ``owner`` did not hold it, or its
        lease had already expired."""

    # Last of the methods: below it, ``list`` in an annotation would name this method.
    @abc.abstractmethod
    async def list(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """One page of records, newest first (by ``created``, ties by key, both descending).

        ``workflow`` keeps the records of that orchestrator (``Listed.workflow``), ``status``
        those with that status; ``limit`` (1 to 1000) caps the page. ``cursor`` is the
        ``Page.cursor`` of the page before: an opaque string holding the last ``(created,
        key)`` seen, so paging never repeats or skips a record that existed when it began,
        however many records are written meanwhile. Every backend answers from an index
        (never a scan of every record), so a page costs the same at any size. Raises
        ``ValueError`` for a limit out of range, an unknown status or a malformed cursor.
        """

    async def count(self, *, workflow: str | None = None) -> dict[str, int]:
        """How many records have each status (of the workflow ``workflow``, if given); a
        status no record has is left out. For dashboards: the SQL and Redis backends answer
        from the listing indexes; this default pages through ``list``, reading every record."""
        counts: dict[str, int] = {}
        cursor: str | None = None
        while True:
            page = await self.list(workflow=workflow, limit=1000, cursor=cursor)
            for item in page.items:
                counts[item.status] = counts.get(item.status, 0) + 1
            if page.cursor is None:
                return counts
            cursor = page.cursor

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release connections and threads. The memory must not be used afterwards."""
