"""How events travel between handlers and workflows.

A broker is a transport: ``publish`` puts an event on the queue of its ``to`` topic, and
``receive`` takes deliveries from a topic's queue, shared by every consumer of that topic
(a consumer group). Each delivery is settled once: ``ack`` (done), ``nack`` (deliver again
after a delay) or ``dead_letter`` (set aside with the reason). A delivery not settled
within the broker's ``ack_wait`` is delivered again, so delivery is at least once;
``resumable.worker.Worker`` runs handlers on any broker and makes processing effectively
once. ``LocalBroker`` also runs handlers itself, in process (``subscribe``, ``resolve``).

Events with a ``domain`` are not published: they are handed to the domain's owner
(``on_domain``), as Arvo does.

Every backend passes the same conformance suite (``tests/brokers/conformance.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from resumable.errors import SetupError
from resumable.events import Event
from resumable.types import Handler

__all__ = [
    "Broker",
    "DeadLetter",
    "Delivery",
    "DomainCallback",
    "ErrorCallback",
    "Handler",
    "LocalBroker",
    "from_url",
]


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


from resumable.brokers.local import LocalBroker  # noqa: E402


def from_url(url: str) -> Broker:
    """The broker a URL names: ``nats://host:4222``, ``redis://host:6379/0`` or ``local://``."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise SetupError(
            f"broker URL {url!r} has no scheme; use nats://..., redis://... or local://"
        )
    if scheme == "local":
        return LocalBroker()
    if scheme in ("nats", "tls"):
        from resumable.brokers.nats import NatsBroker

        return NatsBroker.from_url(url)
    if scheme in ("redis", "rediss"):
        from resumable.brokers.redis import RedisBroker

        return RedisBroker.from_url(url)
    raise SetupError(
        f"broker URL {url!r} has an unknown scheme {scheme!r}; use nats, redis or local"
    )


if TYPE_CHECKING:
    from resumable.brokers.nats import NatsBroker as NatsBroker
    from resumable.brokers.redis import RedisBroker as RedisBroker


def __getattr__(name: str) -> Any:
    """Import the brokers that need an optional client on first use."""
    if name == "NatsBroker":
        from resumable.brokers.nats import NatsBroker

        return NatsBroker
    if name == "RedisBroker":
        from resumable.brokers.redis import RedisBroker

        return RedisBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
