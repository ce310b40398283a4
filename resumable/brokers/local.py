"""An in-process broker: FIFO delivery, one subscriber per topic, no sleeps.

For embedding workflows in one process and for tests. ``resolve`` runs a whole chain of
events and returns the reply to the initiator, firing the workflows' timers as they come
due (a ``VirtualClock`` is moved straight to the next one); ``recover`` re-sends, from the
records in memory, the requests of active workflows whose replies never arrived, and fires
timers that fell due while nothing ran. ``run_timers`` fires them forever, for a service.

Events to a topic with no subscriber wait on that topic's queue in memory for ``receive``,
with the transport semantics of every broker (ack, nack with a delay, dead letters,
redelivery after ``ack_wait``, a re-publish of the same event id within
``duplicate_window`` dropped), so a ``Worker`` can run on it too. Nothing survives the
process.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel

from resumable.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    DomainCallback,
    ErrorCallback,
    Handler,
)
from resumable.clock import VirtualClock, to_epoch
from resumable.events import Event
from resumable.subject import SubjectError, parse_subject

__all__ = ["LocalBroker", "LocalDelivery"]

log = logging.getLogger("resumable.broker")


def _epoch(handler: Any) -> float:
    """Now, by the clock of a workflow (ISO 8601), in seconds since the epoch."""
    return to_epoch(handler.clock())


class _Collector:
    """Receives the events addressed back to the initiator of a ``resolve``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.received: list[Event] = []

    async def execute(self, event: Event) -> list[Event]:
        self.received.append(event)
        return []


class _Message:
    """One event on a topic's queue. ``generation`` changes on every change of state, so
    timers and deliveries made before it can tell they are stale."""

    __slots__ = ("attempts", "done", "event", "generation", "seq")

    def __init__(self, seq: int, event: Event) -> None:
        self.seq = seq
        self.event = event
        self.attempts = 0
        self.generation = 0
        self.done = False


class _TopicQueue:
    """A topic's transport queue: ready messages by publish order, and timers (redelivery
    after ``ack_wait`` or after a nack's delay) by due time."""

    def __init__(self) -> None:
        self.ready: list[tuple[int, _Message]] = []
        self.timers: list[tuple[float, int, int, _Message]] = []
        self.stale = 0  # timers made stale by a settle, removed when there are many
        self.dead: list[DeadLetter] = []
        self.changed = anyio.Event()

    def notify(self) -> None:
        """Wake every ``receive`` waiting on this topic, to look again."""
        self.changed.set()
        self.changed = anyio.Event()

    def schedule(self, due: float, message: _Message) -> None:
        heapq.heappush(self.timers, (due, message.seq, message.generation, message))

    def make_ready(self, message: _Message) -> None:
        heapq.heappush(self.ready, (message.seq, message))

    def settled(self) -> None:
        """A message in flight was settled: its ack-wait timer is now stale."""
        self.stale += 1
        if self.stale > 64 and self.stale * 2 > len(self.timers):
            self.timers = [t for t in self.timers if t[2] == t[3].generation and not t[3].done]
            heapq.heapify(self.timers)
            self.stale = 0

    def promote(self, now: float) -> None:
        """Make ready every message whose timer is due (unacked past ack_wait, or nacked)."""
        while self.timers and self.timers[0][0] <= now:
            _, _, generation, message = heapq.heappop(self.timers)
            if generation != message.generation or message.done:
                self.stale = max(0, self.stale - 1)
                continue
            message.generation += 1
            self.make_ready(message)


class LocalDelivery(Delivery):
    """A delivery from a ``LocalBroker`` topic queue."""

    def __init__(
        self, broker: LocalBroker, queue: _TopicQueue, message: _Message, topic: str
    ) -> None:
        self.event = message.event
        self.topic = topic
        self.attempt = message.attempts
        self._broker = broker
        self._queue = queue
        self._message = message
        self._generation = message.generation

    def __repr__(self) -> str:
        return (
            f"<LocalDelivery {self.event.id} on {self.topic!r} attempt {self.attempt}"
            f"{' ' + self._settled if self._settled else ''}>"
        )

    def _settle(self, how: str) -> bool:
        """Mark this delivery settled; True if it still holds its message (not redelivered
        after ack_wait, nor settled through another delivery)."""
        self._mark_settled(how)
        current = self._message.generation == self._generation and not self._message.done
        if current:
            self._queue.settled()
        return current

    async def ack(self) -> None:
        self._settle("acked")
        # A late ack, after ack_wait gave the message to another delivery, still counts:
        # the event was handled, so nobody needs to handle it again.
        self._finish()

    async def nack(self, delay: float = 0.0) -> None:
        if not delay >= 0:
            raise ValueError(f"nack delay must be 0 or more seconds, got {delay!r}")
        if not self._settle("nacked"):
            return  # redelivered already (ack_wait passed) or settled elsewhere
        message = self._message
        message.generation += 1
        if delay == 0:
            self._queue.make_ready(message)
        else:
            self._queue.schedule(self._broker.clock() + delay, message)
        self._queue.notify()

    async def dead_letter(self, reason: str) -> None:
        self._settle("dead-lettered")
        if self._message.done:
            return
        self._finish()
        self._queue.dead.append(
            DeadLetter(self.event, self.topic, reason, attempts=self._message.attempts)
        )

    def _finish(self) -> None:
        self._message.done = True
        self._message.generation += 1


class LocalBroker(Broker):
    """Delivers events in publish order to the handler whose topic equals ``event.to``.

    ``on_error(error, event)`` is called when a delivery fails (the handler raised, e.g. a
    violation); by default the error is logged and kept in ``errors``.
    ``on_domain(event, broker)`` receives events that carry a domain; by default they are
    kept in ``domain_events``. ``events`` lists everything published, in order.

    An event to a topic without a subscriber is queued for ``receive`` instead; a delivery
    not settled within ``ack_wait`` seconds (measured by ``clock``) is delivered again, and
    an event id queued on a topic within the last ``duplicate_window`` seconds is not
    queued again (handlers run in process see every publish).
    """

    def __init__(
        self,
        handlers: Iterable[Handler] = (),
        *,
        on_error: ErrorCallback | None = None,
        on_domain: DomainCallback | None = None,
        ack_wait: float = 30.0,
        duplicate_window: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ack_wait > 0:
            raise ValueError(f"ack_wait must be more than 0 seconds, got {ack_wait!r}")
        if not duplicate_window >= 0:
            raise ValueError(
                f"duplicate_window must be 0 or more seconds, got {duplicate_window!r}"
            )
        self.ack_wait = ack_wait
        self.duplicate_window = duplicate_window
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (topic, event id) -> queued at
        self._topics: dict[str, _TopicQueue] = {}
        self._seq = 0
        self._closed = False
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
        """Queue ``event``; if nothing is delivering yet, deliver until the queue is empty.

        Events to a subscribed topic run in process; the others wait for ``receive``."""
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
            while not collector.received and await self._wait_for_timers():
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
        await self.fire_timers()
        return count

    # Timers: a workflow's record has a due time (a sleep, a timeout, a retry backoff); the
    # broker wakes the workflow once it has passed and delivers what that emits.

    def _timed(self) -> list[Any]:
        return [h for h in self._subscribers.values() if callable(getattr(h, "wake", None))]

    async def fire_timers(self) -> int:
        """Wake every workflow of this broker whose due time has passed, deliver what that
        emits until idle, and return how many were woken."""
        fired = 0
        seen: set[int] = set()
        for handler in self._timed():
            memory = handler.memory
            if id(memory) in seen:
                continue
            seen.add(id(memory))
            for key, _ in await memory.due(_epoch(handler), 1000):
                owner = self._owner_of(key)
                if owner is None:
                    continue
                outputs = await owner.wake(key)
                fired += 1
                await self._route(outputs)
        if fired:
            if not self._draining:
                await self._drain()
            await self._idle.wait()
        return fired

    async def next_timer(self) -> tuple[float, Any] | None:
        """The earliest due time of this broker's workflows, and the workflow, or None."""
        best: tuple[float, Any] | None = None
        for handler in self._timed():
            for key, due in await handler.memory.due(math.inf, 1):
                owner = self._owner_of(key)
                if owner is not None and (best is None or due < best[0]):
                    best = (due, owner)
        return best

    async def run_timers(self, *, poll: float = 1.0) -> None:
        """Fire timers as they come due, forever (run it in a task beside your service).
        Sleeps until the next due time, at most ``poll`` seconds (a timer set meanwhile by
        another process is seen within that)."""
        while True:
            await self.fire_timers()
            upcoming = await self.next_timer()
            delay = poll if upcoming is None else min(poll, upcoming[0] - _epoch(upcoming[1]))
            await anyio.sleep(max(delay, 0.0))

    async def _wait_for_timers(self) -> bool:
        """Fire the next timer, waiting for it (a ``VirtualClock`` is moved to it instead).
        False if no workflow of this broker has a timer."""
        if await self.fire_timers():
            return True
        upcoming = await self.next_timer()
        if upcoming is None:
            return False
        due, owner = upcoming
        clock = owner.clock
        if isinstance(clock, VirtualClock):
            clock.set(due)
        else:
            await anyio.sleep(max(due - _epoch(owner), 0.0))
        await self.fire_timers()
        return True

    def _owner_of(self, key: str) -> Any:
        try:
            name = parse_subject(key).name
        except SubjectError:
            return None
        handler = self._subscribers.get(name)
        return handler if callable(getattr(handler, "wake", None)) else None

    async def _route(self, outputs: list[Event]) -> None:
        for output in outputs:
            if output.domain is not None:
                await self._to_domain(output)
            elif output.to:
                self.events.append(output)
                self._queue.append(output)

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
            self._enqueue(event.to, event)
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

    # The transport: topics without a subscriber.

    def _queue_of(self, topic: str) -> _TopicQueue:
        queue = self._topics.get(topic)
        if queue is None:
            queue = self._topics[topic] = _TopicQueue()
        return queue

    def _enqueue(self, topic: str, event: Event) -> None:
        now = self.clock()
        if self._is_duplicate(topic, event.id, now):
            log.debug("event %s is already queued on %r: the copy is dropped", event.id, topic)
            return
        self._seq += 1
        queue = self._queue_of(topic)
        queue.make_ready(_Message(self._seq, event))
        queue.notify()

    def _is_duplicate(self, topic: str, event_id: str, now: float) -> bool:
        """True if ``event_id`` was queued on ``topic`` within the duplicate window; else
        remember it. Entries are kept in queueing order, so expired ones leave from the
        front."""
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now - self.duplicate_window:
                break
            del seen[oldest]
        if (topic, event_id) in seen:
            return True
        if self.duplicate_window > 0:
            seen[(topic, event_id)] = now
        return False

    def _take(self, topic: str, queue: _TopicQueue, limit: int) -> list[Delivery]:
        now = self.clock()
        queue.promote(now)
        taken: list[Delivery] = []
        while queue.ready and len(taken) < limit:
            _, message = heapq.heappop(queue.ready)
            if message.done:  # acked late by a delivery that had timed out
                continue
            message.attempts += 1
            message.generation += 1
            queue.schedule(now + self.ack_wait, message)
            taken.append(LocalDelivery(self, queue, message, topic))
        if taken:
            queue.notify()  # other receivers: a new ack-wait timer to wake up for
        return taken

    async def receive(
        self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries from the queue of ``topic`` (a topic without a
        subscriber), oldest first, waiting up to ``timeout`` seconds for the first."""
        if self._closed:
            raise RuntimeError("this LocalBroker is closed; make a new one to receive again")
        if max_messages < 1:
            raise ValueError(f"max_messages must be 1 or more, got {max_messages!r}")
        queue = self._queue_of(topic)
        taken = self._take(topic, queue, max_messages)
        if taken or timeout <= 0:
            return taken
        with anyio.move_on_after(timeout):
            while not taken and not self._closed:
                changed = queue.changed
                wait = queue.timers[0][0] - self.clock() if queue.timers else math.inf
                if wait > 0:
                    with anyio.move_on_after(wait):
                        await changed.wait()
                else:
                    await anyio.lowlevel.checkpoint()
                taken = self._take(topic, queue, max_messages)
        return taken

    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        """What was dead-lettered from ``topic``, oldest first."""
        queue = self._topics.get(topic)
        return [] if queue is None else list(queue.dead)

    async def close(self) -> None:
        """Stop delivering from the transport queues: waiting ``receive`` calls return."""
        self._closed = True
        for queue in self._topics.values():
            queue.notify()
