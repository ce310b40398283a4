"""The test kit's simulator: schedules of the demo's order workflow checked per second.

``resumable.testing.simulate`` on two orders (one shipped, one out of stock and refunded):
each schedule is one run of both under delivery reordering, duplicates, crashes, evictions
and handovers, compared with the undisturbed run. The figure is schedules per second,
hypothesis's generation and shrinking bookkeeping included.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio.to_thread

from benchmarks.common import Row, Sizes, progress, row

__all__ = ["EXAMPLES", "simulation_job"]

EXAMPLES = {"smoke": 30, "quick": 300, "full": 1_000}
"""Schedules per sample, by benchmark mode."""


def _simulate(examples: int) -> tuple[int, float]:
    from hypothesis import HealthCheck, settings

    from resumable.demo import PlaceOrder, make_handlers, make_workflow, orders
    from resumable.memory import InMemoryMemory
    from resumable.testing import Scenario, Start, simulate

    scenario = Scenario(
        [make_workflow(InMemoryMemory()), *make_handlers()],
        start=[
            Start(orders, PlaceOrder("o-1", 4200), "o-1"),
            Start(orders, PlaceOrder("o-2", 4200, "out-of-stock"), "o-2"),
        ],
    )
    report = simulate(
        scenario,
        settings=settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    return report.schedules, report.seconds


async def simulation_job(sizes: Sizes, tmp: Path) -> list[Row]:
    examples = EXAMPLES.get(sizes.mode, EXAMPLES["quick"])
    start = time.perf_counter()
    schedules, seconds = await anyio.to_thread.run_sync(_simulate, examples)
    progress(f"simulation: {schedules} schedules in {time.perf_counter() - start:.2f}s")
    per_second = schedules / seconds
    return [
        row(
            "SIM orders",
            "resumable",
            "mem",
            "simulate",
            1,
            1,
            [seconds * 1e6 / schedules],
            extra={
                "schedules": schedules,
                "schedules_per_s": per_second,
                "schedules_per_min": per_second * 60,
            },
        )
    ]
