"""One worker process of the distributed rows: ``resumable worker`` running W10 and its service.

``python -m benchmarks.dist_worker --broker URL --memory URL --concurrency N`` is exactly
``python -m resumable worker benchmarks.dist_worker:handlers ...`` (the same CLI code, the
same signals: SIGTERM drains and exits 0), plus one thing: on Linux the process asks for
SIGTERM when its parent dies, so a benchmark job that is killed (a timeout, Ctrl-C, a
crash) never leaves workers behind.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from resumable import EventHandler, Resumable
from resumable.memory import Memory

__all__ = ["PARENT_ENV", "handlers", "main"]

PARENT_ENV = "RESUMABLE_BENCH_PARENT"
"""The pid of the process that started this worker; it exits at once if that one is gone."""


def handlers(memory: Memory) -> list[Any]:
    """The W10 workflow on ``memory`` and the service it calls (a ``MODULE:HANDLERS`` factory)."""
    from benchmarks.workloads import SERVICE, WTEN, Counter, inc, w10

    workflow = Resumable(
        WTEN, versions={"1.0.0": w10}, services=[SERVICE], state=Counter, memory=memory
    )
    return [workflow, EventHandler(SERVICE, versions={"1.0.0": inc})]


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies (best effort; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        raise SystemExit(f"benchmarks.dist_worker: parent {parent} is gone; not starting")


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    from resumable.cli import main as cli

    args = sys.argv[1:] if argv is None else argv
    return cli(["worker", "benchmarks.dist_worker:handlers", *args])


if __name__ == "__main__":
    raise SystemExit(main())
