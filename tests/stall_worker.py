"""The handlers the stalled-worker test's processes run: ``resumable worker stall_worker:handlers``.

The demo's order contract with a workflow of one slow local step (``STALL_STEP`` seconds,
async) and a completion that names the process whose step result was kept. Every run of
the step appends ``start|end <pid> <order id> <wall-clock time>`` to the file
``STALL_MARKS``, so the test sees which worker holds which order, when, and which steps ran
twice.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from resumable import complete, step
from resumable.demo import OrderResult, PlaceOrder, make_workflow
from resumable.memory import Memory

__all__ = ["handlers", "marks"]


def _mark(what: str, order_id: str) -> None:
    path = os.environ.get("STALL_MARKS")
    if path:
        with open(path, "a") as out:  # one short line per write: appends do not interleave
            out.write(f"{what} {os.getpid()} {order_id} {time.time():.3f}\n")


async def work(order_id: str) -> str:
    """The slow step: its result names the process that ran it."""
    _mark("start", order_id)
    await anyio.sleep(float(os.environ.get("STALL_STEP", "1.0")))
    _mark("end", order_id)
    return f"pid {os.getpid()}"


async def slow(ctx: Any, order: PlaceOrder) -> Any:
    ran_by = yield step(work, order.order_id)
    yield complete(OrderResult("shipped", ran_by))


def handlers(memory: Memory) -> list[Any]:
    """The one-step workflow on ``memory``, at the default lease (a HANDLERS factory)."""
    return [make_workflow(memory, fn=slow)]


def marks(text: str) -> list[tuple[str, int, str, float]]:
    """The ``(start|end, pid, order id, time)`` lines of a marks file."""
    out: list[tuple[str, int, str, float]] = []
    for line in text.splitlines():
        what, pid, order_id, at = line.split()
        out.append((what, int(pid), order_id, float(at)))
    return out
