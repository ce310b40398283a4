"""Leases that follow the work: a worker's heartbeat renews the lease of a step that runs
longer than ``lock_ttl`` and extends its delivery's ack deadline, and a step that outlives
its lease (no heartbeat: a stalled process) has its write refused by the compare-and-set."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from test_worker import IN, Recording

from resumable import Resumable, complete, step
from resumable.brokers import LocalBroker
from resumable.errors import TransactionViolation
from resumable.events import Event
from resumable.memory import InMemoryMemory, Memory
from resumable.record import decode_entry
from resumable.worker import Worker

from harness import SHOP
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio

TTL = 1.0
"""The lease and the ack deadline of these tests: the steps outlive them three times."""


class Gate:
    """A local step that waits until the test opens it; counts the times it ran."""

    def __init__(self) -> None:
        self.runs = 0
        self.entered = anyio.Event()
        self.opened = anyio.Event()

    async def __call__(self) -> str:
        self.runs += 1
        self.entered.set()
        await self.opened.wait()
        return "done"


def gated(gate: Gate, memory: Memory, **options: Any) -> Resumable[Any]:
    async def fn(ctx: Any, order: PlaceOrder) -> Any:
        result = yield step(gate)
        yield complete(OrderResult(result))

    return Resumable(orders, versions={"1.0.0": fn}, memory=memory, **options)


def completions(stored: Any) -> list[str]:
    return [
        e.id
        for raw in stored.journal
        for e in decode_entry(raw).produced
        if e.type == orders.complete_type
    ]


async def test_a_long_step_keeps_its_lease_and_its_delivery_under_a_worker() -> None:
    memory = InMemoryMemory()
    gate = Gate()
    workflow = gated(gate, memory, lock_ttl=TTL)
    broker = LocalBroker(ack_wait=TTL)  # only the transport: the worker consumes it
    worker = Worker([workflow], broker=broker, poll=0.1)
    init = orders.init_event(PlaceOrder("o-1", 1), source=SHOP)
    assert worker.heartbeat == TTL / 4
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        await broker.publish(init)
        with anyio.fail_after(10):
            await gate.entered.wait()
        # Three lease lifetimes: nobody else gets the lease, the event is not redelivered.
        until = anyio.current_time() + 3 * TTL
        while anyio.current_time() < until:
            assert not await memory.lock(init.subject, "intruder", TTL)
            await anyio.sleep(TTL / 10)
        assert worker.stats.received == 1
        gate.opened.set()
        with anyio.fail_after(10):
            while worker.stats.acked < 1:
                await anyio.sleep(0.01)
        worker.stop()
    assert gate.runs == 1
    assert (worker.stats.received, worker.stats.nacked) == (1, 0)
    stored = await memory.read(init.subject, journal=True)
    assert stored is not None and stored.status == "done"
    assert len(completions(stored)) == 1
    assert await memory.lock(init.subject, "intruder", TTL)  # released when it ended


async def test_a_step_that_outlives_its_lease_has_its_write_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No heartbeat runs (no worker): the first execution stalls in its step past its
    lease, a second takes over and finishes, and the first one's late write is refused."""
    memory = InMemoryMemory()
    stalled_gate, other_gate = Gate(), Gate()
    other_gate.opened.set()
    stalled = gated(stalled_gate, memory, lock_ttl=0.2)
    other = gated(other_gate, memory, lock_ttl=0.2)
    init = orders.init_event(PlaceOrder("o-2", 1), source=SHOP)
    refused: list[TransactionViolation] = []

    async def run_stalled() -> None:
        try:
            await stalled.execute(init)
        except TransactionViolation as error:
            refused.append(error)

    caplog.set_level(logging.WARNING, logger="resumable")
    async with anyio.create_task_group() as group:
        group.start_soon(run_stalled)
        await stalled_gate.entered.wait()
        await anyio.sleep(0.3)  # past the lease: it expires, as a stalled process's does
        assert await stalled.renew_leases() == 0  # found lost: not renewed, not taken back
        (report,) = await other.execute(init)  # the other process takes over, and ends
        stalled_gate.opened.set()
    assert [e.cause for e in refused] == [TransactionViolation.WRITE_FAILURE]
    assert "was lost while its step ran" in caplog.text
    assert "the compare-and-set refused this step's write" in caplog.text
    stored = await memory.read(init.subject, journal=True)
    assert stored is not None and stored.status == "done" and stored.revision == 1
    assert completions(stored) == [report.id]
    assert (stalled_gate.runs, other_gate.runs) == (1, 1)  # local steps: at least once
    assert await memory.lock(init.subject, "next", 0.2)  # the stale unlock freed nothing


async def test_a_renewal_keeps_the_lease_and_a_taken_lease_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = InMemoryMemory()
    gate = Gate()
    workflow = gated(gate, memory, lock_ttl=0.6)
    init = orders.init_event(PlaceOrder("o-3", 1), source=SHOP)
    caplog.set_level(logging.WARNING, logger="resumable")
    async with anyio.create_task_group() as group:
        group.start_soon(workflow.execute, init)
        await gate.entered.wait()
        assert await workflow.renew_leases() == 0  # too young to renew
        await anyio.sleep(0.25)
        assert await workflow.renew_leases() == 1
        assert not await memory.lock(init.subject, "intruder", 0.6)
        # Taken from under it (an operator's tool, say): found lost at the next renewal.
        assert await memory.unlock(init.subject, next(iter(workflow._leases)))
        assert await memory.lock(init.subject, "intruder", 0.6)
        await anyio.sleep(0.25)
        assert await workflow.renew_leases() == 0
        assert "another execution took it" in caplog.text
        assert not await memory.lock(init.subject, "someone", 0.6)  # the intruder's still
        await memory.unlock(init.subject, "intruder")
        gate.opened.set()
    stored = await memory.read(init.subject)
    assert stored is not None and stored.status == "done"  # nobody else wrote: it counts


def test_the_heartbeat_defaults_to_a_quarter_of_the_shortest_deadline() -> None:
    workflow = gated(Gate(), InMemoryMemory())
    assert Worker([workflow], broker=LocalBroker()).heartbeat == 5.0 / 4
    assert Worker([workflow], broker=LocalBroker(ack_wait=2.0)).heartbeat == 0.5
    assert Worker([workflow], broker=LocalBroker(), heartbeat=0.1).heartbeat == 0.1


class Contended:
    """A workflow-like handler whose lease is taken for its first ``denials`` calls."""

    def __init__(self, lock_ttl: float, denials: int) -> None:
        self.source = IN
        self.lock_ttl = lock_ttl
        self.denials = denials

    async def renew_leases(self) -> int:
        return 0

    async def execute(self, event: Event) -> list[Event]:
        if self.denials > 0:
            self.denials -= 1
            raise TransactionViolation(TransactionViolation.LOCK_UNACQUIRED, "locked")
        return []


async def test_a_denied_lease_is_retried_at_least_every_half_lock_ttl() -> None:
    """The lease a dead worker held ends within ``lock_ttl``: the backoff before trying a
    denied lease again grows no longer than half of it, or recovery waits for nothing."""
    broker = Recording()
    w = Worker([Contended(0.2, 5)], broker=broker, backoff=(0.01, 4.0, 30.0), poll=0.05)
    e = Event(source="com.test.client", type="com.test.in", subject="s-1", data={}, to=IN)
    async with anyio.create_task_group() as group:
        await group.start(w.run)
        await broker.publish(e)
        with anyio.fail_after(10):
            while w.stats.acked < 1:
                await anyio.sleep(0.01)
        w.stop()
    assert [s[3] for s in broker.settles(e.id) if s[0] == "nack"] == [0.01, 0.04, 0.1, 0.1, 0.1]
