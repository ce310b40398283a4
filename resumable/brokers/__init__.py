"""How events travel between handlers and workflows.

A broker is a transport: ``publish`` puts an event on the queue of its ``to`` topic, and
``receive`` takes deliveries from a topic's queue, shared by every consumer of that topic
(a consumer group). Each delivery is settled once: ``ack`` (done), ``nack`` (deliver again
after a delay) or ``dead_letter`` (set aside with the reason). A delivery not settled
within the broker's ``ack_wait`` (5 s by default; ``extend`` restarts it) is delivered
again, so delivery is at least once; ``resumable.worker.Worker`` runs handlers on any
broker and makes processing effectively once. ``LocalBroker`` also runs handlers itself, in
process (``subscribe``, ``resolve``).

Events with a ``domain`` are not published: they are handed to the domain's owner
(``on_domain``), as Arvo does.

Every backend passes the same conformance suite (``tests/brokers/conformance.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resumable.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    DomainCallback,
    ErrorCallback,
    Handler,
)
from resumable.errors import SetupError

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


from resumable.brokers.local import LocalBroker


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
