"""What every benchmark module shares: payloads, sizes per mode, sampling, rows, statistics.

A *sample* is microseconds per step: one workflow's wall time divided by its steps, one
batch of concurrent workflows' wall time divided by all their steps, or one timed step.
A *row* is a plain dict (JSON-ready) holding a workload's samples and what was stored.
"""

from __future__ import annotations

import math
import os
import resource
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "KEEP",
    "W10_STEPS",
    "Chain",
    "N",
    "Row",
    "Sizes",
    "count_label",
    "file_bytes",
    "median",
    "p99",
    "peak_rss_mib",
    "progress",
    "row",
    "sample",
    "sizes_for",
]

Row = dict[str, Any]

KEEP = 10_000
"""In-memory jobs keep the records of at most this many steps (finished workflows): past it
they start over on an empty memory, outside the timed part, so peak RSS reflects the
workload (as much as one L10k holds) rather than how many samples a fast implementation
fits in its time budget."""

W10_STEPS = 11
"""Steps of one W10 workflow, in every implementation: the start and 10 replies, each
persisted (the start sends call 1; reply k sends call k+1; reply 10 completes)."""


class N(msgspec.Struct):
    """The payload of the trivial service: it answers ``N(n + 1)``."""

    n: int


class Chain(msgspec.Struct):
    """Init payload of the long and fan-out workflows: how many calls to make."""

    calls: int


@dataclass(frozen=True)
class Sizes:
    """How much to run in one mode. ``budget`` is seconds of timed sampling per job and
    round; sampling stops after ``budget`` once ``min_samples`` are in, or at ``max_samples``.
    """

    mode: str
    budget: float
    min_samples: int
    max_samples: int
    warmup: int
    heavy_min_samples: int
    """For workloads whose one sample is a 100-step workflow (F100, S100)."""
    concurrency: int
    concurrent_min_rounds: int
    long_steps_mem: int
    long_steps_sqlite: int
    window: int
    """L10k compares the first ``window`` steps with the last ``window``."""
    resume_steps: int
    resume_samples_mem: int
    resume_samples_sqlite: int
    fan: int
    dist_workflows: int
    """The distributed rows: W10 workflows published at once per timed batch."""
    dist_batches: int
    """Timed batches per distributed row and round (one sample each)."""
    dist_warmup: int
    """Workflows run to completion, untimed, after the workers start."""
    dist_processes: tuple[int, ...]
    """Worker processes of each distributed row."""
    dist_concurrency: int
    """Executions at once in one worker process (``resumable worker --concurrency``)."""


SIZES = {
    "full": Sizes(
        mode="full",
        budget=2.0,
        min_samples=30,
        max_samples=50_000,
        warmup=10,
        heavy_min_samples=10,
        concurrency=100,
        concurrent_min_rounds=5,
        long_steps_mem=10_000,
        long_steps_sqlite=10_000,
        window=1_000,
        resume_steps=1_000,
        resume_samples_mem=10,
        resume_samples_sqlite=6,
        fan=100,
        dist_workflows=400,
        dist_batches=2,
        dist_warmup=50,
        dist_processes=(1, 2, 4),
        dist_concurrency=16,
    ),
    "quick": Sizes(
        mode="quick",
        budget=0.5,
        min_samples=10,
        max_samples=20_000,
        warmup=3,
        heavy_min_samples=4,
        concurrency=100,
        concurrent_min_rounds=2,
        long_steps_mem=10_000,
        long_steps_sqlite=10_000,
        window=1_000,
        resume_steps=1_000,
        resume_samples_mem=5,
        resume_samples_sqlite=3,
        fan=100,
        dist_workflows=200,
        dist_batches=1,
        dist_warmup=20,
        dist_processes=(1, 2, 4),
        dist_concurrency=16,
    ),
    "smoke": Sizes(
        mode="smoke",
        budget=0.0,
        min_samples=2,
        max_samples=2,
        warmup=1,
        heavy_min_samples=1,
        concurrency=4,
        concurrent_min_rounds=1,
        long_steps_mem=200,
        long_steps_sqlite=100,
        window=40,
        resume_steps=50,
        resume_samples_mem=2,
        resume_samples_sqlite=1,
        fan=10,
        dist_workflows=5,
        dist_batches=1,
        dist_warmup=1,
        dist_processes=(1,),
        dist_concurrency=16,
    ),
}


def sizes_for(mode: str) -> Sizes:
    return SIZES[mode]


def count_label(prefix: str, count: int) -> str:
    """``L`` and 10,000 give ``L10k``; 300 gives ``L300``."""
    if count >= 1000 and count % 1000 == 0:
        return f"{prefix}{count // 1000}k"
    return f"{prefix}{count}"


async def sample(
    run_once: Callable[[], Awaitable[float]],
    sizes: Sizes,
    *,
    min_samples: int | None = None,
    warmup: int | None = None,
) -> list[float]:
    """Call ``run_once`` (which returns one sample) after a warm-up, for the mode's budget."""
    for _ in range(sizes.warmup if warmup is None else warmup):
        await run_once()
    least = sizes.min_samples if min_samples is None else min_samples
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < sizes.max_samples and (
        len(samples) < least or time.perf_counter() - start < sizes.budget
    ):
        samples.append(await run_once())
    return samples


def row(
    workload: str,
    impl: str,
    memory: str,
    path: str,
    concurrency: int,
    steps: int,
    samples: list[float],
    *,
    key: str | None = None,
    record_bytes: float | None = None,
    file_bytes: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Row:
    """One row. ``key`` names it (defaults to its fields joined); ``steps`` is the steps of
    one workflow; ``record_bytes``/``file_bytes`` are bytes stored per step."""
    name = key or "/".join((workload, impl, memory, path, f"x{concurrency}"))
    return {
        "key": name,
        "workload": workload,
        "impl": impl,
        "memory": memory,
        "path": path,
        "concurrency": concurrency,
        "steps": steps,
        "samples": samples,
        "record_bytes": record_bytes,
        "file_bytes": file_bytes,
        "extra": extra or {},
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (the maximum below 100 samples)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def file_bytes(path: Path) -> int:
    """Bytes a SQLite database takes on disk after a full checkpoint (file plus -wal)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return sum(
        os.path.getsize(f"{path}{suffix}")
        for suffix in ("", "-wal")
        if os.path.exists(f"{path}{suffix}")
    )


def progress(message: str) -> None:
    """A progress line on stderr (stdout of a job is its JSON)."""
    sys.stderr.write(f"    {message}\n")
    sys.stderr.flush()


def sizes_dict(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)
