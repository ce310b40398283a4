"""An in-process broker: FIFO delivery, one subscriber per topic, no sleeps.

For embedding workflows in one process and for tests. ``resolve`` runs a whole chain of
events and returns the reply to the initiator; ``recover`` re-sends, from the records in
memory, the requests of active workflows whose replies never arrived.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterable

import anyio
import anyio.lowlevel

from resumable.brokers import Broker, DomainCallback, ErrorCallback, Handler
from resumable.events import Event

__all__ = ["LocalBroker"]

log = logging.getLogger("resumable.broker")


class _Collector:
    """Receives the events addressed back to the initiator of a ``resolve``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.received: list[Event] = []

    async def execute(self, event: Event) -> list[Event]:
        self.received.append(event)
        return []


class LocalBroker(Broker):
    """Delivers events in publish order to the handler whose topic equals ``event.to``.

    ``on_error(error, event)`` is called when a delivery fails (no handler, or the handler
    raised, e.g. a violation); by default the error is logged and kept in ``errors``.
    ``on_domain(event, broker)`` receives events that carry a domain; by default they are
    kept in ``domain_events``. ``events`` lists everything published, in order.
    """

    def __init__(
        self,
        handlers: Iterable[Handler] = (),
        *,
        on_error: ErrorCallback | None = None,
        on_domain: DomainCallback | None = None,
    ) -> None:
        self._subscribers: dict[str, Handler] = {}
        self._queue: deque[Event] = deque()
        self._draining = False
        self._idle = anyio.Event()
        self._idle.set()
        self.on_error = on_error
        self.on_domain = on_domain
        self.events: list[Event] = []
        self.errors: list[tuple[BaseException, Event]] = []
        self.domain_events: list[Event] = []
        for handler in handlers:
            self.subscribe(handler.source, handler)

    @property
    def topics(self) -> list[str]:
        return list(self._subscribers)

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Route events addressed to ``topic`` to ``handler``; one handler per topic."""
        if topic in self._subscribers:
            raise ValueError(
                f"topic {topic!r} already has a subscriber ({self._subscribers[topic]!r}); "
                "a local broker allows one handler per topic"
            )
        self._subscribers[topic] = handler

        def unsubscribe() -> None:
            if self._subscribers.get(topic) is handler:
                del self._subscribers[topic]

        return unsubscribe

    async def publish(self, event: Event) -> None:
        """Queue ``event``; if nothing is delivering yet, deliver until the queue is empty."""
        if not event.to:
            raise ValueError(f"event {event.id} has no 'to' topic; it cannot be routed")
        self.events.append(event)
        self._queue.append(event)
        if not self._draining:
            await self._drain()

    async def resolve(self, event: Event) -> Event | None:
        """Publish ``event``, run every event that follows from it, and return the last event
        addressed back to ``event.source`` (its initiator), or None."""
        if event.source in self._subscribers:
            raise ValueError(
                f"the event's source {event.source!r} is the topic of a handler in this "
                "broker; resolve needs an outside initiator, e.g. 'com.shop.web'"
            )
        collector = _Collector(event.source)
        unsubscribe = self.subscribe(event.source, collector)
        try:
            await self.publish(event)
            await self._idle.wait()
        finally:
            unsubscribe()
        return collector.received[-1] if collector.received else None

    async def recover(self) -> int:
        """Re-send the unanswered requests of every active workflow of this broker's
        handlers, from their records in memory, and deliver until idle. Returns how many."""
        count = 0
        for handler in self._subscribers.values():
            outbox = getattr(handler, "outbox", None)
            if outbox is None:
                continue
            for request in await outbox():
                count += 1
                if request.domain is not None:
                    await self._to_domain(request)
                else:
                    self.events.append(request)
                    self._queue.append(request)
        if not self._draining:
            await self._drain()
        await self._idle.wait()
        return count

    async def _drain(self) -> None:
        self._draining = True
        self._idle = anyio.Event()
        try:
            delivered = 0
            while self._queue:
                await self._deliver(self._queue.popleft())
                delivered += 1
                if delivered % 64 == 0:  # handlers may never suspend (in-memory): stay fair
                    await anyio.lowlevel.checkpoint()
        finally:
            self._draining = False
            self._idle.set()

    async def _deliver(self, event: Event) -> None:
        assert event.to is not None
        handler = self._subscribers.get(event.to)
        if handler is None:
            await self._error(
                LookupError(f"no handler is subscribed to topic {event.to!r} (event {event.id})"),
                event,
            )
            return
        try:
            outputs = await handler.execute(event)
        except Exception as error:
            await self._error(error, event)
            return
        for output in outputs:
            if output.domain is not None:
                await self._to_domain(output)
            elif not output.to:
                await self._error(ValueError(f"event {output.id} has no 'to' topic"), output)
            else:
                self.events.append(output)
                self._queue.append(output)

    async def _to_domain(self, event: Event) -> None:
        self.domain_events.append(event)
        if self.on_domain is not None:
            result = self.on_domain(event, self)
            if inspect.isawaitable(result):
                await result

    async def _error(self, error: BaseException, event: Event) -> None:
        self.errors.append((error, event))
        if self.on_error is None:
            log.error(
                "delivery of %s (%s, to %s) failed: %s", event.id, event.type, event.to, error
            )
            return
        result = self.on_error(error, event)
        if inspect.isawaitable(result):
            await result
