"""Every event a workflow emits: requests, completions, system errors, re-sent attempts,
cancellations of its children, its own timers, signals and cancellations.

Ids derive from the instance's seed, the step and the position, so a step applied again
(after a crash, on another process) emits byte-identical events; times are the step's.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

import msgspec

from resumable.clock import to_iso
from resumable.contracts import PARENT_SUBJECT_KEY, Contract, ErrorData, VersionedContract
from resumable.domains import DomainContext, resolve_domains
from resumable.engine.definition import CANCEL_TYPE, TIMER_TYPE, Definition
from resumable.engine.turn import Turn
from resumable.errors import ConfigViolation, ContractViolation
from resumable.events import Event, EventError, build_trusted
from resumable.handler import system_error_events
from resumable.ids import derive_id
from resumable.record import Header, Slot
from resumable.subject import parse_subject_shared, subject_from_parent
from resumable.telemetry import trace_extensions
from resumable.workflow import Call, Complete

__all__ = [
    "attempts",
    "cancel_children",
    "cancel_event",
    "completion",
    "generation_init",
    "requests",
    "signal_event",
    "system_error",
    "timer_event",
]


_LOCAL: list[str | None] = [None]


def _domains(
    defn: Definition[Any], event: Event, header: Header, service: VersionedContract | None = None
) -> DomainContext:
    """What symbolic domains resolve against for events emitted while handling ``event``:
    a request to ``service``, or (without one) the workflow's own events."""
    return DomainContext(
        triggering_domain=event.domain,
        current_subject=event.subject,
        parent_subject=header.parent_subject,
        self_contract_domain=defn.contract.domain,
        event_contract_domain=(defn.contract if service is None else service).domain,
    )


def requests(defn: Definition[Any], call: Call, index: int, turn: Turn) -> tuple[Slot, list[Event]]:
    """The request events of one call (one per domain), and the slot for its reply."""
    event, header, seq, headers = turn.event, turn.header, turn.header.seq, turn.headers
    versioned, data = defn.payload(call, lambda: f" step {seq}: the payload")
    key, seed, time = turn.key, turn.seed, turn.time
    domain_spec = call.domain if call.domain is not None else defn.service_domain
    domains = (  # the common case, a local request, needs no resolving
        _LOCAL
        if domain_spec is None
        else resolve_domains(domain_spec, _domains(defn, event, header, versioned))
    )
    redirectto = call.redirectto or defn.source
    overrides = bool(call.to or call.redirectto or call.accesscontrol or call.extensions) or (
        call.executionunits is not None
    )
    executionunits = (
        call.executionunits if call.executionunits is not None else (defn.executionunits)
    )
    out: list[Event] = []
    children: list[str] = []
    for domain in domains:
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
                execution_id=derive_id(seed, seq, index, "child"),
            )
            if call.on_parent_close == "cancel":
                children.append(request_subject)

        def build(
            request_subject: str = request_subject,
            request_data: dict[str, Any] = request_data,
            domain: str | None = domain,
        ) -> Event:
            return Event(
                id=derive_id(seed, seq, index, domain),
                source=defn.source,
                type=versioned.type,
                subject=request_subject,
                data=request_data,
                dataschema=versioned.dataschema,
                time=time,
                to=call.to or versioned.type,
                accesscontrol=call.accesscontrol or event.accesscontrol,
                redirectto=redirectto,
                executionunits=executionunits,
                parentid=event.id,
                domain=domain,
                traceparent=headers[0],
                tracestate=headers[1],
                extensions=trace_extensions(headers, dict(call.extensions)),
            )

        try:
            # Every field comes from validated parts, unless the call overrides one.
            out.append(build() if overrides else build_trusted(build))
        except EventError as error:
            raise ContractViolation(
                f"workflow {defn.uri!r} step {seq}: could not build the request "
                f"to {versioned.type}: {error}"
            ) from None
    slot = Slot(
        service=versioned.uri, requests=[r.id for r in out], sent_by=event.id, children=children
    )
    return slot, out


def completion(defn: Definition[Any], done: Complete, turn: Turn) -> list[Event]:
    """The completion events (one per domain) reporting ``done`` to the initiator."""
    event, header, headers = turn.event, turn.header, turn.headers
    versioned = defn.contract.versions[header.version]
    complete_type = defn.contract.complete_type
    try:
        _, data = versioned.validate_emit(complete_type, done.data)
    except msgspec.ValidationError as error:
        raise ContractViolation(
            f"workflow {defn.uri!r}: the completion payload does not match "
            f"{versioned.emits[complete_type].__name__}: {error}"
        ) from None
    seed, seq = turn.seed, header.seq
    domain_spec = done.domain if done.domain is not None else defn.complete_domain
    return [
        Event(
            id=derive_id(seed, seq, "complete", domain),
            source=defn.source,
            type=complete_type,
            subject=header.parent_subject or turn.key,
            data=data,
            dataschema=versioned.dataschema,
            time=turn.time,
            to=turn.subject.meta.get("redirectto") or turn.subject.initiator,
            accesscontrol=event.accesscontrol,
            redirectto=defn.source,
            executionunits=(
                done.executionunits if done.executionunits is not None else defn.executionunits
            ),
            parentid=header.init_event_id,
            domain=domain,
            traceparent=headers[0],
            tracestate=headers[1],
            extensions=trace_extensions(headers),
        )
        for domain in resolve_domains(domain_spec, _domains(defn, event, header))
    ]


def system_error(defn: Definition[Any], error: ErrorData, turn: Turn) -> list[Event]:
    """The ``sys.<type>.error`` events reporting how the instance ended."""
    header = turn.header
    return system_error_events(
        error=error,
        source=defn.source,
        contract=defn.contract,
        subject=header.parent_subject or turn.key,
        to=turn.subject.initiator or turn.event.source,
        parentid=header.init_event_id or turn.event.id,
        event=turn.event,
        executionunits=defn.executionunits,
        headers=turn.headers,
        domains=resolve_domains(defn.system_error_domain, _domains(defn, turn.event, header)),
        id_seed=derive_id(turn.seed, header.seq),
        time=turn.time,
    )


def attempts(old: list[Event], turn: Turn, index: int, attempt: int) -> list[Event]:
    """The requests of a failed call sent again: new ids, the step's time and trigger."""

    def again(e: Event) -> Event:
        return msgspec.structs.replace(
            e,
            id=derive_id(turn.seed, turn.header.seq, index, e.domain, "attempt", attempt),
            time=turn.time,
            parentid=turn.event.id,
        )

    return [build_trusted(functools.partial(again, e)) for e in old]


def cancel_children(defn: Definition[Any], subjects: list[str], turn: Turn) -> list[Event]:
    """Cancellations of the child workflows the instance no longer waits for."""
    reason = f"its parent workflow {defn.uri!r} ({turn.key}) no longer waits for it"
    seed, seq, headers = turn.seed, turn.header.seq, turn.headers

    def cancel(subject: str) -> Event:
        return Event(
            id=derive_id(seed, seq, "cancel", subject),
            source=defn.source,
            type=CANCEL_TYPE,
            subject=subject,
            data={"reason": reason},
            time=turn.time,
            to=parse_subject_shared(subject).name,
            parentid=turn.event.id,
            traceparent=headers[0],
            tracestate=headers[1],
            extensions=trace_extensions(headers),
        )

    return [build_trusted(functools.partial(cancel, subject)) for subject in subjects]


def generation_init(
    defn: Definition[Any], turn: Turn, data: Any, generation: int
) -> tuple[Event, Any]:
    """The init event of the next generation (``continue_as_new``) and its typed payload."""
    old = turn.header
    versioned = defn.contract.versions[old.version]
    try:
        _, plain = versioned.validate_accepts(data)
    except msgspec.ValidationError as error:
        raise ContractViolation(
            f"workflow {defn.uri!r}: continue_as_new data does not match "
            f"{versioned.accepts.__name__}: {error}"
        ) from None
    init = Event(
        id=derive_id(turn.key, "generation", generation),
        source=defn.source,
        type=defn.source,
        subject=turn.key,
        data={**plain, PARENT_SUBJECT_KEY: old.parent_subject},
        dataschema=versioned.dataschema,
        time=turn.event.time,
        to=defn.source,
        parentid=turn.event.id,
        redirectto=turn.event.redirectto,
    )
    return init, msgspec.convert(init.data, versioned.accepts)


def timer_event(
    defn: Definition[Any], subject: str, revision: int, now: float, header: Header
) -> Event:
    """The timer event firing what is due for ``subject`` at ``now``; every process that
    sees the same due record makes the same one (its id derives from the revision), in
    the trace of the step that set the timer."""
    return Event(
        id=derive_id(subject, "timer", revision),
        source=defn.source,
        type=TIMER_TYPE,
        subject=subject,
        data={"now": now},
        time=to_iso(now),
        to=defn.source,
        traceparent=header.traceparent,
        tracestate=header.tracestate,
        extensions=trace_extensions((None, None, header.baggage)),
    )


def cancel_event(
    defn: Definition[Any], subject: str, reason: str, *, source: str | None, time: str
) -> Event:
    """An event that cancels instance ``subject``."""
    return Event(
        id=str(uuid.uuid4()),
        source=source or defn.source,
        type=CANCEL_TYPE,
        subject=subject,
        data={"reason": reason},
        time=time,
        to=defn.source,
    )


def signal_event(
    defn: Definition[Any],
    subject: str,
    signal: Contract | str,
    data: Any,
    *,
    source: str,
    time: str,
) -> Event:
    """A signal for running instance ``subject``, validated against its contract."""
    type_ = signal.type if isinstance(signal, Contract) else signal
    if type_ not in defn.signals:
        raise ConfigViolation(
            f"workflow {defn.uri!r} has no signal {type_!r}; it lists "
            f"{', '.join(defn.signals) or 'none'}"
        )
    contract = defn.signals[type_]
    if contract is None:
        return Event(
            source=source, type=type_, subject=subject, data=data, to=defn.source, time=time
        )
    return contract.event(data, source=source, subject=subject, to=defn.source, time=time)
