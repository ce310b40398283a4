"""hypothesis strategies for contracts: payloads, events, subjects, and malformed events.

``payloads(Struct)`` builds values that pass the Struct's own validation: ``Meta``
bounds, lengths and patterns, ``Literal``, enums, nested Structs, optional fields and
defaults. ``events(contract, version=...)`` builds valid events for a contract;
``malformed_events(workflow)`` builds events each breaking one rule the driver checks,
with the violation it must raise.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from resumable.contracts import Contract, OrchestratorContract
from resumable.driver import Resumable
from resumable.errors import ConfigViolation, ContractViolation, ExecutionViolation
from resumable.events import Event
from resumable.subject import new_subject

__all__ = ["Malformed", "events", "malformed_events", "payloads", "subjects"]

_ENCODABLE = (-(2**63), 2**64 - 1)
"""The ints msgspec encodes (int64 and uint64): an unbounded ``int`` field draws from these."""

_NAME = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


def payloads(schema: type[Any]) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (a msgspec Struct or any type msgspec describes) that pass its
    validation."""
    strategy = _of(mi.type_info(schema))
    return strategy.filter(lambda value: _valid(value, schema))


def _valid(value: Any, schema: type[Any]) -> bool:
    try:
        msgspec.convert(msgspec.to_builtins(value), schema)
    except msgspec.ValidationError:
        return False
    return True


def _bounded(lo: float | None, hi: float | None, gt: Any, ge: Any, lt: Any, le: Any) -> Any:
    low = ge if ge is not None else (gt + 1 if gt is not None else lo)
    high = le if le is not None else (lt - 1 if lt is not None else hi)
    return low, high


def _of(info: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.StructType):
        fields: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for field in info.fields:
            (fields if field.required else optional)[field.name] = _of(field.type)
        cls = info.cls

        def make(kw: dict[str, Any]) -> Any:
            return cls(**kw)

        return st.fixed_dictionaries(fields, optional=optional).map(make)
    if isinstance(info, mi.IntType):
        low, high = _bounded(*_ENCODABLE, info.gt, info.ge, info.lt, info.le)
        ints = st.integers(low, high)
        if info.multiple_of:
            step = info.multiple_of
            ints = ints.map(lambda n: n - n % step).filter(
                lambda n: (low is None or n >= low) and (high is None or n <= high)
            )
        return ints
    if isinstance(info, mi.FloatType):
        return st.floats(
            min_value=info.ge if info.ge is not None else info.gt,
            max_value=info.le if info.le is not None else info.lt,
            exclude_min=info.gt is not None,
            exclude_max=info.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(info, mi.StrType):
        if info.pattern is not None:
            text: st.SearchStrategy[str] = st.from_regex(info.pattern)
        else:
            text = st.text(min_size=info.min_length or 0, max_size=info.max_length)
        return text.filter(
            lambda s: (
                len(s) >= (info.min_length or 0)
                and (info.max_length is None or len(s) <= info.max_length)
            )
        )
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.BytesType):
        return st.binary(min_size=info.min_length or 0, max_size=info.max_length)
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.EnumType):
        return st.sampled_from(list(info.cls))
    if isinstance(info, mi.UnionType):
        return st.one_of(*(_of(t) for t in info.types))
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        items = st.lists(
            _of(info.item_type),
            min_size=info.min_length or 0,
            max_size=info.max_length if info.max_length is not None else 5,
            unique=isinstance(info, mi.SetType | mi.FrozenSetType),
        )
        kind = {mi.SetType: set, mi.FrozenSetType: frozenset, mi.VarTupleType: tuple}
        return items.map(kind.get(type(info), list))
    if isinstance(info, mi.TupleType):
        return st.tuples(*(_of(t) for t in info.item_types))
    if isinstance(info, mi.DictType):
        return st.dictionaries(
            _of(info.key_type),
            _of(info.value_type),
            min_size=info.min_length or 0,
            max_size=info.max_length if info.max_length is not None else 5,
        )
    if isinstance(info, mi.AnyType):
        return st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
    raise TypeError(
        f"payloads() cannot build {info!r}; pass a strategy of your own for that field "
        "(st.builds(YourStruct, field=...))"
    )


def subjects(
    workflow: OrchestratorContract, *, version: str | None = None, initiator: str | None = None
) -> st.SearchStrategy[str]:
    """Orchestration subjects of new instances of ``workflow`` (at ``version``, by default
    any of its versions), started by ``initiator`` (by default, any valid source)."""
    versions = st.just(version) if version else st.sampled_from(list(workflow.versions))
    sources = st.just(initiator) if initiator else _NAME.map(lambda n: f"com.test.{n}")
    ids = st.from_regex(r"[A-Za-z0-9-]{1,16}", fullmatch=True)
    return st.builds(
        lambda v, source, id: new_subject(
            orchestrator=workflow.type, version=v, initiator=source, execution_id=id
        ),
        versions,
        sources,
        ids,
    )


def events(
    contract: Contract, *, version: str | None = None, source: str = "com.test.caller"
) -> st.SearchStrategy[Event]:
    """Valid events of ``contract`` at ``version`` (by default any): init events for a
    workflow's contract, requests for a service's."""
    versions = [version] if version else list(contract.versions)
    for v in versions:
        contract.version(v)  # an unknown version raises here, naming the ones there are

    def build(v: str) -> st.SearchStrategy[Event]:
        data = payloads(contract.versions[v].accepts)
        if isinstance(contract, OrchestratorContract):
            return st.builds(
                lambda d, id: contract.init_event(d, source=source, version=v, execution_id=id),
                data,
                st.uuids().map(str),
            )
        return st.builds(
            lambda d, subject: contract.event(d, source=source, subject=subject, version=v),
            data,
            _NAME,
        )

    return st.one_of(*(build(v) for v in versions))


def _wrong(data: Any) -> dict[str, Any]:
    """Every field of a payload set to a value of the wrong shape."""
    return {name: [[None]] for name in data if name != "parentSubject$$"}


def _valid_init(contract: Contract, event: Event) -> bool:
    schema = contract.versions[list(contract.versions)[-1]].accepts
    return _valid({k: v for k, v in event.data.items() if k != "parentSubject$$"}, schema)


@attrs.frozen
class Malformed:
    """An event that breaks one rule, and the violation ``execute`` must raise for it."""

    event: Event
    violation: type[Exception]
    why: str


def malformed_events(workflow: Resumable[Any]) -> st.SearchStrategy[Malformed]:
    """Events a workflow must reject, one class of violation each: a subject that is not
    an orchestration subject, a version it does not run, a type no contract matches, a
    payload that fails its schema, a wrong dataschema, a reply nobody waits for, a first
    event that is not an init."""
    contract = workflow.contract
    good = events(contract)

    def replace(event: Event, **changes: Any) -> Event:
        return msgspec.structs.replace(event, **changes)

    def unknown_version(event: Event) -> Malformed:
        subject = new_subject(
            orchestrator=contract.type, version="99.0.0", initiator="com.test.caller"
        )
        return Malformed(replace(event, subject=subject), ConfigViolation, "unknown version")

    classes = [
        good.map(
            lambda e: Malformed(
                replace(e, subject="not-a-subject"), ExecutionViolation, "not a subject"
            )
        ),
        good.map(unknown_version),
        good.map(
            lambda e: Malformed(
                replace(e, type="com.nobody.knows", to=contract.type),
                ConfigViolation,
                "type matches no contract",
            )
        ),
        good.map(
            lambda e: Malformed(
                replace(e, data={**_wrong(e.data), "parentSubject$$": None}),
                ContractViolation,
                "payload fails its schema",
            )
        ).filter(lambda m: not _valid_init(contract, m.event)),
        good.map(
            lambda e: Malformed(
                replace(e, dataschema="#/contracts/other/1.0.0"),
                ContractViolation,
                "wrong dataschema",
            )
        ),
    ]
    replies = [
        (versioned, type_, schema)
        for versioned in workflow.definition.services.values()
        for type_, schema in versioned.emits.items()
    ]
    if replies:

        def stray(picked: tuple[Event, tuple[Any, str, Any], Any]) -> Malformed:
            event, (versioned, type_, _), payload = picked
            reply = Event(
                source=versioned.type,
                type=type_,
                subject=event.subject,
                data=msgspec.to_builtins(payload),
                dataschema=versioned.dataschema,
                parentid="nobody-asked",
            )
            return Malformed(reply, ExecutionViolation, f"{type_} for no instance")

        picks = st.sampled_from(replies).flatmap(
            lambda r: st.tuples(good, st.just(r), payloads(r[2]))
        )
        classes.append(picks.map(stray))
    return st.one_of(*classes)
