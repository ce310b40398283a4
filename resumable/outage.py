"""What a worker does while a server it needs is unavailable: pause, probe, resume.

A delivery that failed with ``Unavailable`` (a database or broker down, restarting or
failing over) says nothing about its event, so it is nacked and retried without counting
against ``max_attempts``. One such failure also pauses the worker's consuming: taking more
deliveries would only fail them against the same dead server. ``Outage`` holds that pause:
a probe (a cheap read of each memory the worker uses) runs with backoff and jitter until
every memory answers, then consuming resumes. One log line says when it paused and one
when it resumed, so a long outage does not flood the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from resumable.backoff import backoff_delay, jittered
from resumable.errors import is_unavailable
from resumable.memory import Memory

__all__ = ["PROBE_KEY", "Outage", "RetryCounts"]

log = logging.getLogger("resumable.worker")

PROBE_KEY = "resumable.probe"
"""The key the probe reads: no record has it (it is not an orchestration subject)."""

_LONGEST_PROBE_GAP = 5.0
"""Probes come at least this often (seconds), whatever the backoff's maximum: a probe is
one cheap read, and it decides how soon consuming resumes once the server is back."""

_REMEMBERED = 10_000
"""How many events' retry counts a worker keeps (the oldest are forgotten first)."""


class RetryCounts:
    """How many deliveries of each event ended for a reason that is not the event's fault
    (a server unavailable, a lease held by another execution), so ``max_attempts`` counts
    only real failures. Bounded: the least recently retried events are forgotten."""

    def __init__(self, limit: int = _REMEMBERED) -> None:
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._limit = limit

    def add(self, topic: str, event_id: str) -> int:
        """Count one more such delivery of ``event_id`` on ``topic``; returns the count."""
        key = (topic, event_id)
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self._limit:
            self._counts.popitem(last=False)
        return count

    def get(self, topic: str, event_id: str) -> int:
        return self._counts.get((topic, event_id), 0)

    def forget(self, topic: str, event_id: str) -> None:
        """The event was settled for good (acked or dead-lettered)."""
        if self._counts:  # as a rule nothing is counted: no key to build
            self._counts.pop((topic, event_id), None)


class Outage:
    """The pause of one worker while a server is unavailable (see the module docstring).

    ``probes()`` gives the memories to read before resuming; with none (a worker of services
    only, or a broker outage) the pause lasts one backoff delay and the next receive or
    publish tells. ``backoff`` is ``(initial, factor, max)`` seconds between probes, at
    most 5 s apart.
    """

    def __init__(
        self, probes: Callable[[], Sequence[Memory]], backoff: tuple[float, float, float]
    ) -> None:
        self.probes = probes
        self.backoff = backoff
        self._resumed: anyio.Event | None = None
        self._since = 0.0
        self.pauses = 0
        """How many times consuming was paused."""

    @property
    def paused(self) -> bool:
        return self._resumed is not None

    def begin(self, error: BaseException, group: anyio.abc.TaskGroup | None) -> bool:
        """Pause for ``error`` (an ``Unavailable``) and start probing in ``group``; True if
        this began a pause. Without a group (a worker whose ``run`` is not running: a
        ``LocalBroker`` hosting handlers) nothing pauses; the nack's backoff paces it."""
        if self._resumed is not None:
            return False
        if group is None:
            log.warning("a server is unavailable (%s); retrying with backoff", error)
            return False
        self._resumed = anyio.Event()
        self._since = time.monotonic()
        self.pauses += 1
        log.warning(
            "a server is unavailable (%s): consuming paused, nothing is dead-lettered for "
            "it; probing with backoff until it answers",
            error,
        )
        group.start_soon(self._probe, self._resumed)
        return True

    async def wait(self, stopping: anyio.Event) -> None:
        """Return once consuming may go on: the pause ended, or the worker is stopping."""
        resumed = self._resumed
        if resumed is None or stopping.is_set():
            return
        async with anyio.create_task_group() as wait:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                wait.cancel_scope.cancel()

            wait.start_soon(until, resumed)
            wait.start_soon(until, stopping)

    async def _probe(self, resumed: anyio.Event) -> None:
        """Read each memory with backoff and jitter until all answer; then resume."""
        attempt = 0
        answered = False
        try:
            while True:
                attempt += 1
                initial, factor, longest = self.backoff
                gap = backoff_delay(attempt, initial, factor, min(longest, _LONGEST_PROBE_GAP))
                await anyio.sleep(jittered(gap))
                last = await self._unreachable()
                if last is None:
                    answered = True
                    return
                log.debug("probe %d: still unavailable (%s)", attempt, last)
        finally:
            if self._resumed is resumed:
                self._resumed = None
            resumed.set()
            if answered:
                log.warning(
                    "servers answer again after %.1fs (%d probes): consuming resumed",
                    time.monotonic() - self._since,
                    attempt,
                )

    async def _unreachable(self) -> BaseException | None:
        """The outage error of the first memory that does not answer, or None."""
        for memory in self.probes():
            try:
                await memory.read(PROBE_KEY)
            except Exception as error:
                if is_unavailable(error):
                    return error
                # It answered, with an error of another kind: the server is there.
                log.debug("the probe of %r failed (%s); resuming anyway", memory, error)
        return None
