"""``Runtime`` and ``Client``: start workflows under your own ids and wait on them, the same
way embedded (SQLite, in-process broker) and distributed (NATS or Redis, PostgreSQL).

``async with Runtime([services and workflows...], memory="sqlite:///app.db") as rt`` runs a
``Worker`` for them inside the caller's event loop, on ``broker`` (in-process by default):
recovery on start, lease contention retried, dead letters with their reason, timers, and
a drain on exit. ``Client(broker=..., memory=...)`` starts and waits on workflows that
workers elsewhere run. Both hand out ``WorkflowHandle`` objects.

An instance is named by the workflow and the user's id: its subject is Arvo's, with the
id as the execution id and the runtime's ``source`` as the initiator, so the same id
always names the same instance. A start is durable when ``start`` returns: a runtime that
runs the workflow executes the init step itself (the record is written), a client waits
until a worker has written it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.abc

from resumable.brokers import Broker, Handler, LocalBroker
from resumable.client import DEFAULT_SOURCE, Client
from resumable.clock import VirtualClock, to_epoch, to_iso
from resumable.driver import Resumable
from resumable.errors import (
    TransactionViolation,
)
from resumable.events import Event, now_iso
from resumable.handles import WorkflowHandle
from resumable.memory import InMemoryMemory, Memory
from resumable.worker import Worker

__all__ = ["DEFAULT_SOURCE", "Client", "Runtime"]

log = logging.getLogger("resumable.runtime")


def _first_millisecond_at_or_after(due: float) -> float:
    """The earliest time a millisecond clock shows that is at or after ``due``."""
    moment = math.ceil(due * 1000) / 1000
    while to_epoch(to_iso(moment)) < due:
        moment += 0.001
    return moment


class Runtime(Client):
    """Runs ``handlers`` (``EventHandler`` services and ``Resumable`` workflows) with a
    ``Worker`` in the caller's event loop, and starts and waits on workflows like a
    ``Client``: ``async with Runtime([...], memory="sqlite:///app.db") as rt``.

    ``broker`` defaults to an in-process ``LocalBroker``; give ``nats://...`` or
    ``redis://...`` (and a shared ``memory``) to run the same code as one of many
    processes. ``memory`` (default: in process) becomes the memory of every workflow made
    without one. ``clock`` (e.g. a ``VirtualClock``) stamps init events, service replies,
    timers and ``ctx.now()`` alike; while a ``result()`` waits and nothing else runs, a
    ``VirtualClock`` is moved straight to the next due timer. ``worker_options`` go to
    ``Worker`` (``concurrency``, ``backoff``, ``timer_interval``, ``drain_timeout``,
    ``on_domain``, ...).
    """

    def __init__(
        self,
        handlers: Iterable[Handler],
        *,
        memory: Memory | str | None = None,
        broker: Broker | str | None = None,
        source: str = DEFAULT_SOURCE,
        clock: Callable[[], str] | None = None,
        poll: float = 0.5,
        accept_timeout: float = 30.0,
        **worker_options: Any,
    ) -> None:
        handlers = list(handlers)
        self._handlers = handlers
        self._have_memory = memory is not None
        self._worker_options = {"poll": 0.25, **worker_options}
        super().__init__(
            broker=broker if broker is not None else "local://",
            memory=memory if memory is not None else InMemoryMemory(),
            source=source,
            clock=clock,
            poll=poll,
            accept_timeout=accept_timeout,
        )
        for handler in handlers:
            if handler.source == source:
                raise ValueError(
                    f"{handler!r} consumes {source!r}, the topic this runtime's completions "
                    "go to; give the Runtime another source"
                )
            if isinstance(handler, Resumable):
                self._hosted[handler.source] = handler
            elif clock is not None and hasattr(handler, "clock"):
                handler.clock = clock
        self._reopened()

    def _reopened(self) -> None:
        for workflow in self._hosted.values():
            self._bind(workflow, self._have_memory)
        self.worker: Worker | None = (
            Worker(self._handlers, broker=self.broker, **self._worker_options)
            if self._handlers
            else None
        )
        self._worker_done = anyio.Event()

    def _bind(self, workflow: Resumable[Any], have_memory: bool) -> None:
        """Give ``workflow`` this runtime's memory (unless it was made with its own) and
        clock."""
        workflow.bind(
            memory=self.memory if have_memory and not workflow.own_memory else None,
            clock=self.clock if self.clock is not now_iso else None,
        )

    async def _started(self, group: anyio.abc.TaskGroup) -> None:
        await super()._started(group)
        if self.worker is not None:
            await group.start(self._run_worker, self.worker)
        if isinstance(self.clock, VirtualClock) and self.worker is not None:
            group.start_soon(self._skip_time, self.clock, self.worker)

    async def _run_worker(
        self, worker: Worker, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await worker.run(task_status=task_status)
        finally:
            self._worker_done.set()

    async def _stopping(self) -> None:
        """Drain: stop taking deliveries, let those in flight settle."""
        if self.worker is None:
            return
        self.worker.stop()
        if isinstance(self.broker, LocalBroker) and self.broker in self._owned:
            await self.broker.close()  # wakes the receive loops at once
        await self._worker_done.wait()

    async def _execute(
        self, workflow: Resumable[Any], event: Event, handle: WorkflowHandle
    ) -> None:
        """Execute ``event`` here (durable when it returns), then publish what it emitted.
        A lease held by another execution is waited out, with backoff, up to two lease
        lifetimes."""
        assert self.worker is not None
        self._busy += 1
        try:
            delay = 0.005
            with anyio.move_on_after(max(2 * workflow.lock_ttl, 1.0)) as scope:
                while True:
                    try:
                        outputs = await workflow.execute(event)
                        break
                    except TransactionViolation as error:
                        if error.cause != TransactionViolation.LOCK_UNACQUIRED:
                            raise
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            if scope.cancelled_caught:
                raise TimeoutError(
                    f"workflow {handle.workflow} instance {handle.id!r} stayed locked by "
                    f"another execution for {2 * workflow.lock_ttl}s; try again"
                )
            for output in outputs:
                await self.worker.emit(output)
        finally:
            self._busy -= 1

    async def _skip_time(self, clock: VirtualClock, worker: Worker) -> None:
        """While a ``result()`` waits and nothing runs, move the clock to the next timer."""
        broker = self.broker
        while True:
            await anyio.sleep(0.002)
            if not self._waiting or self._busy or worker.stats.in_flight:
                continue
            if isinstance(broker, LocalBroker) and broker.unsettled:
                continue
            upcoming: float | None = None
            for memory in self._memories():
                for _, due in await memory.due(math.inf, 1):
                    upcoming = due if upcoming is None else min(upcoming, due)
            if upcoming is None:
                continue
            clock.set(_first_millisecond_at_or_after(upcoming))
            worker.fire_timers_now()
