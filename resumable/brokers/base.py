"""The broker interface: a transport with at-least-once delivery, and what it delivers.

``Broker`` publishes events to topic queues and hands out ``Delivery`` objects that are
settled once (ack, nack with a delay, dead letter). ``Handler`` is anything a worker runs.
One module per backend sits beside this one; every backend passes
``tests/brokers/conformance.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

import msgspec

from resumable.events import Event
from resumable.types import Handler

__all__ = ["Broker", "DeadLetter", "Delivery", "DomainCallback", "ErrorCallback", "Handler"]


ErrorCallback = Callable[[BaseException, Event], Awaitable[None] | None]
"""Called with the error and the event whose delivery failed."""

DomainCallback = Callable[[Event, "Broker"], Awaitable[None] | None]
"""Called with an event that has a domain, instead of publishing it."""


class Delivery(abc.ABC):
    """One delivery of one event from a topic's queue. Settle it exactly once."""

    event: Event
    topic: str
    attempt: int
    """1 on the first delivery, 2 on the second, and so on (redelivery counts too)."""
    _settled: str | None = None
    """How it was settled (acked, nacked, ...), once a settle began."""

    def _mark_settled(self, how: str) -> None:
        """Note that this delivery is being settled ``how``; settling twice is a bug."""
        if self._settled is not None:
            raise RuntimeError(
                f"delivery {self.attempt} of event {self.event.id} on topic {self.topic!r} "
                f"was already settled ({self._settled}); settle each delivery exactly once"
            )
        self._settled = how

    @abc.abstractmethod
    async def ack(self) -> None:
        """The event is handled: never deliver it again."""

    @abc.abstractmethod
    async def nack(self, delay: float = 0.0) -> None:
        """Deliver the event again, no sooner than ``delay`` seconds from now."""

    @abc.abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Set the event aside on the topic's dead-letter queue with ``reason``; it is
        not delivered again."""

    @abc.abstractmethod
    async def extend(self) -> None:
        """Still working on it: restart the broker's ack deadline (``ack_wait``) from now, so
        the event is not delivered to another consumer meanwhile.

        A ``Worker`` calls it periodically while a delivery runs, so a short ``ack_wait``
        moves a dead worker's deliveries on quickly without redelivering slow ones. Does
        nothing once the delivery is settled, or once its deadline passed and the event
        went to another consumer (it is not taken back)."""


class DeadLetter(msgspec.Struct, frozen=True):
    """An event set aside by ``Delivery.dead_letter``."""

    event: Event
    topic: str
    reason: str
    attempts: int


class Broker(abc.ABC):
    """The interface every broker implements: a transport with at-least-once delivery."""

    @abc.abstractmethod
    async def publish(self, event: Event) -> None:
        """Put ``event`` on the queue of the topic ``event.to``; durable when this returns
        (to the backend's promise). A second publish of the same event id within the
        broker's duplicate window (two minutes by default) is dropped, so a retried
        publish, or one event published by several processes, is delivered once."""

    @abc.abstractmethod
    async def receive(
        self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries from ``topic``, oldest first, waiting up to
        ``timeout`` seconds for the first; ``[]`` if none came. Consumers of one topic
        share its queue: each message goes to one of them at a time."""

    @abc.abstractmethod
    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        """What was dead-lettered from ``topic``, oldest first."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering and release resources."""
