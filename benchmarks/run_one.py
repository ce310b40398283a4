"""Run one benchmark job and print its rows as JSON on stdout.

``python -m benchmarks.run_one JOB --mode quick --tmp DIR``. ``python -m benchmarks`` runs
every job this way, each in a new process, so the peak RSS reported belongs to that job and
nothing (caches, DBOS's globals) leaks from one job to the next. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import Row, Sizes, peak_rss_mib, sizes_for

__all__ = ["JOB_ORDER", "main", "run_job"]

JOB_ORDER = [
    # Each baseline runs next to the workloads measured against it.
    "floor-mem",
    "floor-mem-events",
    "w10-mem-direct",
    "w10-mem-broker",
    "w10-mem-concurrent",
    "floor-sqlite",
    "w10-sqlite-direct",
    "w10-sqlite-broker",
    "floor-sqlite-group",
    "w10-sqlite-concurrent",
    "dbos-seq",
    "dbos-concurrent",
    "s100-mem-direct",
    "f100-mem-direct",
    "s100-mem-broker",
    "f100-mem-broker",
    "s100-sqlite-direct",
    "f100-sqlite-direct",
    "s100-sqlite-broker",
    "f100-sqlite-broker",
    "l10k-mem",
    "l10k-sqlite",
    "floor-replay-mem",
    "r1k-mem",
    "floor-replay-sqlite",
    "r1k-sqlite",
    # The test kit's simulator (resumable.testing) on the demo's order workflow.
    "sim-orders",
    # Start-to-result through Runtime handles, against the raw Worker path.
    "e2e-raw",
    "e2e-client",
    # The distributed rows, right after their baseline (the SQLite embedded run).
    "dist-sqlite-embedded",
    "dist-nats-pg",
    "dist-redis-redis",
]
"""Every job, in the order a run takes them."""


def _async_job(name: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    # Imported here so a floor job never loads resumable (its RSS is the floor's own).
    if name.startswith("floor-"):
        from benchmarks import floors

        return {
            "floor-mem": floors.floor_mem,
            "floor-mem-events": floors.floor_mem_events,
            "floor-sqlite": floors.floor_sqlite,
            "floor-sqlite-group": floors.floor_sqlite_group,
            "floor-replay-mem": floors.floor_replay_mem,
            "floor-replay-sqlite": floors.floor_replay_sqlite,
        }[name]
    if name == "sim-orders":
        from benchmarks.simulation import simulation_job

        return simulation_job
    if name.startswith("e2e-"):
        from benchmarks.embedded_client import JOBS as E2E

        return E2E[name]
    if name.startswith("dist-"):
        from benchmarks import distributed

        return distributed.JOBS[name]
    from benchmarks.workloads import JOBS

    return JOBS[name]


def run_job(name: str, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """Run job ``name`` in this process; its rows, with this process's peak RSS on each
    (unless the job measured another process's: the distributed rows give their workers')."""
    if name not in JOB_ORDER:
        raise SystemExit(f"unknown job {name!r}; jobs: {', '.join(JOB_ORDER)}")
    started = time.perf_counter()
    if name.startswith("dbos-"):
        from benchmarks import dbos_w10

        rows = dbos_w10.run(name, sizes, tmp)
    else:
        job = _async_job(name)
        rows = anyio.run(job, sizes, tmp)
    rss = peak_rss_mib()
    for item in rows:
        item["job"] = name
        item.setdefault("rss_mib", rss)
    return {"job": name, "rows": rows, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_one", description=__doc__)
    parser.add_argument("job", choices=JOB_ORDER)
    parser.add_argument("--mode", choices=["full", "quick", "smoke"], default="quick")
    parser.add_argument("--tmp", type=Path, help="directory for database files (default: new)")
    args = parser.parse_args(argv)
    sizes = sizes_for(args.mode)
    if args.tmp is not None:
        result = run_job(args.job, sizes, args.tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="resumable-bench-") as tmp:
            result = run_job(args.job, sizes, Path(tmp))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
