"""One simulated process hosting workflows: the engine's ``decide`` over a shared memory.

What ``Resumable.execute`` does, less the span and the lease (a test delivers one event at
a time), and with the two places a process can die made explicit: after deciding and
before writing (the step is lost, its event comes again), and after writing and before
publishing (the events are lost; the journal gives them back). Each host has its own cache
of live generators, so two hosts on one memory hand instances over as two runtimes do.
"""

from __future__ import annotations

from typing import Any, Literal

from resumable.engine.cache import LiveCache
from resumable.engine.definition import Definition, OtherWorkflow
from resumable.engine.instance import Stored, decide
from resumable.events import Event
from resumable.memory import Memory
from resumable.storage import MemoryJournal, apply_decision
from resumable.telemetry import incoming

__all__ = ["CrashPoint", "Host"]

CrashPoint = Literal["before-write", "before-publish"]
"""Where a process dies while applying an event: before its record is written (the step
is lost) or after, before its events are published (the events are lost)."""


class Host:
    """A process running workflows on ``memory``; ``crash()`` drops its live generators."""

    def __init__(self, memory: Memory, cache_size: int = 1024) -> None:
        self.memory = memory
        self.cache = LiveCache(cache_size)

    def crash(self) -> None:
        """The process died: every live generator is gone (none of their code runs)."""
        self.cache.drop()

    async def execute(
        self,
        defn: Definition[Any],
        event: Event,
        *,
        time: str,
        now: float,
        crash: CrashPoint | None = None,
    ) -> list[Event]:
        """Apply ``event`` and return what it emits (nothing if ``crash`` cut it short)."""
        try:
            subject, typed = defn.admit(event)
        except OtherWorkflow:  # every process sees every event: not this workflow's
            return []
        key = event.subject
        stored = await self.memory.read(key)
        instance = None
        if stored is not None:
            instance = Stored(stored.revision, stored.header, self.cache.get(key, stored.revision))
        try:
            decision = await decide(
                defn,
                event,
                typed,
                subject,
                instance,
                MemoryJournal(self.memory, key),
                time=time,
                now=now,
                headers=incoming(event),
            )
        except BaseException:
            self.cache.drop(key)
            raise
        if crash == "before-write":
            self.crash()
            return []
        await apply_decision(
            self.memory,
            self.cache,
            key,
            0 if stored is None else stored.revision,
            decision,
            event.id,
        )
        if crash == "before-publish":
            self.crash()
            return []
        return decision.emitted
