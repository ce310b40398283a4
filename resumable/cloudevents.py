"""Events over HTTP, in both content modes of the CloudEvents HTTP binding.

``to_http(event, mode)`` gives the headers and body to send; ``from_http(headers, body)``
reads either mode back into an ``Event``. Structured mode sends the whole event as
``application/cloudevents+json``. Binary mode sends the payload as the body and every
attribute as a ``ce-`` header; its ``content-type`` is the payload's media type, so Arvo's
``application/cloudevents+json;...;profile=arvo`` goes out as
``application/json;...;profile=arvo`` (a receiver must not read the body as a whole event)
and comes back as Arvo's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote, unquote

import msgspec

from resumable.events import ARVO_CONTENT_TYPE, Event, EventError, from_dict, from_json, to_dict
from resumable.events import to_json as _to_json

__all__ = [
    "BINARY",
    "STRUCTURED",
    "STRUCTURED_CONTENT_TYPE",
    "Mode",
    "from_http",
    "to_http",
]

Mode = Literal["binary", "structured"]
BINARY: Final = "binary"
STRUCTURED: Final = "structured"

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
"""The ``content-type`` of a structured-mode request."""

_CE_JSON: Final = "application/cloudevents+json"
_BATCH: Final = "application/cloudevents-batch+json"
_JSON: Final = "application/json"
_ARVO_BINARY: Final = ARVO_CONTENT_TYPE.replace(_CE_JSON, _JSON)
_PREFIX: Final = "ce-"

# The HTTP binding (3.1.3.2): printable ASCII is sent as is, except space, '"' and '%'.
_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _binary_content_type(datacontenttype: str) -> str:
    """The payload's media type: a ``cloudevents+json`` one is plain JSON in binary mode."""
    if _media_type(datacontenttype) == _CE_JSON:
        _, _, params = datacontenttype.partition(";")
        return f"{_JSON};{params}" if params else _JSON
    return datacontenttype


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return quote(text, safe=_SAFE)


def to_http(event: Event, mode: Mode = STRUCTURED) -> tuple[dict[str, str], bytes]:
    """The headers and body that send ``event`` over HTTP in ``mode``."""
    if mode == STRUCTURED:
        return {"content-type": STRUCTURED_CONTENT_TYPE}, _to_json(event)
    if mode != BINARY:
        raise ValueError(f"to_http(mode=...) takes 'binary' or 'structured', got {mode!r}")
    headers = {"content-type": _binary_content_type(event.datacontenttype)}
    for name, value in to_dict(event).items():
        if name in ("data", "datacontenttype") or value is None:
            continue
        headers[_PREFIX + name] = _header_value(value)
    data = event.data
    body = msgspec.json.encode(
        msgspec.to_builtins(data) if isinstance(data, msgspec.Struct) else data
    )
    return headers, body


def from_http(headers: Mapping[str, str], body: bytes | str) -> Event:
    """The event an HTTP request carries, in either mode (told apart as the binding says:
    a ``cloudevents`` content type is structured, ``ce-specversion`` is binary)."""
    lowered = {name.lower(): str(value) for name, value in headers.items()}
    content_type = lowered.get("content-type", "")
    media = _media_type(content_type)
    if media == _BATCH:
        raise EventError(
            "content-type",
            f"{content_type!r} is a batch of events; from_http reads one event: send "
            "each event in its own request",
        )
    if media.startswith("application/cloudevents"):
        if media != _CE_JSON:
            raise EventError(
                "content-type",
                f"structured mode {content_type!r} is not supported; send "
                f"{STRUCTURED_CONTENT_TYPE!r} or use binary mode",
            )
        return from_json(body)
    if f"{_PREFIX}specversion" not in lowered:
        raise EventError(
            "<event>",
            f"the request is not a CloudEvent: its content-type {content_type!r} is not "
            f"{_CE_JSON!r} (structured mode) and it has no 'ce-specversion' header "
            "(binary mode)",
        )
    return _from_binary(lowered, content_type, body)


def _from_binary(headers: dict[str, str], content_type: str, body: bytes | str) -> Event:
    attributes: dict[str, Any] = {
        name[len(_PREFIX) :]: unquote(str(value))
        for name, value in headers.items()
        if name.startswith(_PREFIX)
    }
    if "executionunits" in attributes:
        attributes["executionunits"] = _number(attributes["executionunits"])
    if not content_type:
        attributes["datacontenttype"] = _JSON
    elif content_type.replace(" ", "") == _ARVO_BINARY:
        attributes["datacontenttype"] = ARVO_CONTENT_TYPE
    else:
        attributes["datacontenttype"] = content_type
    try:
        attributes["data"] = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError as error:
        raise EventError(
            "data", f"the body of a binary-mode event must be JSON ({content_type!r}): {error}"
        ) from None
    return from_dict(attributes)


def _number(text: str) -> float | int | str:
    """``ce-executionunits`` as the number it was; left as text (and rejected) otherwise."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
