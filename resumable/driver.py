"""``Resumable``: runs one event at a time against a workflow written as an async generator.

For each event: open a span, check the subject, take the subject's lease, read the record,
validate the event, resume the generator (from the live cache, or rebuilt by replaying
the journal), turn what it yields into events, compare-and-set the record, release the
lease, and return the events. Violations are raised with nothing persisted; any other
exception from workflow code fails the instance and reports a system error.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

import attrs
import cattrs
import msgspec
from opentelemetry.trace import SpanKind

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
    ConfigViolation,
    ConflictError,
    ContractViolation,
    ExecutionViolation,
    NonDeterminismError,
    ServiceError,
    TransactionViolation,
    is_violation,
)
from resumable.events import Event, EventError, build_trusted, now_iso, with_data
from resumable.handler import system_error_events
from resumable.ids import derive_id, lease_owner
from resumable.memory import InMemoryMemory, Memory, Stored
from resumable.record import (
    ACTIVE,
    DONE,
    FAILED,
    Entry,
    Header,
    Slot,
    decode_entry,
    decode_for_replay,
    decode_header,
    encode_entry,
    encode_header,
    wire,
)
from resumable.subject import (
    Subject,
    SubjectError,
    parse_subject,
    parse_subject_shared,
    subject_from_parent,
)
from resumable.telemetry import SPAN_KIND_RESUMABLE, TraceHeaders, execution_span
from resumable.workflow import Call, Complete, Context, Gather, WorkflowFunction

__all__ = ["Resumable", "WorkflowAwaitError", "WorkflowStatus"]

log = logging.getLogger("resumable")

S = TypeVar("S")

_converter = cattrs.Converter()


class WorkflowAwaitError(RuntimeError):
    """Raised inside a workflow at an ``await`` that waits on the event loop (I/O, sleep).

    A workflow's code runs between events and is replayed after a restart, so it must not
    wait on anything itself: ask a service with ``yield call(...)``, fan out with
    ``yield gather(...)``. Awaiting a coroutine that finishes without suspending is fine.
    """


@attrs.frozen
class WorkflowStatus(Generic[S]):
    """A workflow instance as stored: read from memory only, no code runs."""

    subject: str
    status: str
    version: str
    steps: int
    state: S
    waits_for: str | None
    result: Any
    error: ErrorData | None


@attrs.define
class _Live:
    """A suspended generator kept between steps, valid for one revision of its record."""

    gen: AsyncGenerator[Any, Any]
    ctx: Context[Any]
    header: Header
    revision: int
    replies: dict[int, Event] = attrs.Factory(dict)
    """Replies already in for the current wait, by slot, decoded."""


# Outcomes of stepping a generator once.
@attrs.frozen
class _Yielded:
    value: Any


@attrs.frozen
class _Ended:
    pass


@attrs.frozen
class _Raised:
    error: BaseException


_Outcome = _Yielded | _Ended | _Raised


def _ignore_firstiter(agen: Any) -> None:
    return None


def _drop_finalizer(agen: Any) -> None:
    """Installed as the finalizer of every workflow generator: eviction runs no user code."""
    return None


def _describe(outcome: _Outcome) -> str:
    if isinstance(outcome, _Yielded):
        value = outcome.value
        describe = getattr(value, "describe", None)
        return describe() if callable(describe) else f"yield {type(value).__name__}"
    if isinstance(outcome, _Ended):
        return "end"
    return f"raise {type(outcome.error).__name__}"


def _step(
    gen: AsyncGenerator[Any, Any], value: Any = None, error: BaseException | None = None
) -> _Outcome:
    """Advance the generator to its next ``yield`` by hand, without an event loop.

    An ``await`` that suspends (it yielded to the loop) gets a ``WorkflowAwaitError``
    thrown in at that point, naming the line.
    """
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=_ignore_firstiter, finalizer=_drop_finalizer)
    try:
        awaitable = gen.athrow(error) if error is not None else gen.asend(value)
        throw: BaseException | None = None
        while True:
            try:
                pending = awaitable.throw(throw) if throw is not None else awaitable.send(None)
            except StopIteration as stop:
                return _Yielded(stop.value)
            except StopAsyncIteration:
                return _Ended()
            except BaseException as raised:
                return _Raised(raised)
            cancel = getattr(pending, "cancel", None)
            if callable(cancel):
                cancel()
            agen = cast(types.AsyncGeneratorType[Any, Any], gen)
            frame = agen.ag_frame
            where = f"line {frame.f_lineno} of {frame.f_code.co_filename}" if frame else "?"
            throw = WorkflowAwaitError(
                f"workflow {agen.ag_code.co_name!r} awaited something that waits on the event "
                f"loop at {where}. Workflow code is replayed and must not wait itself: use "
                "'yield call(...)' to ask a service and 'yield gather(...)' to run several "
                "at once; asyncio.sleep, asyncio.gather and I/O are not allowed here."
            )
    finally:
        sys.set_asyncgen_hooks(*hooks)


def _to_next_wait(
    gen: AsyncGenerator[Any, Any], value: Any = None, error: BaseException | None = None
) -> _Outcome:
    """Step until the workflow yields a request to wait on, ends, or raises.

    An empty ``gather`` is answered at once with ``[]``; a yield that is not a request gets
    a ``TypeError`` thrown in where it stands. Live steps and replay both go through here,
    so a replay repeats exactly what the live run did.
    """
    outcome = _step(gen, value, error)
    while isinstance(outcome, _Yielded):
        request = outcome.value
        if isinstance(request, Gather) and not request.calls:
            outcome = _step(gen, [])
        elif not isinstance(request, Call | Gather | Complete):
            outcome = _step(
                gen,
                None,
                TypeError(
                    f"workflow yielded {request!r}; yield call(...), gather(...) or complete(...)"
                ),
            )
        else:
            break
    return outcome


class Resumable(Generic[S]):
    """A durable workflow: ``versions`` maps each contract version to an async generator.

    ``services`` lists the contracts the workflow may call (a plain contract means its
    latest version). ``state`` is an attrs class built with no arguments for each new
    instance and persisted after every step. ``memory`` stores the records (in-process by
    default). ``cache_size`` bounds the live generators kept between steps.
    """

    def __init__(
        self,
        contract: OrchestratorContract,
        versions: Mapping[str, WorkflowFunction],
        *,
        services: Sequence[ServiceSpec] = (),
        state: type[S] | None = None,
        memory: Memory | None = None,
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
        for item in services:
            self._add_service(item)

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
            owner = lease_owner()
            key = event.subject
            try:
                locked = await self.memory.lock(key, owner, self.lock_ttl)
            except Exception as error:
                raise TransactionViolation(
                    TransactionViolation.LOCK_FAILURE,
                    f"could not lock workflow {key!r} for event {event.id}: {error}",
                ) from error
            if not locked:
                raise TransactionViolation(
                    TransactionViolation.LOCK_UNACQUIRED,
                    f"workflow {key!r} is locked by another execution; retry event {event.id} "
                    f"later (leases expire after {self.lock_ttl}s)",
                )
            try:
                events = await self._execute_locked(key, event, typed, subject, fn, headers)
                span.set_attribute("arvo.handler.execution.status", "normal")
                return events
            finally:
                try:
                    await self.memory.unlock(key, owner)
                except Exception:  # a lease that is not released expires on its own
                    log.warning(
                        "could not unlock workflow %s; its lease will expire", key, exc_info=True
                    )

    def _validate(self, event: Event, subject: Subject) -> Event:
        """Check the event against its contract; return it with its payload typed."""
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
                    f"type {self.source!r} nor a reply of its services "
                    f"({', '.join(self._services) or 'none'})"
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
        if stored is None:
            if event.type != self.source:
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
        if header.status != ACTIVE or event.type == self.source:
            return await self._already_seen_or(
                key,
                event,
                header,
                f"workflow {key!r} has already started; init event {event.id} is a second "
                "init for the same subject"
                if header.status == ACTIVE
                else None,
            )
        slot_index = _find_slot(header, event)
        if slot_index is None:
            return await self._already_seen_or(
                key,
                event,
                header,
                f"workflow {key!r} is not waiting for a reply to event {event.parentid!r} "
                f"(event {event.id}, {event.type}); it waits for "
                f"{header.waits_for or 'nothing'}",
            )
        if live is None:
            live = await self._rebuild(key, stored, fn)
        try:
            return await self._resume(key, live, event, typed, slot_index, subject, headers)
        except BaseException:
            self._cache.pop(key, None)
            raise

    async def _already_seen_or(
        self, key: str, event: Event, header: Header, violation: str | None
    ) -> list[Event]:
        """A redelivered event gets the events it produced; anything else is rejected."""
        try:
            raw = await self.memory.entry(key, event.id)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"could not read the journal of workflow {key!r} for event {event.id}: {error}",
            ) from error
        if raw is not None:
            return list(decode_entry(raw).produced)
        if violation is None:
            log.warning("workflow %s is %s: event %s ignored", key, header.status, event.id)
            return []
        raise ExecutionViolation(violation)

    async def _read(self, key: str, event: Event, *, journal: bool) -> Stored | None:
        try:
            return await self.memory.read(key, journal=journal)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"could not read workflow {key!r} for event {event.id}: {error}",
            ) from error

    async def _write(
        self, key: str, revision: int, header: Header, entry: Entry, event: Event
    ) -> int:
        try:
            return await self.memory.write(
                key,
                revision=revision,
                status=header.status,
                header=encode_header(header),
                append=[(event.id, encode_entry(entry))],
            )
        except ConflictError as error:
            raise TransactionViolation(
                TransactionViolation.WRITE_FAILURE,
                f"workflow {key!r} was changed by another writer while event {event.id} was "
                f"applied ({error}); the event was not applied, retry it",
            ) from error
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.WRITE_FAILURE,
                f"could not write workflow {key!r} for event {event.id}: {error}",
            ) from error

    # ---------------------------------------------------------------------------------
    # steps

    def _new_context(self, subject: str, version: str) -> Context[Any]:
        state = self.state_type() if self.state_type is not None else None
        return Context(state=state, subject=subject, version=version)

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
        ctx = self._new_context(key, subject.version)
        ctx._enter_step(0, event.time)
        gen = fn(ctx, typed.data)
        header = Header(
            status=ACTIVE,
            version=subject.version,
            seq=0,
            init_event_id=event.id,
            parent_subject=parent,
            state=None,
        )
        live = _Live(gen, ctx, header, 0)
        try:
            return await self._advance(key, live, event, subject, headers, [], None, None)
        except BaseException:
            self._cache.pop(key, None)
            raise

    async def _resume(
        self,
        key: str,
        live: _Live,
        event: Event,
        typed: Event,
        slot_index: int,
        subject: Subject,
        headers: TraceHeaders,
    ) -> list[Event]:
        header = live.header
        header.waiting[slot_index].reply = event.id
        live.replies[slot_index] = typed
        if any(slot.reply is None for slot in header.waiting):
            header.seq += 1
            entry = Entry(event=wire(event), produced=[], resumed=None, yielded=None)
            live.revision = await self._write(key, live.revision, header, entry, event)
            self._remember(key, live)
            return []
        replies = [live.replies[index] for index in range(len(header.waiting))]
        value, error = self._reply_value(replies, header.gather)
        live.ctx._enter_step(header.seq, event.time)
        return await self._advance(
            key, live, event, subject, headers, [r.id for r in replies], value, error
        )

    def _reply_value(self, replies: list[Event], is_gather: bool) -> tuple[Any, Any]:
        """What to send into the generator: the reply (a list for a gather), and the
        ``ServiceError`` for the first system-error reply in call order, if any."""
        first_error: ServiceError | None = None
        for reply in replies:
            if reply.type == self._reply_types[reply.type].system_error_type:
                first_error = ServiceError(reply)
                break
        return (replies if is_gather else replies[0]), first_error

    def _typed_reply(self, reply: Event) -> Event:
        """A stored reply with its payload decoded into its contract's Struct."""
        schema = self._reply_types[reply.type].schema_for(reply.type)
        assert schema is not None
        return with_data(reply, msgspec.convert(reply.data, schema))

    async def _advance(
        self,
        key: str,
        live: _Live,
        event: Event,
        subject: Subject,
        headers: TraceHeaders,
        resumed: list[str],
        value: Any,
        error: BaseException | None,
    ) -> list[Event]:
        """Run the generator to its next wait, build the events, persist, return them."""
        header = live.header
        seq = header.seq
        produced: list[Event] = []
        outcome = _to_next_wait(live.gen, value, error)
        yielded = _describe(outcome)
        failure: BaseException | None = None
        if isinstance(outcome, _Raised):
            failure = outcome.error
        elif isinstance(outcome, _Ended):
            failure = RuntimeError(
                f"workflow {self.contract.uri!r} finished without yielding complete(...); "
                "end it with 'yield complete(result)'"
            )
        elif isinstance(outcome.value, Complete):
            produced = self._completion(outcome.value, event, subject, header, seq, headers)
            after = _step(live.gen, None)
            if isinstance(after, _Ended):
                header.status = DONE
                header.result = produced[-1].data if produced else None
                header.waiting = []
                header.waits_for = None
            else:
                produced = []
                failure = (
                    after.error
                    if isinstance(after, _Raised)
                    else RuntimeError(
                        f"workflow {self.contract.uri!r} yielded {_describe(after)} after "
                        "complete(...); complete must be the last thing a workflow yields"
                    )
                )
        else:
            request = outcome.value
            calls = request.calls if isinstance(request, Gather) else (request,)
            header.waiting = []
            for index, item in enumerate(calls):
                slot, requests = self._request(item, index, event, subject, header, seq, headers)
                header.waiting.append(slot)
                produced.extend(requests)
            header.sent_by = event.id
            header.gather = isinstance(request, Gather)
            header.waits_for = yielded
            live.replies = {}
        if failure is not None:
            if is_violation(failure):
                raise failure
            return await self._fail(key, live, event, failure, subject, headers, resumed)
        header.state = self._unstructure_state(live.ctx.state)
        header.seq = seq + 1
        entry = Entry(event=wire(event), produced=produced, resumed=resumed, yielded=yielded)
        live.revision = await self._write(key, live.revision, header, entry, event)
        if header.status == ACTIVE:
            self._remember(key, live)
        else:
            self._cache.pop(key, None)
        return produced

    async def _fail(
        self,
        key: str,
        live: _Live,
        event: Event,
        error: BaseException,
        subject: Subject,
        headers: TraceHeaders,
        resumed: list[str],
    ) -> list[Event]:
        header = live.header
        context = self._domains(event, header)
        produced = system_error_events(
            error=error,
            source=self.source,
            contract=self.contract,
            subject=header.parent_subject or key,
            to=subject.initiator or event.source,
            parentid=header.init_event_id or event.id,
            event=event,
            executionunits=self.executionunits,
            headers=headers,
            domains=resolve_domains(self.system_error_domain, context),
            id_seed=derive_id(key, header.seq),
        )
        log.info("workflow %s failed at step %d: %r", key, header.seq, error)
        header.status = FAILED
        header.error = ErrorData.of(error)
        header.waiting = []
        header.waits_for = None
        header.state = self._unstructure_state(live.ctx.state)
        header.seq += 1
        entry = Entry(
            event=wire(event),
            produced=produced,
            resumed=resumed,
            yielded=f"raise {type(error).__name__}",
        )
        await self._write(key, live.revision, header, entry, event)
        self._cache.pop(key, None)
        return produced

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

    def _request(
        self,
        call: Call,
        index: int,
        event: Event,
        subject: Subject,
        header: Header,
        seq: int,
        headers: TraceHeaders,
    ) -> tuple[Slot, list[Event]]:
        versioned = self._service(call)
        try:
            _, data = versioned.validate_accepts(call.data)
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"workflow {self.contract.uri!r} step {seq}: the payload for "
                f"{versioned.type} does not match {versioned.accepts.__name__}: {error}"
            ) from None
        key = event.subject
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
                    execution_id=derive_id(key, seq, index, "child"),
                )

            def build(
                request_subject: str = request_subject,
                request_data: dict[str, Any] = request_data,
                domain: str | None = domain,
            ) -> Event:
                return Event(
                    id=derive_id(key, seq, index, domain),
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

    def _completion(
        self,
        done: Complete,
        event: Event,
        subject: Subject,
        header: Header,
        seq: int,
        headers: TraceHeaders,
    ) -> list[Event]:
        versioned = self.contract.versions[header.version]
        complete_type = self.contract.complete_type
        try:
            _, data = versioned.validate_emit(complete_type, done.data)
        except msgspec.ValidationError as error:
            raise ContractViolation(
                f"workflow {self.contract.uri!r}: the completion payload does not match "
                f"{versioned.emits[complete_type].__name__}: {error}"
            ) from None
        key = event.subject
        context = self._domains(event, header)
        domain_spec = done.domain if done.domain is not None else self.complete_domain
        return [
            Event(
                id=derive_id(key, seq, "complete", domain),
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

    def _unstructure_state(self, state: Any) -> Any:
        return None if state is None else _converter.unstructure(state)

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
        ctx = self._new_context(key, header.version)
        ctx.is_replaying = True
        init = entries[0].event
        versioned = self.contract.versions[header.version]
        init_data = msgspec.convert(init.data, versioned.accepts)
        ctx._enter_step(0, init.time)
        gen = fn(ctx, init_data)
        received: dict[str, Event] = {}
        waiting_gather = False
        for seq, entry in enumerate(entries):
            if seq == 0:
                outcome = _to_next_wait(gen)
            else:
                received[entry.event.id] = entry.event
                if entry.resumed is None:
                    continue
                replies = [self._typed_reply(received.pop(i)) for i in entry.resumed]
                value, error = self._reply_value(replies, waiting_gather)
                ctx._enter_step(seq, entry.event.time)
                outcome = _to_next_wait(gen, value, error)
            waiting_gather = isinstance(outcome, _Yielded) and isinstance(outcome.value, Gather)
            now = _describe(outcome)
            if now != entry.yielded:
                raise NonDeterminismError(
                    f"workflow {key!r} no longer matches its history: step {seq} was "
                    f"`{entry.yielded}`, now `{now}`. The code changed under a running "
                    "instance; deploy the change as a new contract version instead",
                    subject=key,
                    step=seq,
                    recorded=entry.yielded,
                    replayed=now,
                )
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
            index: self._typed_reply(received[slot.reply])
            for index, slot in enumerate(header.waiting)
            if slot.reply is not None
        }
        return _Live(gen, ctx, header, stored.revision, partial)

    # ---------------------------------------------------------------------------------
    # queries

    async def status(self, subject: str) -> WorkflowStatus[S] | None:
        """The stored status of one instance (from memory only), or None if unknown."""
        stored = await self.memory.read(subject)
        if stored is None:
            return None
        header = decode_header(stored.header)
        state: Any = header.state
        if self.state_type is not None and state is not None:
            state = _converter.structure(state, self.state_type)
        return WorkflowStatus(
            subject=subject,
            status=header.status,
            version=header.version,
            steps=header.seq,
            state=state,
            waits_for=header.waits_for,
            result=header.result,
            error=header.error,
        )

    async def outbox(self) -> list[Event]:
        """Every unanswered request of this workflow's active instances, read from memory:
        what a broker re-sends after a crash."""
        out: list[Event] = []
        for key in await self.memory.keys(status=ACTIVE):
            try:
                if parse_subject(key).name != self.source:
                    continue
            except SubjectError:
                continue
            out.extend(await self.pending_requests(key))
        return out

    async def pending_requests(self, subject: str) -> list[Event]:
        """Requests an active instance sent and has no reply for yet: what to re-send after
        a crash (the record is the outbox)."""
        stored = await self.memory.read(subject)
        if stored is None or stored.status != ACTIVE:
            return []
        header = decode_header(stored.header)
        missing = {r for slot in header.waiting if slot.reply is None for r in slot.requests}
        if not missing or header.sent_by is None:
            return []
        raw = await self.memory.entry(subject, header.sent_by)
        if raw is None:
            return []
        return [e for e in decode_entry(raw).produced if e.id in missing]


def _find_slot(header: Header, event: Event) -> int | None:
    if event.parentid is None:
        return None
    for index, slot in enumerate(header.waiting):
        if slot.reply is None and event.parentid in slot.requests:
            return index
    return None
