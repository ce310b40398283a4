"""The embedded runtime under SIGKILL: a real app process (``tests/crash_app.py``) on a
SQLite file, killed at random points 20 times and restarted at once each time.

Short settings, so a killed process's leftovers clear fast: the workflow's lease lives
``LOCK_TTL`` = 1 s and the in-process broker redelivers after 1 s (``crash_app.py``).
Checked at the end: no run failed (each either was killed by the test or exited 0), every
order completed exactly once (one completion or failure report in its journal) with the
expected outcome, every service effect happened once per order (one request id per
(effect, order)), nothing was dead-lettered, and after the last restart no order took
longer than a clean run of every order on the same machine, plus one lease TTL and
``SLACK`` seconds, to finish.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from crash_app import LOCK_TTL

from resumable.demo import orders
from resumable.memory import SQLiteMemory
from resumable.record import decode_entry

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 1000
KILLS = 20
SLACK = 5.0
"""Seconds the last run may take beyond a clean run of all the orders plus one lease TTL.
It has less work than the clean run (the killed runs did some) but restarts every
instance at start; a stall (a lease, a lost message or a timer waited out) takes longer."""


def spawn(db: Path, effects: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "crash_app.py"), str(db), str(effects), str(ORDERS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def done_summary(out: str) -> dict[str, Any]:
    """The ``DONE {json}`` line a run of ``crash_app.py`` prints at its end."""
    (line,) = [x for x in out.splitlines() if x.startswith("DONE ")]
    summary: dict[str, Any] = json.loads(line[5:])
    return summary


def expected(index: int) -> str:
    return "failed:RuntimeError" if index % 5 == 0 else "shipped:ops"  # the service's error


async def test_sigkill_and_restart_twenty_times_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    # What this machine takes for every order from scratch, with no kill: the yardstick.
    clean = spawn(tmp_path / "clean.db", tmp_path / "clean-effects.db")
    out, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, f"the clean run failed:\n{err[-3000:]}"
    clean_slowest = done_summary(out)["slowest"]

    db, effects = tmp_path / "app.db", tmp_path / "effects.db"
    rng = random.Random(int(os.environ.get("CRASH_SEED", "11")))
    killed = finished_early = 0
    runs = 0
    while killed < KILLS:
        process = spawn(db, effects)
        runs += 1
        try:
            process.wait(timeout=rng.uniform(0.3, 1.3))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed += 1
            continue
        out, err = process.communicate()
        assert process.returncode == 0, f"run {runs} failed on its own:\n{err[-3000:]}"
        finished_early += 1
    last = spawn(db, effects)
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, f"the last run failed:\n{err[-3000:]}"
    summary = done_summary(out)
    print(
        f"crash test: {killed} kills in {runs} runs ({finished_early} ran to the end); "
        f"last run: slowest order {summary['slowest']:.2f}s after start; a clean run of "
        f"every order: {clean_slowest:.2f}s"
    )

    assert summary["outcomes"] == {f"o-{i}": expected(i) for i in range(ORDERS)}
    assert summary["dead_letters"] == 0
    assert summary["slowest"] <= clean_slowest + LOCK_TTL + SLACK

    reports: Counter[str] = Counter()
    memory = SQLiteMemory(db)
    try:
        keys = await memory.keys()
        assert len(keys) == ORDERS
        for key in keys:
            stored = await memory.read(key, journal=True)
            assert stored is not None and stored.status in ("done", "failed")
            for raw in stored.journal or []:
                for event in decode_entry(raw).produced:
                    if event.type in (orders.complete_type, orders.system_error_type):
                        reports[key] += 1
    finally:
        await memory.close()
    assert set(reports.values()) == {1}, "a workflow reported more than once"

    with sqlite3.connect(effects) as con:
        per_order = con.execute(
            "SELECT kind, order_id, COUNT(*) FROM demo_effects GROUP BY kind, order_id"
        ).fetchall()
    assert {n for _, _, n in per_order} == {1}, "an effect was requested under two ids"
    kinds = Counter(kind for kind, _, _ in per_order)
    failing = ORDERS // 5
    assert kinds == {
        "charge": ORDERS,
        "label": ORDERS,
        "reserve": ORDERS - failing,
        "refund": failing,
    }
