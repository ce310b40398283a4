"""The storage interface: ``Memory`` and the records it returns.

Its own module so that the backends import the interface without importing the package
that lists them (``resumable.memory`` re-exports everything here).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import msgspec

__all__ = ["Memory", "Stored"]


class Stored(msgspec.Struct, frozen=True):
    """One record as read from memory."""

    revision: int
    status: str
    header: bytes
    journal: list[bytes] | None = None
    """All journal entries in append order, or None when ``read(journal=False)``."""


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
        """

    @abc.abstractmethod
    async def entry(self, key: str, event_id: str) -> bytes | None:
        """The journal entry appended for ``event_id`` under ``key``, or None."""

    @abc.abstractmethod
    async def keys(self, status: str | None = None) -> list[str]:
        """Keys of all records, or of those whose status is ``status``, in key order."""

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

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release connections and threads. The memory must not be used afterwards."""
