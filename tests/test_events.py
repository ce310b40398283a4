"""resumable.events against ArvoEvent: the rule of each field, the codecs, and the key order
arvo-core writes."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resumable.events import (
    ARVO_CONTENT_TYPE,
    Event,
    EventError,
    from_dict,
    from_json,
    from_msgpack,
    now_iso,
    to_dict,
    to_json,
    to_msgpack,
)
from resumable.uri import encode_uri

BASE: dict[str, Any] = {
    "source": "com.test.source",
    "type": "com.test.event",
    "subject": "subject-1",
    "data": {"k": 1},
}

FULL: dict[str, Any] = {
    **BASE,
    "id": "evt-1",
    "time": "2025-01-03T09:57:04.123+00:00",
    "dataschema": "#/contracts/test/1.0.0",
    "to": "com.test.target",
    "accesscontrol": "role:admin;user:1",
    "redirectto": "com.test.redirect",
    "executionunits": 2.5,
    "parentid": "evt-0",
    "domain": "human.review",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "rojo=00f067aa0ba902b7",
    "extensions": {"tenant": "acme", "retries": 3, "urgent": True, "note": None},
}

CLOUDEVENT_KEYS = [
    "id",
    "source",
    "specversion",
    "type",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "time",
]
ARVO_KEYS = [
    "to",
    "accesscontrol",
    "redirectto",
    "executionunits",
    "parentid",
    "domain",
    "traceparent",
    "tracestate",
]


def make(**overrides: Any) -> Event:
    return Event(**{**BASE, **overrides})


def raises_field(field: str, *words: str, **overrides: Any) -> EventError:
    with pytest.raises(EventError) as info:
        make(**overrides)
    error = info.value
    assert error.field == field
    assert f"invalid event field {field!r}" in str(error)
    for word in words:
        assert word in str(error)
    return error


# --- defaults ---------------------------------------------------------------------------


def test_defaults() -> None:
    event = make()
    assert event.specversion == "1.0"
    assert event.datacontenttype == ARVO_CONTENT_TYPE
    assert ARVO_CONTENT_TYPE == "application/cloudevents+json;charset=UTF-8;profile=arvo"
    assert event.dataschema is None
    assert event.accesscontrol is None
    assert event.redirectto is None
    assert event.executionunits is None
    assert event.parentid is None
    assert event.domain is None
    assert event.traceparent is None
    assert event.tracestate is None
    assert event.extensions == {}


def test_to_defaults_to_type() -> None:
    assert make().to == "com.test.event"
    assert make(to=None).to == "com.test.event"
    assert make(to="com.other.target").to == "com.other.target"


def test_default_id_is_uuid4() -> None:
    first, second = make(), make()
    parsed = uuid.UUID(first.id)
    assert parsed.version == 4
    assert str(parsed) == first.id
    assert first.id != second.id


def test_explicit_id_kept() -> None:
    assert make(id="my-id").id == "my-id"


def test_default_time_is_utc_with_milliseconds() -> None:
    before = datetime.now(UTC)
    event = make()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", event.time)
    parsed = datetime.fromisoformat(event.time)
    assert parsed.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= parsed <= after


def test_now_iso_shape() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", now_iso())


# --- immutability -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["id", "type", "data", "to", "domain", "extensions"])
def test_fields_cannot_be_assigned(name: str) -> None:
    event = make()
    with pytest.raises(AttributeError):
        setattr(event, name, "x")
    assert event.type == "com.test.event"


def test_events_are_hashable_values() -> None:
    event = make(id="a", time="2025-01-03T09:57:04.123+00:00")
    assert event == make(id="a", time="2025-01-03T09:57:04.123+00:00")
    assert event != make(id="b", time="2025-01-03T09:57:04.123+00:00")


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "com.test",  # 2 segments
        "com",
        "Com.test.event",  # uppercase
        "com.Test.event",
        "com.test-x.event",  # dash
        "com.test_x.event",  # underscore
        "com..test",
        ".com.test.event",
        "com.test.event.",
        "com.test.event\n",  # a trailing newline must not slip past the pattern
        "com test.event.x",
        "",
    ],
)
def test_type_pattern(value: str) -> None:
    if value == "":
        raises_field("type", "non-empty", type=value)
    else:
        raises_field("type", repr(value), "three or more", type=value)


@pytest.mark.parametrize(
    "value", ["a.b.c", "com.test.event", "sys.com.test.event.error", "a1.b2.3c"]
)
def test_valid_types(value: str) -> None:
    assert make(type=value).type == value


@pytest.mark.parametrize("field", ["source", "subject", "dataschema", "to", "redirectto"])
@pytest.mark.parametrize("value", ["has space", "bad%zz", "trunc%2", "\u00e9t\u00e9", "bad%"])
def test_uri_fields_reject_invalid(field: str, value: str) -> None:
    raises_field(field, "not a valid URI", repr(value), **{field: value})


@pytest.mark.parametrize("field", ["source", "subject", "dataschema", "to", "redirectto"])
def test_uri_fields_accept_encoded(field: str) -> None:
    value = "a%20b/%C3%A9?x=1&y=2#frag+/="
    assert getattr(make(**{field: value}), field) == value


@pytest.mark.parametrize("field", ["source", "subject"])
def test_required_uri_fields_reject_empty(field: str) -> None:
    raises_field(field, "non-empty", **{field: ""})


@pytest.mark.parametrize("field", ["dataschema", "to", "redirectto"])
def test_optional_uri_fields_reject_empty(field: str) -> None:
    raises_field(field, "non-empty", **{field: ""})


def test_id_must_be_non_empty() -> None:
    raises_field("id", "non-empty", id="")


@pytest.mark.parametrize("value", ["2.0", "1", "1.0 ", ""])
def test_specversion(value: str) -> None:
    raises_field("specversion", "'1.0'", repr(value), specversion=value)


@pytest.mark.parametrize("value", ["text/plain", "application/xml", "application/cloudevents"])
def test_datacontenttype_rejected(value: str) -> None:
    raises_field(
        "datacontenttype",
        "application/cloudevents+json",
        "application/json",
        repr(value),
        datacontenttype=value,
    )


@pytest.mark.parametrize(
    "value", ["application/json", "application/cloudevents+json", "application/json; charset=utf-8"]
)
def test_datacontenttype_accepted(value: str) -> None:
    assert make(datacontenttype=value).datacontenttype == value


def test_datacontenttype_empty() -> None:
    raises_field("datacontenttype", "non-empty", datacontenttype="")


@pytest.mark.parametrize(
    ("value", "name"), [([1, 2], "list"), ("x", "str"), (3, "int"), (None, "NoneType")]
)
def test_data_must_be_object(value: Any, name: str) -> None:
    raises_field("data", "must be an object", name, data=value)


def test_data_may_be_a_struct() -> None:
    class Payload(msgspec.Struct):
        a: int

    assert make(data=Payload(1)).data == Payload(1)


@pytest.mark.parametrize(
    "value",
    [
        "2025-01-03T09:57:04.123",  # no offset
        "2025-01-03 09:57:04.123+00:00",  # space
        "2025-01-03",
        "yesterday",
        "",
        "2025-13-03T09:57:04.123+00:00",  # month 13
        "2025-01-32T09:57:04+00:00",
        "2025-01-03T25:57:04+00:00",
        "2025-01-03T09:57:04.123+00:00\n",
    ],
)
def test_time_rejected(value: str) -> None:
    raises_field("time", repr(value), time=value)


def test_time_without_offset_message() -> None:
    raises_field("time", "offset", time="2025-01-03T09:57:04.123")


def test_time_non_string() -> None:
    raises_field("time", time=12345)


@pytest.mark.parametrize(
    "value",
    [
        "2025-01-03T09:57:04.123+00:00",
        "2025-01-03T09:57:04Z",
        "2025-01-03T09:57:04.123456-05:30",
        "2025-01-03T09:57:04+02:00",
    ],
)
def test_time_accepted(value: str) -> None:
    assert make(time=value).time == value


@pytest.mark.parametrize(
    "value", ["", "Human.review", "human-review", "human review", "a_b", "a\n"]
)
def test_domain_rejected(value: str) -> None:
    raises_field("domain", "lowercase letters, digits and dots", repr(value), domain=value)


@pytest.mark.parametrize("value", ["human.review", "a", "eu1", "a.b.c.1"])
def test_domain_accepted(value: str) -> None:
    assert make(domain=value).domain == value


@pytest.mark.parametrize("field", ["accesscontrol", "parentid", "traceparent", "tracestate"])
def test_optional_strings_reject_empty(field: str) -> None:
    raises_field(field, "non-empty", **{field: ""})


def test_accesscontrol_free_form() -> None:
    value = "user:1; role:a b /%zz"
    assert make(accesscontrol=value).accesscontrol == value


@pytest.mark.parametrize("value", ["5", True, False, [1], {"a": 1}])
def test_executionunits_must_be_number(value: Any) -> None:
    raises_field("executionunits", "must be a number", repr(value), executionunits=value)


@pytest.mark.parametrize("value", [0, 3, 2.5, -1.0])
def test_executionunits_accepted(value: float) -> None:
    assert make(executionunits=value).executionunits == value


@pytest.mark.parametrize(
    "key",
    ["Tenant", "ten-ant", "ten_ant", "", "tenant\n", "to", "id", "domain", "data", "extensions"],
)
def test_extension_key_rules(key: str) -> None:
    raises_field(f"extensions.{key}", "lowercase letters and digits", extensions={key: "v"})


@pytest.mark.parametrize(("value", "name"), [([1], "list"), ({"a": 1}, "dict"), (b"x", "bytes")])
def test_extension_value_rules(value: Any, name: str) -> None:
    raises_field(
        "extensions.tenant", "string, number, bool or null", name, extensions={"tenant": value}
    )


def test_extension_values_accepted() -> None:
    ext = {"s": "x", "i": 1, "f": 1.5, "b": False, "n": None, "k9": "y"}
    assert make(extensions=ext).extensions == ext


def test_event_error_is_value_error() -> None:
    error = raises_field("type", type="bad")
    assert isinstance(error, ValueError)


def test_otel_attributes() -> None:
    event = make(id="e1", time="2025-01-03T09:57:04.123+00:00")
    attrs = event.otel_attributes()
    assert attrs["cloudevents.event_id"] == "e1"
    assert attrs["cloudevents.event_type"] == "com.test.event"
    assert attrs["cloudevents.event_dataschema"] == "N/A"
    assert attrs["cloudevents.arvo.event_to"] == "com.test.event"
    assert attrs["cloudevents.arvo.event_executionunits"] == "N/A"
    assert attrs["cloudevents.arvo.event_domain"] == "N/A"
    assert make(executionunits=0).otel_attributes()["cloudevents.arvo.event_executionunits"] == 0


# --- JSON shape and key order ---------------------------------------------------------------


def test_json_is_flat_with_arvo_key_order() -> None:
    event = Event(**FULL)
    out = json.loads(to_json(event))
    assert list(out) == [*CLOUDEVENT_KEYS, "tenant", "retries", "urgent", "note", *ARVO_KEYS]
    assert out == {
        "id": "evt-1",
        "source": "com.test.source",
        "specversion": "1.0",
        "type": "com.test.event",
        "subject": "subject-1",
        "datacontenttype": ARVO_CONTENT_TYPE,
        "dataschema": "#/contracts/test/1.0.0",
        "data": {"k": 1},
        "time": "2025-01-03T09:57:04.123+00:00",
        "tenant": "acme",
        "retries": 3,
        "urgent": True,
        "note": None,
        "to": "com.test.target",
        "accesscontrol": "role:admin;user:1",
        "redirectto": "com.test.redirect",
        "executionunits": 2.5,
        "parentid": "evt-0",
        "domain": "human.review",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "rojo=00f067aa0ba902b7",
    }
    assert "extensions" not in out


def test_json_key_order_without_extensions_has_nulls() -> None:
    out = json.loads(to_json(make()))
    assert list(out) == CLOUDEVENT_KEYS + ARVO_KEYS
    assert out["dataschema"] is None
    assert out["to"] == "com.test.event"
    assert out["domain"] is None


def test_to_dict_matches_json() -> None:
    event = Event(**FULL)
    assert to_dict(event) == json.loads(to_json(event))
    assert list(to_dict(event)) == list(json.loads(to_json(event)))


def test_struct_data_serialises_like_its_dict() -> None:
    class Inner(msgspec.Struct):
        flag: bool

    class Payload(msgspec.Struct):
        order_id: str
        amount: int
        inner: Inner
        tags: list[str]

    common = {**FULL, "data": None}
    as_struct = Event(**{**common, "data": Payload("o1", 5, Inner(True), ["a"])})
    as_dict = Event(
        **{
            **common,
            "data": {"order_id": "o1", "amount": 5, "inner": {"flag": True}, "tags": ["a"]},
        }
    )
    assert to_json(as_struct) == to_json(as_dict)
    assert to_msgpack(as_struct) == to_msgpack(as_dict)
    assert to_dict(as_struct)["data"] == {
        "order_id": "o1",
        "amount": 5,
        "inner": {"flag": True},
        "tags": ["a"],
    }
    assert from_json(to_json(as_struct)) == as_dict


# --- round trips ---------------------------------------------------------------------------


def test_json_round_trip() -> None:
    event = Event(**FULL)
    back = from_json(to_json(event))
    assert back == event
    assert to_json(back) == to_json(event)
    assert from_json(to_json(event).decode()) == event


def test_msgpack_round_trip() -> None:
    event = Event(**FULL)
    back = from_msgpack(to_msgpack(event))
    assert back == event
    assert to_msgpack(back) == to_msgpack(event)


def test_from_dict_routes_unknown_keys_to_extensions() -> None:
    raw = to_dict(make(id="e", time="2025-01-03T09:57:04.123+00:00"))
    raw["tenant"] = "acme"
    event = from_dict(raw)
    assert event.extensions == {"tenant": "acme"}
    assert event.id == "e"


def test_from_dict_missing_to_defaults_to_type() -> None:
    raw = {
        "id": "e",
        "source": "com.a.b",
        "type": "com.a.b",
        "subject": "s",
        "data": {},
        "time": "2025-01-03T09:57:04.123+00:00",
    }
    event = from_dict(raw)
    assert event.to == "com.a.b"
    assert event.specversion == "1.0"


def test_from_dict_validates() -> None:
    raw = to_dict(make())
    raw["type"] = "com.bad"
    with pytest.raises(EventError) as info:
        from_dict(raw)
    assert info.value.field == "type"


def test_from_dict_rejects_bad_extension_key() -> None:
    raw = to_dict(make())
    raw["Bad-Key"] = 1
    with pytest.raises(EventError) as info:
        from_dict(raw)
    assert info.value.field == "extensions.Bad-Key"


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"id": "x"', "\u00e9{"])
def test_from_json_malformed(raw: bytes | str) -> None:
    with pytest.raises(EventError) as info:
        from_json(raw)
    assert info.value.field == "<event>"
    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize(("raw", "name"), [(b"[]", "list"), (b"1", "int"), (b'"x"', "str")])
def test_from_json_non_object(raw: bytes, name: str) -> None:
    with pytest.raises(EventError) as info:
        from_json(raw)
    assert info.value.field == "<event>"
    assert "JSON object" in str(info.value)
    assert name in str(info.value)


@pytest.mark.parametrize("missing", ["id", "source", "type", "subject", "data", "time"])
def test_from_json_missing_required(missing: str) -> None:
    raw = to_dict(make())
    del raw[missing]
    with pytest.raises(EventError) as info:
        from_json(json.dumps(raw))
    assert info.value.field == missing
    assert "is required" in str(info.value)


def test_from_msgpack_malformed() -> None:
    with pytest.raises(EventError) as info:
        from_msgpack(b"\xc1")
    assert info.value.field == "<event>"
    assert "not valid msgpack" in str(info.value)


def test_from_msgpack_non_object() -> None:
    with pytest.raises(EventError) as info:
        from_msgpack(msgspec.msgpack.encode([1, 2]))
    assert info.value.field == "<event>"


def test_from_msgpack_missing_required() -> None:
    raw = to_dict(make())
    del raw["subject"]
    with pytest.raises(EventError) as info:
        from_msgpack(msgspec.msgpack.encode(raw))
    assert info.value.field == "subject"


# --- property: valid events round-trip exactly ----------------------------------------------

_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
types = st.lists(_segment, min_size=3, max_size=5).map(".".join)
uris = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).map(encode_uri)
nonempty = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
domains = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=5), inner, max_size=3
        )
    ),
    max_leaves=10,
)
data_dicts = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), json_values, max_size=5
)
_known_names = set(CLOUDEVENT_KEYS + ARVO_KEYS + ["extensions"])
extension_dicts = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).filter(
        lambda k: k not in _known_names
    ),
    json_scalars,
    max_size=4,
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat(timespec="milliseconds"))


@st.composite
def events(draw: st.DrawFn) -> Event:
    optional = lambda strategy: draw(st.none() | strategy)  # noqa: E731
    return Event(
        id=draw(nonempty),
        source=draw(uris),
        type=draw(types),
        subject=draw(uris),
        data=draw(data_dicts),
        time=draw(times),
        dataschema=optional(uris),
        to=optional(uris),
        accesscontrol=optional(nonempty),
        redirectto=optional(uris),
        executionunits=optional(
            st.integers(min_value=0, max_value=10**6) | st.floats(0, 1e6, allow_nan=False)
        ),
        parentid=optional(nonempty),
        domain=optional(domains),
        traceparent=optional(nonempty),
        tracestate=optional(nonempty),
        extensions=draw(extension_dicts),
    )


@settings(max_examples=150, deadline=None)
@given(events())
def test_property_json_round_trip(event: Event) -> None:
    raw = to_json(event)
    back = from_json(raw)
    assert back == event
    assert to_json(back) == raw
    assert list(json.loads(raw))[: len(CLOUDEVENT_KEYS)] == CLOUDEVENT_KEYS
    assert list(json.loads(raw))[-len(ARVO_KEYS) :] == ARVO_KEYS


@settings(max_examples=150, deadline=None)
@given(events())
def test_property_msgpack_round_trip(event: Event) -> None:
    raw = to_msgpack(event)
    back = from_msgpack(raw)
    assert back == event
    assert to_msgpack(back) == raw
