"""A signal's form, generated from its contract's JSON Schema, and the payload read back
from what was submitted, checked against the contract before anything is sent.

Each top-level property of the payload's schema is one field: text for a string, a number
input for an integer or a number, a checkbox for a boolean, a list for an enum, and a JSON
text area for anything else (objects, arrays, unions). The contract has the last word:
the payload built from the fields is converted with msgspec into the contract's Struct.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import msgspec

from resumable.contracts import Contract
from resumable.errors import ResumableError

__all__ = ["Field", "FormError", "SignalForm", "form_for", "read_payload"]


class FormError(ResumableError, ValueError):
    """What was wrong with a submitted form, said for the person who filled it in."""


@attrs.frozen
class Field:
    """One input of a generated form."""

    name: str
    kind: str
    """``text``, ``integer``, ``number``, ``boolean``, ``select`` or ``json``."""
    required: bool
    nullable: bool
    default: str
    """The default as the input shows it ('' for none)."""
    has_default: bool
    choices: list[str] = attrs.Factory(list)
    description: str = ""
    value: str = ""
    """What was submitted, to show the form again after an error."""


@attrs.frozen
class SignalForm:
    """The form for one signal of a workflow."""

    type: str
    fields: list[Field]
    free: bool
    """True for a signal without a contract: its payload is one JSON text area."""


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(root["$defs"][ref.removeprefix("#/$defs/")], root)
    return schema


def _field(name: str, prop: Mapping[str, Any], root: Mapping[str, Any], required: bool) -> Field:
    prop = _resolve(prop, root)
    nullable = False
    options = prop.get("anyOf")
    if isinstance(options, list):
        kept = [_resolve(o, root) for o in options if o.get("type") != "null"]
        nullable = len(kept) < len(options)
        prop = {**prop, **kept[0]} if len(kept) == 1 else prop
    has_default = "default" in prop
    default = prop.get("default")
    shown = default if isinstance(default, str) else "" if default is None else json.dumps(default)
    kind = "json"
    choices: list[str] = []
    if "enum" in prop:
        kind, choices = "select", [str(choice) for choice in prop["enum"]]
    elif prop.get("type") == "string" and "format" not in prop:
        kind = "text"
    elif prop.get("type") in ("integer", "number", "boolean"):
        kind = str(prop["type"])
    if kind == "boolean":
        shown = "true" if default is True else ""
    return Field(
        name=name,
        kind=kind,
        required=required and not has_default,
        nullable=nullable,
        default=shown,
        has_default=has_default,
        choices=choices,
        description=str(prop.get("description", "")),
    )


def form_for(type_: str, contract: Contract | None) -> SignalForm:
    """The form for signal ``type_``; ``contract`` None for a signal listed as a bare type."""
    if contract is None:
        return SignalForm(type_, [Field("payload", "json", False, True, "null", True)], True)
    root = msgspec.json.schema(contract.latest.accepts)
    schema = _resolve(root, root)
    required = set(schema.get("required", []))
    fields = [
        _field(name, prop, root, name in required)
        for name, prop in schema.get("properties", {}).items()
    ]
    return SignalForm(type_, fields, False)


def _value(field: Field, raw: str | None) -> tuple[bool, Any]:
    """(present, value) of one submitted field."""
    if field.kind == "boolean":
        return True, raw is not None
    text = (raw or "").strip() if field.kind != "text" else (raw or "")
    if text == "":
        if field.nullable:
            return True, None
        if field.has_default:
            return False, None
        if field.kind == "text" and not field.required:
            return True, ""
        raise FormError(f"{field.name} is required")
    if field.kind == "integer":
        try:
            return True, int(text)
        except ValueError:
            raise FormError(f"{field.name} must be a whole number, got {text!r}") from None
    if field.kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise FormError(f"{field.name} must be a number, got {text!r}") from None
        if not math.isfinite(number):
            raise FormError(f"{field.name} must be a finite number, got {text!r}")
        return True, number
    if field.kind == "json":
        try:
            return True, json.loads(text)
        except ValueError as error:
            raise FormError(f"{field.name} is not valid JSON: {error}") from None
    if field.kind == "select" and text not in field.choices:
        raise FormError(f"{field.name} must be one of {', '.join(field.choices)}, got {text!r}")
    return True, text


def read_payload(form: SignalForm, values: Mapping[str, str], contract: Contract | None) -> Any:
    """The signal's payload from the submitted ``values`` (``field.<name>`` keys), checked
    against ``contract``. Raises ``FormError`` saying which field is wrong and why."""
    data: dict[str, Any] = {}
    for field in form.fields:
        present, value = _value(field, values.get(f"field.{field.name}"))
        if present:
            data[field.name] = value
    if form.free:
        return data["payload"]
    assert contract is not None
    schema = contract.latest.accepts
    if any(f.kind == "select" for f in form.fields):  # enum values may be numbers
        data = _enums(data, schema)
    try:
        msgspec.convert(data, schema)
    except msgspec.ValidationError as error:
        raise FormError(f"the signal's contract refuses this payload: {error}") from None
    return data


def _enums(data: dict[str, Any], schema: type[msgspec.Struct]) -> dict[str, Any]:
    """Enum choices come back as text: give numeric ones their number again."""
    root = msgspec.json.schema(schema)
    props = _resolve(root, root).get("properties", {})
    out = dict(data)
    for name, value in data.items():
        prop = _resolve(props.get(name, {}), root)
        for choice in prop.get("enum", []):
            if str(choice) == value:
                out[name] = choice
    return out


def with_values(form: SignalForm, values: Mapping[str, str]) -> SignalForm:
    """The same form showing what was submitted (after an error)."""
    fields = [attrs.evolve(f, value=values.get(f"field.{f.name}", "")) for f in form.fields]
    return attrs.evolve(form, fields=fields)
