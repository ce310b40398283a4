"""The in-process broker: a transport like NATS and Redis, that lives and dies with the process.

``publish`` puts an event on its topic's queue; ``receive`` takes deliveries; each is acked,
nacked with a delay, or dead-lettered with a reason; a delivery not settled within
``ack_wait`` comes back; a re-publish of one event id within ``duplicate_window`` is
dropped. It passes the broker conformance suite, and ``Worker`` (and so ``Runtime``) runs
on it exactly as on NATS or Redis: this is the embedded runtime's transport.

For tests and small scripts it can also host handlers itself (``LocalBroker([...])``,
``subscribe``): an event to a hosted topic is delivered, in publish order, by a ``Worker``'s
own delivery logic (publish what it emitted, then ack; lease contention nacked with backoff
and retried; a failure retried, then dead-lettered with its reason and reported to
``on_error``) before ``publish`` returns. ``resolve`` runs a chain to its reply. An app
uses ``resumable.Runtime`` instead, which adds recovery on start, timers fired in the
background, handles and a drain on shutdown.

(Over 500 lines: the transport itself and the hosting of handlers for scripts and tests
share its queues and timers.)
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec

from resumable.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    DomainCallback,
    ErrorCallback,
    Handler,
)
from resumable.brokers.poison import (
    DeadLetterNotFound,
    Undecodable,
    UndecodableDeadLetter,
    bound,
    decode,
)
from resumable.clock import VirtualClock, to_epoch
from resumable.errors import SetupError
from resumable.events import Event, to_json
from resumable.limits import check_event
from resumable.subject import SubjectError, parse_subject

if TYPE_CHECKING:
    from resumable.worker import Worker

__all__ = ["LocalBroker", "LocalDelivery"]

log = logging.getLogger("resumable.broker")


_KEPT_ERRORS = 1000
"""The most recent delivery errors ``LocalBroker.errors`` keeps."""


def _epoch(handler: Any) -> float:
    """Now, by the clock of a workflow (ISO 8601), in seconds since the epoch."""
    return to_epoch(handler.clock())


class _Collector:
    """Receives the events addressed back to the initiator of ``resolve`` calls, and hands
    each to the calls waiting on its subject (several may run at once)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.waiting: dict[str, list[list[Event]]] = {}

    def expect(self, subject: str) -> list[Event]:
        received: list[Event] = []
        self.waiting.setdefault(subject, []).append(received)
        return received

    def forget(self, subject: str, received: list[Event]) -> None:
        lists = self.waiting.get(subject, [])
        lists[:] = [r for r in lists if r is not received]
        if not lists:
            self.waiting.pop(subject, None)

    async def execute(self, event: Event) -> list[Event]:
        for received in self.waiting.get(event.subject, ()):
            received.append(event)
        return []


class _Message:
    """One event on a topic's queue. ``generation`` changes on every change of state, so
    timers and deliveries made before it can tell they are stale. A message put on the
    queue as bytes (``publish_raw``) has ``raw`` and no ``event`` until it is decoded."""

    __slots__ = ("attempts", "done", "event", "generation", "raw", "seq")

    def __init__(self, seq: int, event: Event | None, raw: bytes | None = None) -> None:
        self.seq = seq
        self.event = event
        self.raw = raw
        self.attempts = 0
        self.generation = 0
        self.done = False


class _TopicQueue:
    """A topic's transport queue: ready messages by publish order, and timers (redelivery
    after ``ack_wait`` or after a nack's delay) by due time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
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
        assert message.event is not None, "a raw message is decoded before it is delivered"
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
        if current and self._queue is not self._broker._inbox:  # hosted ones have no timer
            self._queue.settled()
        return current

    async def ack(self) -> None:
        self._mark_settled("acked")
        message = self._message
        if (
            message.generation == self._generation
            and not message.done
            and self._queue is not self._broker._inbox
        ):
            self._queue.settled()  # its ack-wait timer is stale now
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
            self._queue.schedule(self._queue.clock() + delay, message)
        self._queue.notify()

    async def dead_letter(self, reason: str) -> None:
        self._settle("dead-lettered")
        if self._message.done:
            return
        self._finish()
        self._queue.dead.append(
            DeadLetter(
                self.event,
                self.topic,
                bound(reason),
                attempts=self._message.attempts,
                id=self._broker._next_dead_id(),
            )
        )

    async def extend(self) -> None:
        """Restart the ack-wait timer from now, if this delivery still holds its message:
        the old timer goes stale (a new generation) and a new one is scheduled."""
        message = self._message
        if self._settled or message.done or message.generation != self._generation:
            return
        if self._queue is self._broker._inbox:  # hosted: delivered in process, no timer
            return
        message.generation += 1
        self._generation = message.generation
        self._queue.settled()  # the old timer is stale now
        self._queue.schedule(self._queue.clock() + self._broker.ack_wait, message)

    def _finish(self) -> None:
        if not self._message.done:
            self._broker._unsettled -= 1
        self._message.done = True
        self._message.generation += 1


class LocalBroker(Broker):
    """An in-process transport; optionally hosts ``handlers`` too (for tests and scripts).

    Transport: a delivery not settled within ``ack_wait`` seconds (measured by ``clock``)
    is delivered again, and an event id queued on a topic within the last
    ``duplicate_window`` seconds is not queued again; at most ``duplicate_limit`` ids are
    remembered (the oldest are forgotten first), so memory stays bounded at any rate.

    Hosting: an event whose ``to`` is the topic (``source``) of a hosted handler is run in
    process with ``Worker``'s delivery logic before ``publish`` returns; hosted handlers see
    every publish (the workflows' journals drop copies). A delivery that fails for good is
    dead-lettered (``dead_letters(topic)``) and ``on_error(error, event)`` is called; by
    default the error is logged and kept in ``errors`` (the last 1,000).
    ``on_domain(event, broker)`` receives events that carry a domain.

    ``record=True`` keeps every published event in ``events`` and every domain event in
    ``domain_events``, for tests; by default only a broker made with handlers records, so
    the transport an app runs on keeps no history.
    """

    def __init__(
        self,
        handlers: Iterable[Handler] = (),
        *,
        on_error: ErrorCallback | None = None,
        on_domain: DomainCallback | None = None,
        ack_wait: float = 5.0,
        duplicate_window: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        duplicate_limit: int = 10_000,
        record: bool | None = None,
    ) -> None:
        if not ack_wait > 0:
            raise SetupError(f"ack_wait must be more than 0 seconds, got {ack_wait!r}")
        if not duplicate_window >= 0:
            raise SetupError(
                f"duplicate_window must be 0 or more seconds, got {duplicate_window!r}"
            )
        if duplicate_limit < 1:
            raise ValueError(f"duplicate_limit must be 1 or more, got {duplicate_limit!r}")
        handlers = list(handlers)
        self.ack_wait = ack_wait
        self.duplicate_limit = duplicate_limit
        self.duplicate_window = duplicate_window
        self.clock = clock
        self.record = bool(handlers) if record is None else record
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()  # id -> queued at
        self._topics: dict[str, _TopicQueue] = {}
        self._seq = 0
        self._dead_seq = 0
        self._unsettled = 0
        self._closed = False
        self._subscribers: dict[str, Handler] = {}
        self._collectors: dict[str, _Collector] = {}
        self._inbox = _TopicQueue(time.monotonic)  # hosted topics, in publish order
        self._worker: Worker | None = None
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
        if handlers:  # made now, not on the first publish, which it would slow down
            self._hosting_worker()

    @property
    def topics(self) -> list[str]:
        """The topics of the handlers this broker hosts."""
        return [t for t, h in self._subscribers.items() if not isinstance(h, _Collector)]

    @property
    def unsettled(self) -> int:
        """Events queued or in flight and not yet acked or dead-lettered, on every topic:
        0 means this process's transport has nothing left to do."""
        return self._unsettled

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Host ``handler`` on ``topic``: one handler per topic. Returns the unsubscriber."""
        if topic in self._subscribers:
            raise SetupError(
                f"topic {topic!r} already has a subscriber ({self._subscribers[topic]!r}); "
                "a local broker allows one handler per topic"
            )
        self._subscribers[topic] = handler

        def unsubscribe() -> None:
            if self._subscribers.get(topic) is handler:
                del self._subscribers[topic]

        return unsubscribe

    async def publish(self, event: Event) -> None:
        """Queue ``event`` on its topic. An event to a hosted topic is delivered in process,
        with everything that follows from it, before this returns (unless a delivery is
        already running in this broker, which then delivers it). An event over the limits
        of ``resumable.limits`` is refused with ``LimitViolation``."""
        if not event.to:
            raise ValueError(f"event {event.id} has no 'to' topic; it cannot be routed")
        check_event(event)
        if self._queue(event, event.to, event.id) and not self._draining:
            await self._drain()

    def _queue(self, event: Event, topic: str, key: str) -> bool:
        """Queue ``event`` on ``topic``; ``key`` is what the duplicate window knows it by.
        True if it went to a hosted handler: drain the hosted queue to deliver it."""
        if self.record:
            self.events.append(event)
        if topic not in self._subscribers:
            self._enqueue(topic, event, key)
            return False
        self._seq += 1
        self._unsettled += 1
        self._inbox.make_ready(_Message(self._seq, event))
        return True

    # Hosting: deliveries to in-process handlers, with the Worker's logic.

    def _hosting_worker(self) -> Worker:
        """The ``Worker`` whose delivery logic runs hosted handlers (made with the broker
        when it is given handlers, else on first use)."""
        if self._worker is None:
            from resumable.worker import Worker

            self._worker = Worker(
                [_Hosted()],
                broker=self,
                max_attempts=3,
                backoff=(0.05, 2.0, 1.0),
                unavailable_backoff=(0.05, 2.0, 1.0),
                recover=False,
                recover_interval=None,
                on_domain=self._to_domain,
            )
        return self._worker

    async def _drain(self) -> None:
        """Deliver hosted events in publish order until none is left, waiting out the
        backoff of nacked ones (a lease held by another execution, say)."""
        self._draining = True
        self._idle = anyio.Event()
        worker = self._hosting_worker()
        inbox = self._inbox
        try:
            delivered = 0
            while True:
                if inbox.timers:
                    inbox.promote(inbox.clock())
                if not inbox.ready:
                    now = inbox.clock()
                    live = [t for t in inbox.timers if t[2] == t[3].generation and not t[3].done]
                    if not live:
                        inbox.timers.clear()
                        break
                    await anyio.sleep(max(min(t[0] for t in live) - now, 0.0))
                    continue
                _, message = heapq.heappop(inbox.ready)
                event = message.event
                if message.done or event is None:
                    continue
                topic = event.to or ""
                handler = self._subscribers.get(topic)
                if handler is None:  # unsubscribed since: it waits on the transport queue
                    message.done = True
                    self._unsettled -= 1
                    self._enqueue(topic, event)
                    continue
                message.attempts += 1
                message.generation += 1
                delivery = LocalDelivery(self, inbox, message, topic)
                raised = await worker.handle(handler, delivery)
                if delivery._settled == "dead-lettered":
                    del inbox.dead[:-_KEPT_ERRORS]
                    # None: it emitted an event that cannot be routed
                    error = raised or ValueError(inbox.dead[-1].reason)
                    await self._error(error, event)
                delivered += 1
                if delivered % 64 == 0:  # handlers may never suspend (in-memory): stay fair
                    await anyio.lowlevel.checkpoint()
        finally:
            self._draining = False
            self._idle.set()

    async def _to_domain(self, event: Event) -> None:
        if self.record:
            self.domain_events.append(event)
        if self.on_domain is not None:
            result = self.on_domain(event, self)
            if inspect.isawaitable(result):
                await result

    async def _error(self, error: BaseException, event: Event) -> None:
        self.errors.append((error, event))
        del self.errors[:-_KEPT_ERRORS]
        if self.on_error is None:
            log.error(
                "delivery of %s (%s, to %s) failed: %s", event.id, event.type, event.to, error
            )
            return
        result = self.on_error(error, event)
        if inspect.isawaitable(result):
            await result

    # Conveniences for tests and scripts, over the hosted handlers.

    async def resolve(self, event: Event) -> Event | None:
        """Publish ``event``, run every event that follows from it (firing the hosted
        workflows' timers as they come due; a ``VirtualClock`` is moved straight to the
        next one), and return the last event addressed back to ``event.source`` about the
        same subject, or None. Several may run at once. For tests and scripts: an app
        uses ``Runtime.start`` and ``handle.result()``."""
        hosted = self._subscribers.get(event.source)
        if hosted is not None and not isinstance(hosted, _Collector):
            raise ValueError(
                f"the event's source {event.source!r} is the topic of a handler in this "
                "broker; resolve needs an outside initiator, e.g. 'com.shop.web'"
            )
        collector = self._collectors.get(event.source)
        if collector is None:
            collector = self._collectors[event.source] = _Collector(event.source)
            self.subscribe(event.source, collector)
        received = collector.expect(event.subject)
        try:
            await self.publish(event)
            await self._idle.wait()
            while not received and await self._wait_for_timers():
                await self._idle.wait()
        finally:
            collector.forget(event.subject, received)
            if not collector.waiting:
                del self._collectors[event.source]
                del self._subscribers[event.source]
        return received[-1] if received else None

    async def recover(self) -> int:
        """Deprecated: ``Runtime`` (or a ``Worker``) recovers on start. Re-sends the
        unanswered requests of the hosted workflows' active instances, delivers until idle,
        fires due timers, and returns how many requests were re-sent."""
        warnings.warn(
            "LocalBroker.recover() is deprecated: run your handlers with "
            "resumable.Runtime([...], memory=...), which recovers on start",
            DeprecationWarning,
            stacklevel=2,
        )
        count = 0
        for handler in list(self._subscribers.values()):
            outbox = getattr(handler, "outbox", None)
            if outbox is None:
                continue
            for request in await outbox():
                count += 1
                if request.domain is not None:
                    await self._to_domain(request)
                else:
                    await self.publish(request)
        await self._idle.wait()
        await self.fire_timers()
        return count

    # Timers: a workflow's record has a due time (a sleep, a timeout, a retry backoff); the
    # broker publishes the workflow's timer event once it has passed.

    def _timed(self) -> list[Any]:
        return [h for h in self._subscribers.values() if callable(getattr(h, "timer_event", None))]

    async def fire_timers(self) -> int:
        """Publish the timer event of every hosted workflow instance whose due time has
        passed, deliver until idle, and return how many were fired."""
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
                timer = await owner.timer_event(key)
                if timer is None:
                    continue
                fired += 1
                await self.publish(timer)
        if fired:
            await self._idle.wait()
        return fired

    async def next_timer(self) -> tuple[float, Any] | None:
        """The earliest due time of the hosted workflows, and the workflow, or None."""
        best: tuple[float, Any] | None = None
        for handler in self._timed():
            for key, due in await handler.memory.due(math.inf, 1):
                owner = self._owner_of(key)
                if owner is not None and (best is None or due < best[0]):
                    best = (due, owner)
        return best

    async def run_timers(self, *, poll: float = 1.0) -> None:
        """Deprecated: ``Runtime`` fires timers in the background. Fires the hosted
        workflows' timers as they come due, forever; sleeps at most ``poll`` seconds."""
        warnings.warn(
            "LocalBroker.run_timers() is deprecated: run your handlers with "
            "resumable.Runtime([...], memory=...), whose workers fire timers",
            DeprecationWarning,
            stacklevel=2,
        )
        while True:
            await self.fire_timers()
            upcoming = await self.next_timer()
            delay = poll if upcoming is None else min(poll, upcoming[0] - _epoch(upcoming[1]))
            await anyio.sleep(max(delay, 0.0))

    async def _wait_for_timers(self) -> bool:
        """Fire the next timer, waiting for it (a ``VirtualClock`` is moved to it instead).
        False if no hosted workflow has a timer."""
        if await self.fire_timers():
            return True
        upcoming = await self.next_timer()
        if upcoming is None:
            return False
        due, owner = upcoming
        clock = owner.clock
        if isinstance(clock, VirtualClock):
            # The clock reads to the millisecond: move it to the first one at or after due.
            clock.set(math.ceil(due * 1000) / 1000)
            while not await self.fire_timers():
                clock.advance(0.001)
            return True
        await anyio.sleep(max(due - _epoch(owner), 0.0))
        while not await self.fire_timers():
            await anyio.sleep(0.001)
        return True

    def _owner_of(self, key: str) -> Any:
        try:
            name = parse_subject(key).name
        except SubjectError:
            return None
        handler = self._subscribers.get(name)
        return handler if callable(getattr(handler, "timer_event", None)) else None

    # The transport.

    def _queue_of(self, topic: str) -> _TopicQueue:
        queue = self._topics.get(topic)
        if queue is None:
            queue = self._topics[topic] = _TopicQueue(self.clock)
        return queue

    def _enqueue(self, topic: str, event: Event, key: str | None = None) -> None:
        now = self.clock()
        if self._is_duplicate(topic, key or event.id, now):
            log.debug("event %s is already queued on %r: the copy is dropped", event.id, topic)
            return
        self._seq += 1
        self._unsettled += 1
        queue = self._queue_of(topic)
        queue.make_ready(_Message(self._seq, event))
        queue.notify()

    def publish_raw(self, topic: str, raw: bytes) -> None:
        """Put ``raw`` bytes on ``topic``'s queue as they are, to be decoded on receive.
        For tests: the undecodable messages a foreign producer can write onto a NATS or
        Redis stream. An app publishes events with ``publish``."""
        self._seq += 1
        self._unsettled += 1
        queue = self._queue_of(topic)
        queue.make_ready(_Message(self._seq, None, raw))
        queue.notify()

    def _next_dead_id(self) -> str:
        self._dead_seq += 1
        return str(self._dead_seq)

    def _set_aside(self, queue: _TopicQueue, topic: str, message: _Message, reason: str) -> None:
        """Dead-letter a message that cannot be decoded, by itself, at once."""
        log.error("a message on %r is not an event (%s); dead-lettered", topic, reason)
        message.done = True
        message.generation += 1
        self._unsettled -= 1
        dead = DeadLetter(
            None, topic, reason, message.attempts, raw=message.raw or b"", id=self._next_dead_id()
        )
        queue.dead.append(dead)

    def _is_duplicate(self, topic: str, event_id: str, now: float) -> bool:
        """True if ``event_id`` was queued on ``topic`` within the duplicate window; else
        remember it. Entries are kept in queueing order, so expired ones leave from the
        front."""
        seen = self._seen
        while seen:
            _, queued = next(iter(seen.items()))
            if queued > now - self.duplicate_window and len(seen) < self.duplicate_limit:
                break
            seen.popitem(last=False)
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
            if message.event is None:  # bytes: decoded here, as NATS and Redis do
                try:
                    message.event = decode(message.raw)
                except Undecodable as error:
                    self._set_aside(queue, topic, message, str(error))
                    continue
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
        """What was dead-lettered from ``topic``, oldest first: events, and messages that
        were not events (``event`` None)."""
        queue = self._topics.get(topic)
        hosted = [d for d in self._inbox.dead if d.topic == topic]
        letters = hosted + ([] if queue is None else list(queue.dead))
        return [
            msgspec.structs.replace(d, raw=to_json(d.event)) if d.event is not None else d
            for d in letters
        ]

    async def replay_dead_letter(self, topic: str, dead_letter_id: str) -> Event:
        """Queue dead letter ``dead_letter_id`` of ``topic`` again, past the duplicate
        window, and remove it from the dead letters."""
        queue = self._topics.get(topic)
        for dead in ([] if queue is None else queue.dead), self._inbox.dead:
            for index, letter in enumerate(dead):
                if letter.topic != topic or letter.id != dead_letter_id:
                    continue
                if letter.event is None:
                    raise UndecodableDeadLetter(
                        f"dead letter {dead_letter_id} of {topic!r} is not an event "
                        f"({letter.reason}); it cannot be replayed, only inspected"
                    )
                del dead[index]
                if self._queue(letter.event, topic, f"replay:{dead_letter_id}") and not (
                    self._draining
                ):
                    await self._drain()
                return letter.event
        raise DeadLetterNotFound(
            f"topic {topic!r} has no dead letter {dead_letter_id!r} (replayed already?); "
            "list them with dead_letters(topic)"
        )

    async def close(self) -> None:
        """Stop delivering from the transport queues: waiting ``receive`` calls return."""
        self._closed = True
        for queue in self._topics.values():
            queue.notify()


class _Hosted:
    """The hosting worker's own handler list needs one: hosted handlers are passed to
    ``Worker.handle`` per delivery instead."""

    source = "com.resumable.local"

    async def execute(self, event: Event) -> list[Event]:
        raise AssertionError(f"the hosting worker has no handler of its own ({event.id})")
