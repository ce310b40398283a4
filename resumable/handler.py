"""Stateless services: one async function per contract version, events in, events out."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import msgspec
from opentelemetry.trace import SpanKind, Status, StatusCode

from resumable.contracts import Contract, ErrorData, VersionedContract, parse_dataschema
from resumable.domains import (
    IN_ORCHESTRATION,
    DomainContext,
    DomainSpec,
    check_domain_spec,
    resolve_domains,
)
from resumable.errors import (
    ConfigViolation,
    ContractViolation,
    ExecutionViolation,
    SetupError,
    UnknownVersionError,
    is_violation,
)
from resumable.events import Event, build_trusted, now_iso, with_data
from resumable.ids import derive_id
from resumable.metrics import SOURCE, instruments
from resumable.telemetry import (
    SPAN_KIND_HANDLER,
    SpanSpec,
    TraceHeaders,
    execution_span,
    trace_extensions,
)
from resumable.types import HandlerFunction, HandlerResult

__all__ = ["Emit", "EventHandler", "HandlerFunction", "HandlerResult", "system_error_events"]


@attrs.frozen
class Emit:
    """An event a handler emits: its type and payload, plus optional routing overrides.

    ``to`` defaults to the consumed event's ``redirectto``, else its ``source``. ``domain``
    is one domain item or a list (one event per distinct domain); by default the reply
    travels in the orchestration's domain (usually local).
    """

    type: str
    data: Any
    to: str | None = attrs.field(default=None, kw_only=True)
    id: str | None = attrs.field(default=None, kw_only=True)
    accesscontrol: str | None = attrs.field(default=None, kw_only=True)
    redirectto: str | None = attrs.field(default=None, kw_only=True)
    executionunits: float | None = attrs.field(default=None, kw_only=True)
    domain: DomainSpec = attrs.field(
        default=IN_ORCHESTRATION,
        kw_only=True,
        validator=lambda _, __, value: check_domain_spec(value, "Emit(domain=...)"),
    )
    extensions: Mapping[str, str | int | float | bool | None] = attrs.field(
        factory=dict, kw_only=True
    )


def resolve_version(contract: Contract, event: Event, *, owner: str) -> VersionedContract:
    """The contract version an event is written against, from its dataschema (Arvo's rules)."""
    parsed = parse_dataschema(event.dataschema)
    if event.dataschema and parsed is None:
        raise ContractViolation(
            f"{owner}: event {event.id} has dataschema {event.dataschema!r}, which is not "
            f"'{{uri}}/{{version}}'; expected e.g. '{contract.uri}/{contract.latest.version}'"
        )
    if parsed is None:
        return contract.latest
    uri, version = parsed
    if uri != contract.uri:
        raise ContractViolation(
            f"{owner}: event {event.id} dataschema {event.dataschema!r} names contract "
            f"{uri!r}, but this handler serves {contract.uri!r}"
        )
    if version not in contract.versions:
        raise UnknownVersionError(
            f"{owner}: event {event.id} asks for contract version {version}, which is not "
            f"served; available versions: {', '.join(contract.versions)}",
            version,
            list(contract.versions),
        )
    return contract.versions[version]


def system_error_events(
    *,
    error: BaseException | ErrorData,
    source: str,
    contract: Contract,
    subject: str,
    to: str,
    parentid: str,
    event: Event,
    executionunits: float,
    headers: TraceHeaders,
    domains: list[str | None],
    id_seed: str,
    time: str | None = None,
) -> list[Event]:
    """The ``sys.<type>.error`` events reporting ``error`` (one per domain)."""
    data = msgspec.to_builtins(error if isinstance(error, ErrorData) else ErrorData.of(error))
    when = time if time is not None else now_iso()
    return [
        Event(
            id=derive_id(id_seed, "error", domain),
            source=source,
            type=contract.system_error_type,
            subject=subject,
            data=data,
            dataschema=contract.latest.system_error_dataschema,
            time=when,
            to=to,
            parentid=parentid,
            accesscontrol=event.accesscontrol,
            executionunits=executionunits,
            domain=domain,
            traceparent=headers[0],
            tracestate=headers[1],
            extensions=trace_extensions(headers),
        )
        for domain in domains
    ]


class EventHandler:
    """A stateless service for ``contract``: ``versions`` maps each version to its function.

    The function gets the event with ``.data`` decoded into the contract's Struct and
    returns ``Emit(...)``, a list of them, or None. Emitted ids derive from the consumed
    event's id, so a redelivered request produces the same reply ids. ``clock`` stamps the
    replies' ``time`` (ISO 8601 UTC); a ``Runtime`` given a ``VirtualClock`` sets it, so the
    workflows it answers never see wall time. ``error_stack=True`` puts the Python traceback
    in the system errors it sends (off by default: it shows callers this service's code).
    """

    def __init__(
        self,
        contract: Contract,
        versions: Mapping[str, HandlerFunction],
        *,
        executionunits: float = 0,
        system_error_domain: DomainSpec = IN_ORCHESTRATION,
        clock: Callable[[], str] = now_iso,
        error_stack: bool = False,
    ) -> None:
        if not isinstance(contract, Contract):
            raise SetupError(f"EventHandler needs a Contract, got {contract!r}")
        missing = [v for v in contract.versions if v not in versions]
        if missing:
            raise SetupError(
                f"contract {contract.uri!r} needs a handler function for version(s) "
                f"{', '.join(missing)}"
            )
        unknown = [v for v in versions if v not in contract.versions]
        if unknown:
            raise UnknownVersionError(
                f"contract {contract.uri!r} has no version(s) {', '.join(unknown)}; "
                f"it has {', '.join(contract.versions)}",
                unknown[0],
                list(contract.versions),
            )
        check_domain_spec(system_error_domain, "system_error_domain")
        self.contract = contract
        self.functions = dict(versions)
        self.error_stack = error_stack
        self.executionunits = executionunits
        self.system_error_domain = system_error_domain
        self.clock = clock
        self._span_spec = SpanSpec(
            f"Handler<{contract.uri}>",
            SPAN_KIND_HANDLER,
            contract.type,
            contract.uri,
            SpanKind.CONSUMER,
        )

    @property
    def source(self) -> str:
        """The topic this handler listens on: its contract's type."""
        return self.contract.type

    def __repr__(self) -> str:
        return f"EventHandler({self.contract.uri!r})"

    def _domains(self, event: Event) -> DomainContext:
        """What symbolic domains resolve against for the events answering ``event``."""
        return DomainContext(
            triggering_domain=event.domain,
            current_subject=event.subject,
            self_contract_domain=self.contract.domain,
            event_contract_domain=self.contract.domain,
        )

    async def execute(self, event: Event) -> list[Event]:
        """Handle one event. Raises violations; other errors become a system error event."""
        with execution_span(self._span_spec, event) as (span, headers):
            if event.type != self.contract.type:
                raise ConfigViolation(
                    f"handler {self.contract.uri!r} received an event of type {event.type!r}; "
                    f"it only handles {self.contract.type!r}"
                )
            versioned = resolve_version(self.contract, event, owner=f"handler {self.source}")
            try:
                typed = msgspec.convert(event.data, versioned.accepts)
            except msgspec.ValidationError as error:
                raise ContractViolation(
                    f"handler {self.source}: input payload of event {event.id} does not match "
                    f"{versioned.accepts.__name__} (contract {versioned.dataschema}): {error}"
                ) from None
            try:
                result = self.functions[versioned.version](with_data(event, typed))
                if inspect.isawaitable(result):
                    result = await result
            except Exception as error:
                if is_violation(error):
                    raise
                span.set_attribute("arvo.handler.execution.status", "failure")
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                instruments().system_errors.add(
                    1, {SOURCE: self.source, "error.type": type(error).__name__}
                )
                context = self._domains(event)
                return system_error_events(
                    error=ErrorData.of(error, stack=self.error_stack),
                    source=self.source,
                    contract=self.contract,
                    subject=event.subject,
                    to=event.source,
                    parentid=event.id,
                    event=event,
                    executionunits=self.executionunits,
                    headers=headers,
                    domains=resolve_domains(self.system_error_domain, context),
                    id_seed=event.id,
                    time=self.clock(),
                )
            try:
                return self._emittables(result, event, versioned, headers)
            except ValueError as error:  # EventError, or an empty domain list
                raise ContractViolation(
                    f"handler {self.source}: could not build an emitted event: {error}"
                ) from None

    def _emittables(
        self, result: Any, event: Event, versioned: VersionedContract, headers: TraceHeaders
    ) -> list[Event]:
        if result is None:
            return []
        items = [result] if isinstance(result, Emit) else list(result)
        out: list[Event] = []
        when = self.clock()
        context = self._domains(event)
        for index, item in enumerate(items):
            if not isinstance(item, Emit):
                raise ExecutionViolation(
                    f"handler {self.source} returned {item!r}; return Emit(...), a list of "
                    "Emit, or None"
                )
            if item.type not in versioned.emits:
                raise ContractViolation(
                    f"handler {self.source} emitted type {item.type!r}, which contract "
                    f"{versioned.dataschema} does not declare; it emits "
                    f"{', '.join(versioned.emits) or 'nothing'}"
                )
            try:
                _, wire = versioned.validate_emit(item.type, item.data)
            except msgspec.ValidationError as error:
                raise ContractViolation(
                    f"handler {self.source}: output {item.type!r} does not match "
                    f"{versioned.emits[item.type].__name__}: {error}"
                ) from None
            overrides = bool(
                item.id or item.to or item.redirectto or item.accesscontrol or item.extensions
            ) or (item.executionunits is not None)
            for domain in resolve_domains(item.domain, context):

                def build(
                    item: Emit = item,
                    wire: Any = wire,
                    domain: str | None = domain,
                    index: int = index,
                ) -> Event:
                    return Event(
                        id=item.id or derive_id(event.id, index, domain),
                        source=self.source,
                        type=item.type,
                        subject=event.subject,
                        data=wire,
                        dataschema=versioned.dataschema,
                        time=when,
                        to=item.to or event.redirectto or event.source,
                        accesscontrol=item.accesscontrol or event.accesscontrol,
                        redirectto=item.redirectto,
                        executionunits=(
                            item.executionunits
                            if item.executionunits is not None
                            else self.executionunits
                        ),
                        parentid=event.id,
                        domain=domain,
                        traceparent=headers[0],
                        tracestate=headers[1],
                        extensions=trace_extensions(headers, dict(item.extensions)),
                    )

                # Every field comes from validated parts, unless the Emit overrides one.
                out.append(build() if overrides else build_trusted(build))
        return out
