"""Fake services for workflow tests: a plain function, or scripted replies, per contract.

Both become real ``EventHandler``s, so a fake answers exactly as a service would: its
replies are validated against the contract, their ids derive from the request's id, and an
exception becomes a ``sys.<type>.error`` reply (a ``ServiceError`` in the workflow).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from resumable.contracts import Contract, VersionedContract
from resumable.errors import ConfigViolation, ResumableError
from resumable.events import Event
from resumable.handler import Emit, EventHandler

__all__ = ["NEVER", "Fail", "ScriptExhausted", "fake", "script"]


class _Never:
    """The reply of a service that never answers (a lost request, a dead service)."""

    def __repr__(self) -> str:
        return "NEVER"


NEVER: Final = _Never()
"""A scripted reply, or a fake's return value: the service does not answer at all."""


class Fail(ResumableError):
    """A scripted system error: the service fails with ``message`` (its ``errorName`` is
    ``name``), so the workflow gets a ``sys.<type>.error`` reply (``ServiceError``)."""

    def __init__(self, message: str = "scripted failure", name: str = "Fail") -> None:
        super().__init__(message)
        self.name = name

    def __repr__(self) -> str:
        return f"Fail({str(self)!r}, name={self.name!r})"


class ScriptExhausted(ConfigViolation):
    """A scripted service got more distinct requests than it has replies. A violation, so
    the service raises it to the test instead of answering with a system error."""


def _emit(versioned: VersionedContract, value: Any) -> Any:
    """``value`` as what an EventHandler function returns: a reply Struct becomes an
    ``Emit`` of the one type the contract declares for that Struct."""
    if value is None or value is NEVER:
        return None
    if isinstance(value, Emit) or (isinstance(value, list) and value):
        return value
    if isinstance(value, msgspec.Struct):
        types = [t for t, schema in versioned.emits.items() if schema is type(value)]
        if len(types) == 1:
            return Emit(types[0], value)
        raise TypeError(
            f"fake {versioned.type}: {type(value).__name__} is the payload of "
            f"{'several' if types else 'none'} of the types {versioned.type} emits "
            f"({', '.join(versioned.emits)}); return Emit(type, payload) to say which"
        )
    raise TypeError(
        f"fake {versioned.type} returned {value!r}; return a reply Struct, Emit(...), a list "
        "of Emit, NEVER or None"
    )


def _raise(value: Any) -> None:
    if isinstance(value, Fail):
        raise type(value.name, (RuntimeError,), {})(str(value))  # errorName: the class name
    if isinstance(value, BaseException):
        raise value


def fake(contract: Contract, fn: Callable[[Any], Any]) -> EventHandler:
    """A service for ``contract`` that answers with ``fn(request)``: ``request`` is the
    typed payload; ``fn`` (sync or async) returns a reply Struct, ``Emit``, ``NEVER`` or
    None, or raises (a system error reply). Every version of the contract is served."""

    def version(versioned: VersionedContract) -> Callable[[Event], Any]:
        async def handle(event: Event) -> Any:
            value = fn(event.data)
            if inspect.isawaitable(value):
                value = await value
            _raise(value)
            return _emit(versioned, value)

        handle.__qualname__ = f"fake<{contract.type}>"
        return handle

    return EventHandler(contract, versions={v: version(c) for v, c in contract.versions.items()})


def script(contract: Contract, replies: Iterable[Any]) -> EventHandler:
    """A service for ``contract`` that answers its requests with ``replies`` in order: a
    reply Struct, ``Emit``, ``Fail(...)`` (a system error) or ``NEVER`` (no answer). A
    request delivered again gets the answer of its first delivery (it is one request);
    more requests than replies raise ``ScriptExhausted``."""
    items = list(replies)
    answered: dict[str, Any] = {}

    def version(versioned: VersionedContract) -> Callable[[Event], Any]:
        async def handle(event: Event) -> Any:
            if event.id not in answered:
                if len(answered) >= len(items):
                    raise ScriptExhausted(
                        f"script for {contract.type} has {len(items)} replies, and request "
                        f"{event.id} is number {len(answered) + 1}; add replies to the script"
                    )
                answered[event.id] = items[len(answered)]
            value = answered[event.id]
            _raise(value)
            return _emit(versioned, value)

        return handle

    return EventHandler(contract, versions={v: version(c) for v, c in contract.versions.items()})
