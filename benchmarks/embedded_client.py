"""Embedded start-to-result latency and throughput through ``Runtime`` handles, as ratios
against W10 through the raw ``Worker`` path in the same run (target: within 1.5x).

``python -m benchmarks.embedded_client [--workflows N]`` runs, on a fresh SQLite file each:

- **raw**: a ``Worker`` runs W10 and its service on a ``LocalBroker`` transport; a caller
  publishes W10 init events and takes each completion from its own topic (what the
  ``dist-sqlite-embedded`` row does);
- **client**: a ``Runtime`` runs the same handlers; a caller does ``rt.start(...)`` and
  ``await handle.result()``.

For each, start-to-result latency (p50, p99) with 1 caller and with 50 concurrent callers,
and throughput (workflows per second) with 50 callers. ``python -m benchmarks`` runs the
same as the jobs ``e2e-raw`` and ``e2e-client`` (rows ``E2E``: one sample a workflow,
its start-to-result time), with the targets client ÷ raw ≤ 1.5 at 1 and at 50 callers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from benchmarks.common import Row, Sizes, progress, row
from benchmarks.dist_worker import handlers
from benchmarks.workloads import RUNNER, WTEN, N
from resumable import Runtime
from resumable.brokers import LocalBroker
from resumable.events import Event
from resumable.memory import SQLiteMemory
from resumable.worker import Worker

Start = Callable[[int], Awaitable[None]]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(start: Start, workflows: int, callers: int) -> tuple[list[float], float]:
    """Run ``workflows`` through ``start`` from ``callers`` tasks: latencies, wall time."""
    latencies: list[float] = []
    numbers = iter(range(workflows))

    async def caller() -> None:
        for n in numbers:
            began = time.perf_counter()
            await start(n)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(callers):
            group.start_soon(caller)
    return latencies, time.perf_counter() - began


async def raw(tmp: Path, workflows: int, callers: int, tag: str) -> tuple[list[float], float]:
    memory = SQLiteMemory(tmp / f"raw-{tag}.db")
    broker = LocalBroker()
    worker = Worker(handlers(memory), broker=broker, concurrency=16, poll=0.1)
    waiting: dict[str, anyio.Event] = {}

    async def completions() -> None:
        while True:
            for delivery in await broker.receive(RUNNER, max_messages=64, timeout=0.1):
                done = waiting.get(delivery.event.subject)
                if done is not None:
                    done.set()
                await delivery.ack()

    async def start(n: int) -> None:
        init: Event = WTEN.init_event(N(0), source=RUNNER, execution_id=f"{tag}-{n}")
        waiting[init.subject] = done = anyio.Event()
        await broker.publish(init)
        await done.wait()
        del waiting[init.subject]

    try:
        async with anyio.create_task_group() as group:
            await group.start(worker.run)
            group.start_soon(completions)
            result = await _drive(start, workflows, callers)
            worker.stop()
            group.cancel_scope.cancel()
    finally:
        await memory.close()
    return result


async def client(tmp: Path, workflows: int, callers: int, tag: str) -> tuple[list[float], float]:
    memory = SQLiteMemory(tmp / f"client-{tag}.db")  # the workflow's and the runtime's
    try:
        async with Runtime(handlers(memory), memory=memory, concurrency=16) as rt:

            async def start(n: int) -> None:
                handle = await rt.start(WTEN, N(0), id=f"{tag}-{n}")
                await handle.result()

            return await _drive(start, workflows, callers)
    finally:
        await memory.close()


CALLERS = 50
WORKFLOWS = {"smoke": 20, "quick": 200, "full": 500}
"""Workflows per concurrent sample, by benchmark mode (a fifth of it, at least 20, for
the one-caller sample)."""


def e2e_job(path: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    """The ``python -m benchmarks`` job of one path: rows at 1 and at ``CALLERS`` callers."""
    run = raw if path == "raw" else client

    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        workflows = WORKFLOWS.get(sizes.mode, WORKFLOWS["quick"])
        await run(tmp, 10, 1, "warm")
        rows = []
        for callers, count in ((1, max(workflows // 5, 20)), (CALLERS, workflows)):
            latencies, wall = await run(tmp, count, callers, f"x{callers}")
            progress(f"E2E {path} x{callers}: {count} workflows, {count / wall:,.0f}/s")
            rows.append(
                row(
                    "E2E",
                    "resumable",
                    "sqlite",
                    "worker" if path == "raw" else "client",
                    callers,
                    1,
                    [latency * 1e6 for latency in latencies],
                    extra={"workflows_per_s": count / wall},
                )
            )
        return rows

    return job


JOBS = {"e2e-raw": e2e_job("raw"), "e2e-client": e2e_job("client")}


async def main(workflows: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        await raw(tmp, 20, 1, "warm")
        await client(tmp, 20, 1, "warm")
        rows: dict[str, dict[str, float]] = {}
        for path, run in (("raw Worker", raw), ("client", client)):
            one, _ = await run(tmp, max(workflows // 5, 20), 1, "one")
            many, wall = await run(tmp, workflows, 50, "many")
            rows[path] = {
                "p50@1": statistics.median(one) * 1000,
                "p99@1": _percentile(one, 0.99) * 1000,
                "p50@50": statistics.median(many) * 1000,
                "p99@50": _percentile(many, 0.99) * 1000,
                "wf/s@50": workflows / wall,
            }
    base, ours = rows["raw Worker"], rows["client"]
    print(f"{'path':<12}" + "".join(f"{k:>12}" for k in base))
    for path, figures in rows.items():
        print(f"{path:<12}" + "".join(f"{v:>12.2f}" for v in figures.values()))
    ratios = {k: (ours[k] / base[k] if k != "wf/s@50" else base[k] / ours[k]) for k in base}
    print(f"{'ratio':<12}" + "".join(f"{v:>11.2f}x" for v in ratios.values()))
    print("(latency in ms; ratio = client / raw for latency, raw / client for throughput;")
    print(" target: every ratio within 1.5x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedded_client")
    parser.add_argument("--workflows", type=int, default=500)
    anyio.run(main, parser.parse_args().workflows)
