"""``Worker`` on LocalBroker's transport (no servers), then the order workflow end to end on
(NATS + PostgreSQL) and (Redis + Redis), and the ``resumable worker`` command."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from chaos_worker import expected_outcome, outcome

from resumable import (
    ConfigViolation,
    ContractViolation,
    Event,
    EventHandler,
    ExecutionViolation,
    Resumable,
    TransactionViolation,
    VirtualClock,
    call,
    complete,
    sleep,
)
from resumable.brokers import Broker, Delivery, LocalBroker
from resumable.demo import EffectLog, init_for, make_handlers, make_workflow
from resumable.memory import InMemoryMemory, Memory
from resumable.memory.base import Stored
from resumable.record import decode_entry
from resumable.worker import Worker

from harness import SHOP, Number, echo_contract, echo_handler, plus_one
from orders import OrderResult, OrderState, PlaceOrder, orders
from servers import require_nats, require_postgres, require_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
IN = "com.test.in"
OUT = "com.test.out"
FAST = (0.01, 2.0, 0.05)
"""A backoff short enough for tests: 10 ms, doubling, at most 50 ms."""


def event(n: int, to: str = IN) -> Event:
    return Event(
        source="com.test.producer",
        type="com.test.thing",
        subject=f"s-{n}",
        data={"n": n},
        to=to,
    )


def out_event(cause: Event, index: int = 0, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "id": f"{cause.id}-out-{index}",
        "source": IN,
        "type": "com.test.done",
        "subject": cause.subject,
        "data": {"n": cause.data["n"], "index": index},
        "to": OUT,
    }
    return Event(**(values | fields))


class Scripted:
    """A handler on ``IN`` whose behaviour the test passes in; counts its calls."""

    def __init__(self, behave: Callable[[Event, int], Awaitable[list[Event]]]) -> None:
        self.source = IN
        self.behave = behave
        self.calls: dict[str, int] = {}

    async def execute(self, event: Event) -> list[Event]:
        self.calls[event.id] = self.calls.get(event.id, 0) + 1
        return await self.behave(event, self.calls[event.id])


class _Recorded(Delivery):
    """A delivery that logs how it was settled."""

    def __init__(self, inner: Delivery, log: list[tuple[Any, ...]]) -> None:
        self.inner = inner
        self.event, self.topic, self.attempt = inner.event, inner.topic, inner.attempt
        self.log = log

    async def ack(self) -> None:
        self.log.append(("ack", self.event.id, self.attempt))
        await self.inner.ack()

    async def nack(self, delay: float = 0.0) -> None:
        self.log.append(("nack", self.event.id, self.attempt, delay))
        await self.inner.nack(delay)

    async def dead_letter(self, reason: str) -> None:
        self.log.append(("dead_letter", self.event.id, self.attempt))
        await self.inner.dead_letter(reason)

    async def extend(self) -> None:
        self.log.append(("extend", self.event.id, self.attempt))
        await self.inner.extend()


class Recording(LocalBroker):
    """A LocalBroker transport that logs publishes, receives and settles, in order, and can
    fail the next ``fail_publishes`` publishes."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.log: list[tuple[Any, ...]] = []
        self.fail_publishes = 0

    async def publish(self, event: Event) -> None:
        if self.fail_publishes:
            self.fail_publishes -= 1
            raise ConnectionError("the broker is unreachable")
        self.log.append(("publish", event.id))
        await super().publish(event)

    async def receive(
        self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
    ) -> list[Delivery]:
        got = await super().receive(topic, max_messages=max_messages, timeout=timeout)
        for delivery in got:
            self.log.append(("receive", delivery.event.id, delivery.attempt))
        return [_Recorded(delivery, self.log) for delivery in got]

    def settles(self, event_id: str) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] in ("ack", "nack", "dead_letter") and e[1] == event_id]


async def collect(broker: Broker, topic: str, count: int, limit: float = 10.0) -> list[Event]:
    """Receive and ack ``count`` events from ``topic``, failing after ``limit`` seconds."""
    got: list[Event] = []
    with anyio.fail_after(limit):
        while len(got) < count:
            for delivery in await broker.receive(topic, max_messages=100, timeout=0.5):
                got.append(delivery.event)
                await delivery.ack()
    return got


async def eventually(check: Callable[[], bool], limit: float = 5.0) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.01)


async def run_until(worker: Worker, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``worker`` while ``body`` runs, then stop it and wait for it to drain."""
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        try:
            await body()
        finally:
            worker.stop()


def worker(handlers: list[Any], broker: Broker, **options: Any) -> Worker:
    settings: dict[str, Any] = {"poll": 0.05, "backoff": FAST, "timer_interval": 0.02}
    return Worker(handlers, broker=broker, **(settings | options))


# ---------------------------------------------------------------------------------------------
# deliveries


async def test_every_emitted_event_is_published_before_the_ack() -> None:
    broker = Recording()

    async def two(e: Event, _: int) -> list[Event]:
        return [out_event(e, 0), out_event(e, 1)]

    w = worker([Scripted(two)], broker)
    first, second = event(1), event(2)

    async def body() -> None:
        await broker.publish(first)
        await broker.publish(second)
        outputs = await collect(broker, OUT, 4)
        assert sorted(o.id for o in outputs) == sorted(
            f"{e.id}-out-{i}" for e in (first, second) for i in (0, 1)
        )
        await eventually(lambda: w.stats.acked == 2)

    await run_until(w, body)
    for e in (first, second):
        outs = (f"{e.id}-out-0", f"{e.id}-out-1")
        steps = [x for x in broker.log if x[1] == e.id or (x[0] == "publish" and x[1] in outs)]
        kinds = [x[0] for x in steps]
        assert kinds == ["publish", "receive", "publish", "publish", "ack"], steps
    assert (w.stats.received, w.stats.acked, w.stats.published) == (2, 2, 4)
    assert (w.stats.nacked, w.stats.dead_lettered, w.stats.in_flight) == (0, 0, 0)


async def test_a_failed_publish_is_not_acked_but_nacked_and_retried() -> None:
    broker = Recording()

    async def one(e: Event, _: int) -> list[Event]:
        return [out_event(e)]

    handler = Scripted(one)
    w = worker([handler], broker)
    e = event(1)

    async def body() -> None:
        await broker.publish(e)
        broker.fail_publishes = 2  # the first two attempts cannot publish their output
        (output,) = await collect(broker, OUT, 1)
        assert output.id == f"{e.id}-out-0"
        await eventually(lambda: w.stats.acked == 1)

    await run_until(w, body)
    assert broker.settles(e.id) == [
        ("nack", e.id, 1, 0.01),
        ("nack", e.id, 2, 0.02),
        ("ack", e.id, 3),
    ]
    assert handler.calls[e.id] == 3  # executed again: the handler must answer the same


async def test_retryable_failures_are_nacked_with_backoff_until_they_succeed() -> None:
    broker = Recording()
    errors: list[Exception] = [
        TransactionViolation(TransactionViolation.WRITE_FAILURE, "lost a compare-and-set"),
        TransactionViolation(TransactionViolation.READ_FAILURE, "memory unreachable"),
        RuntimeError("something unexpected"),
    ]

    async def flaky(e: Event, call_number: int) -> list[Event]:
        if call_number <= len(errors):
            raise errors[call_number - 1]
        return [out_event(e)]

    w = worker([Scripted(flaky)], broker, backoff=(0.01, 2.0, 0.03))
    e = event(1)

    async def body() -> None:
        await broker.publish(e)
        await collect(broker, OUT, 1)
        await eventually(lambda: w.stats.acked == 1)

    await run_until(w, body)
    assert broker.settles(e.id) == [
        ("nack", e.id, 1, 0.01),
        ("nack", e.id, 2, 0.02),
        ("nack", e.id, 3, 0.03),  # capped at the backoff's max
        ("ack", e.id, 4),
    ]
    assert (w.stats.nacked, w.stats.acked, w.stats.dead_lettered) == (3, 1, 0)


@pytest.mark.parametrize(
    "error",
    [
        ContractViolation("payload does not match"),
        ConfigViolation("no such version"),
        ExecutionViolation("nobody awaits this reply"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_violation_that_cannot_succeed_is_dead_lettered_at_once(error: Exception) -> None:
    broker = Recording()

    async def bad(e: Event, _: int) -> list[Event]:
        raise error

    w = worker([Scripted(bad)], broker)
    e = event(1)

    async def body() -> None:
        await broker.publish(e)
        await eventually(lambda: w.stats.dead_lettered == 1)

    await run_until(w, body)
    (letter,) = await broker.dead_letters(IN)
    assert letter.event == e
    assert letter.attempts == 1
    assert letter.reason == f"{type(error).__name__}: {error}"
    assert broker.settles(e.id) == [("dead_letter", e.id, 1)]
    assert w.stats.nacked == 0


async def test_failing_on_the_last_attempt_dead_letters_with_the_last_error() -> None:
    broker = Recording()

    async def broken(e: Event, call_number: int) -> list[Event]:
        raise RuntimeError(f"boom {call_number}")

    w = worker([Scripted(broken)], broker, max_attempts=3)
    e = event(1)

    async def body() -> None:
        await broker.publish(e)
        await eventually(lambda: w.stats.dead_lettered == 1)

    await run_until(w, body)
    (letter,) = await broker.dead_letters(IN)
    assert letter.attempts == 3
    assert letter.reason == "failed on attempt 3: RuntimeError: boom 3"
    assert [s[0] for s in broker.settles(e.id)] == ["nack", "nack", "dead_letter"]


async def test_a_denied_lease_is_retried_past_max_attempts() -> None:
    """Another execution holding the workflow's lease is contention, not failure: the lease
    ends (released, or expired), so the event is retried until it gets it."""
    broker = Recording()

    async def contended(e: Event, call_number: int) -> list[Event]:
        if call_number <= 4:
            raise TransactionViolation(TransactionViolation.LOCK_UNACQUIRED, "locked")
        return [out_event(e)]

    w = worker([Scripted(contended)], broker, max_attempts=2)
    e = event(1)

    async def body() -> None:
        await broker.publish(e)
        await collect(broker, OUT, 1)
        await eventually(lambda: w.stats.acked == 1)

    await run_until(w, body)
    assert [s[0] for s in broker.settles(e.id)] == ["nack"] * 4 + ["ack"]
    assert await broker.dead_letters(IN) == []


async def test_the_brokers_delivery_limit_dead_letters_even_a_denied_lease() -> None:
    """A broker that stops delivering after ``max_deliver`` (JetStream) would strand the
    event silently: on that last delivery the worker dead-letters it instead."""
    broker = Recording()
    broker.max_deliver = 3  # type: ignore[attr-defined]

    async def locked(e: Event, _: int) -> list[Event]:
        raise TransactionViolation(TransactionViolation.LOCK_UNACQUIRED, "locked")

    w = worker([Scripted(locked)], broker, max_attempts=10)

    async def body() -> None:
        await broker.publish(event(1))
        await eventually(lambda: w.stats.dead_lettered == 1)

    await run_until(w, body)
    (letter,) = await broker.dead_letters(IN)
    assert letter.attempts == 3
    assert "max_deliver" in letter.reason and "LOCK_UNACQUIRED" in letter.reason


async def test_an_emitted_event_without_a_topic_is_dead_lettered() -> None:
    broker = Recording()

    async def nowhere(e: Event, _: int) -> list[Event]:
        lost = out_event(e, 1)
        msgspec.structs.force_setattr(lost, "to", None)  # Event() itself defaults it to type
        return [out_event(e, 0), lost]

    w = worker([Scripted(nowhere)], broker)

    async def body() -> None:
        await broker.publish(event(1))
        await eventually(lambda: w.stats.dead_lettered == 1)

    await run_until(w, body)
    (letter,) = await broker.dead_letters(IN)
    assert "no 'to' topic" in letter.reason
    assert w.stats.published == 0  # checked before anything was published


async def test_events_with_a_domain_go_to_on_domain_not_to_the_broker() -> None:
    broker = Recording()
    handed: list[Event] = []

    async def external(e: Event, _: int) -> list[Event]:
        return [out_event(e, 0), out_event(e, 1, domain="external")]

    async def on_domain(e: Event) -> None:
        handed.append(e)

    with_callback = worker([Scripted(external)], broker, on_domain=on_domain)

    async def body() -> None:
        await broker.publish(event(1))
        (published,) = await collect(broker, OUT, 1)
        assert published.domain is None
        await eventually(lambda: with_callback.stats.acked == 1)

    await run_until(with_callback, body)
    assert [e.domain for e in handed] == ["external"]
    assert with_callback.stats.domain_events == 1

    without = worker([Scripted(external)], broker)

    async def body2() -> None:
        await broker.publish(event(2))
        await collect(broker, OUT, 1)
        await eventually(lambda: without.stats.acked == 1)

    await run_until(without, body2)
    assert without.stats.domain_events == 1
    assert not [x for x in broker.log if x[0] == "publish" and x[1].endswith("-out-1")]


async def test_at_most_concurrency_executions_run_at_once() -> None:
    broker = LocalBroker()
    running = peak = 0

    async def slow(e: Event, _: int) -> list[Event]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1
        return [out_event(e)]

    w = worker([Scripted(slow)], broker, concurrency=3)

    async def body() -> None:
        for n in range(20):
            await broker.publish(event(n))
        await collect(broker, OUT, 20)
        await eventually(lambda: w.stats.acked == 20)

    await run_until(w, body)
    assert peak == 3


async def test_stop_drains_what_is_in_flight_and_takes_nothing_new() -> None:
    broker = Recording()
    release = anyio.Event()

    async def slow(e: Event, _: int) -> list[Event]:
        await release.wait()
        return [out_event(e)]

    w = worker([Scripted(slow)], broker, concurrency=4)
    events = [event(n) for n in range(10)]
    async with anyio.create_task_group() as group:
        await group.start(w.run)
        for e in events:
            await broker.publish(e)
        await eventually(lambda: w.stats.in_flight == 4)
        w.stop()
        await anyio.sleep(0.1)  # longer than a poll: nothing new is taken meanwhile
        assert w.stats.received == 4
        release.set()
    # run returned: everything it took is settled, the rest was never taken
    received = [x[1] for x in broker.log if x[0] == "receive"]
    acked = [x[1] for x in broker.log if x[0] == "ack"]
    assert sorted(received) == sorted(acked) and len(acked) == 4
    assert w.stats.in_flight == 0
    left = await broker.receive(IN, max_messages=20, timeout=0)
    assert sorted(d.event.id for d in left) == sorted(e.id for e in events if e.id not in acked)
    assert {d.attempt for d in left} == {1}  # never delivered before


async def test_a_drain_longer_than_drain_timeout_is_cut_short() -> None:
    broker = LocalBroker(ack_wait=0.2)

    async def hangs(e: Event, _: int) -> list[Event]:
        await anyio.sleep_forever()
        raise AssertionError

    w = worker([Scripted(hangs)], broker, drain_timeout=0.1)
    async with anyio.create_task_group() as group:
        await group.start(w.run)
        await broker.publish(event(1))
        await eventually(lambda: w.stats.in_flight == 1)
        started = time.monotonic()
        w.stop()
    assert time.monotonic() - started < 1.0
    assert (w.stats.acked, w.stats.nacked, w.stats.in_flight) == (0, 0, 0)
    (again,) = await broker.receive(IN, timeout=2.0)  # unsettled: back after ack_wait
    assert again.attempt == 2


async def test_a_worker_stopped_before_it_runs_returns_at_once() -> None:
    broker = LocalBroker()
    memory = InMemoryMemory()
    await make_workflow(memory).execute(init_for(1))  # a request in the outbox
    w = worker([make_workflow(memory), *make_handlers()], broker)
    w.stop()
    with anyio.fail_after(2):
        await w.run()
    assert w.stats.as_dict() == {name: 0 for name in w.stats.as_dict()}  # not even recovery


async def test_the_health_line_is_reported_every_health_interval() -> None:
    broker = LocalBroker()
    lines: list[str] = []

    async def one(e: Event, _: int) -> list[Event]:
        return [out_event(e)]

    w = worker(
        [Scripted(one)],
        broker,
        health_interval=0.05,
        on_health=lambda line, stats: lines.append(line),
    )

    async def body() -> None:
        await broker.publish(event(1))
        await collect(broker, OUT, 1)
        await eventually(lambda: any("acked 1 " in line for line in lines))

    await run_until(w, body)
    assert "in flight 0, received 1, acked 1 (" in lines[-1]
    assert "dead-lettered 0, published 1, timers 0, errors 0" in lines[-1]


async def test_receive_failures_are_retried_with_backoff() -> None:
    class Flaky(LocalBroker):
        failures = 3

        async def receive(
            self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
        ) -> list[Delivery]:
            if topic == IN and self.failures:
                self.failures -= 1
                raise ConnectionError("broker down")
            return await super().receive(topic, max_messages=max_messages, timeout=timeout)

    broker = Flaky()

    async def one(e: Event, _: int) -> list[Event]:
        return [out_event(e)]

    w = worker([Scripted(one)], broker)

    async def body() -> None:
        await broker.publish(event(1))
        await collect(broker, OUT, 1)

    await run_until(w, body)
    assert w.stats.errors == 3 and w.stats.acked == 1


def test_bad_settings_are_refused() -> None:
    broker = LocalBroker()
    handler = Scripted(lambda e, n: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="at least one handler"):
        Worker([], broker=broker)
    with pytest.raises(ValueError, match="concurrency"):
        Worker([handler], broker=broker, concurrency=0)
    with pytest.raises(ValueError, match="backoff"):
        Worker([handler], broker=broker, backoff=(1.0, 0.5, 10.0))
    with pytest.raises(ValueError, match="two handlers"):
        Worker([handler, Scripted(handler.behave)], broker=broker)
    with pytest.raises(TypeError, match="not a handler"):
        Worker([object()], broker=broker)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timer_resend must be more than 0"):
        Worker([handler], broker=broker, timer_resend=0)


def test_backoff_is_exponential_and_capped() -> None:
    w = Worker([Scripted(lambda e, n: None)], broker=LocalBroker())  # type: ignore[arg-type,return-value]
    assert [w.delay(n) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    assert w.delay(9) == 25.6 and w.delay(10) == 30.0 and w.delay(10_000) == 30.0


# ---------------------------------------------------------------------------------------------
# workflows: timers and recovery


def sleeper(seconds: float, memory: Memory, **options: Any) -> Resumable[OrderState]:
    """A workflow that sleeps ``seconds``, calls echo, and completes."""

    async def wf(ctx: Any, order: PlaceOrder) -> Any:
        yield sleep(seconds)
        reply = yield call(echo_contract, Number(order.amount_cents))
        yield complete(OrderResult(f"woke:{reply.data.n}"))

    return Resumable(
        orders,
        versions={"1.0.0": wf},
        services=[echo_contract],
        state=OrderState,
        memory=memory,
        **options,
    )


def start(n: int, **fields: Any) -> Event:
    return orders.init_event(
        PlaceOrder(f"o-{n}", n), source=SHOP, execution_id=f"run-{n}", **fields
    )


async def test_timers_fire_in_real_time() -> None:
    broker = LocalBroker()
    memory = InMemoryMemory()
    w = worker([sleeper(0.2, memory), echo_handler()], broker)

    async def body() -> None:
        began = time.monotonic()
        for n in range(3):
            await broker.publish(start(n))
        done = await collect(broker, SHOP, 3)
        assert time.monotonic() - began >= 0.2
        assert sorted(e.data["status"] for e in done) == ["woke:1", "woke:2", "woke:3"]

    await run_until(w, body)
    assert w.stats.timers_fired == 3


async def test_timers_follow_a_virtual_clock_and_several_workers_fire_each_once() -> None:
    """Three workers on one memory wake the same records: each timer takes effect once
    (one completion per instance), and the lease races are skipped quietly."""
    broker = LocalBroker()
    memory = InMemoryMemory()
    clock = VirtualClock()
    workers = [
        worker(
            [sleeper(3600, memory, clock=clock), EventHandler(echo_contract, {"1.0.0": plus_one})],
            broker,
        )
        for _ in range(3)
    ]
    async with anyio.create_task_group() as group:
        for w in workers:
            await group.start(w.run)
        for n in range(10):
            await broker.publish(start(n, time=clock()))
        await eventually(lambda: sum(w.stats.acked for w in workers) == 10)
        await anyio.sleep(0.1)  # several timer ticks: nothing is due yet
        assert sum(w.stats.timers_fired for w in workers) == 0
        clock.advance(3601)
        done = await collect(broker, SHOP, 10)
        await anyio.sleep(0.1)  # any second completion would arrive meanwhile
        assert await broker.receive(SHOP, timeout=0) == []
        for w in workers:
            w.stop()
    assert len({e.subject for e in done}) == 10
    assert sum(w.stats.timers_fired for w in workers) >= 10
    assert sum(w.stats.errors + w.stats.dead_lettered for w in workers) == 0
    assert await memory.due(math.inf) == []


class View(Broker):
    """Another process's view of the broker ``inner``: subclasses change its publish."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    async def publish(self, event: Event) -> None:
        await self.inner.publish(event)

    async def receive(
        self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
    ) -> list[Delivery]:
        return await self.inner.receive(topic, max_messages=max_messages, timeout=timeout)

    async def dead_letters(self, topic: str) -> list[Any]:
        return await self.inner.dead_letters(topic)


class Freezing(View):
    """A view of ``inner`` whose publishes of events to ``SHOP`` never return, as if the
    process froze (then is killed) after writing the step and before publishing it."""

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner)
        self.frozen = anyio.Event()

    async def publish(self, event: Event) -> None:
        if event.to == SHOP:
            self.frozen.set()
            await anyio.sleep_forever()
        await self.inner.publish(event)


def napper(memory: Memory) -> Resumable[OrderState]:
    """Sleeps 0.1 s, then completes: the completion is emitted by the timer's step."""

    async def wf(ctx: Any, order: PlaceOrder) -> Any:
        yield sleep(0.1)
        yield complete(OrderResult("rested"))

    return Resumable(orders, versions={"1.0.0": wf}, state=OrderState, memory=memory)


def overrunner(memory: Memory) -> Resumable[OrderState]:
    """Calls a service nobody runs and times out after 0.1 s: the system error is emitted
    by the timer's step."""

    async def wf(ctx: Any, order: PlaceOrder) -> Any:
        yield call(echo_contract, Number(1))
        yield complete(OrderResult("unreachable"))

    return Resumable(
        orders,
        versions={"1.0.0": wf},
        services=[echo_contract],
        state=OrderState,
        memory=memory,
        timeout=0.1,
    )


@pytest.mark.parametrize(
    ("make", "report"),
    [(napper, orders.complete_type), (overrunner, orders.system_error_type)],
    ids=["sleep-then-complete", "workflow-timeout"],
)
async def test_a_timer_step_lost_between_write_and_publish_is_published_after_a_crash(
    make: Callable[[Memory], Resumable[OrderState]], report: str
) -> None:
    """A worker writes the step a timer causes, then dies before publishing what it emitted:
    the timer's delivery was not acked, so the broker gives it to another worker, which
    finds the step in the journal and publishes its events."""
    broker = LocalBroker(ack_wait=0.3)
    memory = InMemoryMemory()
    freezing = Freezing(broker)
    doomed = worker([make(memory)], freezing)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            await group.start(doomed.run)
            await broker.publish(start(1))
            await freezing.frozen.wait()
            group.cancel_scope.cancel()  # killed: nothing is settled, nothing else published
    stored = await memory.read(start(1).subject)
    assert stored is not None and stored.status in ("done", "failed")  # the step is written
    assert await broker.receive(SHOP, timeout=0) == []  # and its report was never sent
    assert await memory.due(math.inf) == []  # nothing is due: no timer would fire again

    survivor = worker([make(memory)], broker)

    async def body() -> None:
        (got,) = await collect(broker, SHOP, 1, limit=5.0)
        assert got.type == report and got.subject == start(1).subject
        await eventually(lambda: survivor.stats.acked >= 1)

    await run_until(survivor, body)
    assert survivor.stats.timers_fired == 0  # the timer was delivered again, not re-fired
    assert await broker.dead_letters(orders.type) == []


class LosingTimers(View):
    """A view of ``inner`` that accepts the first ``lose`` timer events and loses them (as a
    dead-lettered or purged timer event is gone)."""

    def __init__(self, inner: Broker, lose: int) -> None:
        super().__init__(inner)
        self.lose = lose

    async def publish(self, event: Event) -> None:
        if event.type == "resumable.workflow.timer" and self.lose:
            self.lose -= 1
            return
        await self.inner.publish(event)


class CountingReads(InMemoryMemory):
    """An in-memory store that counts the reads of its records."""

    reads = 0

    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        self.reads += 1
        return await super().read(key, journal=journal)


async def test_a_timer_event_is_published_once_until_timer_resend_then_again() -> None:
    """While its timer event is on its way, a due record is not published again on every
    tick, nor even read (with thousands due, the reads would swamp the worker); if it is
    still due ``timer_resend`` seconds later, the event was lost: again."""
    memory = CountingReads()
    patient = worker([napper(memory)], LosingTimers(LocalBroker(), lose=1), timer_resend=300)

    async def stays_due() -> None:
        await patient.broker.inner.publish(start(1))  # type: ignore[attr-defined]
        await eventually(lambda: patient.stats.timers_fired == 1)
        memory.reads = 0
        await anyio.sleep(0.3)  # about 15 timer ticks
        assert patient.stats.timers_fired == 1
        assert memory.reads == 0
        assert await memory.due(math.inf) != []

    await run_until(patient, stays_due)

    broker = LocalBroker(duplicate_window=0)
    eager = worker([napper(memory)], LosingTimers(broker, lose=1), timer_resend=0.2)

    async def fires_again() -> None:
        (done,) = await collect(broker, SHOP, 1)
        assert done.data["status"] == "rested"

    await run_until(eager, fires_again)
    assert eager.stats.timers_fired == 2


async def test_recovery_republishes_requests_lost_between_write_and_publish() -> None:
    broker = LocalBroker()
    memory = InMemoryMemory()
    workflow = make_workflow(memory)
    lost = [await workflow.execute(init_for(n)) for n in range(3)]  # written, never published
    assert all(len(requests) == 1 for requests in lost)

    idle = worker([make_workflow(memory), *make_handlers()], broker, recover=False)

    async def nothing_moves() -> None:
        await anyio.sleep(0.2)
        assert idle.stats.received == 0

    await run_until(idle, nothing_moves)

    w = worker([make_workflow(memory), *make_handlers()], broker)

    async def body() -> None:
        assert w.stats.recovered == 3  # done before run() reported it had started
        done = await collect(broker, SHOP, 3)
        assert {e.subject for e in done} == {init_for(n).subject for n in range(3)}

    await run_until(w, body)
    assert await memory.keys(status="active") == []


async def test_recovered_copies_of_requests_that_did_arrive_change_nothing() -> None:
    """Recovery cannot know which requests were published: re-sending ones that were is
    harmless (services answer with the same ids; the workflow ignores the duplicates and
    re-publishes, with the same ids, what it emitted for them). The broker's duplicate
    window is off, as for copies that come after it."""
    broker = LocalBroker(duplicate_window=0)
    memory = InMemoryMemory()
    effects = EffectLog(":memory:")
    first = worker([make_workflow(memory), *make_handlers(effects)], broker)
    completions: list[Event] = []

    async def run_orders() -> None:
        for n in range(20):
            await broker.publish(init_for(n))
        completions.extend(await collect(broker, SHOP, 20))

    await run_until(first, run_orders)
    counts = effects.counts()
    again = worker([make_workflow(memory), *make_handlers(effects)], broker)
    await run_until(again, lambda: anyio.sleep(0.1))
    assert again.stats.recovered == 0  # nothing is pending: a restart sends nothing

    requests: list[Event] = []  # every request ever made, as if recovery re-sent them all
    for key in await memory.keys():
        stored = await memory.read(key, journal=True)
        assert stored is not None and stored.journal is not None
        for raw in stored.journal:
            requests += [e for e in decode_entry(raw).produced if e.to != SHOP]
    third = worker([make_workflow(memory), *make_handlers(effects)], broker)

    async def resend() -> None:
        for request in requests:
            await broker.publish(request)
        await eventually(lambda: third.stats.acked >= 2 * len(requests))
        while third.stats.in_flight or await has_more(broker, third):
            await anyio.sleep(0.05)

    await run_until(third, resend)
    assert effects.counts() == counts  # no effect happened twice
    assert effects.repeats > 0  # the copies reached the services, which answered them
    assert third.stats.dead_lettered == 0
    replayed = await drain(broker, SHOP)
    assert {e.id for e in replayed} <= {e.id for e in completions}
    assert len({e.id for e in completions}) == 20


async def has_more(broker: Broker, w: Worker) -> bool:
    acked = w.stats.acked
    await anyio.sleep(0.1)
    return w.stats.acked != acked


async def drain(broker: Broker, topic: str) -> list[Event]:
    """Everything waiting on ``topic`` now, acked."""
    got: list[Event] = []
    while deliveries := await broker.receive(topic, max_messages=100, timeout=0.2):
        for delivery in deliveries:
            got.append(delivery.event)
            await delivery.ack()
    return got


# ---------------------------------------------------------------------------------------------
# end to end on real servers


def expected_mix(count: int) -> Counter[str]:
    return Counter(expected_outcome(n) for n in range(count))


async def run_orders_end_to_end(
    make_broker: Callable[[], Broker], make_memory: Callable[[], Memory], tmp_path: Path
) -> None:
    """Two workers (separate broker and memory objects, as two processes would have) run 60
    demo orders; each order completes once, with the demo's outcome mix."""
    count = 60
    effects = EffectLog(tmp_path / "effects.db")
    brokers = [make_broker() for _ in range(3)]
    memories = [make_memory() for _ in range(2)]
    workers = [
        Worker(
            [make_workflow(memory), *make_handlers(effects)],
            broker=broker,
            poll=0.2,
            timer_interval=0.1,
        )
        for broker, memory in zip(brokers, memories, strict=False)
    ]
    client = brokers[2]
    try:
        async with anyio.create_task_group() as group:
            for w in workers:
                await group.start(w.run)
            for n in range(count):
                await client.publish(init_for(n))
            done = await collect(client, SHOP, count, limit=60.0)
            for w in workers:
                w.stop()
        by_subject = {e.subject: e for e in done}
        assert len(by_subject) == count and len({e.id for e in done}) == count
        assert Counter(outcome(e) for e in done) == expected_mix(count)
        for n in range(count):
            stored = await memories[0].read(init_for(n).subject)
            assert stored is not None
            assert stored.status == ("failed" if expected_outcome(n) == "compensated" else "done")
        assert effects.counts() == {"charge": 54, "reserve": 51, "label": 54, "refund": 3}
        for topic in [make_workflow(memories[0]).source, *(h.source for h in make_handlers())]:
            assert await client.dead_letters(topic) == []
        assert sum(w.stats.dead_lettered for w in workers) == 0
        assert sum(w.stats.in_flight for w in workers) == 0
    finally:
        effects.close()
        for broker in brokers:
            await broker.close()
        for memory in memories:
            await memory.close()


async def test_order_workflow_end_to_end_on_nats_and_postgres(tmp_path: Path) -> None:
    import asyncpg
    import nats

    from resumable.brokers.nats import NatsBroker
    from resumable.memory.postgres import PostgresMemory

    nats_url, pg_url = require_nats(), require_postgres()
    suffix = uuid.uuid4().hex[:12]
    stream, schema = f"W_{suffix}", f"w_{suffix}"
    try:
        await run_orders_end_to_end(
            lambda: NatsBroker(nats_url, stream=stream, subject_prefix=f"w{suffix}"),
            lambda: PostgresMemory(pg_url, schema=schema),
            tmp_path,
        )
    finally:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()
        connection = await asyncpg.connect(pg_url)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


async def test_order_workflow_end_to_end_on_redis_and_redis(tmp_path: Path) -> None:
    import redis.asyncio as aioredis

    from resumable.brokers.redis import RedisBroker
    from resumable.memory.redis import RedisMemory

    url = require_redis()
    prefix = f"w-{uuid.uuid4().hex}"
    try:
        await run_orders_end_to_end(
            lambda: RedisBroker(url, prefix=f"{prefix}-b"),
            lambda: RedisMemory(url, prefix=f"{prefix}-m", allow_volatile=True),
            tmp_path,
        )
    finally:
        client: aioredis.Redis = aioredis.Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# the command


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resumable", "worker", *args]


def _env() -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``resumable worker`` with ``args`` to its end."""
    return subprocess.run(
        _command(*args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=60,
        check=False,
    )


def test_the_command_refuses_what_it_cannot_load() -> None:
    missing = _run("no_such_module:handlers", "--broker", "local://")
    assert missing.returncode == 2
    assert "cannot load no_such_module:handlers" in missing.stderr
    no_memory = _run("resumable.demo:make_workflow", "--broker", "local://")
    assert no_memory.returncode == 2
    assert "missing 1 required positional argument" in no_memory.stderr
    assert "give --memory URL" in no_memory.stderr
    unused_memory = _run("orders:HANDLERS", "--broker", "local://", "--memory", "memory://")
    assert unused_memory.returncode == 2
    assert "--memory is not used" in unused_memory.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--unavailable-backoff", "1,2"], "expected three numbers INITIAL,FACTOR,MAX"),
        (["--unavailable-backoff", "0,2,30"], "unavailable_backoff must be (initial > 0"),
        (["--unavailable-backoff", "1,0.5,30"], "factor >= 1"),
        (["--recover-interval", "-1"], "expected seconds, 0 (only on start) or more"),
        (["--recover-interval", "soon"], "got 'soon'"),
    ],
    ids=[
        "backoff-two-numbers",
        "backoff-zero",
        "backoff-shrinking",
        "sweep-negative",
        "sweep-text",
    ],
)
def test_the_command_refuses_bad_outage_settings(flags: list[str], message: str) -> None:
    """The outage settings reach the Worker, whose checks (or the parser's) name the flaw."""
    refused = _run("orders:HANDLERS", "--broker", "local://", *flags)
    assert refused.returncode == 2
    assert message in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("flags", "recover_interval", "unavailable_backoff"),
    [
        ([], 30.0, (0.5, 2.0, 30.0)),
        (["--recover-interval", "7", "--unavailable-backoff", "0.1,3,5"], 7.0, (0.1, 3.0, 5.0)),
        (["--recover-interval", "0"], None, (0.5, 2.0, 30.0)),
    ],
    ids=["defaults", "given", "sweep-off"],
)
def test_the_command_gives_the_outage_settings_to_the_worker(
    flags: list[str],
    recover_interval: float | None,
    unavailable_backoff: tuple[float, float, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process: the Worker the command builds is given what the flags say."""
    import resumable.worker
    from resumable.cli import main

    given: dict[str, Any] = {}

    class Recording(Worker):
        def __init__(self, *args: Any, **options: Any) -> None:
            given.update(options)
            raise ValueError("recorded; not started")

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setattr(resumable.worker, "Worker", Recording)
    assert main(["worker", "orders:HANDLERS", "--broker", "local://", *flags]) == 2
    assert given["recover_interval"] == recover_interval
    assert given["unavailable_backoff"] == unavailable_backoff


@pytest.mark.parametrize(
    ("target", "with_memory", "topics"),
    [
        ("chaos_worker:handlers", True, "arvo.orc.order.fulfil, com.payments.charge, "),
        ("resumable.demo:make_workflow", True, "arvo.orc.order.fulfil on"),
        ("orders:HANDLERS", False, "com.payments.charge, com.payments.refund, "),
    ],
    ids=["factory", "one-handler", "list"],
)
def test_sigterm_drains_and_exits_0(
    target: str, with_memory: bool, topics: str, tmp_path: Path
) -> None:
    """``resumable worker`` on a factory given the memory, a factory of one handler, or a
    list, starts, says what it consumes, and exits 0 on SIGTERM."""
    memory = ["--memory", f"sqlite:///{tmp_path / 'w.db'}"] if with_memory else []
    settings = ["--recover-interval", "0", "--unavailable-backoff", "0.1,2,5"]
    process = subprocess.Popen(
        _command(target, "--broker", "local://", *memory, "--concurrency", "4", *settings),
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert f"consuming {topics}" in line, line + process.stderr.read()
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=30) == 0, rest
        assert "SIGTERM: draining" in rest and "stopped;" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
