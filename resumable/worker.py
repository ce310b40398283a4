"""``Worker``: runs handlers and workflows on a broker, in as many processes as you like.

A broker delivers at least once; a worker makes processing *effectively once* on top of it:

- **Publish, then ack.** A delivery is acked only after every event its handler emitted is
  published, so a worker that dies in between leaves the delivery unsettled; the broker
  delivers it again after its ``ack_wait``, and the handler answers it again with the same
  events (a workflow from its journal, a service from its idempotency keys), which carry
  the same ids, so their consumers drop the copies.
- **Retry what can succeed later.** A ``TransactionViolation`` (lease taken by another
  execution, a write that lost a compare-and-set) or any unexpected exception is nacked
  with exponential backoff; other violations (contract, config, execution) can never
  succeed and are dead-lettered at once, with the reason; a failure on the
  ``max_attempts``-th delivery is dead-lettered with its error as the reason.
- **Outages are not failures.** A delivery that failed because a server was unavailable
  (``resumable.Unavailable``: the memory's database or the broker down, restarting or
  failing over) is nacked with backoff and jitter for as long as the outage lasts, never
  dead-lettered, and not counted against ``max_attempts``; consuming pauses until a probe
  of the memories answers (``resumable.outage``).
- **Timers.** Every ``timer_interval`` the worker asks each memory its workflows use which
  records are due, and publishes a timer event for each to the workflow's own topic. The
  event's id comes from the record's revision, so every worker that sees one due record
  publishes the same event, which the broker's duplicate window keeps to one delivery; the
  step it causes is then published before it is acked, like any other, so a worker that
  dies after writing the step and before publishing what it emitted (a completion, say)
  leaves a delivery that the broker redelivers, and the journal answers.
- **Recovery.** On start, every workflow's outbox (the requests its records say were sent
  and never answered) is published again, for requests lost with a process that died
  between writing a step and publishing it; and every ``recover_interval`` the outboxes of
  instances idle that long are swept again (``resumable.sweep``).
- **Heartbeat.** Every ``heartbeat`` seconds one loop extends the broker's ack deadline of
  each delivery in flight since the beat before (``Delivery.extend``) and renews the
  leases of the workflows' steps still running (``Resumable.renew_leases``). So ack
  deadlines and leases can be short (seconds), and a dead or stalled worker's work moves
  on within them, while a long step is neither redelivered nor taken over.
- **Drain.** ``stop()`` stops taking deliveries and lets the ones in flight finish (within
  ``drain_timeout``), so a rolling restart settles everything it took.

(Over 500 lines: delivery, settlement, timers, recovery, draining and their metrics and
spans are one loop's state.)
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from opentelemetry import trace

from resumable.backoff import backoff_delay, jittered
from resumable.brokers import Broker, Delivery, Handler
from resumable.clock import to_epoch
from resumable.errors import (
    ResumableError,
    SetupError,
    TransactionViolation,
    ViolationError,
    is_unavailable,
)
from resumable.events import Event
from resumable.memory import Memory
from resumable.metrics import TOPIC, Instruments, enabled, instruments
from resumable.outage import PROBE_KEY, Outage, RetryCounts
from resumable.subject import SubjectError, instance_name, parse_subject
from resumable.sweep import OutboxSweep, Sweepable
from resumable.telemetry import (
    delivery_span,
    mark_error,
    messaging_system,
    publish_span,
    tracing_off,
)
from resumable.types import Leased, Recoverable, Timed

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("resumable.worker")

_MAX_DUE_LISTING = 10_000
"""The most due records one timer tick lists from one memory."""

WorkerDomainCallback = Callable[[Event], Awaitable[None] | None]
"""Receives an emitted event that has a domain (Arvo: never published, handed to its owner).
It may be called again with the same event after a redelivery: make it idempotent by id."""

HealthCallback = Callable[[str, "WorkerStats"], None]
"""Receives the health line and the counters, every ``health_interval`` seconds."""


@attrs.define
class WorkerStats:
    """What a worker has done since it started. ``in_flight`` is executions running now."""

    received: int = 0
    acked: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    published: int = 0
    timers_fired: int = 0
    """Timer events published for due records (each is then received like any event)."""
    in_flight: int = 0
    domain_events: int = 0
    """Emitted events with a domain, handed to ``on_domain`` (or only logged) instead."""
    recovered: int = 0
    """Requests re-published from the workflows' outboxes, on start and by the sweeps."""
    errors: int = 0
    """Failures outside a delivery's outcome: receive, settle, timer and health problems."""
    unavailable: int = 0
    """Retries because a server was unavailable: deliveries nacked for it (never
    dead-lettered, not counted in ``max_attempts``), failed receives, timer ticks, sweeps."""

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


def _is_lock_denied(error: BaseException) -> bool:
    return (
        isinstance(error, TransactionViolation)
        and error.cause == TransactionViolation.LOCK_UNACQUIRED
    )


def _is_permanent(error: BaseException) -> bool:
    """A violation other than a transaction one: the same event can never succeed."""
    return isinstance(error, ViolationError) and not isinstance(error, TransactionViolation)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


_NO_SPAN: AbstractContextManager[object] = nullcontext()
"""What a delivery runs in while nothing traces (cheaper than a span that records nothing)."""


def _lag(event: Event) -> float:
    """Seconds from the event's time to now (0 if its time is in the future)."""
    try:
        return max(0.0, time.time() - to_epoch(event.time))
    except ValueError:
        return 0.0


async def _set_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class _Undeliverable(ResumableError):
    """A handler emitted an event that has neither a domain nor a ``to`` topic."""


class Worker:
    """Consumes each handler's topic (``handler.source``) from ``broker`` and runs it.

    ``handlers`` are anything with ``source`` and ``async execute(event) -> list[Event]``:
    ``EventHandler`` services and ``Resumable`` workflows (whose timers and outboxes the
    worker also serves). At most ``concurrency`` executions (and timer wakes) run at once.
    A failed delivery is nacked after ``initial * factor ** (attempt - 1)`` seconds, at
    most ``max``, with ``backoff = (initial, factor, max)``.

    A lease denied by another execution (``TransactionViolation`` ``LOCK_UNACQUIRED``) is
    contention, not failure: it is retried with backoff past ``max_attempts``, since every
    lease ends (released, or expired after the workflow's ``lock_ttl``); only the broker's
    own delivery limit (``max_deliver``, where it has one) dead-letters it. Its backoff is
    capped at half the longest ``lock_ttl``, so an instance whose lease a dead worker held
    moves on soon after the lease expires.

    An outage (``resumable.Unavailable``: a database or broker down, restarting, failing
    over) is not a failure either: the delivery is nacked after ``unavailable_backoff =
    (initial, factor, max)`` seconds with jitter, for as long as the outage lasts, and
    consuming pauses until each memory answers a probe made with the same backoff. Neither
    kind of retry counts against ``max_attempts``, which counts the event's own failures.
    Every ``recover_interval`` seconds (None: only on start) the outboxes of the instances
    idle that long are re-published (``resumable.sweep``).

    A due record's timer event is published once per ``timer_interval`` tick at most, and
    not again by this worker for ``timer_resend`` seconds while the record stays due at the
    same revision (its event was dead-lettered, say); keep ``timer_resend`` longer than the
    broker's duplicate window, or the broker drops the resend.

    ``heartbeat`` is the seconds between two beats of the loop that extends the ack
    deadline of long deliveries and renews the leases of long steps; by default a quarter
    of the shortest of the broker's ``ack_wait`` and the workflows' ``lock_ttl``.

    ``on_domain(event)`` receives emitted events that carry a domain; without it they are
    logged and counted. ``poll`` bounds how long one ``receive`` waits, and so how long
    ``stop()`` takes to stop receiving; ``drain_timeout`` bounds the drain (None: wait for
    every execution in flight). ``on_health(line, stats)`` gets the health line that is
    also logged every ``health_interval`` seconds.
    """

    def __init__(
        self,
        handlers: Iterable[Handler],
        *,
        broker: Broker,
        concurrency: int = 16,
        max_attempts: int = 5,
        backoff: tuple[float, float, float] = (0.1, 2.0, 30.0),
        timer_interval: float = 0.5,
        recover: bool = True,
        on_domain: WorkerDomainCallback | None = None,
        poll: float = 1.0,
        drain_timeout: float | None = 30.0,
        timer_batch: int = 100,
        timer_resend: float = 300.0,
        health_interval: float = 5.0,
        on_health: HealthCallback | None = None,
        unavailable_backoff: tuple[float, float, float] = (0.5, 2.0, 30.0),
        recover_interval: float | None = 30.0,
        heartbeat: float | None = None,
    ) -> None:
        self.handlers: list[Handler] = list(handlers)
        if not self.handlers:
            raise SetupError("a Worker needs at least one handler")
        topics: dict[str, Handler] = {}
        for handler in self.handlers:
            if not isinstance(handler, Handler):
                raise SetupError(
                    f"{handler!r} is not a handler: it needs a 'source' topic and "
                    "'async execute(event) -> list[Event]'"
                )
            if handler.source in topics:
                raise SetupError(
                    f"two handlers consume topic {handler.source!r} ({topics[handler.source]!r} "
                    f"and {handler!r}); give each topic one handler"
                )
            topics[handler.source] = handler
        if concurrency < 1:
            raise SetupError(f"concurrency must be 1 or more, got {concurrency!r}")
        if max_attempts < 1:
            raise SetupError(f"max_attempts must be 1 or more, got {max_attempts!r}")
        initial, factor, longest = backoff
        if not (initial >= 0 and factor >= 1 and longest >= initial):
            raise SetupError(
                f"backoff must be (initial >= 0, factor >= 1, max >= initial), got {backoff!r}"
            )
        for name, value in (
            ("timer_interval", timer_interval),
            ("poll", poll),
            ("health_interval", health_interval),
            ("timer_resend", timer_resend),
            ("heartbeat", 1.0 if heartbeat is None else heartbeat),
        ):
            if not value > 0:
                raise SetupError(f"{name} must be more than 0 seconds, got {value!r}")
        if recover_interval is not None and not recover_interval > 0:
            raise SetupError(
                f"recover_interval must be more than 0 seconds (or None: only on start), "
                f"got {recover_interval!r}"
            )
        first, growth, cap = unavailable_backoff
        if not (first > 0 and growth >= 1 and cap >= first):
            raise SetupError(
                "unavailable_backoff must be (initial > 0, factor >= 1, max >= initial), "
                f"got {unavailable_backoff!r}"
            )
        if drain_timeout is not None and not drain_timeout >= 0:
            raise SetupError(f"drain_timeout must be 0 or more seconds, got {drain_timeout!r}")
        if timer_batch < 1:
            raise SetupError(f"timer_batch must be 1 or more, got {timer_batch!r}")
        self.broker = broker
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = (float(initial), float(factor), float(longest))
        self.timer_interval = timer_interval
        self.recover = recover
        self.on_domain = on_domain
        self.poll = poll
        self.drain_timeout = drain_timeout
        self.timer_batch = timer_batch
        self.timer_resend = timer_resend
        self.health_interval = health_interval
        self.on_health = on_health
        self.unavailable_backoff = (float(first), float(growth), float(cap))
        self.recover_interval = recover_interval
        self._heartbeat = heartbeat
        self._leased_handlers: list[Leased] | None = None
        self.stats = WorkerStats()
        self._outage = Outage(
            lambda: [memory for memory, _ in self._timed_groups()], self.unavailable_backoff
        )
        self._retries = RetryCounts()
        self._sweep = OutboxSweep(recover_interval or 30.0)
        self._group: anyio.abc.TaskGroup | None = None
        self._topics = topics
        self._slots = anyio.Semaphore(concurrency)
        self._stopping = anyio.Event()
        self._timers_now = anyio.Event()
        self._running = False
        # key -> (timer event id, when sent, the due time it fires)
        self._timers_sent: dict[str, tuple[str, float, float]] = {}
        self._system = messaging_system(broker)
        self._attributes: dict[str, dict[str, str]] = {}
        self._beat = 0  # heartbeats so far
        self._inflight: dict[Delivery, int] = {}  # delivery -> the beat it began after

    def _on(self, topic: str) -> dict[str, str]:
        """The metric attributes of ``topic``, made once."""
        attributes = self._attributes.get(topic)
        if attributes is None:
            attributes = self._attributes[topic] = {TOPIC: topic}
        return attributes

    def __repr__(self) -> str:
        return f"<Worker {sorted(self._topics)} on {self.broker!r}>"

    @property
    def topics(self) -> list[str]:
        """The topics this worker consumes."""
        return list(self._topics)

    # ---------------------------------------------------------------------------------
    # running

    def stop(self) -> None:
        """Stop taking new deliveries; ``run`` returns once those in flight are settled.
        Safe to call from any task, any number of times, before or during ``run``. A
        stopped worker stays stopped: ``run`` returns at once; make a new one to go on."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stopping.is_set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Recover, then consume, fire timers and report health until ``stop()``; then
        drain and return. With ``await task_group.start(worker.run)``, resumes the caller
        once recovery is done and consuming has begun.

        The drain: the receive loops end (each within ``poll``), the timer loop ends after
        its current tick, and the executions in flight finish, all within ``drain_timeout``
        of ``stop()``; whatever still runs then is cancelled, and its unsettled deliveries
        come back from the broker after its ``ack_wait``."""
        if self._running:
            raise RuntimeError(f"{self!r} is already running; a worker runs once at a time")
        self._running = True
        started = time.monotonic()
        for topic in self._topics:  # so the gauge reads 0, not nothing, before work arrives
            instruments().in_flight.add(0, self._on(topic))
        drained = False
        try:
            await self._check_memories()
            if self.recover and not self.stopping:
                await self._recover()
            async with anyio.create_task_group() as outer:
                self._group = outer
                outer.start_soon(self._health_loop, started)
                outer.start_soon(self._heartbeat_loop)
                outer.start_soon(self._drain_deadline, outer.cancel_scope)
                if self.recover_interval is not None:
                    outer.start_soon(self._sweep_loop)
                async with anyio.create_task_group() as inflight:
                    async with anyio.create_task_group() as loops:
                        for handler in self.handlers:
                            loops.start_soon(self._consume, handler, inflight)
                        if self._timed_groups():
                            loops.start_soon(self._timer_loop)
                        task_status.started()
                    # Stopping: nothing new is taken; what is in flight finishes.
                    if self.stats.in_flight:
                        log.info("draining %d executions in flight", self.stats.in_flight)
                drained = True
                outer.cancel_scope.cancel()
            if not drained:
                log.warning(
                    "the drain took longer than drain_timeout (%.3gs): what still ran was "
                    "cancelled, and its deliveries come back after the broker's ack_wait",
                    self.drain_timeout,
                )
            log.info("worker stopped: %s", self.health_line(time.monotonic() - started))
        finally:
            self._running = False
            self._group = None

    async def _drain_deadline(self, scope: anyio.CancelScope) -> None:
        """Once stopping, give everything ``drain_timeout`` seconds to finish."""
        await self._stopping.wait()
        if self.drain_timeout is not None:
            scope.deadline = anyio.current_time() + self.drain_timeout

    async def _recover(self) -> None:
        """Publish every workflow's outbox: requests whose publish may have died with a
        process. Their ids are stable, so a copy of one already delivered is dropped."""
        for handler in self.handlers:
            if not isinstance(handler, Recoverable):
                continue
            try:
                requests = await handler.outbox()
                for request in requests:
                    await self.emit(request)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                self.stats.unavailable += 1
                log.warning(
                    "recovery of %s on start postponed: %s; %s",
                    handler.source,
                    _reason(error),
                    "the outbox sweep re-sends its requests once the server is back"
                    if self.recover_interval is not None
                    else "restart the worker once the server is back (recover_interval=None)",
                )
                continue
            self.stats.recovered += len(requests)
            if requests:
                log.info("recovery: re-published %d requests of %s", len(requests), handler.source)

    async def _check_memories(self) -> None:
        """Read each memory once before consuming, so a memory that refuses to work (a
        Redis that keeps nothing on disk, a schema too new) stops the worker at start,
        not every delivery later; one that is unavailable is waited for by the loops."""
        for memory, _ in self._timed_groups():
            try:
                await memory.read(PROBE_KEY)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                self.stats.unavailable += 1
                log.warning("memory %r is unavailable at start: %s", memory, _reason(error))

    async def _sweep_loop(self) -> None:
        """Every ``recover_interval``, re-publish the requests of instances idle that long
        (``resumable.sweep``), unless consuming is paused for an outage."""
        assert self.recover_interval is not None
        while not self.stopping:
            with anyio.move_on_after(self.recover_interval):
                await self._stopping.wait()
            if self.stopping or self._outage.paused:
                continue
            for handler in self.handlers:
                if not isinstance(handler, Sweepable):
                    continue
                try:
                    sent = await self._sweep.sweep(handler, self.emit)
                except Exception as error:
                    if is_unavailable(error):
                        self.stats.unavailable += 1
                        log.info("outbox sweep of %s: %s", handler.source, _reason(error))
                    else:
                        self.stats.errors += 1
                        log.warning("outbox sweep of %s failed: %s", handler.source, _reason(error))
                    continue
                self.stats.recovered += sent
                if sent:
                    log.info(
                        "outbox sweep: re-published %d requests of %s idle for %.3gs or more",
                        sent,
                        handler.source,
                        self.recover_interval,
                    )

    # ---------------------------------------------------------------------------------
    # deliveries

    async def _consume(self, handler: Handler, inflight: anyio.abc.TaskGroup) -> None:
        """Receive from the handler's topic while not stopping, as many at a time as there
        are free slots, and start one task per delivery."""
        topic = handler.source
        failures = 0
        while not self.stopping:
            async with self._slots:  # wait for a free slot, without keeping it
                pass
            if self._outage.paused:
                await self._outage.wait(self._stopping)
            if self.stopping:
                break
            wanted = max(1, min(self.concurrency, self._slots.value))
            try:
                deliveries = await self.broker.receive(
                    topic, max_messages=wanted, timeout=self.poll
                )
            except Exception as error:
                failures += 1
                outage = is_unavailable(error)
                if outage:  # the client reconnects; back off with jitter meanwhile
                    self.stats.unavailable += 1
                    delay = jittered(backoff_delay(failures, *self.unavailable_backoff))
                else:
                    self.stats.errors += 1
                    delay = self.delay(failures)
                (log.debug if outage and failures > 1 else log.warning)(
                    "receiving from %r failed (%s); trying again in %.3gs",
                    topic,
                    _reason(error),
                    delay,
                )
                with anyio.move_on_after(delay):
                    await self._stopping.wait()
                continue
            if failures:
                log.info("receiving from %r again after %d failed tries", topic, failures)
            failures = 0
            # Taken deliveries are handled even when stopping: settling them is the drain.
            for delivery in deliveries:
                await self._slots.acquire()
                self.stats.received += 1
                self.stats.in_flight += 1
                inflight.start_soon(self._process, handler, delivery)

    async def _process(self, handler: Handler, delivery: Delivery) -> None:
        self._inflight[delivery] = self._beat
        try:
            await self.handle(handler, delivery)
        finally:
            del self._inflight[delivery]
            self.stats.in_flight -= 1
            self._slots.release()

    async def handle(self, handler: Handler, delivery: Delivery) -> Exception | None:
        """Run one delivery: execute, publish everything emitted, then ack; or settle the
        failure (nack with backoff, or dead-letter with the reason). Never raises: what
        went wrong is logged and counted; returns what ``handler.execute`` raised, if it
        did. ``run`` calls it for every delivery; a broker that hosts handlers itself
        (``LocalBroker``) calls it to get the same logic."""
        event = delivery.event
        measure: Instruments | None = None
        attributes: dict[str, str] = {}
        if enabled():
            measure, attributes = instruments(), self._on(delivery.topic)
            measure.received.add(1, attributes)
            measure.in_flight.add(1, attributes)
            measure.delivery_lag.record(_lag(event), attributes)
        span = (
            _NO_SPAN
            if tracing_off()
            else delivery_span(event, delivery.topic, self._system, delivery.attempt)
        )
        try:
            with span:
                try:
                    outputs = await handler.execute(event)
                except Exception as error:
                    await self._failed(delivery, error)
                    return error
                try:
                    for output in outputs:
                        if output.domain is None and not output.to:
                            raise _Undeliverable(
                                f"{handler.source} emitted event {output.id} ({output.type}) "
                                "with no 'to' topic and no domain; it cannot be routed"
                            )
                    quiet = measure is None and span is _NO_SPAN
                    for output in outputs:
                        if quiet and output.domain is None:  # emit's common case, inline
                            await self.broker.publish(output)
                            self.stats.published += 1
                        else:
                            await self.emit(output)
                except Exception as error:
                    await self._failed(delivery, error, publishing=True)
                    return None
                try:
                    await delivery.ack()
                except Exception as error:
                    self._settle_failed(delivery, "ack", error)
                    return None
                self._retries.forget(delivery.topic, event.id)
                self.stats.acked += 1
                if measure is not None:
                    measure.acked.add(1, attributes)
                return None
        finally:
            if measure is not None:
                measure.in_flight.add(-1, attributes)

    def delay(self, attempt: int) -> float:
        """The backoff before delivery ``attempt + 1``: exponential, capped."""
        return backoff_delay(attempt, *self.backoff)

    async def _failed(
        self, delivery: Delivery, error: Exception, *, publishing: bool = False
    ) -> None:
        """Dead-letter a delivery that cannot succeed, or that failed too often; nack the
        rest with backoff."""
        event, attempt = delivery.event, delivery.attempt
        what = "publishing what it emitted" if publishing else "executing it"
        if isinstance(error, _Undeliverable) or _is_permanent(error):
            await self._dead_letter(delivery, _reason(error))
            return
        broker_limit = getattr(self.broker, "max_deliver", None)
        last_chance = isinstance(broker_limit, int) and 0 < broker_limit <= attempt
        if is_unavailable(error) and not last_chance:
            await self._unavailable(delivery, error, what)
            return
        # Deliveries that ended in an outage or a taken lease are not failures of the event.
        failures = max(1, attempt - self._retries.get(delivery.topic, event.id))
        if _is_lock_denied(error) and not last_chance:
            delay = min(self.delay(self._retries.add(delivery.topic, event.id)), self._lease_wait())
            log.debug("event %s: lease taken (%s); again in %.3gs", event.id, error, delay)
            instruments().lease_wait.record(delay, self._on(delivery.topic))
            if await self._settle(delivery, "nack", delivery.nack(delay)):
                self.stats.nacked += 1
                instruments().nacked.add(1, self._on(delivery.topic))
            return
        if failures >= self.max_attempts or last_chance:
            limit = attempt if not last_chance else f"{attempt} (the broker's max_deliver)"
            await self._dead_letter(delivery, f"failed on attempt {limit}: {_reason(error)}")
            return
        delay = self.delay(failures)
        log.warning(
            "event %s (%s) for %s on %r, attempt %d: %s failed (%s); again in %.3gs",
            event.id,
            event.type,
            instance_name(event.subject),
            delivery.topic,
            attempt,
            what,
            _reason(error),
            delay,
            exc_info=not isinstance(error, ViolationError),
        )
        if await self._settle(delivery, "nack", delivery.nack(delay)):
            self.stats.nacked += 1
            instruments().nacked.add(1, self._on(delivery.topic))

    async def _unavailable(self, delivery: Delivery, error: Exception, what: str) -> None:
        """A server was unavailable: nack with backoff and jitter, not counted as a failure,
        and pause consuming until the memories answer again."""
        event = delivery.event
        retries = self._retries.add(delivery.topic, event.id)
        self.stats.unavailable += 1
        instruments().unavailable.add(1, self._on(delivery.topic))
        delay = jittered(backoff_delay(retries, *self.unavailable_backoff))
        if not self._outage.begin(error, self._group):
            log.debug(
                "event %s (%s) on %r: %s failed, a server is unavailable (%s); again in %.3gs",
                event.id,
                event.type,
                delivery.topic,
                what,
                _reason(error),
                delay,
            )
        if await self._settle(delivery, "nack", delivery.nack(delay)):
            self.stats.nacked += 1
            instruments().nacked.add(1, self._on(delivery.topic))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        event = delivery.event
        log.error(
            "event %s (%s) for %s on %r dead-lettered after %d attempt(s): %s",
            event.id,
            event.type,
            instance_name(event.subject),
            delivery.topic,
            delivery.attempt,
            reason,
        )
        mark_error(trace.get_current_span(), "DeadLettered", reason)
        if await self._settle(delivery, "dead_letter", delivery.dead_letter(reason)):
            self._retries.forget(delivery.topic, event.id)
            self.stats.dead_lettered += 1
            instruments().dead_lettered.add(1, self._on(delivery.topic))

    async def _settle(self, delivery: Delivery, how: str, settling: Awaitable[None]) -> bool:
        """Run one settle call; a failure is logged (the broker delivers it again after
        ``ack_wait``, which is safe: handling is idempotent)."""
        try:
            await settling
        except Exception as error:
            self._settle_failed(delivery, how, error)
            return False
        return True

    def _settle_failed(self, delivery: Delivery, how: str, error: Exception) -> None:
        if is_unavailable(error):
            self.stats.unavailable += 1
        else:
            self.stats.errors += 1
        log.warning(
            "could not %s event %s on %r (%s); the broker will deliver it again",
            how,
            delivery.event.id,
            delivery.topic,
            _reason(error),
        )

    async def emit(self, event: Event) -> None:
        """Publish ``event``, or hand it to ``on_domain`` if it has a domain (what the
        worker does with everything a handler emits; ``Runtime`` uses it too)."""
        if event.domain is not None:
            self.stats.domain_events += 1
            if self.on_domain is None:
                log.info(
                    "event %s (%s) has domain %r: not published, and no on_domain was given",
                    event.id,
                    event.type,
                    event.domain,
                )
                return
            result = self.on_domain(event)
            if inspect.isawaitable(result):
                await result
            return
        if tracing_off():
            await self.broker.publish(event)
        else:
            with publish_span(event, self._system):
                await self.broker.publish(event)
        self.stats.published += 1
        if enabled():
            instruments().published.add(1, self._on(event.to or ""))

    # ---------------------------------------------------------------------------------
    # timers

    def fire_timers_now(self) -> None:
        """Look for due records now rather than at the next ``timer_interval`` tick (after
        moving a ``VirtualClock``, say)."""
        self._timers_now.set()

    def _timed_groups(self) -> list[tuple[Memory, dict[str, Timed]]]:
        """The workflows with timers, grouped by the memory they share (by identity)."""
        groups: dict[int, tuple[Memory, dict[str, Timed]]] = {}
        for handler in self.handlers:
            if isinstance(handler, Timed):
                memory = handler.memory
                groups.setdefault(id(memory), (memory, {}))[1][handler.source] = handler
        return list(groups.values())

    async def _timer_loop(self) -> None:
        """Every ``timer_interval``, publish the timer events of this worker's workflows
        whose due time passed."""
        groups = self._timed_groups()
        foreign = [0] * len(groups)
        while not self.stopping:
            if self._outage.paused:
                await self._outage.wait(self._stopping)
                continue
            more = False
            listed: set[str] = set()
            for index, (memory, owners) in enumerate(groups):
                try:
                    fired, full, foreign[index] = await self._fire_due(
                        memory, owners, foreign[index], listed
                    )
                except Exception as error:
                    if is_unavailable(error):
                        self.stats.unavailable += 1
                        self._outage.begin(error, self._group)
                    else:
                        self.stats.errors += 1
                    log.warning("listing due timers failed: %s", _reason(error))
                    continue
                more = more or (full and fired > 0)
            # Forget what is no longer due (fired), so the map stays as small as the listing.
            self._timers_sent = {k: v for k, v in self._timers_sent.items() if k in listed}
            if more:  # a full batch that did something: more may be due right now
                await anyio.lowlevel.checkpoint()
                continue
            with anyio.move_on_after(self.timer_interval):
                async with anyio.create_task_group() as wait:
                    for event in (self._stopping, self._timers_now):
                        wait.start_soon(_set_then_cancel, event, wait.cancel_scope)
            self._timers_now = anyio.Event()

    async def _fire_due(
        self, memory: Memory, owners: dict[str, Timed], foreign: int, listed: set[str]
    ) -> tuple[int, bool, int]:
        """Publish the timer events of the due records of ``owners``, adding every key
        listed to ``listed``. Returns how many were published, whether the listing was
        full, and how many due records belong to workflows this worker does not run.

        ``due`` lists the earliest first, so records of workflows nobody runs here, and
        records whose timer event is on its way, would fill every listing: the next
        listing asks for that many more (up to a bound)."""
        now = max(to_epoch(owner.clock()) for owner in owners.values())
        limit = min(self.timer_batch + len(self._timers_sent) + foreign, _MAX_DUE_LISTING)
        due = await memory.due(now, limit)
        work: list[tuple[str, Timed, float]] = []
        others = 0
        wall = time.monotonic()
        for key, due_at in due:
            sent = self._timers_sent.get(key)
            if sent is not None and sent[2] == due_at and wall - sent[1] < self.timer_resend:
                listed.add(key)  # its timer event is on its way: no need to read the record
                continue
            try:
                name = parse_subject(key).name
            except SubjectError:
                others += 1
                continue
            owner = owners.get(name)
            if owner is None:
                others += 1
            else:
                listed.add(key)
                work.append((key, owner, due_at))
        before = self.stats.timers_fired
        failures: list[tuple[str, Exception]] = []
        limiter = anyio.CapacityLimiter(self.concurrency)
        async with anyio.create_task_group() as group:
            for key, owner, due_at in work:
                group.start_soon(self._publish_timer, key, owner, due_at, limiter, failures)
        if failures:
            outages = sum(is_unavailable(error) for _, error in failures)
            self.stats.unavailable += outages
            self.stats.errors += len(failures) - outages
            key, error = failures[0]
            log.warning(
                "publishing the timer events of %d due records failed (%s: %s); trying "
                "again in %.3gs",
                len(failures),
                key,
                _reason(error),
                self.timer_interval,
            )
        return self.stats.timers_fired - before, len(due) >= limit, others

    async def _publish_timer(
        self,
        key: str,
        owner: Timed,
        due_at: float,
        limiter: anyio.CapacityLimiter,
        failures: list[tuple[str, Exception]],
    ) -> None:
        """Publish the timer event of one due record (due at ``due_at``), unless this
        worker published that same event less than ``timer_resend`` seconds ago (it is on
        its way)."""
        async with limiter:
            try:
                event = await owner.timer_event(key)
                if event is None:
                    return
                sent = self._timers_sent.get(key)
                wall = time.monotonic()
                if sent is not None and sent[0] == event.id and wall - sent[1] < self.timer_resend:
                    return
                await self.broker.publish(event)
            except Exception as error:
                failures.append((key, error))
                return
            self._timers_sent[key] = (event.id, wall, due_at)
            self.stats.timers_fired += 1
            instruments().timers_fired.add(1, self._on(event.to or ""))

    # ---------------------------------------------------------------------------------
    # heartbeat

    def _leased(self) -> list[Leased]:
        """The handlers that hold leases (workflows), found on first use: a ``Worker`` made
        per call (``LocalBroker`` hosting) must stay cheap to make."""
        if self._leased_handlers is None:
            self._leased_handlers = [h for h in self.handlers if isinstance(h, Leased)]
        return self._leased_handlers

    @property
    def heartbeat(self) -> float:
        """Seconds between two heartbeats: as given, or a quarter of the shortest deadline
        to keep (the broker's ``ack_wait`` and the workflows' ``lock_ttl``)."""
        if self._heartbeat is None:
            deadlines = [float(h.lock_ttl) for h in self._leased()]
            ack_wait = getattr(self.broker, "ack_wait", None)
            if isinstance(ack_wait, int | float) and ack_wait > 0:
                deadlines.append(float(ack_wait))
            self._heartbeat = min(deadlines, default=30.0) / 4
        return self._heartbeat

    def _lease_wait(self) -> float:
        """The longest backoff before retrying a denied lease, half the longest
        ``lock_ttl``: every lease ends within it (released, or expired), so waiting longer
        only delays recovery."""
        ttls = [float(h.lock_ttl) for h in self._leased()]
        return max(ttls) / 2 if ttls else float("inf")

    async def _heartbeat_loop(self) -> None:
        """Every ``heartbeat`` seconds: extend the deliveries in flight since the beat
        before (at least one beat long), and renew the leases of the workflows' long
        steps. One loop for all, so a short delivery costs nothing but a dict entry."""
        leased = self._leased()
        while True:
            await anyio.sleep(self.heartbeat)
            self._beat += 1
            old = self._beat - 2
            long = [d for d, beat in self._inflight.items() if beat <= old]
            if not long and not leased:
                continue
            with anyio.move_on_after(self.heartbeat):  # never fall behind the next beat
                async with anyio.create_task_group() as group:
                    if long:
                        group.start_soon(self._extend, long)
                    for handler in leased:
                        group.start_soon(self._renew, handler)

    async def _extend(self, deliveries: list[Delivery]) -> None:
        failures = 0
        for delivery in deliveries:
            try:
                await delivery.extend()
            except Exception as error:
                failures += 1
                last = error
        if failures:
            self.stats.errors += 1
            log.warning(
                "could not extend the ack deadline of %d of %d deliveries in flight (%s); "
                "trying again at the next heartbeat",
                failures,
                len(deliveries),
                _reason(last),
            )

    async def _renew(self, handler: Leased) -> None:
        try:
            await handler.renew_leases()
        except Exception as error:
            self.stats.errors += 1
            log.warning("renewing the leases of %r failed: %s", handler, _reason(error))

    # ---------------------------------------------------------------------------------
    # health

    def health_line(self, elapsed: float | None = None) -> str:
        """One line of counters, as logged every ``health_interval`` seconds."""
        s = self.stats
        rate = f" ({s.acked / elapsed:,.1f}/s)" if elapsed else ""
        return (
            f"in flight {s.in_flight}, received {s.received}, acked {s.acked}{rate}, "
            f"nacked {s.nacked}, dead-lettered {s.dead_lettered}, published {s.published}, "
            f"timers {s.timers_fired}, errors {s.errors}, unavailable {s.unavailable}"
        )

    async def _health_loop(self, started: float) -> None:
        while True:
            await anyio.sleep(self.health_interval)
            line = self.health_line(time.monotonic() - started)
            log.info("worker: %s", line)
            if self.on_health is not None:
                try:
                    self.on_health(line, self.stats)
                except Exception as error:
                    self.stats.errors += 1
                    log.warning("on_health failed: %s", _reason(error))
