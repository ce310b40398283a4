"""``resumable demo``: many orders through the order workflow, durably on one SQLite file.

The services and the workflow run in a ``Runtime`` on the caller's event loop, with the
in-process broker. ``--crash-after N`` exits the process abruptly after N workflow
steps; running again on the same file recovers on start and finishes every order
exactly once.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import anyio

from resumable.demo.services import EffectLog, make_handlers
from resumable.demo.workflow import SERVICES, OrderState, PlaceOrder, fulfil, orders
from resumable.driver import Resumable
from resumable.errors import WorkflowFailed
from resumable.events import Event
from resumable.memory import Memory, SQLiteMemory
from resumable.record import decode_entry
from resumable.runtime import Runtime

SHOP = "com.shop.web"
"""The demo's runtime starts orders as the shop: their reports go to this topic."""


def demo_order(index: int) -> PlaceOrder:
    """Order ``index`` of the demo: about 1 in 10 declined, 1 in 20 out of stock."""
    amount = 500 + (index * 7919) % 20_000
    if index % 10 == 3:
        amount = 250_000
    sku = "out-of-stock" if index % 20 == 7 else "sku-1"
    return PlaceOrder(f"o-{index}", amount, sku)


def init_for(index: int) -> Event:
    """The init event of order ``index`` as a shop would send it (for tests that drive the
    workflow by hand); its subject is the one ``Runtime.start(..., id="order-N")`` gives."""
    return orders.init_event(
        demo_order(index),
        source=SHOP,
        execution_id=f"order-{index}",
        id=f"init-order-{index}",
    )


class CountingWorkflow(Resumable[OrderState]):
    """The order workflow, counting its steps; with ``crash_after`` it kills the process
    right after that step is written, before its events are published."""

    def __init__(self, memory: Memory, crash_after: int | None, out: TextIO) -> None:
        super().__init__(
            orders,
            versions={"1.0.0": fulfil},
            services=SERVICES,
            state=OrderState,
            memory=memory,
        )
        self.crash_after = crash_after
        self.out = out
        self.steps = 0

    async def execute(self, event: Event) -> list[Event]:
        events = await super().execute(event)
        self.steps += 1
        if self.crash_after is not None and self.steps >= self.crash_after:
            self.out.write(
                f"\n!! simulated crash after {self.steps} steps: the process exits now, "
                "before this step's events are published\n"
            )
            self.out.flush()
            os._exit(3)
        return events


class _Progress:
    """A progress line: rewritten in place (``\\r``) on a terminal, every 0.2 s; elsewhere
    (a pipe, a log file) one plain line every 5 s, so the output stays readable."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.last = 0.0
        self.start = time.perf_counter()
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = 0.2 if self.tty else 5.0

    def show(self, done: int, steps: int, *, what: str = "finished", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = steps / max(now - self.start, 1e-9)
        line = f"  {done:>6}/{self.total} orders {what:<8}   {rate:>8,.0f} steps/s"
        self.out.write(f"\r{line}" if self.tty else f"{line}\n")
        self.out.flush()


async def run(
    path: str | os.PathLike[str] = "resumable-demo.db",
    *,
    count: int = 1000,
    crash_after: int | None = None,
    out: TextIO = sys.stdout,
) -> dict[str, int]:
    """Run ``count`` orders on the SQLite file at ``path``, resuming any earlier run."""
    memory = SQLiteMemory(path)
    effects = EffectLog(path)
    workflow = CountingWorkflow(memory, crash_after, out)
    ids = [f"order-{i}" for i in range(count)]
    out.write(f"resumable demo: {count} orders on {Path(path).resolve()}\n")
    earlier = await memory.list(workflow=orders.type, limit=1)
    if earlier.items:
        started = sum([len(await memory.keys(status=s)) for s in ("active", "done", "failed")])
        active = len(await memory.keys(status="active"))
        out.write(
            f"  found {started} orders from an earlier run ({active} unfinished); "
            "resuming them from their journals\n"
        )
    progress = _Progress(count, out)
    started_at = time.perf_counter()
    async with Runtime([*make_handlers(effects), workflow], memory=memory, source=SHOP) as rt:
        handles = []
        for i, order_id in enumerate(ids):  # a start that happened before runs nothing again
            handles.append(await rt.start(orders, demo_order(i), id=order_id))
            progress.show(i + 1, workflow.steps, what="started")
        for done, handle in enumerate(handles, 1):
            with contextlib.suppress(WorkflowFailed):  # reported below, from its record
                await handle.result()
            progress.show(done, workflow.steps)
        progress.show(count, workflow.steps, force=True)
        assert rt.worker is not None
        stats = rt.worker.stats
    elapsed = time.perf_counter() - started_at
    summary = await _summarise(memory, [await h.subject() for h in handles])
    summary["steps"] = workflow.steps
    summary["events"] = stats.published
    summary["resent"] = stats.recovered
    summary["errors"] = stats.dead_lettered
    summary["repeated_effects"] = effects.repeats
    effect_counts = effects.counts()
    if summary["resent"]:
        lost = _count(stats.recovered, "request whose reply was", "requests whose replies were")
        out.write(f"\n  re-sent {lost} lost with the process")
    out.write(
        f"\n  completed {summary['done']} of {count} orders: {summary['shipped']} shipped, "
        f"{summary['declined']} declined, {summary['compensated']} failed and compensated "
        "(refunded)\n"
        f"  this run: {workflow.steps} workflow steps, {stats.published} events, "
        f"{workflow.steps / max(elapsed, 1e-9):,.0f} steps/s\n"
        f"  effects: {effect_counts.get('charge', 0)} charges, "
        f"{effect_counts.get('reserve', 0)} reservations, "
        f"{effect_counts.get('label', 0)} labels, {effect_counts.get('refund', 0)} refunds; "
        f"{_count(effects.repeats, 'repeated request', 'repeated requests')} answered from the "
        "effect log, not redone\n"
    )
    if summary["completions"] == summary["done"] and summary["done"] == count:
        out.write("  every order completed exactly once; no completed step was run again\n")
    else:
        out.write(
            f"  {count - summary['done']} orders unfinished, "
            f"{summary['completions'] - summary['done']} extra completions\n"
        )
    if stats.dead_lettered:
        out.write(f"  {stats.dead_lettered} events dead-lettered (see the log for why)\n")
    effects.close()
    await memory.close()
    return summary


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


async def _summarise(memory: Memory, subjects: list[str]) -> dict[str, int]:
    """Outcomes read back from the records: statuses, results and reports journaled.

    A finished order is ``done`` (shipped or declined) or ``failed`` (it could not ship and
    its charge was refunded by the compensation stack); each reports to the shop once."""
    summary = {"done": 0, "shipped": 0, "declined": 0, "compensated": 0, "completions": 0}
    for subject in subjects:
        stored = await memory.read(subject, journal=True)
        if stored is None or stored.status not in ("done", "failed") or stored.journal is None:
            continue
        summary["done"] += 1
        for raw in stored.journal:
            for event in decode_entry(raw).produced:
                if event.type == orders.complete_type:
                    summary["completions"] += 1
                    summary[event.data["status"]] += 1
                elif event.type == orders.system_error_type:
                    summary["completions"] += 1
                    summary["compensated"] += 1
    return summary


def main(
    path: str,
    count: int,
    crash_after: int | None,
    fresh: bool,
    out: TextIO = sys.stdout,
    runner: Callable[..., Any] = anyio.run,
) -> int:
    if fresh:
        for suffix in ("", "-wal", "-shm", "-leases", "-leases-wal", "-leases-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    summary: dict[str, int] = runner(
        lambda: run(path, count=count, crash_after=crash_after, out=out)
    )
    return 0 if summary["done"] == count and not summary["errors"] else 1
