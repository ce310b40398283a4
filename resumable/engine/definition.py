"""What a workflow is made of: its contract, version functions, services, signals and state,
and the checks and typing of the events it consumes. Built once, read by every step."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Generic, Literal, TypeVar

import attrs
import msgspec

from resumable.contracts import (
    PARENT_SUBJECT_KEY,
    Contract,
    OrchestratorContract,
    Schema,
    ServiceSpec,
    VersionedContract,
    parse_dataschema,
)
from resumable.domains import IN_ORCHESTRATION, DomainSpec, check_domain_spec
from resumable.errors import (
    ConfigViolation,
    ContractViolation,
    ExecutionViolation,
    ServiceError,
    SetupError,
    StateError,
    UnknownVersionError,
)
from resumable.events import Event, with_data
from resumable.limits import check_event
from resumable.record import wire
from resumable.state import converter as _converter
from resumable.subject import Subject, SubjectError, parse_subject_shared
from resumable.workflow import NO_STATE, Call, WorkflowFunction

__all__ = ["CANCEL_TYPE", "TIMER_TYPE", "Definition", "EventKind", "OtherWorkflow"]

S = TypeVar("S")

TIMER_TYPE: Final = "resumable.workflow.timer"
"""The type of the event that wakes an instance whose due time has passed."""
CANCEL_TYPE: Final = "resumable.workflow.cancel"
"""The type of the event that cancels an instance; its data is ``{"reason": str}``."""

EventKind = Literal["init", "timer", "cancel", "signal", "reply"]
"""What an event is to a workflow: its start, its own timer or cancellation, a signal it
lists, or a reply from one of its services."""


def _seconds(value: float | timedelta | None, name: str) -> float | None:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise SetupError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(seconds)


class OtherWorkflow(ExecutionViolation):
    """An event whose subject names another workflow than the one it was given to."""


@attrs.define(eq=False)
class Definition(Generic[S]):
    """A workflow's static parts, checked at construction (``Resumable`` builds one)."""

    contract: OrchestratorContract
    functions: dict[str, WorkflowFunction]
    state_type: type[S] | None
    timeout: float | None
    """Seconds an instance may run, across ``continue_as_new`` generations."""
    run_timeout: float | None
    """Seconds one generation may run; its clock restarts at each ``continue_as_new``."""
    executionunits: float
    service_domain: DomainSpec
    complete_domain: DomainSpec
    system_error_domain: DomainSpec
    services: dict[str, VersionedContract] = attrs.Factory(dict)
    reply_types: dict[str, VersionedContract] = attrs.Factory(dict)
    """Every event type a service may answer with (its system error included)."""
    repliers: dict[str, list[str]] = attrs.Factory(dict)
    """The uris of the services that may answer with each event type: a reply without
    ``parentid`` is matched to an open call to one of them."""
    signals: dict[str, Contract | None] = attrs.Factory(dict)
    """Signal types, with their contract (None for untyped data)."""
    reply_schemas: dict[str, Schema] = attrs.Factory(dict)
    """The payload schema of each reply type (``reply_types``' lookups, made once)."""
    error_types: set[str] = attrs.Factory(set)
    """The system error types of the services."""
    source: str = attrs.field(init=False)
    uri: str = attrs.field(init=False)
    error_stack: bool = False
    """Whether the system errors it reports carry the Python traceback."""

    @classmethod
    def build(
        cls,
        contract: OrchestratorContract,
        versions: Mapping[str, WorkflowFunction],
        *,
        services: Sequence[ServiceSpec] = (),
        signals: Sequence[Contract | str] = (),
        state: type[S] | None = None,
        timeout: float | timedelta | None = None,
        run_timeout: float | timedelta | None = None,
        executionunits: float = 0,
        service_domain: DomainSpec = None,
        complete_domain: DomainSpec = IN_ORCHESTRATION,
        system_error_domain: DomainSpec = IN_ORCHESTRATION,
        error_stack: bool = False,
    ) -> Definition[S]:
        """Check every part and build the definition; a mistake raises naming the part."""
        if not isinstance(contract, OrchestratorContract):
            raise SetupError(
                f"Resumable needs an OrchestratorContract, got {contract!r}; "
                "use EventHandler for a stateless service"
            )
        for version, fn in versions.items():
            if version not in contract.versions:
                raise UnknownVersionError(
                    f"workflow {contract.uri!r}: contract has no version {version!r}; it has "
                    f"{', '.join(contract.versions)}. Add the version to the contract, or "
                    "remove its function",
                    version,
                    list(contract.versions),
                )
            if not inspect.isasyncgenfunction(fn):
                raise SetupError(
                    f"workflow {contract.uri!r} version {version}: {fn!r} must be an async "
                    "generator function (async def with yield)"
                )
        if not versions:
            raise SetupError(f"workflow {contract.uri!r} needs at least one version function")
        if state is not None and not attrs.has(state):
            raise SetupError(f"workflow state must be an attrs class, got {state!r}")
        check_domain_spec(service_domain, "service_domain")
        check_domain_spec(complete_domain, "complete_domain")
        check_domain_spec(system_error_domain, "system_error_domain")
        if isinstance(executionunits, bool) or not isinstance(executionunits, int | float):
            raise SetupError(f"executionunits must be a number, got {executionunits!r}")
        definition = cls(
            contract=contract,
            functions=dict(versions),
            state_type=state,  # type: ignore[arg-type]  # attrs.has narrows it to AttrsInstance
            timeout=_seconds(timeout, "timeout"),
            run_timeout=_seconds(run_timeout, "run_timeout"),
            executionunits=executionunits,
            service_domain=service_domain,
            complete_domain=complete_domain,
            system_error_domain=system_error_domain,
            error_stack=error_stack,
        )
        for item in services:
            definition._add_service(item)
        for signal in signals:
            definition._add_signal(signal)
        return definition

    def _add_service(self, item: ServiceSpec) -> None:
        if isinstance(item, VersionedContract):
            versioned = item
        elif isinstance(item, Contract):
            versioned = item.latest
        else:
            raise SetupError(f"services must be contracts, got {item!r}")
        uri = versioned.uri
        if uri == self.contract.uri:
            raise SetupError(
                f"workflow {self.contract.uri!r} lists itself as a service; a workflow cannot "
                "call itself"
            )
        if uri in self.services:
            raise SetupError(
                f"workflow {self.contract.uri!r} lists contract {uri!r} twice; list each "
                "service once, at the version to call"
            )
        self.services[uri] = versioned
        for type_ in (*versioned.emits, versioned.system_error_type):
            if type_ not in self.reply_types:
                self.reply_types[type_] = versioned
                schema = versioned.schema_for(type_)
                assert schema is not None
                self.reply_schemas[type_] = schema
                if type_ == versioned.system_error_type:
                    self.error_types.add(type_)
            self.repliers.setdefault(type_, []).append(uri)

    def _add_signal(self, signal: Contract | str) -> None:
        if isinstance(signal, Contract):
            type_, contract = signal.type, signal
        elif isinstance(signal, str) and signal:
            type_, contract = signal, None
        else:
            raise SetupError(f"signals must be contracts or event types, got {signal!r}")
        reserved = {self.source, TIMER_TYPE, CANCEL_TYPE, *self.reply_types}
        if type_ in reserved or type_ in self.signals:
            raise SetupError(
                f"workflow {self.contract.uri!r}: signal type {type_!r} is listed twice or is "
                "already the type of its init event, a service reply, a timer or a cancellation"
            )
        self.signals[type_] = contract

    def __attrs_post_init__(self) -> None:
        self.source = self.contract.type
        """The topic this workflow listens on: ``arvo.orc.<name>``."""
        self.uri = self.contract.uri

    def function(self, version: str, why: str | Callable[[], str]) -> WorkflowFunction:
        """The function of ``version``; ``why`` names what needs it, for the error (a
        callable, so a step pays for the text only when it is needed)."""
        fn = self.functions.get(version)
        if fn is None:
            why = why if isinstance(why, str) else why()
            raise UnknownVersionError(
                f"workflow {self.uri!r} has no function for version {version} ({why}); it "
                f"runs versions {', '.join(self.functions)}. Add one to Resumable(versions=...)",
                version,
                list(self.functions),
            )
        return fn

    # ------------------------------------------------------------------------------
    # events in

    def kind_of(self, event: Event) -> EventKind:
        type_ = event.type
        if type_ == self.source:
            return "init"
        if type_ == TIMER_TYPE:
            return "timer"
        if type_ == CANCEL_TYPE:
            return "cancel"
        if type_ in self.signals:
            return "signal"
        return "reply"

    def admit(self, event: Event) -> tuple[Subject, Event]:
        """Check ``event`` before anything is locked or read: the limits every backend can
        store, an orchestration subject naming this workflow and a version it runs, the
        payload against its contract. Returns the subject and the typed event."""
        check_event(event)
        try:
            subject = parse_subject_shared(event.subject)
        except SubjectError as error:
            raise ExecutionViolation(
                f"event {event.id} ({event.type}) has subject {event.subject!r}, which "
                f"is not an orchestration subject: {error}. Start workflows with "
                "contract.init_event(...) so the subject is made for you."
            ) from None
        if subject.name != self.source:
            raise OtherWorkflow(
                f"event {event.id} ({event.type}) came to workflow {self.source} "
                f"but its subject names workflow {subject.name}: it was sent to the "
                "wrong topic; send it to that workflow's topic instead"
            )
        if subject.version not in self.functions:
            self.function(subject.version, f"subject of event {event.id}")
        return subject, self.validate(event, subject)

    def validate(self, event: Event, subject: Subject) -> Event:
        """Check the event against its contract; return it with its payload typed."""
        if event.type in (TIMER_TYPE, CANCEL_TYPE):
            return self._validate_own(event)
        if event.type in self.signals:
            return self.validate_signal(event)
        if event.type == self.source:
            versioned = self.contract.versions.get(subject.version)
            if versioned is None:
                raise UnknownVersionError(
                    f"workflow {self.uri!r} has no contract version "
                    f"{subject.version} (subject of init event {event.id}); it has "
                    f"{', '.join(self.contract.versions)}",
                    subject.version,
                    list(self.contract.versions),
                )
        else:
            maybe = self.reply_types.get(event.type)
            if maybe is None:
                raise ConfigViolation(
                    f"workflow {self.uri!r} received event {event.id} of type "
                    f"{event.type!r}, which matches no contract it knows: neither its init "
                    f"type {self.source!r}, a reply of its services "
                    f"({', '.join(self.services) or 'none'}), nor one of its signals "
                    f"({', '.join(self.signals) or 'none'})"
                )
            versioned = maybe
        parsed = parse_dataschema(event.dataschema)
        if parsed is None:
            raise ContractViolation(
                f"event {event.id} ({event.type}) has dataschema {event.dataschema!r}; "
                f"expected '{versioned.dataschema}'"
            )
        uri, version = parsed
        is_error = event.type in self.error_types
        if uri != versioned.uri or (
            version != versioned.version and not (is_error and version == "0.0.0")
        ):
            raise ContractViolation(
                f"event {event.id} ({event.type}) has dataschema {event.dataschema!r}, but "
                f"workflow {self.uri!r} expects '{versioned.dataschema}'"
            )
        schema = self.reply_schemas.get(event.type) or versioned.schema_for(event.type)
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

    def validate_signal(self, event: Event) -> Event:
        contract = self.signals[event.type]
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

    def typed(self, event: Event) -> Event:
        """A journaled event with its payload decoded as the workflow received it."""
        schema = self.reply_schemas.get(event.type)
        if schema is not None:
            return with_data(event, msgspec.convert(event.data, schema))
        if event.type in self.signals:
            return self.validate_signal(event)
        return event

    def is_error(self, reply: Event) -> bool:
        return reply.type in self.error_types

    def service_error(self, reply: Event) -> ServiceError | None:
        return ServiceError(reply) if reply.type in self.error_types else None

    # ------------------------------------------------------------------------------
    # what a workflow asks for

    def service(self, call: Call) -> VersionedContract:
        """The listed service a call goes to, at the version the workflow lists."""
        versioned = self.services.get(call.service.uri)
        if versioned is None:
            raise ConfigViolation(
                f"workflow {self.uri!r} calls {call.service.uri!r}, which is not in "
                f"its services; add it to Resumable(..., services=[...])"
            )
        if isinstance(call.service, VersionedContract) and call.service != versioned:
            raise ConfigViolation(
                f"workflow {self.uri!r} calls {call.service.uri!r} at version "
                f"{call.service.version}, but lists it at version {versioned.version}"
            )
        return versioned

    def payload(
        self, call: Call, what: str | Callable[[], str]
    ) -> tuple[VersionedContract, dict[str, Any]]:
        """The service a call goes to, and its payload validated as plain data; ``what``
        says which payload, for the error (a callable: made only if needed)."""
        versioned = self.service(call)
        try:
            _, data = versioned.validate_accepts(call.data)
        except msgspec.ValidationError as error:
            what = what if isinstance(what, str) else what()
            raise ContractViolation(
                f"workflow {self.uri!r}{what} for {versioned.type} does not match "
                f"{versioned.accepts.__name__}: {error}"
            ) from None
        return versioned, data

    def check_signal(self, type_: str) -> None:
        if type_ not in self.signals:
            raise ConfigViolation(
                f"workflow {self.uri!r} waits for signal {type_!r}, which "
                "is not in its signals; add it to Resumable(..., signals=[...])"
            )

    # ------------------------------------------------------------------------------
    # explicit state

    def new_state(self) -> Any:
        """A fresh state; ``NO_STATE`` (``ctx.state`` then says so) for a stateless workflow."""
        return self.state_type() if self.state_type is not None else NO_STATE

    def unstructure(self, state: Any) -> Any:
        """The state as the record stores it; ``StateError`` names a field it cannot store."""
        if state is None or state is NO_STATE:
            return None
        plain = _converter.unstructure(state)
        try:
            _state_encoder.encode(plain)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            field, value_type = _unencodable(plain, "")
            raise StateError(self.uri, field or "<state>", value_type) from None
        return plain


_state_encoder = msgspec.msgpack.Encoder()


def _unencodable(value: Any, path: str) -> tuple[str, str]:
    """The path and type of the first part of ``value`` that msgpack cannot encode."""
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        items = [(f"{path}.{key}" if path else str(key), item) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    for where, item in items:
        try:
            _state_encoder.encode(item)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            return _unencodable(item, where)
    return path, type(value).__name__
