"""Versioned contracts: which event types a service accepts and emits, with their schemas.

Schemas are msgspec Structs and validation is ``msgspec.convert``. Naming follows Arvo:
a service's system error is ``sys.<type>.error``; an orchestrator named ``n`` accepts
``arvo.orc.n`` and completes with ``arvo.orc.n.done``; dataschemas are ``{uri}/{version}``
and system errors carry the wildcard version ``0.0.0``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
import msgspec

from resumable.errors import PayloadError, SetupError, UnknownVersionError
from resumable.events import ARVO_CONTENT_TYPE, Event
from resumable.names import (
    DOMAIN_PATTERN,
    WILDCARD_VERSION,
    domain_match,
    semver_match,
    type_match,
)
from resumable.names import SEMVER as SEMVER
from resumable.subject import new_subject, parse_subject, subject_from_parent
from resumable.uri import is_valid_uri

__all__ = [
    "PARENT_SUBJECT_KEY",
    "WILDCARD_VERSION",
    "Contract",
    "ContractError",
    "ErrorData",
    "OrchestratorContract",
    "ServiceSpec",
    "VersionedContract",
    "parse_dataschema",
]

PARENT_SUBJECT_KEY: Final = "parentSubject$$"
ORCHESTRATOR_PREFIX: Final = "arvo.orc"
NAME_PATTERN: Final = DOMAIN_PATTERN
"""An orchestrator's name has the shape of a domain (kept under its old name)."""


Schema = type[msgspec.Struct]
"""A payload schema: a msgspec Struct class."""


class ContractError(SetupError):
    """A contract definition is wrong; raised when the contract is defined."""


class ErrorData(msgspec.Struct, frozen=True):
    """The payload of every ``sys.<type>.error`` event (Arvo's ArvoErrorSchema)."""

    errorName: str
    errorMessage: str
    errorStack: str | None = None

    @classmethod
    def of(cls, error: BaseException, *, stack: bool = True) -> ErrorData:
        """The payload describing ``error``; with its Python traceback if ``stack``."""
        import traceback

        text = "".join(traceback.format_exception(error)) if stack and error.__traceback__ else None
        return cls(type(error).__name__, str(error), text)


def semver_key(version: str) -> tuple[int, int, int]:
    major, minor, patch = version.split(".")
    return int(major), int(minor), int(patch)


@functools.lru_cache(maxsize=1024)
@functools.lru_cache(maxsize=4096)
def parse_dataschema(value: str | None) -> tuple[str, str] | None:
    """Split ``{uri}/{version}`` into ``(uri, version)``; None if it is not that shape.
    Cached: every event is checked against its schema, and schemas are few."""
    if not value or "/" not in value:
        return None
    uri, _, version = value.rpartition("/")
    if not uri or semver_match(version) is None:
        return None
    return uri, version


def _check_type(type_: str, *, what: str, uri: str, allow_orc: bool = False) -> None:
    if type_match(type_) is None:
        raise ContractError(
            f"contract {uri!r}: {what} type {type_!r} must be three or more dot-separated "
            "segments of lowercase letters and digits, e.g. 'com.payments.charge'"
        )
    if not allow_orc and type_.startswith(ORCHESTRATOR_PREFIX):
        raise ContractError(
            f"contract {uri!r}: {what} type {type_!r} must not start with 'arvo.orc', "
            "which is reserved for orchestrators; use OrchestratorContract for a workflow"
        )


def _check_struct(schema: Any, *, what: str, uri: str, version: str) -> Schema:
    if not (isinstance(schema, type) and issubclass(schema, msgspec.Struct)):
        raise ContractError(
            f"contract {uri!r} version {version}: {what} must be a msgspec.Struct class, "
            f"got {schema!r}"
        )
    return schema


def _validate(
    schema: Schema, data: Any, *, uri: str, version: str, type_: str
) -> tuple[msgspec.Struct, dict[str, Any]]:
    """Validate ``data`` (a Struct or plain dict) against ``schema``: (typed, wire dict).
    A mismatch raises ``PayloadError`` naming the contract, version, type and field."""
    wire = msgspec.to_builtins(data) if isinstance(data, msgspec.Struct) else data
    try:
        typed = msgspec.convert(wire, schema)
    except msgspec.ValidationError as error:
        raise PayloadError(
            uri=uri, version=version, type=type_, schema=schema.__name__, error=str(error)
        ) from None
    if not isinstance(wire, dict):
        wire = msgspec.to_builtins(typed)
    return typed, wire


@attrs.frozen
class VersionedContract:
    """One version of a contract: what events of this service look like at that version."""

    contract: Contract
    version: str
    accepts: Schema
    emits: Mapping[str, Schema]

    @property
    def uri(self) -> str:
        return self.contract.uri

    @property
    def type(self) -> str:
        """The type of the events this version accepts."""
        return self.contract.type

    @property
    def domain(self) -> str | None:
        return self.contract.domain

    @property
    def dataschema(self) -> str:
        return f"{self.contract.uri}/{self.version}"

    @property
    def system_error_type(self) -> str:
        return self.contract.system_error_type

    @property
    def system_error_dataschema(self) -> str:
        return f"{self.contract.uri}/{WILDCARD_VERSION}"

    @property
    def is_orchestrator(self) -> bool:
        return isinstance(self.contract, OrchestratorContract)

    def schema_for(self, type_: str) -> Schema | None:
        """The schema of an event type this version accepts or emits (or its system error)."""
        if type_ == self.contract.type:
            return self.accepts
        if type_ == self.contract.system_error_type:
            return ErrorData
        return self.emits.get(type_)

    def validate_accepts(self, data: Any) -> tuple[msgspec.Struct, dict[str, Any]]:
        """Validate an accepted payload; raises ``PayloadError`` (a msgspec.ValidationError)."""
        return _validate(self.accepts, data, uri=self.uri, version=self.version, type_=self.type)

    def validate_emit(self, type_: str, data: Any) -> tuple[msgspec.Struct, dict[str, Any]]:
        """Validate an emitted payload (``PayloadError`` if it does not match); raises
        KeyError for a type this version does not emit."""
        schema = ErrorData if type_ == self.system_error_type else self.emits[type_]
        return _validate(schema, data, uri=self.uri, version=self.version, type_=type_)

    def json_schema(self) -> dict[str, Any]:
        """This version as JSON Schema: accepted, emitted and system-error payloads."""
        return {
            "uri": self.uri,
            "version": self.version,
            "domain": self.domain,
            "accepts": {"type": self.type, "schema": msgspec.json.schema(self.accepts)},
            "emits": [{"type": t, "schema": msgspec.json.schema(s)} for t, s in self.emits.items()],
            "systemError": {
                "type": self.system_error_type,
                "schema": msgspec.json.schema(ErrorData),
            },
        }


class Contract:
    """A service contract: the event type it accepts, and what it emits, per version.

    ``versions`` maps semantic versions to ``{"accepts": Struct, "emits": {type: Struct}}``.
    """

    def __init__(
        self,
        *,
        uri: str,
        type: str,
        versions: Mapping[str, Mapping[str, Any]],
        domain: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(uri, str) or not uri or not is_valid_uri(uri):
            raise ContractError(f"contract uri {uri!r} must be a non-empty valid URI reference")
        self.uri = uri
        self.type = type
        self.domain = domain
        self.description = description
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))
        self._check_self_type()
        if domain is not None and domain_match(domain) is None:
            raise ContractError(
                f"contract {uri!r}: domain {domain!r} must be lowercase letters, digits and dots"
            )
        if not versions:
            raise ContractError(f"contract {uri!r} must have at least one version")
        built: dict[str, VersionedContract] = {}
        for version, spec in versions.items():
            if not isinstance(version, str) or semver_match(version) is None:
                raise ContractError(
                    f"contract {uri!r}: version {version!r} is not a semantic version like '1.0.0'"
                )
            if version == WILDCARD_VERSION:
                raise ContractError(
                    f"contract {uri!r}: version '0.0.0' is reserved for system errors"
                )
            built[version] = self._build_version(version, spec)
        self.versions: Mapping[str, VersionedContract] = MappingProxyType(
            dict(sorted(built.items(), key=lambda kv: semver_key(kv[0])))
        )

    def _check_self_type(self) -> None:
        _check_type(self.type, what="accepted", uri=self.uri)

    def _build_version(self, version: str, spec: Mapping[str, Any]) -> VersionedContract:
        unknown = set(spec) - {"accepts", "emits"}
        if unknown or "accepts" not in spec:
            raise ContractError(
                f"contract {self.uri!r} version {version}: expected keys 'accepts' and "
                f"'emits', got {sorted(spec)}"
            )
        accepts = _check_struct(spec["accepts"], what="accepts", uri=self.uri, version=version)
        emits: dict[str, Schema] = {}
        for emit_type, schema in dict(spec.get("emits") or {}).items():
            _check_type(emit_type, what="emitted", uri=self.uri)
            emits[emit_type] = _check_struct(
                schema, what=f"emits[{emit_type!r}]", uri=self.uri, version=version
            )
        return VersionedContract(self, version, accepts, MappingProxyType(emits))

    @property
    def system_error_type(self) -> str:
        return f"sys.{self.type}.error"

    @property
    def latest(self) -> VersionedContract:
        return list(self.versions.values())[-1]

    def version(self, version: str = "latest") -> VersionedContract:
        """One version: an exact semver, or ``latest``/``any`` (highest) or ``oldest``."""
        if version in ("latest", "any"):
            return self.latest
        if version == "oldest":
            return next(iter(self.versions.values()))
        try:
            return self.versions[version]
        except KeyError:
            raise UnknownVersionError(
                f"contract {self.uri!r} has no version {version!r}; "
                f"it has {', '.join(self.versions)}",
                version,
                list(self.versions),
            ) from None

    def json_schema(self) -> dict[str, Any]:
        """The whole contract as JSON Schema, one entry per version (oldest first)."""
        return {
            "uri": self.uri,
            "type": self.type,
            "domain": self.domain,
            "description": self.description,
            "metadata": dict(self.metadata),
            "versions": [v.json_schema() for v in self.versions.values()],
        }

    def event(
        self,
        data: Any,
        *,
        source: str,
        subject: str,
        version: str = "latest",
        **options: Any,
    ) -> Event:
        """A validated event of the type this contract accepts (for tests and callers)."""
        versioned = self.version(version)
        _, wire = versioned.validate_accepts(data)
        return Event(
            source=source,
            type=self.type,
            subject=subject,
            data=wire,
            dataschema=versioned.dataschema,
            datacontenttype=ARVO_CONTENT_TYPE,
            **options,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uri={self.uri!r}, type={self.type!r})"


class OrchestratorContract(Contract):
    """The contract of a workflow named ``name``: its init payload and completion payload.

    ``versions`` maps semantic versions to ``{"init": Struct, "complete": Struct}``. Every
    init event also carries ``parentSubject$$`` (the parent workflow's subject, or null).
    """

    def __init__(
        self,
        *,
        uri: str,
        name: str,
        versions: Mapping[str, Mapping[str, Any]],
        domain: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or domain_match(name) is None:
            raise ContractError(
                f"orchestrator name {name!r} must contain only lowercase letters, digits and "
                "dots, e.g. 'order.fulfil'"
            )
        self.name = name
        super().__init__(
            uri=uri,
            type=f"{ORCHESTRATOR_PREFIX}.{name}",
            versions=versions,
            domain=domain,
            description=description,
            metadata={
                **dict(metadata or {}),
                "contractType": "ArvoOrchestratorContract",
                "rootType": name,
                "completeEventType": f"{ORCHESTRATOR_PREFIX}.{name}.done",
                "initEventType": f"{ORCHESTRATOR_PREFIX}.{name}",
            },
        )

    def _check_self_type(self) -> None:
        _check_type(self.type, what="init", uri=self.uri, allow_orc=True)

    def _build_version(self, version: str, spec: Mapping[str, Any]) -> VersionedContract:
        if set(spec) != {"init", "complete"}:
            raise ContractError(
                f"orchestrator contract {self.uri!r} version {version}: expected keys "
                f"'init' and 'complete', got {sorted(spec)}"
            )
        init = _check_struct(spec["init"], what="init", uri=self.uri, version=version)
        done = _check_struct(spec["complete"], what="complete", uri=self.uri, version=version)
        emits = MappingProxyType({self.complete_type: done})
        return VersionedContract(self, version, init, emits)

    @property
    def init_type(self) -> str:
        return self.type

    @property
    def complete_type(self) -> str:
        return f"{self.type}.done"

    def init_event(
        self,
        data: Any,
        *,
        source: str,
        version: str = "latest",
        parent_subject: str | None = None,
        subject: str | None = None,
        execution_id: str | None = None,
        redirectto: str | None = None,
        domain: str | None = None,
        **options: Any,
    ) -> Event:
        """A valid init event for a new instance of this workflow, with a new subject.

        ``source`` (who starts it, e.g. ``com.shop.web``) becomes the subject's initiator,
        where the completion goes unless ``redirectto`` says otherwise. ``execution_id``
        fixes the instance id (for idempotent starts); by default it is a new UUID.
        """
        versioned = self.version(version)
        if subject is None:
            if parent_subject is not None:
                parent = parse_subject(parent_subject)
                subject = subject_from_parent(
                    orchestrator=self.type,
                    version=versioned.version,
                    parent=parent_subject,
                    domain=domain,
                    meta={"redirectto": redirectto or parent.initiator},
                    execution_id=execution_id,
                )
            else:
                subject = new_subject(
                    orchestrator=self.type,
                    version=versioned.version,
                    initiator=source,
                    domain=domain,
                    meta={"redirectto": redirectto} if redirectto else None,
                    execution_id=execution_id,
                )
        _, wire = versioned.validate_accepts(data)
        wire = {**wire, PARENT_SUBJECT_KEY: parent_subject}
        return Event(
            source=source,
            type=self.type,
            subject=subject,
            data=wire,
            dataschema=versioned.dataschema,
            redirectto=redirectto,
            domain=domain,
            **options,
        )


ServiceSpec = Contract | VersionedContract
"""A service a workflow calls: a contract (its latest version) or one version of it."""
