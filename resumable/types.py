"""The shapes the package's parts meet at: what a broker delivers to, what a worker drives,
and the functions users write for workflows and services.

They live apart from the modules that use them so that a broker, the worker and the driver
can name each other's shapes without importing each other.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

from resumable.events import Event

if TYPE_CHECKING:
    from resumable.handler import Emit
    from resumable.memory import Memory
    from resumable.workflow import Context

__all__ = [
    "Handler",
    "HandlerFunction",
    "HandlerResult",
    "Leased",
    "Recoverable",
    "Timed",
    "WorkflowFunction",
]


@runtime_checkable
class Handler(Protocol):
    """Anything a broker can deliver to: ``EventHandler``, ``Resumable``, or your own."""

    @property
    def source(self) -> str: ...

    async def execute(self, event: Event) -> list[Event]: ...


@runtime_checkable
class Timed(Protocol):
    """A handler with durable timers (a ``Resumable``): the worker publishes the timer
    events of its due records."""

    @property
    def source(self) -> str: ...

    memory: Memory
    clock: Callable[[], str]

    async def timer_event(self, subject: str) -> Event | None: ...


@runtime_checkable
class Recoverable(Protocol):
    """A handler whose records hold an outbox of requests to re-send after a crash."""

    @property
    def source(self) -> str: ...

    async def outbox(self) -> list[Event]: ...


@runtime_checkable
class Leased(Protocol):
    """A handler that holds leases while its steps run (a ``Resumable``): the worker's
    heartbeat renews them every few seconds (a quarter of ``lock_ttl`` at most)."""

    lock_ttl: float

    async def renew_leases(self) -> int: ...


# Union and quoted names: Emit and Context are defined in modules that import this one.
HandlerResult = Union["Emit", Sequence["Emit"], None]
"""What a service function returns: one ``Emit``, a list of them, or None."""

HandlerFunction = Callable[[Event], Union[Awaitable[HandlerResult], HandlerResult]]  # noqa: UP007
"""A service function for one contract version: sync or async, event in, emits out."""

WorkflowFunction = Callable[["Context[Any]", Any], AsyncGenerator[Any, Any]]
"""A workflow version: ``async def fn(ctx, init_data)`` that yields requests."""
