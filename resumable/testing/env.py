"""``WorkflowEnv``: run workflows and services in a test, one event at a time, on virtual time.

Every event emitted goes to ``pending`` (addressed to a workflow or service in the
environment) or ``outside`` (anything else: completions to the initiator, events for a
domain). A test delivers pending events in the order it likes (``step``), drops or
duplicates them, advances the ``VirtualClock`` (due timers become pending timer events),
crashes the process at a chosen point, and inspects status, typed state, journal and every
event. Workflows run on the engine's core over an in-process memory: no storage I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import attrs
import msgspec

from resumable.clock import VirtualClock, to_epoch, to_iso
from resumable.contracts import Contract, OrchestratorContract
from resumable.driver import Resumable
from resumable.engine import emit
from resumable.engine.definition import TIMER_TYPE, Definition
from resumable.events import Event
from resumable.handler import EventHandler
from resumable.ids import derive_id
from resumable.memory import InMemoryMemory, Memory
from resumable.queries import HistoryStep, WorkflowStatus, read_status
from resumable.record import ACTIVE, DONE, decode_entry, decode_header
from resumable.subject import new_subject, parse_subject
from resumable.testing.host import CrashPoint, Host

__all__ = ["Instance", "ServiceCall", "WorkflowEnv"]

TEST_SOURCE = "com.resumable.test"
"""The initiator of the instances a ``WorkflowEnv`` starts: their completions go there."""


@attrs.frozen
class Instance:
    """A workflow instance started in a ``WorkflowEnv``: its user id and subject."""

    id: str
    subject: str
    contract: OrchestratorContract


@attrs.frozen
class ServiceCall:
    """One delivery of a request to a service, with the replies it gave that time."""

    service: str
    request: Event
    replies: tuple[Event, ...]


class WorkflowEnv:
    """Workflows (``Resumable``) and services (``EventHandler``, ``fake``, ``script``)
    in one test, on ``clock`` (a new ``VirtualClock`` by default) and ``memory`` (a new
    ``InMemoryMemory``). ``runtimes`` processes share the memory, each with its own cache
    of live generators; ``runtime`` picks the one that delivers next.

    ``memory`` may instead be a function opening a connection to one store (say
    ``lambda: SQLiteMemory(path)``): then each runtime opens its own, a restart closes them
    and opens new ones, as new processes do, and ``close()`` closes them all.

    A workflow given here runs with the environment's memory and clock, not its own.
    """

    def __init__(
        self,
        handlers: Iterable[Resumable[Any] | EventHandler] = (),
        *,
        clock: VirtualClock | None = None,
        memory: Memory | Callable[[], Memory] | None = None,
        runtimes: int = 1,
        source: str = TEST_SOURCE,
    ) -> None:
        if runtimes < 1:
            raise ValueError(f"runtimes must be at least 1, got {runtimes}")
        self.clock = clock if clock is not None else VirtualClock()
        if memory is None or isinstance(memory, Memory):
            self._open: Callable[[], Memory] | None = None
            self.memory: Memory = memory if memory is not None else InMemoryMemory()
        else:
            self._open = memory
            self.memory = _opened(memory)
        """The test's own view of the store: status, history and due times read it."""
        self.hosts = [Host(self._connect()) for _ in range(runtimes)]
        self.runtime = 0
        self.source = source
        self.workflows: dict[str, Definition[Any]] = {}
        self.services: dict[str, EventHandler] = {}
        self.pending: list[Event] = []
        """Events in flight to a workflow or service here, in arrival order."""
        self.outside: list[Event] = []
        """Events addressed to no one here (completions to the initiator, domain events)."""
        self.emitted: list[Event] = []
        """Every event any workflow or service here emitted, in order."""
        self.calls: list[ServiceCall] = []
        """Every delivery of a request to a service, with its replies."""
        self.delivered = 0
        self._sent = 0
        self.add(*handlers)

    def _connect(self) -> Memory:
        """A runtime's connection: the shared memory, or a new one from the opener."""
        return self.memory if self._open is None else _opened(self._open)

    async def close(self) -> None:
        """Close the connections this environment opened with its ``memory`` function; a
        ``Memory`` object given to it stays open (its owner closes it)."""
        if self._open is None:
            return
        for host in self.hosts:
            await host.memory.close()
        await self.memory.close()

    def add(self, *handlers: Resumable[Any] | EventHandler) -> None:
        """Host more workflows and services."""
        for handler in handlers:
            if isinstance(handler, Resumable):
                self.workflows[handler.source] = handler.definition
            elif isinstance(handler, EventHandler):
                self.services[handler.source] = handler
            else:
                raise TypeError(
                    f"WorkflowEnv hosts Resumable workflows and EventHandler services (fake() "
                    f"and script() make them), got {handler!r}"
                )

    def __repr__(self) -> str:
        return (
            f"<WorkflowEnv at {self.clock()} with {len(self.pending)} pending, "
            f"{len(self.outside)} outside>"
        )

    # ---------------------------------------------------------------------------------
    # sending

    def send(self, *events: Event) -> None:
        """Put events in flight: to ``pending`` if a workflow or service here takes them."""
        for event in events:
            if event.domain is None and (event.to in self.workflows or event.to in self.services):
                self.pending.append(event)
            else:
                self.outside.append(event)

    def instance(
        self, workflow: OrchestratorContract | Resumable[Any], id: str, version: str | None = None
    ) -> Instance:
        """The instance ``id`` of ``workflow`` (under ``version``, by default the newest
        this environment runs)."""
        contract = workflow.contract if isinstance(workflow, Resumable) else workflow
        defn = self.workflows.get(contract.type)
        if defn is None:
            raise KeyError(f"workflow {contract.uri!r} is not in this environment; add() it")
        if version is None:
            version = list(defn.functions)[-1]
        subject = new_subject(
            orchestrator=contract.type, version=version, initiator=self.source, execution_id=id
        )
        return Instance(id, subject, contract)

    async def start(
        self,
        workflow: OrchestratorContract | Resumable[Any],
        data: Any,
        *,
        id: str,
        version: str | None = None,
    ) -> Instance:
        """Send the init event of instance ``id`` (its id derives from the instance, so a
        second start is the same event). Nothing runs until it is delivered."""
        instance = self.instance(workflow, id, version)
        version = parse_subject(instance.subject).version
        init = instance.contract.init_event(
            data,
            source=self.source,
            version=version,
            subject=instance.subject,
            id=derive_id(instance.subject, "init"),
            time=self.clock(),
        )
        self.send(init)
        return instance

    def signal(self, instance: Instance, signal: Contract | str, data: Any) -> Event:
        """Send a signal to ``instance``; returns the pending event."""
        defn = self._definition(instance)
        self._sent += 1
        event = emit.signal_event(
            defn, instance.subject, signal, data, source=self.source, time=self.clock()
        )
        event = msgspec.structs.replace(
            event, id=derive_id(instance.subject, "signal", event.type, self._sent)
        )
        self.send(event)
        return event

    def cancel(self, instance: Instance, reason: str = "") -> Event:
        """Send a cancellation to ``instance``; returns the pending event."""
        defn = self._definition(instance)
        event = emit.cancel_event(
            defn, instance.subject, reason, source=self.source, time=self.clock()
        )
        self._sent += 1
        event = msgspec.structs.replace(event, id=derive_id(instance.subject, "cancel", self._sent))
        self.send(event)
        return event

    # ---------------------------------------------------------------------------------
    # delivering

    async def step(
        self, index: int = 0, *, keep: bool = False, crash: CrashPoint | None = None
    ) -> list[Event]:
        """Deliver ``pending[index]`` and return what it emitted. ``keep`` leaves a copy in
        flight (it is delivered again later: a duplicate). ``crash`` kills the process
        while the event is applied: it stays in flight, as an unacknowledged message does,
        every live generator is dropped, and the requests awaiting replies are re-sent."""
        event = self.pending[index] if keep or crash else self.pending.pop(index)
        out = await self.deliver(event, crash=crash)
        if crash is not None:
            await self.restart()
        return out

    async def deliver(self, event: Event, *, crash: CrashPoint | None = None) -> list[Event]:
        """Apply ``event`` (pending or not) at its handler now and send what it emits."""
        self.delivered += 1
        out: list[Event]
        defn = self.workflows.get(event.to or "")
        if defn is not None:
            time = self.clock()
            out = await self.hosts[self.runtime].execute(
                defn, event, time=time, now=to_epoch(time), crash=crash
            )
        else:
            service = self.services.get(event.to or "")
            if service is None:
                raise KeyError(f"event {event.id} is for {event.to!r}, which is not here")
            service.clock = self.clock
            replies = await service.execute(event)
            self.calls.append(ServiceCall(service.source, event, tuple(replies)))
            out = [] if crash is not None else replies
        self.emitted.extend(out)
        self.send(*out)
        await self._wake_due()
        return out

    async def run(self, *, max_steps: int = 10_000) -> int:
        """Deliver pending events, first in first out, until none is left (time stands
        still: only timers already due fire). Returns how many were delivered."""
        count = 0
        while self.pending:
            if count >= max_steps:
                raise RuntimeError(
                    f"still {len(self.pending)} events pending after {max_steps} deliveries: "
                    "a loop? Pass run(max_steps=...) if this is expected"
                )
            await self.step(0)
            count += 1
        return count

    async def settle(self, *, until: float | None = None, max_steps: int = 10_000) -> int:
        """``run``, then move the clock to the next due timer and run again, until nothing
        is pending or due (or the next due time is after ``until``, epoch seconds)."""
        count = await self.run(max_steps=max_steps)
        while True:
            due = await self.next_due()
            if due is None or (until is not None and due > until):
                return count
            self.clock.set(_first_millisecond_at_or_after(due))
            await self._wake_due()
            count += await self.run(max_steps=max_steps)

    # ---------------------------------------------------------------------------------
    # time

    async def advance(self, seconds: float | timedelta) -> None:
        """Move the clock forward; timers that fall due become pending timer events."""
        self.clock.advance(seconds)
        await self._wake_due()

    async def advance_to_next_timer(self) -> bool:
        """Move the clock to the next due timer (False if there is none)."""
        due = await self.next_due()
        if due is None:
            return False
        self.clock.set(_first_millisecond_at_or_after(due))
        await self._wake_due()
        return True

    async def next_due(self) -> float | None:
        """When the next timer, timeout or retry of any instance falls due (epoch seconds)."""
        found = await self.memory.due(math.inf, limit=1)
        return found[0][1] if found else None

    async def _wake_due(self) -> None:
        """Make the timer event of every instance with something due, unless one is in
        flight already."""
        now = self.clock.time()
        waiting = {e.subject for e in self.pending if e.type == TIMER_TYPE}
        for key, _ in await self.memory.due(now, limit=10_000):
            if key in waiting:
                continue
            stored = await self.memory.read(key)
            defn = self.workflows.get(parse_subject(key).name)
            if stored is not None and defn is not None:
                time = self.clock()
                header = decode_header(stored.header)
                self.send(emit.timer_event(defn, key, stored.revision, to_epoch(time), header))

    # ---------------------------------------------------------------------------------
    # crashes

    def crash(self) -> None:
        """Every process dies: all live generators are dropped, none of their code runs."""
        for host in self.hosts:
            host.crash()

    async def restart(self) -> list[Event]:
        """Crash, then recover as a runtime starting on the same memory does (on a new
        connection, if ``memory`` was an opener): re-send the requests of active instances
        whose replies are missing. Returns them."""
        self.crash()
        if self._open is not None:
            for host in self.hosts:
                await host.memory.close()
                host.memory = _opened(self._open)
        resent: list[Event] = []
        for key in await self.memory.keys(status=ACTIVE):
            resent.extend(await self._unanswered(key))
        self.send(*resent)
        return resent

    async def _unanswered(self, key: str) -> list[Event]:
        stored = await self.memory.read(key)
        if stored is None:
            return []
        out: list[Event] = []
        for slot in decode_header(stored.header).waiting:
            if slot.kind != "call" or slot.reply is not None or slot.due is not None:
                continue
            raw = None if slot.sent_by is None else await self.memory.entry(key, slot.sent_by)
            if raw is not None:
                out.extend(e for e in decode_entry(raw).produced if e.id in slot.requests)
        return out

    # ---------------------------------------------------------------------------------
    # inspecting

    def _definition(self, instance: Instance | str) -> Definition[Any]:
        subject = instance.subject if isinstance(instance, Instance) else instance
        defn = self.workflows.get(parse_subject(subject).name)
        if defn is None:
            raise KeyError(f"no workflow here runs subject {subject!r}")
        return defn

    async def status(self, instance: Instance | str) -> WorkflowStatus[Any]:
        """The stored status of ``instance``, its state typed."""
        subject = instance.subject if isinstance(instance, Instance) else instance
        status = await read_status(
            self.memory, subject, state_type=self._definition(subject).state_type
        )
        if status is None:
            raise LookupError(f"instance {subject!r} does not exist (is its init pending?)")
        return status

    async def history(self, instance: Instance | str) -> list[HistoryStep]:
        """The journal of ``instance``: one step per event it consumed."""
        subject = instance.subject if isinstance(instance, Instance) else instance
        status = await read_status(self.memory, subject, history=True)
        if status is None or status.history is None:
            raise LookupError(f"instance {subject!r} does not exist (is its init pending?)")
        return status.history

    async def result(self, instance: Instance) -> Any:
        """The completion of a finished ``instance``, typed by its contract."""
        status = await self.status(instance)
        if status.status != DONE:
            raise AssertionError(
                f"instance {instance.id!r} is {status.status}, not done"
                + (f": {status.error.errorMessage}" if status.error else "")
                + (f"; it waits for {status.waits_for}" if status.waits_for else "")
            )
        versioned = instance.contract.versions[status.version]
        return msgspec.convert(status.result, versioned.emits[instance.contract.complete_type])

    def events(self, type: str | None = None, *, to: str | None = None) -> list[Event]:
        """Emitted events, filtered by ``type`` and by ``to``."""
        return [
            e
            for e in self.emitted
            if (type is None or e.type == type) and (to is None or e.to == to)
        ]


def _opened(open: Callable[[], Memory]) -> Memory:
    """``open()``, checked to be a ``Memory``: a wrong function fails here, named."""
    memory = open()
    if not isinstance(memory, Memory):
        raise TypeError(
            f"WorkflowEnv(memory=...) takes a Memory or a function opening one; the function "
            f"{open!r} returned {memory!r}"
        )
    return memory


def _first_millisecond_at_or_after(due: float) -> float:
    """The earliest time a millisecond clock shows that is at or after ``due``."""
    moment = math.ceil(due * 1000) / 1000
    while to_epoch(to_iso(moment)) < due:
        moment += 0.001
    return moment
