"""``Resumable``: runs one event at a time against a workflow written as an async generator.

For each event: open a span, check the subject, take the subject's lease, read the record,
validate the event, resume the generator (from the live cache, or rebuilt by replaying
the journal), turn what it yields into events, compare-and-set the record, release the
lease, and return the events. Violations are raised with nothing persisted; any other
exception from workflow code ends the instance (after its compensations) with a system
error. An instance whose history no longer matches its code is parked, not retried.

Besides replies, an instance consumes three kinds of event of its own: a timer
(``resumable.workflow.timer``, made by ``wake`` when the record's due time has passed), a
cancellation (``resumable.cancel``) and the signals it lists.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Generic, TypeVar

import attrs
import cattrs
import msgspec
from opentelemetry.trace import SpanKind

from resumable.clock import to_epoch, to_iso
from resumable.contracts import (
    PARENT_SUBJECT_KEY,
    Contract,
    ErrorData,
    OrchestratorContract,
    ServiceSpec,
    VersionedContract,
    parse_dataschema,
)
from resumable.domains import (
    ORCHESTRATION_CONTEXT,
    DomainContext,
    DomainSpec,
    check_domain_spec,
    resolve_domains,
)
from resumable.errors import (
    Cancelled,
    ConfigViolation,
    ConflictError,
    ContractViolation,
    ExecutionViolation,
    NonDeterminismError,
    ServiceError,
    StepError,
    TransactionViolation,
    is_violation,
)
from resumable.events import Event, EventError, build_trusted, now_iso, with_data
from resumable.handler import system_error_events
from resumable.ids import derive_id, lease_owner
from resumable.memory import InMemoryMemory, Memory, Stored
from resumable.queries import WorkflowStatus, read_status
from resumable.record import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    IGNORED_LIMIT,
    PARKED,
    RETIRED,
    Entry,
    Header,
    Inline,
    Mode,
    Parked,
    RetrySpec,
    Slot,
    Undo,
    Unwind,
    decode_entry,
    decode_for_replay,
    decode_header,
    encode_entry,
    encode_header,
    wire,
)
from resumable.stepping import (
    Ended,
    Outcome,
    Raised,
    WorkflowAwaitError,
    Yielded,
    describe,
    step,
)
from resumable.subject import (
    Subject,
    SubjectError,
    parse_subject,
    parse_subject_shared,
    subject_from_parent,
)
from resumable.telemetry import SPAN_KIND_RESUMABLE, TraceHeaders, execution_span
from resumable.workflow import (
    Call,
    Complete,
    Context,
    ContinueAsNew,
    Gather,
    Race,
    Retry,
    Sleep,
    Step,
    WaitFor,
    WorkflowFunction,
)

__all__ = ["CANCEL_TYPE", "TIMER_TYPE", "Resumable", "WorkflowAwaitError", "WorkflowStatus"]

log = logging.getLogger("resumable")

S = TypeVar("S")

TIMER_TYPE: Final = "resumable.workflow.timer"
"""The type of the event that wakes an instance whose due time has passed."""
CANCEL_TYPE: Final = "resumable.workflow.cancel"
"""The type of the event that cancels an instance; its data is ``{"reason": str}``."""

_converter = cattrs.Converter()
_WAITS = (Call, Gather, Race, Sleep, WaitFor, Complete, ContinueAsNew)


@attrs.define
class _Live:
    """A suspended generator kept between steps, valid for one revision of its record."""

    gen: Any
    ctx: Context[Any]
    header: Header
    revision: int
    replies: dict[int, Event] = attrs.Factory(dict)
    """Replies already in for the current wait, by slot, decoded."""


@attrs.define
class _Run:
    """One event being applied: what it changes, collected until the record is written."""

    key: str
    event: Event
    subject: Subject
    headers: TraceHeaders
    header: Header
    revision: int
    stored: Stored
    live: _Live | None = None
    produced: list[Event] = attrs.Factory(list)
    resumed: list[str] | None = None
    how: str = ""
    inline: list[Inline] = attrs.Factory(list)
    yielded: str | None = None
    reset: list[tuple[str, bytes]] | None = None
    """For continue-as-new: the new journal, replacing the old one."""

    @property
    def seed(self) -> str:
        """What emitted ids derive from: the subject, and the generation after a restart."""
        return _seed(self.key, self.header.generation)


def _seed(key: str, generation: int) -> str:
    return key if generation == 0 else f"{key}#{generation}"


def _retry_spec(retry: Retry | None) -> RetrySpec | None:
    if retry is None:
        return None
    return RetrySpec(
        attempts=retry.attempts,
        initial=retry.initial,
        factor=retry.factor,
        max_interval=retry.max_interval,
        non_retryable=retry.non_retryable,
    )


def _ignore(header: Header, ids: Iterable[str]) -> None:
    """Remember request ids whose replies are no longer wanted, so they are dropped quietly."""
    header.ignored.extend(ids)
    if len(header.ignored) > IGNORED_LIMIT:
        del header.ignored[: len(header.ignored) - IGNORED_LIMIT]


def _abandon(header: Header, keep: int | None = None) -> None:
    """Stop waiting for every open slot but ``keep``: their late replies will be ignored."""
    for index, slot in enumerate(header.waiting):
        if index != keep and slot.reply is None:
            _ignore(header, slot.requests)


class Resumable(Generic[S]):
    """A durable workflow: ``versions`` maps each contract version to an async generator.

    ``services`` lists the contracts the workflow may call (a plain contract means its
    latest version) and ``signals`` the events it may ``wait_for`` (contracts, or bare
    types for untyped data). ``state`` is an attrs class built with no arguments for each
    new instance and persisted after every step. ``memory`` stores the records (in-process
    by default). ``timeout`` ends an instance still running that long after it started.
    ``clock`` gives event times (ISO 8601 UTC); pass a ``VirtualClock`` in tests.
    ``cache_size`` bounds the live generators kept between steps.
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
        executionunits: float = 0,
        cache_size: int = 1024,
        lock_ttl: float = 30.0,
        clock: Callable[[], str] = now_iso,
        service_domain: DomainSpec = None,
        complete_domain: DomainSpec = (ORCHESTRATION_CONTEXT,),
        system_error_domain: DomainSpec = (ORCHESTRATION_CONTEXT,),
    ) -> None:
        if not isinstance(contract, OrchestratorContract):
            raise TypeError(
                f"Resumable needs an OrchestratorContract, got {contract!r}; "
                "use EventHandler for a stateless service"
            )
        for version, fn in versions.items():
            if version not in contract.versions:
                raise ValueError(
                    f"workflow {contract.uri!r}: contract has no version {version!r}; it has "
                    f"{', '.join(contract.versions)}"
                )
            if not inspect.isasyncgenfunction(fn):
                raise TypeError(
                    f"workflow {contract.uri!r} version {version}: {fn!r} must be an async "
                    "generator function (async def with yield)"
                )
        if not versions:
            raise ValueError(f"workflow {contract.uri!r} needs at least one version function")
        if state is not None and not attrs.has(state):
            raise TypeError(f"workflow state must be an attrs class, got {state!r}")
        check_domain_spec(service_domain, "service_domain")
        check_domain_spec(complete_domain, "complete_domain")
        check_domain_spec(system_error_domain, "system_error_domain")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if isinstance(executionunits, bool) or not isinstance(executionunits, int | float):
            raise TypeError(f"executionunits must be a number, got {executionunits!r}")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if seconds is not None and (isinstance(seconds, bool) or seconds <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        try:
            Event(
                source="com.resumable.clock",
                type="com.resumable.clock",
                subject="check",
                data={},
                time=clock(),
            )
        except EventError as error:
            raise ValueError(
                f"clock() must return an ISO 8601 UTC timestamp like {now_iso()!r}: {error}"
            ) from None
        self.contract = contract
        self.functions = dict(versions)
        self.state_type = state
        self.memory: Memory = memory if memory is not None else InMemoryMemory()
        self.timeout: float | None = None if seconds is None else float(seconds)
        self.executionunits = executionunits
        self.cache_size = cache_size
        self.lock_ttl = lock_ttl
        self.clock = clock
        self.service_domain = service_domain
        self.complete_domain = complete_domain
        self.system_error_domain = system_error_domain
        self._cache: OrderedDict[str, _Live] = OrderedDict()
        self._services: dict[str, VersionedContract] = {}
        self._reply_types: dict[str, VersionedContract] = {}
        self._signals: dict[str, Contract | None] = {}
        for item in services:
            self._add_service(item)
        for signal in signals:
            self._add_signal(signal)

    def _add_service(self, item: ServiceSpec) -> None:
        if isinstance(item, VersionedContract):
            versioned = item
        elif isinstance(item, Contract):
            versioned = item.latest
        else:
            raise TypeError(f"services must be contracts, got {item!r}")
        uri = versioned.uri
        if uri == self.contract.uri:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r} lists itself as a service; a workflow cannot "
                "call itself"
            )
        if uri in self._services:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r} lists contract {uri!r} twice; list each "
                "service once, at the version to call"
            )
        self._services[uri] = versioned
        for type_ in (*versioned.emits, versioned.system_error_type):
            self._reply_types.setdefault(type_, versioned)

    def _add_signal(self, signal: Contract | str) -> None:
        if isinstance(signal, Contract):
            type_, contract = signal.type, signal
        elif isinstance(signal, str) and signal:
            type_, contract = signal, None
        else:
            raise TypeError(f"signals must be contracts or event types, got {signal!r}")
        reserved = {self.source, TIMER_TYPE, CANCEL_TYPE, *self._reply_types}
        if type_ in reserved or type_ in self._signals:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r}: signal type {type_!r} is listed twice or is "
                "already the type of its init event, a service reply, a timer or a cancellation"
            )
        self._signals[type_] = contract

    @property
    def source(self) -> str:
        """The topic this workflow listens on: ``arvo.orc.<name>``."""
        return self.contract.type

    def __repr__(self) -> str:
        return f"Resumable({self.contract.uri!r})"

    def evict(self, subject: str | None = None) -> None:
        """Drop one live generator (or all) from the cache; the next step replays. Runs no
        workflow code."""
        if subject is None:
            self._cache.clear()
        else:
            self._cache.pop(subject, None)

    def _now(self) -> float:
        return to_epoch(self.clock())

    # ---------------------------------------------------------------------------------
    # execute

    async def execute(self, event: Event) -> list[Event]:
        """Apply one event to its workflow instance and return the events it emits."""
        with execution_span(
            f"Resumable<{self.contract.uri}>@<{event.type}>",
            event,
            arvo_kind=SPAN_KIND_RESUMABLE,
            source=self.source,
            uri=self.contract.uri,
            kind=SpanKind.PRODUCER,
        ) as (span, headers):
            try:
                subject = parse_subject_shared(event.subject)
            except SubjectError as error:
                raise ExecutionViolation(
                    f"event {event.id} ({event.type}) has subject {event.subject!r}, which is "
                    f"not an orchestration subject: {error}. Start workflows with "
                    "contract.init_event(...) so the subject is made for you."
                ) from None
            if subject.name != self.source:
                log.warning(
                    "event %s is for orchestrator %s, not %s: ignored",
                    event.id,
                    subject.name,
                    self.source,
                )
                return []
            fn = self.functions.get(subject.version)
            if fn is None:
                raise ConfigViolation(
                    f"workflow {self.contract.uri!r} has no function for version "
                    f"{subject.version} (subject of event {event.id}); it runs versions "
                    f"{', '.join(self.functions)}"
                )
            typed = self._validate(event, subject)
            key = event.subject
            owner = await self._lock(key, event.id)
            try:
                events = await self._execute_locked(key, event, typed, subject, fn, headers)
                span.set_attribute("arvo.handler.execution.status", "normal")
                return events
            finally:
                await self._unlock(key, owner)

    async def _lock(self, key: str, why: str) -> str:
        owner = lease_owner()
        try:
            locked = await self.memory.lock(key, owner, self.lock_ttl)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.LOCK_FAILURE,
                f"could not lock workflow {key!r} for event {why}: {error}",
            ) from error
        if not locked:
            raise TransactionViolation(
                TransactionViolation.LOCK_UNACQUIRED,
                f"workflow {key!r} is locked by another execution; retry event {why} "
                f"later (leases expire after {self.lock_ttl}s)",
            )
        return owner

    async def _unlock(self, key: str, owner: str) -> None:
        try:
            await self.memory.unlock(key, owner)
        except Exception:  # a lease that is not released expires on its own
            log.warning("could not unlock workflow %s; its lease will expire", key, exc_info=True)

    def _kind(self, event: Event) -> str:
        if event.type == self.source:
            return "init"
        if event.type == TIMER_TYPE:
            return "timer"
        if event.type == CANCEL_TYPE:
            return "cancel"
        if event.type in self._signals:
            return "signal"
        return "reply"

    def _validate(self, event: Event, subject: Subject) -> Event:
        """Check the event against its contract; return it with its payload typed."""
        if event.type in (TIMER_TYPE, CANCEL_TYPE):
            return self._validate_own(event)
        if event.type in self._signals:
            return self._validate_signal(event)
        if event.type == self.source:
            versioned = self.contract.versions.get(subject.version)
            if versioned is None:
                raise ConfigViolation(
                    f"workflow {self.contract.uri!r} has no contract version "
                    f"{subject.version} (subject of init event {event.id})"
                )
        else:
            maybe = self._reply_types.get(event.type)
            if maybe is None:
                raise ConfigViolation(
                    f"workflow {self.contract.uri!r} received event {event.id} of type "
                    f"{event.type!r}, which matches no contract it knows: neither its init "
                    f"type {self.source!r}, a reply of its services "
                    f"({', '.join(self._services) or 'none'}), nor one of its signals "
                    f"({', '.join(self._signals) or 'none'})"
                )
            versioned = maybe
        parsed = parse_dataschema(event.dataschema)
        if parsed is None:
            raise ContractViolation(
                f"event {event.id} ({event.type}) has dataschema {event.dataschema!r}; "
                f"expected '{versioned.dataschema}'"
            )
        uri, version = parsed
        is_error = event.type == versioned.system_error_type
        if uri != versioned.uri or (
            version != versioned.version and not (is_error and version == "0.0.0")
        ):
            raise ContractViolation(
                f"event {event.id} ({event.type}) has dataschema {event.dataschema!r}, but "
                f"workflow {self.contract.uri!r} expects '{versioned.dataschema}'"
            )
        schema = versioned.schema_for(event.type)
        assert schema is not None
        if event.type == self.source:
            data = event.data
            if isinstance(data, dict) and PARENT_SUBJECT_KEY not in data:
                raise ContractViolation(
                    f"init event {event.id} has no '{PARENT_SUBJECT_KEY}' in its data; every "
                    "init payload carries it (null for a root workflow). Build init events "
                    "with contract.init_event(...)"
                )
        try:
            payload = msgspec.convert(wire(event).data, schema)
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"event {event.id} ({event.type}) payload does not match "
                f"{schema.__name__} ({versioned.dataschema}): {error}"
            ) from None
        return with_data(event, payload)

    def _validate_own(self, event: Event) -> Event:
        data = event.data
        field, kind = ("now", (int, float)) if event.type == TIMER_TYPE else ("reason", (str,))
        if not isinstance(data, dict) or not isinstance(data.get(field), kind):
            raise ContractViolation(
                f"event {event.id} ({event.type}) needs data {{{field!r}: ...}}, got {data!r}; "
                "build it with Resumable.wake(...) or Resumable.cancel_event(...)"
            )
        return event

    def _validate_signal(self, event: Event) -> Event:
        contract = self._signals[event.type]
        if contract is None:
            return event
        parsed = parse_dataschema(event.dataschema)
        versioned = (
            contract.versions.get(parsed[1]) if parsed and parsed[0] == contract.uri else None
        )
        if versioned is None:
            raise ContractViolation(
                f"signal {event.id} ({event.type}) has dataschema {event.dataschema!r}; expected "
                f"one of {', '.join(v.dataschema for v in contract.versions.values())}. Build "
                "signals with Resumable.signal_event(...)"
            )
        try:
            return with_data(event, msgspec.convert(wire(event).data, versioned.accepts))
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"signal {event.id} ({event.type}) payload does not match "
                f"{versioned.accepts.__name__}: {error}"
            ) from None

    async def _execute_locked(
        self,
        key: str,
        event: Event,
        typed: Event,
        subject: Subject,
        fn: WorkflowFunction,
        headers: TraceHeaders,
    ) -> list[Event]:
        stored = await self._read(key, event, journal=False)
        kind = self._kind(event)
        if stored is None:
            if kind != "init":
                raise ExecutionViolation(
                    f"workflow {key!r} does not exist, and event {event.id} ({event.type}) is "
                    f"not its init event ({self.source}); a workflow starts with an init event"
                )
            return await self._start(key, event, typed, subject, fn, headers)
        live: _Live | None = self._cache.get(key)
        if live is not None and live.revision == stored.revision:
            self._cache.move_to_end(key)
            header = live.header  # the cached generator is current: so is its header
        else:
            live = None
            header = decode_header(stored.header)
        if header.status == PARKED:
            return await self._while_parked(key, stored.revision, header, event)
        if header.status != ACTIVE or kind == "init":
            return await self._already_seen_or(
                key,
                event,
                header,
                f"workflow {key!r} has already started; init event {event.id} is a second "
                "init for the same subject"
                if header.status == ACTIVE
                else None,
            )
        index: int | None = None
        if kind == "reply":
            index = _find_slot(header, event)
            if index is None:
                quiet = event.parentid is not None and event.parentid in header.ignored
                return await self._already_seen_or(
                    key,
                    event,
                    header,
                    None
                    if quiet
                    else f"workflow {key!r} is not waiting for a reply to event "
                    f"{event.parentid!r} (event {event.id}, {event.type}); it waits for "
                    f"{header.waits_for or 'nothing'}",
                )
            if header.waiting[index].due is not None:
                # In a retry backoff: this may be the error reply that began it, delivered
                # again. Answer it from the journal rather than schedule the retry anew.
                raw = await self._journal_entry(key, event.id)
                if raw is not None:
                    return list(decode_entry(raw).produced)
        else:  # nothing in the header tells a redelivered timer, signal or cancel: look
            raw = await self._journal_entry(key, event.id)
            if raw is not None:
                return list(decode_entry(raw).produced)
        run = _Run(key, event, subject, headers, header, stored.revision, stored, live)
        try:
            if header.unwinding is not None:
                changed = await self._on_unwinding(run, kind, index, typed)
            elif kind == "reply":
                assert index is not None
                changed = await self._on_reply(run, index, typed, fn)
            elif kind == "timer":
                changed = await self._on_timer(run, fn)
            elif kind == "cancel":
                changed = await self._on_cancel(run, fn)
            else:
                changed = await self._on_signal(run, typed, fn)
            if changed:
                await self._commit(run)
        except NonDeterminismError as error:
            self._cache.pop(key, None)
            return await self._park(key, stored, event, error)
        except BaseException:
            self._cache.pop(key, None)
            raise
        return run.produced

    async def _already_seen_or(
        self, key: str, event: Event, header: Header, violation: str | None
    ) -> list[Event]:
        """A redelivered event gets the events it produced; anything else is rejected."""
        raw = await self._journal_entry(key, event.id)
        if raw is not None:
            return list(decode_entry(raw).produced)
        if violation is None:
            log.info("workflow %s is %s: event %s ignored", key, header.status, event.id)
            return []
        raise ExecutionViolation(violation)

    async def _journal_entry(self, key: str, event_id: str) -> bytes | None:
        try:
            return await self.memory.entry(key, event_id)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"could not read the journal of workflow {key!r} for event {event_id}: {error}",
            ) from error

    async def _read(self, key: str, event: Event, *, journal: bool) -> Stored | None:
        try:
            return await self.memory.read(key, journal=journal)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"could not read workflow {key!r} for event {event.id}: {error}",
            ) from error

    async def _write(
        self,
        key: str,
        revision: int,
        header: Header,
        append: list[tuple[str, bytes]],
        why: str,
        *,
        reset: bool = False,
    ) -> int:
        try:
            return await self.memory.write(
                key,
                revision=revision,
                status=header.status,
                header=encode_header(header),
                append=append,
                due=header.next_due(),
                reset=reset,
            )
        except ConflictError as error:
            raise TransactionViolation(
                TransactionViolation.WRITE_FAILURE,
                f"workflow {key!r} was changed by another writer while event {why} was "
                f"applied ({error}); the event was not applied, retry it",
            ) from error
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.WRITE_FAILURE,
                f"could not write workflow {key!r} for event {why}: {error}",
            ) from error

    async def _commit(self, run: _Run) -> None:
        """Write what the run changed: the header, and one journal entry for its event."""
        header = run.header
        header.seq += 1
        entry = Entry(
            event=wire(run.event),
            produced=run.produced,
            resumed=run.resumed,
            how=run.how,
            inline=run.inline,
            yielded=run.yielded,
        )
        if run.reset is not None:
            append = [*run.reset, (run.event.id, encode_entry(entry))]
        else:
            append = [(run.event.id, encode_entry(entry))]
        revision = await self._write(
            run.key, run.revision, header, append, run.event.id, reset=run.reset is not None
        )
        live = run.live
        if live is not None and header.status == ACTIVE and header.unwinding is None:
            live.revision = revision
            self._remember(run.key, live)
        else:
            self._cache.pop(run.key, None)

    async def _ensure_live(self, run: _Run, fn: WorkflowFunction) -> _Live:
        """The suspended generator: the cached one, or rebuilt by replaying the journal."""
        if run.live is None:
            run.live = await self._rebuild(run.key, run.stored, fn)
            run.header = run.live.header
        return run.live

    # ---------------------------------------------------------------------------------
    # what each kind of event does

    async def _start(
        self,
        key: str,
        event: Event,
        typed: Event,
        subject: Subject,
        fn: WorkflowFunction,
        headers: TraceHeaders,
    ) -> list[Event]:
        parent = event.data.get(PARENT_SUBJECT_KEY) if isinstance(event.data, dict) else None
        if parent is not None:
            try:
                parse_subject(parent)
            except SubjectError as error:
                raise ExecutionViolation(
                    f"init event {event.id} has an invalid '{PARENT_SUBJECT_KEY}': {error}"
                ) from None
        ctx = self._new_context(key, subject.version, 0)
        ctx._enter_step(0, event.time)
        header = Header(
            status=ACTIVE,
            version=subject.version,
            seq=0,
            init_event_id=event.id,
            parent_subject=parent,
            state=None,
            workflow_deadline=None if self.timeout is None else self._now() + self.timeout,
        )
        live = _Live(fn(ctx, typed.data), ctx, header, 0)
        run = _Run(key, event, subject, headers, header, 0, Stored(0, ACTIVE, b""), live)
        run.resumed, run.how = [], "start"
        try:
            await self._advance(run, fn, None, None)
            await self._commit(run)
        except BaseException:
            self._cache.pop(key, None)
            raise
        return run.produced

    async def _on_reply(self, run: _Run, index: int, typed: Event, fn: WorkflowFunction) -> bool:
        header = run.header
        slot = header.waiting[index]
        if slot.retry is not None and self._retries(slot, typed):
            return True
        live = await self._ensure_live(run, fn)
        header = run.header
        slot = header.waiting[index]
        slot.reply = run.event.id
        live.replies[index] = typed
        if header.mode == "gather":
            if any(s.reply is None for s in header.waiting):
                return True  # stored; the generator resumes when all are in
            replies = [live.replies[i] for i in range(len(header.waiting))]
            self._push_undo(header, range(len(replies)), replies)
            await self._resume(run, fn, "gather", replies)
        elif header.mode == "race":
            _abandon(header, keep=index)
            if slot.undo is not None:
                self._push_undo(header, [index], [typed])
            await self._resume(run, fn, f"race:{index}", [typed])
        else:
            if slot.undo is not None:
                self._push_undo(header, [index], [typed])
            await self._resume(run, fn, "call", [typed])
        return True

    def _retries(self, slot: Slot, reply: Event) -> bool:
        """If ``reply`` is a system error and the slot's retry policy allows another attempt,
        schedule it (a durable timer) and say so."""
        retry = slot.retry
        if retry is None or slot.attempt >= retry.attempts or not self._is_error(reply):
            return False
        if reply.data.errorName in retry.non_retryable:
            return False
        delay = retry.delay(slot.attempt)
        slot.due = self._now() + delay
        log.info("retrying %s in %.3gs (attempt %d)", slot.service, delay, slot.attempt + 1)
        return True

    def _push_undo(self, header: Header, indexes: Iterable[int], replies: list[Event]) -> None:
        """Push the compensations of the calls that succeeded, in call order."""
        for index, reply in zip(indexes, replies, strict=True):
            undo = header.waiting[index].undo
            if undo is not None and not self._is_error(reply):
                header.undo.append(undo)

    async def _on_timer(self, run: _Run, fn: WorkflowFunction) -> bool:
        header = run.header
        now = float(run.event.data["now"])
        if header.workflow_deadline is not None and header.workflow_deadline <= now:
            _abandon(header)
            run.yielded = "timeout"
            self._cache.pop(run.key, None)
            run.live = None
            error = ErrorData(
                "TimeoutError",
                f"workflow {self.contract.uri!r} ran past its timeout of {self.timeout}s",
            )
            self._start_unwind(run, "failed", error)
            return True
        timers = sorted(
            (slot.due, index)
            for index, slot in enumerate(header.waiting)
            if slot.kind == "timer" and slot.reply is None and slot.due is not None
            if slot.due <= now
        )
        deadline = header.deadline
        if deadline is not None and deadline <= now and (not timers or deadline < timers[0][0]):
            await self._ensure_live(run, fn)
            _abandon(run.header)
            await self._resume(run, fn, "timeout", [run.event])
            return True
        if timers:
            await self._ensure_live(run, fn)
            index = timers[0][1]
            run.header.waiting[index].reply = run.event.id
            if run.header.mode == "race":
                _abandon(run.header, keep=index)
                await self._resume(run, fn, f"race:{index}", [run.event])
            else:
                await self._resume(run, fn, "sleep", [run.event])
            return True
        return await self._resend_due(run, now)

    async def _resend_due(self, run: _Run, now: float) -> bool:
        """Send again the calls whose retry backoff has passed."""
        sent = False
        for index, slot in enumerate(run.header.waiting):
            due = slot.due
            if slot.kind == "call" and slot.reply is None and due is not None and due <= now:
                await self._resend(run, index)
                sent = True
        return sent

    async def _resend(self, run: _Run, index: int) -> None:
        header = run.header
        slot = header.waiting[index]
        assert slot.sent_by is not None
        raw = await self._journal_entry(run.key, slot.sent_by)
        if raw is None:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"workflow {run.key!r}: the journal entry {slot.sent_by} holding the request to "
                f"retry ({slot.service}) is missing; the record is damaged",
            )
        old = [e for e in decode_entry(raw).produced if e.id in slot.requests]
        slot.attempt += 1
        _ignore(header, slot.requests)
        time = self.clock()

        def again(e: Event) -> Event:
            return msgspec.structs.replace(
                e,
                id=derive_id(run.seed, header.seq, index, e.domain, "attempt", slot.attempt),
                time=time,
                parentid=run.event.id,
            )

        new = [build_trusted(functools.partial(again, e)) for e in old]
        slot.requests = [e.id for e in new]
        slot.sent_by = run.event.id
        slot.due = None
        run.produced.extend(new)

    async def _on_cancel(self, run: _Run, fn: WorkflowFunction) -> bool:
        if run.header.cancelling:
            return True  # journaled, so a redelivery is known; nothing more to do
        await self._ensure_live(run, fn)
        run.header.cancelling = True
        _abandon(run.header)
        await self._resume(run, fn, "cancel", [run.event])
        return True

    async def _on_signal(self, run: _Run, typed: Event, fn: WorkflowFunction) -> bool:
        for index, slot in enumerate(run.header.waiting):
            if slot.kind == "signal" and slot.reply is None and slot.service == typed.type:
                await self._ensure_live(run, fn)
                run.header.waiting[index].reply = run.event.id
                if run.header.mode == "race":
                    _abandon(run.header, keep=index)
                    await self._resume(run, fn, f"race:{index}", [typed])
                else:
                    await self._resume(run, fn, "signal", [typed])
                return True
        run.header.inbox.append((typed.type, run.event.id))  # kept until it is waited for
        return True

    async def _on_unwinding(self, run: _Run, kind: str, index: int | None, typed: Event) -> bool:
        """While compensations run, only their replies (and retry timers) matter."""
        header = run.header
        unwind = header.unwinding
        assert unwind is not None
        if kind == "reply":
            assert index is not None
            slot = header.waiting[index]
            if self._retries(slot, typed):
                return True
            if self._is_error(typed):
                unwind.failures.append(typed.data)
            slot.reply = run.event.id
            self._next_undo(run)
            return True
        if kind == "timer":
            return await self._resend_due(run, float(run.event.data["now"]))
        return True  # a signal or cancellation during compensation: journaled, ignored

    # ---------------------------------------------------------------------------------
    # running the generator

    async def _resume(
        self,
        run: _Run,
        fn: WorkflowFunction,
        how: str,
        events: list[Event],
    ) -> None:
        """Send what woke the workflow into its generator and run it to its next wait."""
        live = await self._ensure_live(run, fn)
        value, error = self._wake_value(how, events, run.header.waits_for)
        run.resumed = [e.id for e in events]
        run.how = how
        live.ctx._enter_step(run.header.seq, run.event.time)
        await self._advance(run, fn, value, error)

    def _wake_value(
        self, how: str, events: list[Event], waits_for: str | None
    ) -> tuple[Any, BaseException | None]:
        """What a wake-up sends into the generator: a value, or an error to raise at the
        ``yield``. The same for a live step and for replay."""
        if how == "call":
            return events[0], self._service_error(events[0])
        if how == "gather":
            first = next((e for e in events if self._is_error(e)), None)
            return events, None if first is None else ServiceError(first)
        if how.startswith("race:"):
            winner = events[0]
            if winner.type == TIMER_TYPE:
                return (int(how[5:]), None), None
            return (int(how[5:]), winner), self._service_error(winner)
        if how == "timeout":
            return None, TimeoutError(f"timed out waiting for {waits_for}")
        if how == "cancel":
            return None, Cancelled(str(events[0].data.get("reason", "")))
        if how == "signal":
            return events[0], None
        return None, None  # sleep, start

    def _is_error(self, reply: Event) -> bool:
        versioned = self._reply_types.get(reply.type)
        return versioned is not None and reply.type == versioned.system_error_type

    def _service_error(self, reply: Event) -> ServiceError | None:
        return ServiceError(reply) if self._is_error(reply) else None

    async def _advance(
        self, run: _Run, fn: WorkflowFunction, value: Any, error: BaseException | None
    ) -> None:
        """Run the generator to its next wait and turn what it yields into events."""
        live = run.live
        assert live is not None
        header = run.header
        outcome = await self._run_inline(run, live, step(live.gen, value, error))
        run.yielded = describe(outcome)
        if isinstance(outcome, Raised):
            await self._ended_by(run, outcome.error)
            return
        if isinstance(outcome, Ended):
            await self._ended_by(
                run,
                RuntimeError(
                    f"workflow {self.contract.uri!r} finished without yielding complete(...); "
                    "end it with 'yield complete(result)'"
                ),
            )
            return
        request = outcome.value
        if isinstance(request, Complete):
            produced = self._completion(request, run)
            after = step(live.gen, None)
            if not isinstance(after, Ended):
                await self._ended_by(
                    run,
                    after.error
                    if isinstance(after, Raised)
                    else RuntimeError(
                        f"workflow {self.contract.uri!r} yielded {describe(after)} after "
                        "complete(...); complete must be the last thing a workflow yields"
                    ),
                )
                return
            run.produced.extend(produced)
            header.status = DONE
            header.result = produced[-1].data if produced else None
            self._clear_wait(header)
            header.undo = []
        elif isinstance(request, ContinueAsNew):
            await self._continue_as_new(run, fn, request)
            return
        else:
            self._wait(run, request)
        header.state = self._unstructure_state(live.ctx.state)
        header.patches = dict(live.ctx._patches)

    async def _run_inline(self, run: _Run, live: _Live, outcome: Outcome) -> Outcome:
        """Answer at once what needs no event (local steps, kept signals, empty gathers),
        journaling each answer, until the workflow yields something to wait for."""
        while isinstance(outcome, Yielded):
            request = outcome.value
            if isinstance(request, Call | Complete):  # the common case: a wait, not inline
                return outcome
            record = Inline(yielded=describe(outcome))
            value: Any = None
            error: BaseException | None = None
            if isinstance(request, Gather) and not request.calls:
                value = []
            elif isinstance(request, Step):
                value, record.value, record.error = await self._run_step(request)
                if record.error is not None:
                    error = StepError(record.error.errorName, record.error.errorMessage)
            elif isinstance(request, WaitFor | Race) and (kept := self._kept(run.header, request)):
                index, event_id = kept
                signal = await self._kept_signal(run, event_id)
                record.event = event_id
                if isinstance(request, Race):
                    record.value = index
                    value = (index, signal)
                else:
                    value = signal
            elif not isinstance(request, _WAITS):
                message = (
                    f"workflow yielded {request!r}; yield call(...), gather(...), race(...), "
                    "sleep(...), wait_for(...), step(...), continue_as_new(...) or complete(...)"
                )
                record.error = ErrorData("TypeError", message)
                error = TypeError(message)
            else:
                return outcome
            run.inline.append(record)
            outcome = step(live.gen, value, error)
        return outcome

    async def _run_step(self, request: Step) -> tuple[Any, Any, ErrorData | None]:
        """Run a local step once: (value for the workflow, value to journal, error)."""
        try:
            result = request.fn(*request.args, **request.kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            return None, None, ErrorData(type(error).__name__, str(error))
        try:
            plain = msgspec.msgpack.decode(msgspec.msgpack.encode(result))
            value = self._step_value(request, plain)
        except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as error:
            return (
                None,
                None,
                ErrorData(
                    "TypeError",
                    f"step {request.name} returned {type(result).__name__}, which cannot be "
                    f"journaled or converted ({error}); return plain data or a msgspec Struct",
                ),
            )
        return value, plain, None

    @staticmethod
    def _step_value(request: Step, plain: Any) -> Any:
        return plain if request.result_type is None else msgspec.convert(plain, request.result_type)

    def _kept(self, header: Header, request: WaitFor | Race) -> tuple[int, str] | None:
        """The first kept signal this wait (or one arm of this race) takes, removed."""
        arms = request.arms if isinstance(request, Race) else (request,)
        for position, (type_, event_id) in enumerate(header.inbox):
            for index, arm in enumerate(arms):
                if isinstance(arm, WaitFor) and arm.type == type_:
                    del header.inbox[position]
                    return index, event_id
        return None

    async def _kept_signal(self, run: _Run, event_id: str) -> Event:
        raw = await self._journal_entry(run.key, event_id)
        if raw is None:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"workflow {run.key!r}: kept signal {event_id} is not in its journal",
            )
        return self._typed(decode_entry(raw).event)

    def _wait(self, run: _Run, request: Any) -> None:
        """Set up what the workflow now waits for, and build the requests it sends."""
        header = run.header
        assert run.live is not None
        arms: tuple[Any, ...]
        mode: Mode
        if isinstance(request, Gather):
            arms, mode, timeout = request.calls, "gather", request.timeout
        elif isinstance(request, Race):
            arms, mode, timeout = request.arms, "race", None
        else:
            arms, mode = (request,), "call"
            timeout = None if isinstance(request, Sleep) else request.timeout
        now: float | None = None  # read from the clock only when a timer needs it
        header.waiting = []
        for index, arm in enumerate(arms):
            if isinstance(arm, Call):
                slot, requests = self._request(arm, index, run)
                slot.sent_by = run.event.id
                slot.retry = _retry_spec(arm.retry)
                slot.undo = None if arm.compensate is None else self._undo(arm.compensate)
                run.produced.extend(requests)
            elif isinstance(arm, Sleep):
                now = self._now() if now is None else now
                due = arm.until.timestamp() if arm.until is not None else now + (arm.seconds or 0)
                slot = Slot(kind="timer", due=due)
            else:
                if arm.type not in self._signals:
                    raise ConfigViolation(
                        f"workflow {self.contract.uri!r} waits for signal {arm.type!r}, which "
                        "is not in its signals; add it to Resumable(..., signals=[...])"
                    )
                slot = Slot(kind="signal", service=arm.type)
            header.waiting.append(slot)
        header.mode = mode
        if timeout is None:
            header.deadline = None
        else:
            header.deadline = (self._now() if now is None else now) + timeout
        header.waits_for = run.yielded
        run.live.replies = {}

    def _undo(self, call: Call) -> Undo:
        versioned, data = self._payload(call, ": the compensation payload")
        return Undo(service=versioned.uri, data=data, retry=_retry_spec(call.retry))

    @staticmethod
    def _clear_wait(header: Header) -> None:
        header.waiting = []
        header.mode = "none"
        header.deadline = None
        header.waits_for = None

    async def _ended_by(self, run: _Run, error: BaseException) -> None:
        """The generator raised: unwind (compensate, then report), or re-raise a violation."""
        if is_violation(error):
            raise error
        live = run.live
        assert live is not None
        run.header.state = self._unstructure_state(live.ctx.state)
        run.header.patches = dict(live.ctx._patches)
        run.live = None
        self._cache.pop(run.key, None)
        reason = "cancelled" if isinstance(error, Cancelled) else "failed"
        log.info("workflow %s ended at step %d: %r", run.key, run.header.seq, error)
        self._start_unwind(run, reason, ErrorData.of(error))

    def _start_unwind(self, run: _Run, reason: str, error: ErrorData) -> None:
        header = run.header
        self._clear_wait(header)
        header.unwinding = Unwind(
            reason="cancelled" if reason == "cancelled" else "failed", error=error
        )
        self._next_undo(run)

    def _next_undo(self, run: _Run) -> None:
        """Send the next compensation, last pushed first; or report the end."""
        header = run.header
        if not header.undo:
            self._finish_unwind(run)
            return
        undo = header.undo.pop()
        versioned = self._services.get(undo.service)
        if versioned is None:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r} must compensate with {undo.service!r}, which "
                "is no longer in its services; add it back to Resumable(..., services=[...])"
            )
        slot, requests = self._request(Call(versioned, undo.data), 0, run)
        slot.sent_by = run.event.id
        slot.retry = undo.retry
        header.waiting = [slot]
        header.mode = "call"
        header.deadline = None
        header.waits_for = f"compensate {versioned.type}"
        run.produced.extend(requests)

    def _finish_unwind(self, run: _Run) -> None:
        header = run.header
        unwind = header.unwinding
        assert unwind is not None
        error = unwind.error
        if unwind.failures:
            failed = "; ".join(f"{f.errorName}: {f.errorMessage}" for f in unwind.failures)
            error = ErrorData(
                error.errorName,
                f"{error.errorMessage} (and {len(unwind.failures)} compensation(s) failed: "
                f"{failed})",
                error.errorStack,
            )
        context = self._domains(run.event, header)
        run.produced.extend(
            system_error_events(
                error=error,
                source=self.source,
                contract=self.contract,
                subject=header.parent_subject or run.key,
                to=run.subject.initiator or run.event.source,
                parentid=header.init_event_id or run.event.id,
                event=run.event,
                executionunits=self.executionunits,
                headers=run.headers,
                domains=resolve_domains(self.system_error_domain, context),
                id_seed=derive_id(run.seed, header.seq),
                time=self.clock(),
            )
        )
        header.status = CANCELLED if unwind.reason == "cancelled" else FAILED
        header.error = error
        header.unwinding = None
        self._clear_wait(header)

    async def _retired(self, run: _Run, old: Header) -> list[tuple[str, bytes]]:
        """The events the ending generation consumed, as payload-free journal entries for
        the next one, so a late redelivery of one is dropped quietly rather than taken for
        a new event (a signal kept twice, a reply nobody awaits). Only one generation back:
        the journal stays as bounded as ``continue_as_new`` promises."""
        stored = await self._read(run.key, run.event, journal=True)
        journal = stored.journal if stored is not None and stored.journal else []
        inbox = {event_id for _, event_id in old.inbox}  # carried over whole, as before
        out: list[tuple[str, bytes]] = []
        for entry in decode_for_replay(journal):
            event = entry.event
            if entry.how == RETIRED or event.id in inbox:
                continue
            stub = msgspec.structs.replace(event, data={}, dataschema=None)
            out.append((event.id, encode_entry(Entry(event=stub, produced=[], how=RETIRED))))
        return out

    async def _continue_as_new(
        self, run: _Run, fn: WorkflowFunction, request: ContinueAsNew
    ) -> None:
        """Start the next generation: new input, fresh state, a new journal, same subject."""
        old = run.header
        if run.how == "start" and old.generation > 0:
            raise ContractViolation(
                f"workflow {self.contract.uri!r} yielded continue_as_new(...) as the first "
                "thing of a new generation; that would loop forever"
            )
        versioned = self.contract.versions[old.version]
        try:
            _, data = versioned.validate_accepts(request.data)
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"workflow {self.contract.uri!r}: continue_as_new data does not match "
                f"{versioned.accepts.__name__}: {error}"
            ) from None
        generation = old.generation + 1
        init = Event(
            id=derive_id(run.key, "generation", generation),
            source=self.source,
            type=self.source,
            subject=run.key,
            data={**data, PARENT_SUBJECT_KEY: old.parent_subject},
            dataschema=versioned.dataschema,
            time=run.event.time,
            to=self.source,
            parentid=run.event.id,
            redirectto=run.event.redirectto,
        )
        kept: list[tuple[str, bytes]] = []
        for _, event_id in old.inbox:
            raw = await self._journal_entry(run.key, event_id)
            if raw is not None:
                kept.append(
                    (event_id, encode_entry(Entry(event=decode_entry(raw).event, produced=[])))
                )
        retired = await self._retired(run, old)
        _abandon(old)
        header = Header(
            status=ACTIVE,
            version=old.version,
            seq=0,
            init_event_id=old.init_event_id,  # the parent's request: completions answer it
            parent_subject=old.parent_subject,
            state=None,
            workflow_deadline=old.workflow_deadline,
            inbox=list(old.inbox),
            ignored=list(old.ignored),
            generation=generation,
        )
        ctx = self._new_context(run.key, old.version, generation)
        ctx._enter_step(0, init.time)
        typed = msgspec.convert(init.data, versioned.accepts)
        live = _Live(fn(ctx, typed), ctx, header, run.revision)
        first = _Run(
            run.key, init, run.subject, run.headers, header, run.revision, run.stored, live
        )
        first.resumed, first.how = [], "start"
        await self._advance(first, fn, None, None)
        header.seq = 1 + len(kept) + len(retired)
        entry = Entry(
            event=wire(init),
            produced=first.produced,
            resumed=[],
            how="start",
            inline=first.inline,
            yielded=first.yielded,
        )
        run.reset = [(init.id, encode_entry(entry)), *kept, *retired]
        run.header = header
        run.live = first.live
        run.produced.extend(first.produced)
        run.resumed, run.how, run.inline = None, "", []
        run.yielded = "continue_as_new"

    # ---------------------------------------------------------------------------------
    # building events

    def _domains(
        self, event: Event, header: Header, service: VersionedContract | None = None
    ) -> DomainContext:
        """What symbolic domains resolve against for events emitted while handling ``event``:
        a request to ``service``, or (without one) the workflow's own events."""
        return DomainContext(
            triggering_domain=event.domain,
            current_subject=event.subject,
            parent_subject=header.parent_subject,
            self_contract_domain=self.contract.domain,
            event_contract_domain=(self.contract if service is None else service).domain,
        )

    def _service(self, call: Call) -> VersionedContract:
        versioned = self._services.get(call.service.uri)
        if versioned is None:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r} calls {call.service.uri!r}, which is not in "
                f"its services; add it to Resumable(..., services=[...])"
            )
        if isinstance(call.service, VersionedContract) and call.service != versioned:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r} calls {call.service.uri!r} at version "
                f"{call.service.version}, but lists it at version {versioned.version}"
            )
        return versioned

    def _payload(self, call: Call, what: str) -> tuple[VersionedContract, dict[str, Any]]:
        """The service a call goes to, and its payload validated as plain data."""
        versioned = self._service(call)
        try:
            _, data = versioned.validate_accepts(call.data)
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"workflow {self.contract.uri!r}{what} for {versioned.type} does not match "
                f"{versioned.accepts.__name__}: {error}"
            ) from None
        return versioned, data

    def _request(self, call: Call, index: int, run: _Run) -> tuple[Slot, list[Event]]:
        """The request events of one call (one per domain), and the slot for its reply."""
        event, header, seq, headers = run.event, run.header, run.header.seq, run.headers
        versioned, data = self._payload(call, f" step {seq}: the payload")
        key = run.key
        context = self._domains(event, header, versioned)
        domain_spec = call.domain if call.domain is not None else self.service_domain
        redirectto = call.redirectto or self.source
        overrides = bool(call.to or call.redirectto or call.accesscontrol or call.extensions) or (
            call.executionunits is not None
        )
        requests: list[Event] = []
        for domain in resolve_domains(domain_spec, context):
            request_subject = key
            request_data = data
            if versioned.is_orchestrator:
                request_data = {**data, PARENT_SUBJECT_KEY: key}
                request_subject = subject_from_parent(
                    orchestrator=versioned.type,
                    version=versioned.version,
                    parent=key,
                    domain=domain,
                    meta={"redirectto": redirectto},
                    execution_id=derive_id(run.seed, seq, index, "child"),
                )

            def build(
                request_subject: str = request_subject,
                request_data: dict[str, Any] = request_data,
                domain: str | None = domain,
            ) -> Event:
                return Event(
                    id=derive_id(run.seed, seq, index, domain),
                    source=self.source,
                    type=versioned.type,
                    subject=request_subject,
                    data=request_data,
                    dataschema=versioned.dataschema,
                    time=self.clock(),
                    to=call.to or versioned.type,
                    accesscontrol=call.accesscontrol or event.accesscontrol,
                    redirectto=redirectto,
                    executionunits=(
                        call.executionunits
                        if call.executionunits is not None
                        else self.executionunits
                    ),
                    parentid=event.id,
                    domain=domain,
                    traceparent=headers[0],
                    tracestate=headers[1],
                    extensions=dict(call.extensions),
                )

            try:
                # Every field comes from validated parts, unless the call overrides one.
                requests.append(build() if overrides else build_trusted(build))
            except EventError as error:
                raise ContractViolation(
                    f"workflow {self.contract.uri!r} step {seq}: could not build the request "
                    f"to {versioned.type}: {error}"
                ) from None
        return Slot(service=versioned.uri, requests=[r.id for r in requests]), requests

    def _completion(self, done: Complete, run: _Run) -> list[Event]:
        event, subject, header, seq, headers = (
            run.event,
            run.subject,
            run.header,
            run.header.seq,
            run.headers,
        )
        versioned = self.contract.versions[header.version]
        complete_type = self.contract.complete_type
        try:
            _, data = versioned.validate_emit(complete_type, done.data)
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"workflow {self.contract.uri!r}: the completion payload does not match "
                f"{versioned.emits[complete_type].__name__}: {error}"
            ) from None
        key = run.key
        context = self._domains(event, header)
        domain_spec = done.domain if done.domain is not None else self.complete_domain
        return [
            Event(
                id=derive_id(run.seed, seq, "complete", domain),
                source=self.source,
                type=complete_type,
                subject=header.parent_subject or key,
                data=data,
                dataschema=versioned.dataschema,
                time=self.clock(),
                to=subject.meta.get("redirectto") or subject.initiator,
                accesscontrol=event.accesscontrol,
                redirectto=self.source,
                executionunits=(
                    done.executionunits if done.executionunits is not None else self.executionunits
                ),
                parentid=header.init_event_id,
                domain=domain,
                traceparent=headers[0],
                tracestate=headers[1],
            )
            for domain in resolve_domains(domain_spec, context)
        ]

    # ---------------------------------------------------------------------------------
    # cache and replay

    def _remember(self, key: str, live: _Live) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = live
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _new_context(self, key: str, version: str, generation: int) -> Context[Any]:
        state = self.state_type() if self.state_type is not None else None
        ctx: Context[Any] = Context(state=state, subject=key, version=version)
        ctx._seed = _seed(key, generation)
        return ctx

    def _unstructure_state(self, state: Any) -> Any:
        return None if state is None else _converter.unstructure(state)

    def _typed(self, event: Event) -> Event:
        """A journaled event with its payload decoded as the workflow received it."""
        if event.type in self._reply_types:
            schema = self._reply_types[event.type].schema_for(event.type)
            assert schema is not None
            return with_data(event, msgspec.convert(event.data, schema))
        if event.type in self._signals:
            return self._validate_signal(event)
        return event

    async def _rebuild(self, key: str, stored: Stored, fn: WorkflowFunction) -> _Live:
        """The suspended generator for a record whose live one is not cached: replayed."""
        self._cache.pop(key, None)
        full = await self.memory.read(key, journal=True)
        if full is None or full.journal is None or full.revision != stored.revision:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"workflow {key!r} changed while it was being read; retry the event",
            )
        return self._replay(key, full, decode_header(full.header), fn)

    def _replay(self, key: str, stored: Stored, header: Header, fn: WorkflowFunction) -> _Live:
        """Rebuild the suspended generator by feeding it its journal, checking every step."""
        assert stored.journal is not None
        entries = decode_for_replay(stored.journal)
        received = {entry.event.id: entry.event for entry in entries}
        ctx = self._new_context(key, header.version, header.generation)
        ctx.is_replaying = True
        ctx._recorded_patches = dict(header.patches)
        init = entries[0].event
        versioned = self.contract.versions[header.version]
        ctx._enter_step(0, init.time)
        gen = fn(ctx, msgspec.convert(init.data, versioned.accepts))
        waits_for: str | None = None
        for seq, entry in enumerate(entries):
            if seq == 0:
                outcome = step(gen)
            elif entry.resumed is None:
                continue
            else:
                events = [self._typed(received[i]) for i in entry.resumed]
                value, error = self._wake_value(entry.how, events, waits_for)
                ctx._enter_step(seq, entry.event.time)
                outcome = step(gen, value, error)
            for record in entry.inline:
                now = describe(outcome)
                if now != record.yielded:
                    raise self._diverged(key, seq, record.yielded, now)
                assert isinstance(outcome, Yielded)
                outcome = step(gen, *self._replayed_inline(outcome.value, record, received))
            now = describe(outcome)
            if now != entry.yielded and not (entry.yielded == "timeout" and entry.resumed is None):
                raise self._diverged(key, seq, entry.yielded, now)
            waits_for = now
        rebuilt = msgspec.msgpack.decode(msgspec.msgpack.encode(self._unstructure_state(ctx.state)))
        if rebuilt != header.state:
            raise NonDeterminismError(
                f"workflow {key!r}: replaying its history gives explicit state {rebuilt!r}, "
                f"but {header.state!r} was stored. State must change only in workflow code "
                "between yields, the same way on every run",
                subject=key,
                recorded=repr(header.state),
                replayed=repr(rebuilt),
            )
        ctx.is_replaying = False
        partial = {  # replies already in for the current wait (a gather part-way through)
            index: self._typed(received[slot.reply])
            for index, slot in enumerate(header.waiting)
            if slot.reply is not None and slot.reply in received
        }
        return _Live(gen, ctx, header, stored.revision, partial)

    def _replayed_inline(
        self, request: Any, record: Inline, received: dict[str, Event]
    ) -> tuple[Any, BaseException | None]:
        """What a journaled inline answer sends into the generator on replay."""
        if record.error is not None:
            if isinstance(request, Step):
                return None, StepError(record.error.errorName, record.error.errorMessage)
            return None, TypeError(record.error.errorMessage)
        if record.event is not None:
            signal = self._typed(received[record.event])
            return ((record.value, signal) if isinstance(request, Race) else signal), None
        if isinstance(request, Step):
            return self._step_value(request, record.value), None
        return [], None  # an empty gather

    @staticmethod
    def _diverged(key: str, seq: int, recorded: str | None, now: str) -> NonDeterminismError:
        return NonDeterminismError(
            f"workflow {key!r} no longer matches its history: step {seq} was "
            f"`{recorded}`, now `{now}`. The code changed under a running instance; deploy "
            "the change as a new contract version, or guard it with ctx.patched(...)",
            subject=key,
            step=seq,
            recorded=recorded,
            replayed=now,
        )

    # ---------------------------------------------------------------------------------
    # parked instances

    async def _park(
        self, key: str, stored: Stored, event: Event, error: NonDeterminismError
    ) -> list[Event]:
        """Stop an instance whose history no longer matches its code, keeping the event."""
        header = decode_header(stored.header)
        header.status = PARKED
        header.parked = Parked(
            message=str(error), step=error.step, recorded=error.recorded, replayed=error.replayed
        )
        header.parked_events = [wire(event)]
        await self._write(key, stored.revision, header, [], event.id)
        log.error("workflow %s parked: %s", key, error)
        return []

    async def _while_parked(
        self, key: str, revision: int, header: Header, event: Event
    ) -> list[Event]:
        if any(e.id == event.id for e in header.parked_events):
            return []
        header.parked_events.append(wire(event))
        await self._write(key, revision, header, [], event.id)
        return []

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
        owner = await self._lock(subject, f"unpark {subject}")
        try:
            stored = await self.memory.read(subject, journal=True)
            header = None if stored is None else decode_header(stored.header)
            if stored is None or header is None or header.status != PARKED:
                raise ValueError(f"workflow {subject!r} is not parked")
            fn = self.functions.get(header.version)
            if fn is None:
                raise ConfigViolation(
                    f"workflow {self.contract.uri!r} has no function for version "
                    f"{header.version}, which parked instance {subject!r} runs"
                )
            header.status = ACTIVE
            try:
                live = self._replay(subject, stored, header, fn)
            except NonDeterminismError as error:
                header.status = PARKED
                header.parked = Parked(
                    message=str(error),
                    step=error.step,
                    recorded=error.recorded,
                    replayed=error.replayed,
                )
                await self._write(subject, stored.revision, header, [], "unpark")
                raise
            pending, header.parked_events, header.parked = header.parked_events, [], None
            live.revision = await self._write(subject, stored.revision, header, [], "unpark")
            self._remember(subject, live)
        finally:
            await self._unlock(subject, owner)
        produced: list[Event] = []
        for event in pending:
            produced.extend(await self.execute(event))
        return produced

    # ---------------------------------------------------------------------------------
    # timers, cancellation, signals

    async def wake(self, subject: str) -> list[Event]:
        """Fire what is due for ``subject`` (a timer, a timeout, a retry) in this process:
        returns the events it emits, or ``[]`` if nothing is due. ``LocalBroker`` calls this
        for the keys ``memory.due(now)`` lists; calling it twice is harmless."""
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
        due = decode_header(stored.header).next_due()
        now = self._now()
        if due is None or due > now:
            return None
        return Event(
            id=derive_id(subject, "timer", stored.revision),
            source=self.source,
            type=TIMER_TYPE,
            subject=subject,
            data={"now": now},
            time=to_iso(now),
            to=self.source,
        )

    def cancel_event(self, subject: str, reason: str = "", *, source: str | None = None) -> Event:
        """An event that cancels instance ``subject``: send it through a broker, or pass it
        to ``execute``. ``Cancelled`` is raised at the workflow's current ``yield``."""
        return Event(
            id=str(uuid.uuid4()),
            source=source or self.source,
            type=CANCEL_TYPE,
            subject=subject,
            data={"reason": reason},
            time=self.clock(),
            to=self.source,
        )

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
        type_ = signal.type if isinstance(signal, Contract) else signal
        if type_ not in self._signals:
            raise ConfigViolation(
                f"workflow {self.contract.uri!r} has no signal {type_!r}; it lists "
                f"{', '.join(self._signals) or 'none'}"
            )
        contract = self._signals[type_]
        if contract is None:
            return Event(
                source=source,
                type=type_,
                subject=subject,
                data=data,
                to=self.source,
                time=self.clock(),
            )
        return contract.event(
            data, source=source, subject=subject, to=self.source, time=self.clock()
        )

    # ---------------------------------------------------------------------------------
    # queries

    async def _keys(self, status: str) -> list[str]:
        out = []
        for key in await self.memory.keys(status=status):
            try:
                if parse_subject(key).name == self.source:
                    out.append(key)
            except SubjectError:
                continue
        return out

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


def _find_slot(header: Header, event: Event) -> int | None:
    if event.parentid is None:
        return None
    for index, slot in enumerate(header.waiting):
        if slot.kind == "call" and slot.reply is None and event.parentid in slot.requests:
            return index
    return None
