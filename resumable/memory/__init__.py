"""Where workflow records live.

A record is stored under a key (the workflow's subject) as three things:

- a **header**: opaque bytes the driver rewrites on every step (explicit state, status,
  what the workflow waits for). Small and bounded.
- a **journal**: opaque entries the driver only appends to, one per consumed event, each
  indexed by that event's id. A step never rewrites history.
- a **revision**: starts at 1 on the first write and grows by one on every write.
  ``write`` is a compare-and-set on it, so two writers can never both advance a record.

Each record also has a **due time**: when it next needs waking (a timer, a timeout, a
retry backoff). ``due`` lists the records whose time has come, so whatever runs the
workflows (``LocalBroker``, ``Worker``) can fire their timers after a restart.

Plus a lease lock per key, with a time to live so a crashed holder cannot block a key
forever. Memory never interprets the bytes; ``resumable.record`` does.

Every backend passes the same conformance suite (``tests/memory/conformance.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from resumable.errors import ConflictError, DuplicateEntryError, SetupError

__all__ = [
    "ConflictError",
    "DuplicateEntryError",
    "InMemoryMemory",
    "Memory",
    "SQLiteMemory",
    "Stored",
    "from_url",
]


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


from resumable.memory.inmemory import InMemoryMemory  # noqa: E402
from resumable.memory.sqlite import SQLiteMemory  # noqa: E402


def from_url(url: str) -> Memory:
    """The memory a URL names: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
    ``postgresql://user@host/db``, ``redis://host:6379/0``, or ``memory://``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SetupError(
            f"memory URL {url!r} has no scheme; use sqlite:///path.db, postgresql://..., "
            "redis://... or memory://"
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise SetupError(f"memory URL {url!r} names no file; use sqlite:///path/to/file.db")
        return SQLiteMemory(path)
    if scheme == "memory":
        return InMemoryMemory()
    if scheme in ("postgresql", "postgres"):
        from resumable.memory.postgres import PostgresMemory

        return PostgresMemory.from_url(url)
    if scheme in ("redis", "rediss"):
        from resumable.memory.redis import RedisMemory

        return RedisMemory.from_url(url)
    raise SetupError(
        f"memory URL {url!r} has an unknown scheme {scheme!r}; use sqlite, postgresql, redis "
        "or memory"
    )


if TYPE_CHECKING:
    from resumable.memory.postgres import PostgresMemory as PostgresMemory
    from resumable.memory.redis import RedisMemory as RedisMemory


def __getattr__(name: str) -> Any:
    """Import the backends that need an optional client on first use, so a missing client
    only fails when that backend is used."""
    if name == "RedisMemory":
        from resumable.memory.redis import RedisMemory

        return RedisMemory
    if name == "PostgresMemory":
        from resumable.memory.postgres import PostgresMemory

        return PostgresMemory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
