"""One event applied to one instance (a turn): what it reads and what it decides.

A ``Turn`` collects, while the event is applied, everything the step changes: the header,
the events emitted, how the generator was woken and what it yielded next. ``Decision`` is
what the I/O shell writes and publishes. ``Journal`` is the only way the engine reads
storage: by event id, or whole for a replay.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from resumable.engine.cache import Live
from resumable.engine.transitions import Wake
from resumable.events import Event
from resumable.record import Header, Inline
from resumable.subject import Subject
from resumable.telemetry import TraceHeaders

__all__ = ["Decision", "Journal", "Turn", "seed_of"]


class Journal(Protocol):
    """Read access to one instance's journal: what the engine may look up while it decides."""

    async def entry(self, event_id: str) -> bytes | None:
        """The journal entry of a consumed event, or None."""
        ...

    async def entries(self, revision: int) -> list[bytes]:
        """The whole journal as of ``revision`` (raises if the record moved on)."""
        ...


def seed_of(key: str, generation: int) -> str:
    """What emitted ids derive from: the subject, and the generation after a restart."""
    return key if generation == 0 else f"{key}#{generation}"


@attrs.define(slots=True)
class Turn:
    """One event being applied: what it changes, collected until the record is written."""

    key: str
    event: Event
    subject: Subject
    headers: TraceHeaders
    header: Header
    revision: int
    time: str
    """The step's time: read once from the clock, stamped on every event it emits."""
    now: float
    """The same moment in seconds since the epoch, for due times."""
    journal: Journal
    live: Live | None = None
    produced: list[Event] = attrs.Factory(list)
    resumed: list[str] | None = None
    wake: Wake | None = None
    inline: list[Inline] = attrs.Factory(list)
    yielded: str | None = None
    reset: list[tuple[str, bytes]] | None = None
    """For continue-as-new: the new journal, replacing the old one."""

    @property
    def seed(self) -> str:
        return seed_of(self.key, self.header.generation)


@attrs.define(slots=True)
class Decision:
    """What applying an event decided: the events to publish and, unless ``header`` is
    None, the record to write (compare-and-set on the revision read)."""

    emitted: list[Event]
    header: Header | None = None
    append: list[tuple[str, bytes]] = attrs.Factory(list)
    reset: bool = False
    """``append`` replaces the journal (continue-as-new)."""
    live: Live | None = None
    """The suspended generator that matches the written record: keep it in the cache."""
