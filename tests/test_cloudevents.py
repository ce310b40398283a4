"""resumable.cloudevents against the official CloudEvents SDK (``cloudevents``), both its
current API (``cloudevents.core``) and the 1.x one (``cloudevents.v1``), in both modes."""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Any

import msgspec
import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from resumable.cloudevents import STRUCTURED_CONTENT_TYPE, from_http, to_http
from resumable.events import ARVO_CONTENT_TYPE, Event, EventError, to_dict
from resumable.subject import new_subject

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from cloudevents.v1.conversion import to_binary as v1_to_binary
    from cloudevents.v1.conversion import to_structured as v1_to_structured
    from cloudevents.v1.http import CloudEvent as V1Event
    from cloudevents.v1.http import from_http as v1_from_http

MODES = ["binary", "structured"]
SUBJECT = new_subject(orchestrator="arvo.orc.shop", version="1.0.0", initiator="com.shop.web")


class Charge(msgspec.Struct):
    order_id: str
    amount_cents: int


def _events() -> list[Event]:
    plain = Event(
        source="com.shop.web",
        type="com.payments.charge",
        subject=SUBJECT,
        data={"order_id": "o-1", "amount_cents": 4200, "note": "ünïcode ok"},
        dataschema="#/contracts/payments/1.0.0",
    )
    full = Event(
        source="arvo.orc.shop",
        type="evt.payments.charge.success",
        subject=SUBJECT,
        data=Charge("o-2", 1),
        dataschema="#/contracts/payments/1.0.0",
        to="com.shop.web",
        accesscontrol="role:admin;team: a",
        redirectto="com.shop.api",
        executionunits=2.5,
        parentid="req-1",
        domain="eu1.billing",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="vendor=a",
        extensions={"tenant": "t1"},
    )
    plain_json = msgspec.structs.replace(plain, datacontenttype="application/json", id="p-2")
    return [plain, full, plain_json]


def _wire(event: Event) -> dict[str, Any]:
    return to_dict(event)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_an_event_round_trips_through_http_in_each_mode(mode: Any, index: int) -> None:
    event = _events()[index]
    headers, body = to_http(event, mode)
    assert _wire(from_http(headers, body)) == _wire(event)


def test_content_types_are_the_ones_each_mode_needs() -> None:
    event = _events()[0]
    headers, body = to_http(event, "structured")
    assert headers == {"content-type": STRUCTURED_CONTENT_TYPE}
    assert msgspec.json.decode(body)["datacontenttype"] == ARVO_CONTENT_TYPE
    headers, body = to_http(event, "binary")
    assert headers["content-type"] == "application/json;charset=UTF-8;profile=arvo"
    assert headers["ce-specversion"] == "1.0" and headers["ce-subject"] == SUBJECT
    assert msgspec.json.decode(body) == event.data
    assert to_http(_events()[2], "binary")[0]["content-type"] == "application/json"


def test_binary_headers_are_percent_encoded_as_the_binding_says() -> None:
    headers, _ = to_http(_events()[1], "binary")
    assert headers["ce-accesscontrol"] == "role:admin;team:%20a"
    assert headers["ce-executionunits"] == "2.5" and headers["ce-tenant"] == "t1"
    assert "ce-data" not in headers and "ce-datacontenttype" not in headers


# ------------------------------------------------------------------------------------------
# the SDK receives what resumable sends


def _sdk_matches(received: Any, event: Event) -> None:
    attributes = received.get_attributes()
    wire = _wire(event)
    for name in ("id", "source", "type", "subject", "dataschema", "specversion"):
        assert attributes[name] == wire[name], name
    assert attributes["time"] == datetime.fromisoformat(event.time)
    for name in ("to", "parentid", "domain", "redirectto", "tenant"):
        if wire.get(name) is not None:
            assert str(attributes[name]) == str(wire[name]), name
    assert received.get_data() == wire["data"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_sdk_reads_what_resumable_sends(mode: Any, index: int) -> None:
    event = _events()[index]
    headers, body = to_http(event, mode)
    received = sdk_http.from_http(sdk_http.HTTPMessage(headers, body), JSONFormat())
    _sdk_matches(received, event)
    if mode == "binary":
        assert received.get_datacontenttype() == headers["content-type"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_sdk_1x_api_reads_what_resumable_sends(mode: Any, index: int) -> None:
    event = _events()[index]
    headers, body = to_http(event, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        received = v1_from_http(headers, body)
    wire = _wire(event)
    for name in ("id", "source", "type", "subject", "dataschema"):
        assert received[name] == wire[name], name
    assert received.data == wire["data"]
    if wire["parentid"] is not None:
        assert received["parentid"] == wire["parentid"]


# ------------------------------------------------------------------------------------------
# resumable receives what the SDK sends


def _sdk_event() -> SdkEvent:
    return SdkEvent(
        attributes={
            "id": "sdk-1",
            "source": "com.other.service",
            "type": "com.payments.charge",
            "subject": SUBJECT,
            "datacontenttype": "application/json",
            "dataschema": "#/contracts/payments/1.0.0",
            "time": datetime.fromisoformat("2026-01-01T10:00:00.123+00:00"),
            "parentid": "req-9",
            "tenant": "t2",
        },
        data={"order_id": "o-3", "amount_cents": 7},
    )


@pytest.mark.parametrize("mode", MODES)
def test_resumable_reads_what_the_sdk_sends(mode: str) -> None:
    make = sdk_http.to_binary_event if mode == "binary" else sdk_http.to_structured_event
    message = make(_sdk_event())
    event = from_http(message.headers, message.body)
    assert (event.id, event.type, event.parentid) == ("sdk-1", "com.payments.charge", "req-9")
    assert event.subject == SUBJECT and event.extensions == {"tenant": "t2"}
    assert event.data == {"order_id": "o-3", "amount_cents": 7}
    assert datetime.fromisoformat(event.time) == datetime.fromisoformat(
        "2026-01-01T10:00:00.123+00:00"
    )
    assert event.datacontenttype.startswith("application/json")


@pytest.mark.parametrize("mode", MODES)
def test_resumable_reads_what_the_sdk_1x_api_sends(mode: str) -> None:
    sdk = V1Event(
        {
            "id": "v1-1",
            "source": "com.other.service",
            "type": "com.payments.charge",
            "subject": SUBJECT,
            "time": "2026-01-01T10:00:00.123+00:00",
            "datacontenttype": "application/json",
            "executionunits": 3,
        },
        {"order_id": "o-4", "amount_cents": 9},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        headers, body = (v1_to_binary if mode == "binary" else v1_to_structured)(sdk)
    event = from_http(headers, body)
    assert event.id == "v1-1" and event.executionunits == 3
    assert event.data == {"order_id": "o-4", "amount_cents": 9}


# ------------------------------------------------------------------------------------------
# what is not a CloudEvent says so


def test_a_request_that_is_no_cloudevent_says_what_is_missing() -> None:
    with pytest.raises(EventError, match="no 'ce-specversion' header"):
        from_http({"Content-Type": "application/json"}, b"{}")


def test_a_batch_is_refused_with_the_reason() -> None:
    with pytest.raises(EventError, match="is a batch of events"):
        from_http({"content-type": "application/cloudevents-batch+json"}, b"[]")


def test_a_binary_body_that_is_not_json_names_the_data_field() -> None:
    headers, _ = to_http(_events()[0], "binary")
    with pytest.raises(EventError, match="'data': the body of a binary-mode event must be JSON"):
        from_http(headers, b"not json")


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="takes 'binary' or 'structured'"):
        to_http(_events()[0], "batch")  # type: ignore[arg-type]
