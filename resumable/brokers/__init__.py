"""How events travel between handlers and workflows.

A broker delivers each event to the one handler subscribed to the event's ``to`` topic and
publishes what the handler returns. Events with a ``domain`` are not published: they are
handed to the domain's owner (``on_domain``), as Arvo does.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from resumable.events import Event

__all__ = ["Broker", "DomainCallback", "ErrorCallback", "Handler", "LocalBroker"]


@runtime_checkable
class Handler(Protocol):
    """Anything a broker can deliver to: ``EventHandler``, ``Resumable``, or your own."""

    @property
    def source(self) -> str: ...

    async def execute(self, event: Event) -> list[Event]: ...


ErrorCallback = Callable[[BaseException, Event], Awaitable[None] | None]
"""Called with the error and the event whose delivery failed."""

DomainCallback = Callable[[Event, "Broker"], Awaitable[None] | None]
"""Called with an event that has a domain, instead of publishing it."""


class Broker(abc.ABC):
    """The interface every broker implements."""

    @abc.abstractmethod
    async def publish(self, event: Event) -> None:
        """Send ``event`` to the handler subscribed to ``event.to``."""

    @abc.abstractmethod
    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Deliver events addressed to ``topic`` to ``handler``; returns an unsubscribe."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering and release resources."""


from resumable.brokers.local import LocalBroker  # noqa: E402
