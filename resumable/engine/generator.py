"""Stepping a workflow's async generator by hand, without an event loop.

The driver advances a generator with ``asend``/``athrow`` and runs the resulting awaitable
itself. A real ``yield`` shows up as ``StopIteration``; an ``await`` that suspends on the
loop shows up as a yielded future, which gets a ``WorkflowAwaitError`` thrown in at that
line: workflow code is replayed, so it must not wait on anything itself.
"""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncGenerator
from typing import Any, cast, get_args

import attrs

from resumable.errors import WorkflowAwaitError
from resumable.workflow import Request

__all__ = [
    "Ended",
    "Invalid",
    "Outcome",
    "Raised",
    "WorkflowAwaitError",
    "Yielded",
    "as_request",
    "describe",
    "step",
]


@attrs.frozen
class Yielded:
    value: Any


@attrs.frozen
class Ended:
    pass


@attrs.frozen
class Raised:
    error: BaseException


Outcome = Yielded | Ended | Raised


@attrs.frozen
class Invalid:
    """Something a workflow yielded that is not a request (a bare value, a coroutine)."""

    value: Any


_REQUESTS = get_args(Request)


def as_request(value: Any) -> Request | Invalid:
    """What a workflow yielded, typed: one of the ``Request`` kinds, or ``Invalid``. Code
    that acts on it matches every kind, so mypy names each place a new kind must handle."""
    return value if isinstance(value, _REQUESTS) else Invalid(value)


def _ignore_firstiter(agen: Any) -> None:
    return None


def _drop_finalizer(agen: Any) -> None:
    """Installed as the finalizer of every workflow generator: eviction runs no user code."""
    return None


def describe(outcome: Outcome) -> str:
    """What a step did, as journaled and compared on replay: ``call com.x.y``, ``end`` ..."""
    if isinstance(outcome, Yielded):
        value = outcome.value
        method = getattr(value, "describe", None)
        return method() if callable(method) else f"yield {type(value).__name__}"
    if isinstance(outcome, Ended):
        return "end"
    return f"raise {type(outcome.error).__name__}"


def step(
    gen: AsyncGenerator[Any, Any], value: Any = None, error: BaseException | None = None
) -> Outcome:
    """Advance the generator to its next ``yield``, sending ``value`` or throwing ``error``."""
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=_ignore_firstiter, finalizer=_drop_finalizer)
    try:
        awaitable = gen.athrow(error) if error is not None else gen.asend(value)
        throw: BaseException | None = None
        while True:
            try:
                pending = awaitable.throw(throw) if throw is not None else awaitable.send(None)
            except StopIteration as stop:
                return Yielded(stop.value)
            except StopAsyncIteration:
                return Ended()
            except BaseException as raised:
                return Raised(raised)
            cancel = getattr(pending, "cancel", None)
            if callable(cancel):
                cancel()
            agen = cast(types.AsyncGeneratorType[Any, Any], gen)
            frame = agen.ag_frame
            where = f"line {frame.f_lineno} of {frame.f_code.co_filename}" if frame else "?"
            throw = WorkflowAwaitError(
                f"workflow {agen.ag_code.co_name!r} awaited something that waits on the event "
                f"loop at {where}. Workflow code is replayed and must not wait itself: use "
                "'yield call(...)' to ask a service, 'yield step(fn)' to run local code once, "
                "'yield gather(...)' to run several at once and 'yield sleep(...)' to wait; "
                "asyncio.sleep, asyncio.gather and I/O are not allowed here."
            )
    finally:
        sys.set_asyncgen_hooks(*hooks)
