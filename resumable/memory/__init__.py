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

Each record also knows when it was first and last written, and the workflow its key names:
``list`` pages through records newest first, by workflow and status, from an index.

Plus a lease lock per key, with a time to live so a crashed holder cannot block a key
forever. Memory never interprets the bytes; ``resumable.record`` does.

Every backend passes the same conformance suite (``tests/memory/conformance.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resumable.errors import ConflictError, DuplicateEntryError, SetupError
from resumable.memory.base import Listed, Memory, Page, Stored
from resumable.memory.inmemory import InMemoryMemory
from resumable.memory.sqlite import SQLiteMemory

__all__ = [
    "ConflictError",
    "DuplicateEntryError",
    "InMemoryMemory",
    "Listed",
    "Memory",
    "Page",
    "SQLiteMemory",
    "Stored",
    "from_url",
]


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
