"""Events: CloudEvents 1.0 with Arvo's extensions, and their JSON and msgpack codecs.

The wire shape is the flat object arvo-core writes: the CloudEvents fields, then the
custom extensions, then Arvo's and OpenTelemetry's extensions. Every event is validated
when it is built or decoded, so a malformed event fails where it is made, naming the field.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import msgspec

from resumable.errors import ResumableError
from resumable.names import DOMAIN_PATTERN as DOMAIN_PATTERN
from resumable.names import TYPE_PATTERN as TYPE_PATTERN
from resumable.names import domain_match, type_match
from resumable.uri import is_valid_uri

__all__ = [
    "ARVO_CONTENT_TYPE",
    "Event",
    "EventError",
    "build_trusted",
    "from_dict",
    "from_json",
    "from_msgpack",
    "now_iso",
    "to_dict",
    "to_json",
    "to_msgpack",
    "with_data",
]

ARVO_CONTENT_TYPE: Final = "application/cloudevents+json;charset=UTF-8;profile=arvo"

EXTENSION_KEY: Final = re.compile(r"^[a-z0-9]+\Z")

Extension = str | int | float | bool | None

_CLOUDEVENT_FIELDS: Final = (
    "id",
    "source",
    "specversion",
    "type",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "time",
)
_ARVO_FIELDS: Final = (
    "to",
    "accesscontrol",
    "redirectto",
    "executionunits",
    "parentid",
    "domain",
    "traceparent",
    "tracestate",
)
_KNOWN: Final = frozenset(_CLOUDEVENT_FIELDS + _ARVO_FIELDS + ("extensions",))


_trusted: ContextVar[bool] = ContextVar("resumable_trusted_events", default=False)
T = TypeVar("T")

if TYPE_CHECKING:  # a default (PEP 696) keeps a bare ``Event`` meaning ``Event[Any]``
    from typing_extensions import TypeVar as _TypeVarWithDefault

    D = _TypeVarWithDefault("D", covariant=True, default=Any)
else:
    D = TypeVar("D", covariant=True)


def build_trusted(factory: Callable[[], T]) -> T:
    """``factory()`` with field validation skipped for the events it builds: only for events
    the library builds from parts validated already, or decodes from its own records."""
    token = _trusted.set(True)
    try:
        return factory()
    finally:
        _trusted.reset(token)


_shallow_copy: Callable[[Event], Event] = msgspec.Struct.__copy__  # type: ignore[attr-defined]
"""What ``copy.copy`` calls for a Struct, without its lookups."""


def with_data(event: Event, data: Any) -> Event:
    """The same event with another payload object (e.g. decoded into its Struct).

    A copy, not a rebuild: the event was validated already, and ``data`` is the same
    payload in another form.
    """
    clone: Event = _shallow_copy(event)
    msgspec.structs.force_setattr(clone, "data", data)
    return clone


class EventError(ResumableError, ValueError):
    """An event is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid event field {field!r}: {message}")
        self.field = field


def now_iso() -> str:
    """The current UTC time as Arvo writes it: ISO 8601 with milliseconds and +00:00."""
    now = time.time()
    second = int(now)
    if second != _second[0]:  # format the date and time once per second, not per event
        _second[0] = second
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((now - second) * 1000):03d}+00:00"


_second: list[Any] = [-1, ""]


class Event(msgspec.Struct, Generic[D], frozen=True, kw_only=True, omit_defaults=False):
    """One immutable CloudEvent with Arvo extensions; ``Event[T]`` is one whose ``data`` is a
    ``T`` (a bare ``Event`` is ``Event[Any]``).

    ``data`` is the payload object: a dict on the wire, or the contract's Struct once a
    handler or workflow has decoded it. ``to`` defaults to ``type``, ``id`` to a UUID and
    ``time`` to now (UTC, milliseconds).
    """

    source: str
    type: str
    subject: str
    data: D
    id: str = msgspec.field(default_factory=lambda: str(uuid.uuid4()))
    time: str = msgspec.field(default_factory=now_iso)
    specversion: str = "1.0"
    datacontenttype: str = ARVO_CONTENT_TYPE
    dataschema: str | None = None
    to: str | None = None
    accesscontrol: str | None = None
    redirectto: str | None = None
    executionunits: float | None = None
    parentid: str | None = None
    domain: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    extensions: dict[str, Extension] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _trusted.get():
            _validate(self)
        if self.to is None:
            msgspec.structs.force_setattr(self, "to", self.type)

    def otel_attributes(self) -> dict[str, str | float]:
        """The CloudEvents attributes Arvo puts on spans; absent values become ``"N/A"``."""
        na = "N/A"
        return {
            "cloudevents.event_id": self.id,
            "cloudevents.event_source": self.source,
            "cloudevents.event_spec_version": self.specversion,
            "cloudevents.event_subject": self.subject,
            "cloudevents.event_type": self.type,
            "cloudevents.event_time": self.time,
            "cloudevents.event_datacontenttype": self.datacontenttype,
            "cloudevents.event_dataschema": self.dataschema or na,
            "cloudevents.arvo.event_redirectto": self.redirectto or na,
            "cloudevents.arvo.event_to": self.to or na,
            "cloudevents.arvo.event_executionunits": (
                self.executionunits if self.executionunits is not None else na
            ),
            "cloudevents.arvo.event_parentid": self.parentid or na,
            "cloudevents.arvo.event_domain": self.domain or na,
        }


def _nonempty(event: Event, name: str) -> str:
    value = getattr(event, name)
    if not isinstance(value, str) or not value:
        raise EventError(name, f"must be a non-empty string, got {value!r}")
    return value


def _uri(event: Event, name: str, *, optional: bool = False) -> None:
    value = getattr(event, name)
    if value is None and optional:
        return
    _nonempty(event, name)
    if not is_valid_uri(value):
        raise EventError(
            name,
            f"{value!r} is not a valid URI reference (it must equal encodeURI(decodeURI(v)); "
            "percent-encode spaces and non-ASCII characters)",
        )


def _validate(event: Event) -> None:
    _nonempty(event, "id")
    _uri(event, "source")
    if event.specversion != "1.0":
        raise EventError("specversion", f"must be '1.0', got {event.specversion!r}")
    type_ = _nonempty(event, "type")
    if type_match(type_) is None:
        raise EventError(
            "type",
            f"{type_!r} must be three or more dot-separated segments of lowercase letters "
            "and digits, e.g. 'com.payments.charge'",
        )
    _uri(event, "subject")
    content_type = _nonempty(event, "datacontenttype")
    if "application/cloudevents+json" not in content_type and (
        "application/json" not in content_type
    ):
        raise EventError(
            "datacontenttype",
            f"{content_type!r} must contain 'application/cloudevents+json' or 'application/json'",
        )
    _uri(event, "dataschema", optional=True)
    if not isinstance(event.data, dict | msgspec.Struct):
        raise EventError("data", f"must be an object, got {type(event.data).__name__}")
    _validate_time(event.time)
    _uri(event, "to", optional=True)
    if event.accesscontrol is not None:
        _nonempty(event, "accesscontrol")
    _uri(event, "redirectto", optional=True)
    if event.executionunits is not None and (
        isinstance(event.executionunits, bool) or not isinstance(event.executionunits, int | float)
    ):
        raise EventError("executionunits", f"must be a number, got {event.executionunits!r}")
    if event.parentid is not None:
        _nonempty(event, "parentid")
    if event.domain is not None and (
        not isinstance(event.domain, str) or domain_match(event.domain) is None
    ):
        raise EventError(
            "domain",
            f"{event.domain!r} must be a non-empty string of lowercase letters, digits and dots",
        )
    for name in ("traceparent", "tracestate"):
        if getattr(event, name) is not None:
            _nonempty(event, name)
    for key, value in event.extensions.items():
        if not EXTENSION_KEY.match(key) or key in _KNOWN:
            raise EventError(
                f"extensions.{key}",
                "extension names must be lowercase letters and digits and not a standard field",
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise EventError(
                f"extensions.{key}",
                f"must be a string, number, bool or null, got {type(value).__name__}",
            )


_TIME_SHAPE: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _validate_time(value: object) -> None:
    if not isinstance(value, str) or not _TIME_SHAPE.match(value):
        raise EventError(
            "time",
            f"{value!r} must be an ISO 8601 timestamp with an offset, "
            "e.g. '2025-01-03T09:57:04.123+00:00'",
        )
    try:
        datetime.fromisoformat(value)
    except ValueError as error:
        raise EventError("time", f"{value!r} is not a valid timestamp: {error}") from None


def to_dict(event: Event) -> dict[str, Any]:
    """The flat CloudEvents structured-mode object, in arvo-core's key order."""
    data = event.data
    out: dict[str, Any] = {
        "id": event.id,
        "source": event.source,
        "specversion": event.specversion,
        "type": event.type,
        "subject": event.subject,
        "datacontenttype": event.datacontenttype,
        "dataschema": event.dataschema,
        "data": msgspec.to_builtins(data) if isinstance(data, msgspec.Struct) else data,
        "time": event.time,
    }
    out.update(event.extensions)
    out["to"] = event.to
    out["accesscontrol"] = event.accesscontrol
    out["redirectto"] = event.redirectto
    out["executionunits"] = event.executionunits
    out["parentid"] = event.parentid
    out["domain"] = event.domain
    out["traceparent"] = event.traceparent
    out["tracestate"] = event.tracestate
    return out


def from_dict(value: Any) -> Event:
    """Build an event from its flat object, validating every field."""
    if not isinstance(value, dict):
        raise EventError("<event>", f"an event must be a JSON object, got {type(value).__name__}")
    known: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    for key, item in value.items():
        if key in _KNOWN and key != "extensions":
            known[key] = item
        else:
            extensions[key] = item
    for name in ("id", "source", "type", "subject", "data", "time"):
        if name not in known:
            raise EventError(name, "is required")
    try:
        return Event(**known, extensions=extensions)
    except TypeError as error:
        raise EventError("<event>", str(error)) from None


_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def to_json(event: Event) -> bytes:
    """The event as CloudEvents structured-mode JSON (UTF-8)."""
    return _json_encoder.encode(to_dict(event))


def from_json(raw: bytes | str) -> Event:
    """Decode and validate one JSON event."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as error:
        raise EventError("<event>", f"not valid JSON: {error}") from None
    return from_dict(value)


def to_msgpack(event: Event) -> bytes:
    """The event's flat object as msgpack: smaller and faster than JSON, same content."""
    return _msgpack_encoder.encode(to_dict(event))


def from_msgpack(raw: bytes) -> Event:
    """Decode and validate one msgpack event."""
    try:
        value = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError as error:
        raise EventError("<event>", f"not valid msgpack: {error}") from None
    return from_dict(value)
