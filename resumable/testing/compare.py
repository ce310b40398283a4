"""What is identical when an event is delivered again: the determinism promise, exactly.

A workflow answers a redelivered event with the events it produced the first time, read
back from its journal: byte-identical. A service (``EventHandler``) runs again: its replies
have the same ids (derived from the request's id) and, if its function gives the same
answer, the same payload and every other attribute, except the three that describe the
new execution: ``time``, ``traceparent`` and ``tracestate``. The kit compares the rest.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from resumable.events import Event, to_dict

__all__ = ["PER_EXECUTION", "differences", "identity"]

PER_EXECUTION: Final = ("time", "traceparent", "tracestate")
"""The attributes a service's reply may change when its request is delivered again."""


def identity(event: Event) -> dict[str, Any]:
    """Everything a redelivery keeps: the event as plain data, less ``PER_EXECUTION``."""
    plain = to_dict(event)
    plain["data"] = msgspec.to_builtins(plain["data"])
    for name in PER_EXECUTION:
        plain.pop(name, None)
    return plain


def differences(first: Event, again: Event) -> list[str]:
    """The attributes (outside ``PER_EXECUTION``) in which ``again`` differs from ``first``,
    each as ``name: first -> again``; empty if the redelivery kept its promise."""
    a, b = identity(first), identity(again)
    return [
        f"{name}: {a.get(name)!r} -> {b.get(name)!r}"
        for name in sorted(a.keys() | b.keys())
        if a.get(name) != b.get(name)
    ]
