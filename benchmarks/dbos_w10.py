"""W10 on DBOS (the ``dbos`` package) with its SQLite system database, for comparison.

A ``@DBOS.workflow`` of 10 ``@DBOS.step`` calls to a function answering ``n + 1``, run one
at a time (``dbos-seq``) and ``concurrency`` at a time with ``DBOS.start_workflow``
(``dbos-concurrent``). Each job runs in its own process (DBOS keeps global state), on a
fresh SQLite file with DBOS's own SQLite settings, and an executor thread per concurrent
workflow. W10 counts 11 steps here as everywhere (its
start and 10 steps), so steps/s compare like workflows/s.

Without ``dbos`` installed (``pip install -e '.[bench]'``) the row says so instead.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import W10_STEPS, Row, Sizes, row

__all__ = ["NOT_INSTALLED", "run"]

NOT_INSTALLED = "not installed: pip install -e '.[bench]'"


def _sample(
    run_once: Any, sizes: Sizes, *, min_samples: int | None = None, warmup: int | None = None
) -> list[float]:
    """The synchronous twin of ``benchmarks.common.sample`` (DBOS workflows here are sync)."""
    for _ in range(sizes.warmup if warmup is None else warmup):
        run_once()
    least = sizes.min_samples if min_samples is None else min_samples
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < sizes.max_samples and (
        len(samples) < least or time.perf_counter() - start < sizes.budget
    ):
        samples.append(run_once())
    return samples


def _failed_row(concurrency: int, status: str) -> Row:
    failed = row("W10", "dbos", "sqlite", "-", concurrency, W10_STEPS, [])
    failed["status"] = status
    return failed


def run(job: str, sizes: Sizes, tmp: Path) -> list[Row]:
    """Run ``dbos-seq`` or ``dbos-concurrent``; never raises, the row carries any failure."""
    concurrency = 1 if job == "dbos-seq" else sizes.concurrency
    try:
        import dbos  # noqa: F401
    except ImportError:
        return [_failed_row(concurrency, NOT_INSTALLED)]
    try:
        return [_run(concurrency, sizes, tmp)]
    except Exception as error:
        detail = traceback.format_exception_only(error)[-1].strip()
        return [_failed_row(concurrency, f"failed: {detail}")]


def _run(concurrency: int, sizes: Sizes, tmp: Path) -> Row:
    import logging

    from dbos import DBOS

    logging.getLogger("dbos").setLevel(logging.ERROR)
    path = tmp / "dbos.sqlite"
    DBOS(
        config={
            "name": "resumable-bench",
            "system_database_url": f"sqlite:///{path}",
            "log_level": "ERROR",
            # One executor thread per concurrent workflow (the default is a handful).
            "max_executor_threads": max(concurrency, 8),
        }
    )

    @DBOS.step()
    def inc(n: int) -> int:
        return n + 1

    @DBOS.workflow()
    def w10() -> int:
        n = 0
        for _ in range(10):
            n = inc(n)
        return n

    DBOS.launch()
    try:
        if concurrency == 1:

            def once() -> float:
                start = time.perf_counter()
                result = w10()
                elapsed = time.perf_counter() - start
                assert result == 10, result
                return elapsed * 1e6 / W10_STEPS

            samples = _sample(once, sizes)
        else:

            def once() -> float:
                start = time.perf_counter()
                handles = [DBOS.start_workflow(w10) for _ in range(concurrency)]
                results = [handle.get_result() for handle in handles]
                elapsed = time.perf_counter() - start
                assert results == [10] * concurrency, results
                return elapsed * 1e6 / (concurrency * W10_STEPS)

            samples = _sample(once, sizes, min_samples=sizes.concurrent_min_rounds, warmup=1)
    finally:
        DBOS.destroy()
    import dbos as package

    version = getattr(package, "__version__", None) or _version()
    result = row("W10", "dbos", "sqlite", "-", concurrency, W10_STEPS, samples)
    result["extra"] = {"dbos_version": version}
    return result


def _version() -> str:
    from importlib.metadata import version

    return version("dbos")
