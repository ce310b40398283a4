"""``Resumable``: the I/O shell that applies events to a workflow's instances.

For each event: open a span, check the subject, take the subject's lease, read the record,
let the engine decide (``resumable.engine.instance.decide``: the new header, the journal
entries, the events to emit), compare-and-set the record, release the lease, and return
the events. Violations are raised with nothing persisted; any other exception from
workflow code ends the instance (after its compensations) with a system error. An
instance whose history no longer matches its code is parked, not retried.

Besides replies, an instance consumes three kinds of event of its own: a timer
(``resumable.workflow.timer``, made by ``timer_event`` when the record's due time has
passed), a cancellation (``resumable.workflow.cancel``) and the signals it lists.
"""

from __future__ import annotations

import logging
import time as _time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanKind

from resumable.clock import to_epoch
from resumable.contracts import Contract, OrchestratorContract, ServiceSpec
from resumable.domains import IN_ORCHESTRATION, DomainSpec
from resumable.engine import emit
from resumable.engine.cache import LiveCache
from resumable.engine.definition import CANCEL_TYPE, TIMER_TYPE, Definition
from resumable.engine.instance import Stored as Instance
from resumable.engine.instance import decide, park
from resumable.engine.replay import replay
from resumable.errors import (
    ConfigViolation,
    NonDeterminismError,
    SetupError,
    TransactionViolation,
    ViolationError,
    WorkflowAwaitError,
)
from resumable.events import Event, EventError, now_iso
from resumable.leases import Leases
from resumable.memory import InMemoryMemory, Memory, Stored
from resumable.metrics import SOURCE, enabled, instruments
from resumable.observe import (
    count_cache,
    count_replay,
    count_violation,
    observe_step,
)
from resumable.queries import WorkflowStatus, read_status, subjects
from resumable.record import ACTIVE, PARKED, Header, decode_entry, decode_header
from resumable.storage import MemoryJournal, apply_decision, read_record, write_record
from resumable.telemetry import SPAN_KIND_RESUMABLE, SpanSpec, execution_span
from resumable.workflow import WorkflowFunction

__all__ = ["CANCEL_TYPE", "TIMER_TYPE", "Resumable", "WorkflowAwaitError", "WorkflowStatus"]

log = logging.getLogger("resumable")

S = TypeVar("S")


class Resumable(Generic[S]):
    """A durable workflow: ``versions`` maps each contract version to an async generator.

    ``services`` lists the contracts the workflow may call (a plain contract means its
    latest version) and ``signals`` the events it may ``wait_for`` (contracts, or bare
    types for untyped data). ``state`` is an attrs class built with no arguments for each
    new instance and persisted after every step. ``memory`` stores the records (in-process
    by default). ``lock_ttl`` is the lease on an instance while a step runs: a ``Worker``
    renews it (a heartbeat) while the step lasts, so it bounds how long a dead or stalled
    process blocks the instance, not how long a step may take. ``timeout`` ends an
    instance still running that long after it started,
    across ``continue_as_new``; ``run_timeout`` bounds each generation alone. ``clock``
    gives event times (ISO 8601 UTC); pass a ``VirtualClock`` in tests. ``cache_size``
    bounds the live generators kept between steps. ``error_stack`` puts the Python
    traceback in the system-error events it sends (off: it shows other services the
    workflow's code paths).
    """

    def __init__(
        self,
        contract: OrchestratorContract,
        versions: Mapping[str, WorkflowFunction],
        *,
        services: Sequence[ServiceSpec] = (),
        signals: Sequence[Contract | str] = (),
        state: type[S] | None = None,
        memory: Memory | None = None,
        timeout: float | timedelta | None = None,
        run_timeout: float | timedelta | None = None,
        executionunits: float = 0,
        cache_size: int = 1024,
        lock_ttl: float = 5.0,
        clock: Callable[[], str] = now_iso,
        service_domain: DomainSpec = None,
        complete_domain: DomainSpec = IN_ORCHESTRATION,
        system_error_domain: DomainSpec = IN_ORCHESTRATION,
        error_stack: bool = False,
    ) -> None:
        self.definition: Definition[S] = Definition.build(
            contract,
            versions,
            services=services,
            signals=signals,
            state=state,
            timeout=timeout,
            run_timeout=run_timeout,
            executionunits=executionunits,
            service_domain=service_domain,
            complete_domain=complete_domain,
            system_error_domain=system_error_domain,
            error_stack=error_stack,
        )
        self._cache = LiveCache(cache_size)
        try:
            Event(
                source="com.resumable.clock",
                type="com.resumable.clock",
                subject="check",
                data={},
                time=clock(),
            )
        except EventError as error:
            raise SetupError(
                f"clock() must return an ISO 8601 UTC timestamp like {now_iso()!r}: {error}"
            ) from None
        if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, int | float) or lock_ttl <= 0:
            raise SetupError(f"lock_ttl must be a positive number of seconds, got {lock_ttl!r}")
        self.memory: Memory = memory if memory is not None else InMemoryMemory()
        self.own_memory = memory is not None
        """False while the workflow runs on the in-process memory it made for itself: a
        ``Runtime`` then gives it the runtime's (``bind``)."""
        self.cache_size = cache_size
        self.lock_ttl = lock_ttl
        self.clock = clock
        self._last_time = ("", 0.0)
        self._attributes = {SOURCE: self.definition.source}
        self._span_spec = SpanSpec(
            f"Resumable<{self.definition.uri}>",
            SPAN_KIND_RESUMABLE,
            self.definition.source,
            self.definition.uri,
            SpanKind.PRODUCER,
            by_type=True,
        )
        self._error_type = self.definition.contract.system_error_type
        self._leases = Leases(self._attributes)

    @property
    def contract(self) -> OrchestratorContract:
        return self.definition.contract

    @property
    def functions(self) -> dict[str, WorkflowFunction]:
        return self.definition.functions

    @property
    def state_type(self) -> type[S] | None:
        return self.definition.state_type

    @property
    def timeout(self) -> float | None:
        return self.definition.timeout

    @property
    def run_timeout(self) -> float | None:
        return self.definition.run_timeout

    @property
    def executionunits(self) -> float:
        return self.definition.executionunits

    @property
    def service_domain(self) -> DomainSpec:
        return self.definition.service_domain

    @property
    def complete_domain(self) -> DomainSpec:
        return self.definition.complete_domain

    @property
    def system_error_domain(self) -> DomainSpec:
        return self.definition.system_error_domain

    @property
    def source(self) -> str:
        """The topic this workflow listens on: ``arvo.orc.<name>``."""
        return self.definition.source

    def __repr__(self) -> str:
        return f"Resumable({self.contract.uri!r})"

    def bind(self, memory: Memory | None = None, clock: Callable[[], str] | None = None) -> None:
        """Run on ``memory`` and ``clock`` from now on: how a ``Runtime`` gives its own to
        the workflows it hosts. Live generators of another memory's records are dropped."""
        if memory is not None and memory is not self.memory:
            self._cache.drop()
            self.memory = memory
        if clock is not None:
            self.clock = clock

    def evict(self, subject: str | None = None) -> None:
        """Drop one live generator (or all) from the cache; the next step replays. Runs no
        workflow code."""
        self._cache.drop(subject)

    def _read_clock(self) -> tuple[str, float]:
        """The step's time, read once: ISO 8601 for events, epoch seconds for due times,
        both at the clock's millisecond precision."""
        time = self.clock()
        last = self._last_time
        if time != last[0]:
            last = self._last_time = (time, to_epoch(time))
        return last

    # ---------------------------------------------------------------------------------
    # execute

    async def execute(self, event: Event) -> list[Event]:
        """Apply one event to its workflow instance and return the events it emits."""
        metering = enabled()
        started = _time.perf_counter() if metering else 0.0
        try:
            defn = self.definition
            with execution_span(self._span_spec, event) as (span, headers):
                subject, typed = defn.admit(event)  # before anything is locked or read
                key = event.subject
                lease = await self._leases.take(self.memory, key, event.id, self.lock_ttl)
                try:
                    stored = await read_record(self.memory, key, event.id)
                    instance = None
                    if stored is not None:
                        live = self._cache.get(key, stored.revision)
                        instance = Instance(stored.revision, stored.header, live)
                        if metering:
                            count_cache(self._attributes, hit=live is not None)
                    time, now = self._read_clock()
                    journal = MemoryJournal(self.memory, key)
                    try:
                        decision = await decide(
                            defn,
                            event,
                            typed,
                            subject,
                            instance,
                            journal,
                            time=time,
                            now=now,
                            headers=headers,
                        )
                        revision = 0 if stored is None else stored.revision
                        evicted = await apply_decision(
                            self.memory,
                            self._cache,
                            key,
                            revision,
                            decision,
                            event.id,
                            self._attributes,
                        )
                    except BaseException as error:
                        self._cache.drop(key)
                        if isinstance(error, TransactionViolation):
                            self._leases.refused(lease, event.id, error, self.lock_ttl)
                        raise
                    finally:
                        if journal.replayed >= 0:
                            count_replay(self._attributes, journal.replayed)
                    if evicted:
                        instruments().cache_evictions.add(evicted, self._attributes)
                    if decision.header is not None and (metering or span.is_recording()):
                        before = None if stored is None else stored.status
                        observe_step(span, self._attributes, self._error_type, before, decision)
                    elif span.is_recording():
                        span.set_attribute("arvo.handler.execution.status", "normal")
                    return decision.emitted
                finally:
                    await self._leases.release(self.memory, lease)
        except ViolationError as error:
            count_violation(self._attributes, error)
            raise
        finally:
            if metering:
                elapsed = _time.perf_counter() - started
                instruments().step_duration.record(elapsed, self._attributes)

    async def renew_leases(self) -> int:
        """Renew the leases of this workflow's steps that have run for a third of
        ``lock_ttl`` since they took (or last renewed) their lease; returns how many.
        A ``Worker`` calls it every few seconds (its heartbeat): see ``resumable.leases``."""
        return await self._leases.renew(self.memory, self.lock_ttl)

    async def _read(self, key: str, why: str, *, journal: bool = False) -> Stored | None:
        return await read_record(self.memory, key, why, journal=journal)

    async def _write(
        self, key: str, revision: int, header: Header, append: list[tuple[str, bytes]], why: str
    ) -> int:
        return await write_record(
            self.memory, key, revision, header, append, why, attributes=self._attributes
        )

    # ---------------------------------------------------------------------------------
    # parked instances

    async def parked(self) -> list[WorkflowStatus[S]]:
        """Every parked instance of this workflow, with the step its history diverged at."""
        out: list[WorkflowStatus[S]] = []
        for key in await self._keys(PARKED):
            status = await self.status(key)
            if status is not None:
                out.append(status)
        return out

    async def unpark(self, subject: str) -> list[Event]:
        """Replay a parked instance against the current code; if it matches now, make it
        active again and apply the events that came while it was parked. Returns the events
        they emit (publish them). Raises ``NonDeterminismError`` if it still diverges."""
        lease = await self._leases.take(self.memory, subject, f"unpark {subject}", self.lock_ttl)
        try:
            stored = await self._read(subject, "unpark", journal=True)
            header = None if stored is None else decode_header(stored.header)
            if stored is None or header is None or header.status != PARKED:
                raise ValueError(f"workflow {subject!r} is not parked")
            if header.version not in self.functions:
                raise ConfigViolation(
                    f"workflow {self.contract.uri!r} has no function for version "
                    f"{header.version}, which parked instance {subject!r} runs"
                )
            header.status = ACTIVE
            try:
                live = replay(
                    self.definition, subject, header, stored.journal or [], stored.revision
                )
            except NonDeterminismError as error:
                park(header, error)
                await self._write(subject, stored.revision, header, [], "unpark")
                raise
            count_replay(self._attributes, len(stored.journal or []))
            pending, header.parked_events, header.parked = header.parked_events, [], None
            live.revision = await self._write(subject, stored.revision, header, [], "unpark")
            evicted = self._cache.put(subject, live)
            if evicted:
                instruments().cache_evictions.add(evicted, self._attributes)
        finally:
            await self._leases.release(self.memory, lease)
        produced: list[Event] = []
        for event in pending:
            produced.extend(await self.execute(event))
        return produced

    # ---------------------------------------------------------------------------------
    # timers, cancellation, signals

    async def wake(self, subject: str) -> list[Event]:
        """Fire what is due for ``subject`` (a timer, a timeout, a retry) in this process:
        returns the events it emits, or ``[]`` if nothing is due. Calling it twice is
        harmless."""
        event = await self.timer_event(subject)
        return [] if event is None else await self.execute(event)

    async def timer_event(self, subject: str) -> Event | None:
        """The timer event that fires what is due for ``subject`` now, or None if nothing
        is due. Its id is derived from the record's revision, so every worker that sees
        the same due record makes the same event. ``Worker`` publishes it to this
        workflow's topic, so the step it causes is published, then acked, like a reply."""
        stored = await self.memory.read(subject)
        if stored is None or stored.status != ACTIVE:
            return None
        header = decode_header(stored.header)
        due = header.next_due()
        now = self._read_clock()[1]
        if due is None or due > now:
            return None
        return emit.timer_event(self.definition, subject, stored.revision, now, header)

    def cancel_event(self, subject: str, reason: str = "", *, source: str | None = None) -> Event:
        """An event that cancels instance ``subject``: send it through a broker, or pass it
        to ``execute``. ``Cancelled`` is raised at the workflow's current ``yield``."""
        return emit.cancel_event(self.definition, subject, reason, source=source, time=self.clock())

    async def cancel(self, subject: str, reason: str = "") -> list[Event]:
        """Cancel instance ``subject`` now; returns the events that emits (its compensations
        or its cancelled report), for the caller to publish."""
        return await self.execute(self.cancel_event(subject, reason))

    def signal_event(
        self, subject: str, signal: Contract | str, data: Any, *, source: str
    ) -> Event:
        """A signal for running instance ``subject``, as ``wait_for(signal)`` receives it.

        ``signal`` is one of the workflow's ``signals``; ``data`` is validated against its
        contract. Send the event through a broker (``to`` is this workflow's topic)."""
        return emit.signal_event(
            self.definition, subject, signal, data, source=source, time=self.clock()
        )

    # ---------------------------------------------------------------------------------
    # queries

    async def _keys(self, status: str) -> list[str]:
        return await subjects(self.memory, self.source, status)

    async def status(self, subject: str, *, history: bool = False) -> WorkflowStatus[S] | None:
        """The stored status of one instance, read from memory only (no code runs): status,
        version, typed explicit state, what it waits for, and with ``history=True`` every
        step it took. None if there is no such instance."""
        return await read_status(self.memory, subject, history=history, state_type=self.state_type)

    async def outbox(self) -> list[Event]:
        """Every unanswered request of this workflow's active instances, read from memory:
        what a broker re-sends after a crash."""
        out: list[Event] = []
        for key in await self._keys(ACTIVE):
            out.extend(await self.pending_requests(key))
        return out

    async def pending_requests(self, subject: str) -> list[Event]:
        """Requests an active instance sent and has no reply for yet: what to re-send after
        a crash (the record is the outbox). A call waiting out a retry backoff is not
        pending: its timer re-sends it."""
        stored = await self.memory.read(subject)
        if stored is None or stored.status != ACTIVE:
            return []
        header = decode_header(stored.header)
        out: list[Event] = []
        entries: dict[str, list[Event]] = {}
        for slot in header.waiting:
            if slot.kind != "call" or slot.reply is not None or slot.due is not None:
                continue
            if slot.sent_by is None:
                continue
            if slot.sent_by not in entries:
                raw = await self.memory.entry(subject, slot.sent_by)
                entries[slot.sent_by] = [] if raw is None else decode_entry(raw).produced
            wanted = set(slot.requests)
            out.extend(e for e in entries[slot.sent_by] if e.id in wanted)
        return out
