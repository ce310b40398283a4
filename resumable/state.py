"""Explicit state to and from plain data: the one cattrs converter of the package.

A workflow's state is an attrs class; the record stores it as plain data (msgpack), and
status queries turn it back into the class. Both directions go through ``converter`` so
that a hook registered on it applies to both.
"""

from __future__ import annotations

from typing import Any, TypeVar

import cattrs

__all__ = ["converter", "new_state", "structure_state", "unstructure_state"]

S = TypeVar("S")

converter = cattrs.Converter()
"""The converter for explicit state; register hooks here for types cattrs cannot handle."""


def new_state(state_type: type[S] | None) -> S | None:
    """A fresh state for a new instance: ``state_type()``, or None for a stateless workflow."""
    return state_type() if state_type is not None else None


def unstructure_state(state: Any) -> Any:
    """The state as plain data for the record (None stays None)."""
    return None if state is None else converter.unstructure(state)


def structure_state(data: Any, state_type: type[S] | None) -> Any:
    """Stored plain data back as ``state_type``; as it is without a type, or for None."""
    if state_type is None or data is None:
        return data
    return converter.structure(data, state_type)
