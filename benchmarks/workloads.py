"""The workloads on resumable, through its public API only.

Each job runs one workload on one memory (``mem``: ``InMemoryMemory``; ``sqlite``:
``SQLiteMemory`` on a fresh file) and one path: ``direct`` calls ``Resumable.execute`` and
``EventHandler.execute`` in a loop; ``broker`` hands the init event to a ``LocalBroker``
and awaits ``resolve``.

- W10: 10 sequential calls to a service answering ``n + 1``; completes with 10.
- S100 / F100: 100 sequential calls, or one ``gather`` of 100 calls, completing with the sum.
- L10k: one workflow of 10,000 sequential calls, each step timed on its own.
- R1k: a workflow that took 1,000 steps, resumed by a new ``Resumable`` (and, on SQLite, a
  new ``SQLiteMemory`` connection): the timed ``execute`` replays the 1,000 steps.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs

from benchmarks.common import (
    KEEP,
    W10_STEPS,
    Chain,
    N,
    Row,
    Sizes,
    count_label,
    file_bytes,
    progress,
    row,
    sample,
)
from resumable import (
    Context,
    Contract,
    Emit,
    Event,
    EventHandler,
    OrchestratorContract,
    Resumable,
    call,
    complete,
    gather,
)
from resumable.brokers.local import LocalBroker
from resumable.memory import InMemoryMemory, Memory, SQLiteMemory

__all__ = ["JOBS"]

RUNNER = "com.bench.runner"

SERVICE = Contract(
    uri="#/bench/inc",
    type="com.bench.inc",
    versions={"1.0.0": {"accepts": N, "emits": {"evt.bench.inc.done": N}}},
)
WTEN = OrchestratorContract(
    uri="#/bench/wten",
    name="bench.wten",
    versions={"1.0.0": {"init": N, "complete": N}},
)
CHAIN = OrchestratorContract(
    uri="#/bench/chain",
    name="bench.chain",
    versions={"1.0.0": {"init": Chain, "complete": N}},
)
FAN = OrchestratorContract(
    uri="#/bench/fan",
    name="bench.fan",
    versions={"1.0.0": {"init": Chain, "complete": N}},
)


@attrs.define
class Counter:
    n: int = 0


async def inc(event: Event) -> Emit:
    return Emit("evt.bench.inc.done", N(event.data.n + 1))


async def w10(ctx: Context[Counter], data: N) -> AsyncGenerator[Any, Any]:
    n = data.n
    for _ in range(10):
        reply = yield call(SERVICE, N(n))
        n = reply.data.n
        ctx.state.n = n
    yield complete(N(n))


async def chain(ctx: Context[Counter], data: Chain) -> AsyncGenerator[Any, Any]:
    n = 0
    for _ in range(data.calls):
        reply = yield call(SERVICE, N(n))
        n = reply.data.n
        ctx.state.n = n
    yield complete(N(n))


async def fan(ctx: Context[Counter], data: Chain) -> AsyncGenerator[Any, Any]:
    replies = yield gather(*(call(SERVICE, N(i)) for i in range(data.calls)))
    ctx.state.n = sum(reply.data.n for reply in replies)
    yield complete(N(ctx.state.n))


class Bench:
    """One workflow definition on one memory, with the service, driven directly or brokered."""

    def __init__(self, contract: OrchestratorContract, fn: Any, memory: Memory) -> None:
        self.contract = contract
        self.fn = fn
        self.memory = memory
        self.workflow = self.resumable(memory)
        self.service = EventHandler(SERVICE, versions={"1.0.0": inc})
        self.kept = 0
        self.steps_run = 0
        """Workflow steps run so far (every ``execute`` of the workflow), for bytes per step."""

    def keep_memory_bounded(self, steps: int) -> None:
        """Before a sample of ``steps`` steps: with ``InMemoryMemory``, start over on an
        empty one if it would then hold more than ``KEEP`` steps. Call it outside the timed
        part. A file-backed memory is left alone."""
        if not isinstance(self.memory, InMemoryMemory):
            return
        self.kept += steps
        if self.kept > KEEP:
            self.memory = InMemoryMemory()
            self.workflow = self.resumable(self.memory)
            self.kept = steps

    def resumable(self, memory: Memory) -> Resumable[Counter]:
        return Resumable(
            self.contract,
            versions={"1.0.0": self.fn},
            services=[SERVICE],
            state=Counter,
            memory=memory,
        )

    def init(self, data: Any) -> Event:
        return self.contract.init_event(data, source=RUNNER)

    async def direct(self, init: Event) -> Event:
        """Run one workflow to completion with direct ``execute`` calls; its completion."""
        out = await self.workflow.execute(init)
        steps = 1
        while out[0].type != self.contract.complete_type:
            replies = [(await self.service.execute(request))[0] for request in out]
            for reply in replies:
                out = await self.workflow.execute(reply)
                steps += 1
        self.steps_run += steps
        return out[0]

    async def brokered(self, broker: LocalBroker, init: Event, steps: int) -> Event:
        done = await broker.resolve(init)
        assert done is not None, broker.errors
        self.steps_run += steps
        return done

    def broker(self) -> LocalBroker:
        return LocalBroker([self.service, self.workflow])

    async def record_bytes(self, subject: str) -> int:
        stored = await self.memory.read(subject, journal=True)
        assert stored is not None and stored.journal is not None
        return len(stored.header) + sum(map(len, stored.journal))


def _memory(kind: str, tmp: Path, name: str) -> Memory:
    if kind == "mem":
        return InMemoryMemory()
    return SQLiteMemory(tmp / f"{name}.db")


async def _finish(bench: Bench, kind: str, tmp: Path, name: str) -> float | None:
    """Close the memory; for SQLite, the file's bytes per step run in it."""
    await bench.memory.close()
    if kind != "sqlite":
        return None
    return file_bytes(tmp / f"{name}.db") / max(bench.steps_run, 1)


def _result(done: Event) -> int:
    data = done.data
    return int(data["n"] if isinstance(data, dict) else data.n)


# --- W10 -------------------------------------------------------------------------------------


def w10_job(kind: str, path: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        name = f"w10-{kind}-{path}"
        bench = Bench(WTEN, w10, _memory(kind, tmp, name))
        last: list[Event] = []

        async def once() -> float:
            bench.keep_memory_bounded(W10_STEPS)
            init = bench.init(N(0))
            if path == "direct":
                start = time.perf_counter()
                done = await bench.direct(init)
            else:
                broker = bench.broker()
                start = time.perf_counter()
                done = await bench.brokered(broker, init, W10_STEPS)
            elapsed = time.perf_counter() - start
            assert _result(done) == 10, done
            last[:] = [init]
            return elapsed * 1e6 / W10_STEPS

        samples = await sample(once, sizes)
        stored = await bench.record_bytes(last[0].subject) / W10_STEPS
        on_disk = await _finish(bench, kind, tmp, name)
        return [
            row(
                "W10",
                "resumable",
                kind,
                path,
                1,
                W10_STEPS,
                samples,
                record_bytes=stored,
                file_bytes=on_disk,
            )
        ]

    return job


def w10_concurrent_job(kind: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        name = f"w10-{kind}-concurrent"
        bench = Bench(WTEN, w10, _memory(kind, tmp, name))
        width = sizes.concurrency
        last: list[Event] = []

        async def once() -> float:
            bench.keep_memory_bounded(width * W10_STEPS)
            inits = [bench.init(N(0)) for _ in range(width)]
            results: list[int] = []

            async def one(init: Event) -> None:
                results.append(_result(await bench.direct(init)))

            start = time.perf_counter()
            async with anyio.create_task_group() as group:
                for init in inits:
                    group.start_soon(one, init)
            elapsed = time.perf_counter() - start
            assert results == [10] * width, results
            last[:] = inits
            return elapsed * 1e6 / (width * W10_STEPS)

        samples = await sample(once, sizes, min_samples=sizes.concurrent_min_rounds, warmup=1)
        stored = await bench.record_bytes(last[0].subject) / W10_STEPS
        on_disk = await _finish(bench, kind, tmp, name)
        return [
            row(
                "W10",
                "resumable",
                kind,
                "direct",
                width,
                W10_STEPS,
                samples,
                record_bytes=stored,
                file_bytes=on_disk,
            )
        ]

    return job


# --- S100 and F100 ----------------------------------------------------------------------------


def wide_job(shape: str, kind: str, path: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    """``shape`` "S": ``fan`` sequential calls; "F": one gather of ``fan`` calls."""

    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        width = sizes.fan
        steps = width + 1
        name = f"{shape}-{kind}-{path}"
        contract, fn = (CHAIN, chain) if shape == "S" else (FAN, fan)
        bench = Bench(contract, fn, _memory(kind, tmp, name))
        expected = width if shape == "S" else width * (width + 1) // 2
        last: list[Event] = []

        async def once() -> float:
            bench.keep_memory_bounded(steps)
            init = bench.init(Chain(width))
            if path == "direct":
                start = time.perf_counter()
                done = await bench.direct(init)
            else:
                broker = bench.broker()
                start = time.perf_counter()
                done = await bench.brokered(broker, init, steps)
            elapsed = time.perf_counter() - start
            assert _result(done) == expected, done
            last[:] = [init]
            return elapsed * 1e6 / steps

        samples = await sample(once, sizes, min_samples=sizes.heavy_min_samples, warmup=1)
        stored = await bench.record_bytes(last[0].subject) / steps
        on_disk = await _finish(bench, kind, tmp, name)
        return [
            row(
                count_label(shape, width),
                "resumable",
                kind,
                path,
                1,
                steps,
                samples,
                record_bytes=stored,
                file_bytes=on_disk,
            )
        ]

    return job


# --- L10k -----------------------------------------------------------------------------------


def long_job(kind: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    """One long workflow, warm (its generator stays cached): each step timed on its own."""

    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        calls = sizes.long_steps_mem if kind == "mem" else sizes.long_steps_sqlite
        window = min(sizes.window, calls // 4)
        name = f"long-{kind}"
        bench = Bench(CHAIN, chain, _memory(kind, tmp, name))
        workflow, service = bench.workflow, bench.service
        init = bench.init(Chain(calls))
        subject = init.subject
        total = calls + 1
        samples: list[float] = []
        sizes_at: dict[int, int] = {}
        checkpoints = {window, total - window}
        report_every = max(total // 4, 1)

        start = time.perf_counter()
        out = await workflow.execute(init)
        samples.append((time.perf_counter() - start) * 1e6)
        while out[0].type != CHAIN.complete_type:
            start = time.perf_counter()
            reply = (await service.execute(out[0]))[0]
            out = await workflow.execute(reply)
            samples.append((time.perf_counter() - start) * 1e6)
            done = len(samples)
            if done in checkpoints:
                sizes_at[done] = await bench.record_bytes(subject)
            if done % report_every == 0:
                progress(f"{count_label('L', calls)} {kind}: {done:,}/{total:,} steps")
        assert _result(out[0]) == calls
        assert len(samples) == total
        sizes_at[total] = await bench.record_bytes(subject)
        bench.steps_run = total
        on_disk = await _finish(bench, kind, tmp, name)
        label = count_label("L", calls)
        first_bytes = sizes_at[window] / window
        last_bytes = (sizes_at[total] - sizes_at[total - window]) / window
        common: dict[str, Any] = {"window": window, "history": total}
        return [
            row(
                label,
                "resumable",
                kind,
                "direct",
                1,
                window,
                samples[:window],
                key=f"{label}/resumable/{kind}/first",
                record_bytes=first_bytes,
                extra={**common, "part": "first"},
            ),
            row(
                label,
                "resumable",
                kind,
                "direct",
                1,
                window,
                samples[-window:],
                key=f"{label}/resumable/{kind}/last",
                record_bytes=last_bytes,
                file_bytes=on_disk,
                extra={**common, "part": "last"},
            ),
        ]

    return job


# --- R1k ------------------------------------------------------------------------------------


async def _drive_to(bench: Bench, init: Event, steps: int) -> Event:
    """Run a chain workflow for ``steps`` steps; return the reply for its next step."""
    out = await bench.workflow.execute(init)
    for _ in range(steps - 1):
        reply = (await bench.service.execute(out[0]))[0]
        out = await bench.workflow.execute(reply)
    return (await bench.service.execute(out[0]))[0]


def resume_job(kind: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    """Cold resume: a new ``Resumable`` (and on SQLite a new connection) replays the history."""

    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        steps = sizes.resume_steps
        count = (sizes.resume_samples_mem if kind == "mem" else sizes.resume_samples_sqlite) + 1
        name = f"resume-{kind}"
        path = tmp / f"{name}.db"
        bench = Bench(CHAIN, chain, _memory(kind, tmp, name))
        inits = [bench.init(Chain(steps + 1)) for _ in range(count)]
        replies: list[Event] = []

        async def build(init: Event) -> None:
            replies.append(await _drive_to(bench, init, steps))

        # Build the histories concurrently (SQLite commits them in groups), then resume.
        async with anyio.create_task_group() as group:
            for init in inits:
                group.start_soon(build, init)
        progress(f"{count_label('R', steps)} {kind}: {count} workflows of {steps:,} steps built")
        record = await bench.record_bytes(replies[0].subject) / steps
        if kind == "sqlite":
            await bench.memory.close()
        samples: list[float] = []
        for reply in replies:
            memory = bench.memory if kind == "mem" else SQLiteMemory(path)
            start = time.perf_counter()
            fresh = bench.resumable(memory)
            out = await fresh.execute(reply)
            elapsed = time.perf_counter() - start
            assert out and out[0].data == {"n": steps}, out
            if kind == "sqlite":
                await memory.close()
            samples.append(elapsed * 1e6 / steps)
        label = count_label("R", steps)
        return [
            row(
                label,
                "resumable",
                kind,
                "direct",
                1,
                steps,
                samples[1:],
                record_bytes=record,
                extra={"per_resume_us": [s * steps for s in samples[1:]]},
            )
        ]

    return job


JOBS: dict[str, Callable[[Sizes, Path], Awaitable[list[Row]]]] = {
    "w10-mem-direct": w10_job("mem", "direct"),
    "w10-mem-broker": w10_job("mem", "broker"),
    "w10-mem-concurrent": w10_concurrent_job("mem"),
    "w10-sqlite-direct": w10_job("sqlite", "direct"),
    "w10-sqlite-broker": w10_job("sqlite", "broker"),
    "w10-sqlite-concurrent": w10_concurrent_job("sqlite"),
    "s100-mem-direct": wide_job("S", "mem", "direct"),
    "f100-mem-direct": wide_job("F", "mem", "direct"),
    "s100-mem-broker": wide_job("S", "mem", "broker"),
    "f100-mem-broker": wide_job("F", "mem", "broker"),
    "s100-sqlite-direct": wide_job("S", "sqlite", "direct"),
    "f100-sqlite-direct": wide_job("F", "sqlite", "direct"),
    "s100-sqlite-broker": wide_job("S", "sqlite", "broker"),
    "f100-sqlite-broker": wide_job("F", "sqlite", "broker"),
    "l10k-mem": long_job("mem"),
    "l10k-sqlite": long_job("sqlite"),
    "r1k-mem": resume_job("mem"),
    "r1k-sqlite": resume_job("sqlite"),
}
