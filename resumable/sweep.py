"""The periodic outbox sweep: requests whose replies never came are sent again.

A workflow's record is its outbox: the requests of its open calls. A request can be lost
after the step that sent it was written (the publishing process died, a broker without
persistence restarted, the service dead-lettered it); the worker re-publishes every
outbox when it starts, and this sweep does so every ``recover_interval`` while it runs, so
no instance waits for a restart to move again.

Cheap by construction: it pages through the memory's listing index (active instances of
the workflow), skips the instances written in the last ``interval`` (their requests are
on their way), and reads the record only of the others. An instance whose record has not
changed since its requests were re-sent is re-sent again only after twice the gap before,
up to an hour, so a slow service is not asked again and again, and an instance that
waits on a long timer or a signal costs one read per hour. The requests keep their ids:
a copy the broker still remembers (its duplicate window) is dropped, and a service that
gets one again answers it from its idempotency key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from resumable.events import Event
from resumable.memory import Memory
from resumable.record import ACTIVE

__all__ = ["OutboxSweep", "Sweepable"]

_LONGEST_GAP = 3600.0
"""The longest wait before an unchanged instance's requests are re-sent again."""
_REMEMBERED = 100_000
"""The most instances whose re-send times one sweep keeps (the rest are read sooner)."""


@runtime_checkable
class Sweepable(Protocol):
    """A workflow whose records can be listed and whose open requests can be read."""

    @property
    def source(self) -> str: ...

    memory: Memory

    async def pending_requests(self, subject: str) -> list[Event]: ...


class OutboxSweep:
    """Finds the requests to re-send, per ``Sweepable`` workflow (see the module docstring).

    ``interval`` is both how often the worker sweeps and how old an instance's latest write
    must be before its requests count as lost. ``clock`` reads the memories' wall clock
    (``Listed.updated`` is in its seconds)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.time) -> None:
        self.interval = interval
        self.clock = clock
        self._next: dict[tuple[str, str], tuple[float, float, float]] = {}
        """(workflow, key) -> (its ``updated`` when re-sent, when next due, the gap)."""

    async def sweep(self, workflow: Sweepable, publish: Callable[[Event], Awaitable[None]]) -> int:
        """Re-publish the stale requests of ``workflow``'s active instances; returns how
        many were published."""
        now = self.clock()
        cutoff = now - self.interval
        seen: set[tuple[str, str]] = set()
        sent = 0
        cursor: str | None = None
        while True:
            page = await workflow.memory.list(
                workflow=workflow.source, status=ACTIVE, limit=1000, cursor=cursor
            )
            for item in page.items:
                if item.updated > cutoff:
                    continue
                mark = (workflow.source, item.key)
                seen.add(mark)
                before = self._next.get(mark)
                if before is not None and before[0] == item.updated and now < before[1]:
                    continue
                gap = self.interval
                if before is not None and before[0] == item.updated:
                    gap = min(before[2] * 2, _LONGEST_GAP)
                for request in await workflow.pending_requests(item.key):
                    await publish(request)
                    sent += 1
                self._next[mark] = (item.updated, now + gap, gap)
            if page.cursor is None:
                break
            cursor = page.cursor
        # Forget instances no longer stale-and-active, so the map stays as small as they are.
        for mark in [m for m in self._next if m[0] == workflow.source and m not in seen]:
            del self._next[mark]
        while len(self._next) > _REMEMBERED:
            del self._next[next(iter(self._next))]
        return sent
