"""The benchmark harness runs, at tiny sizes. Nothing here times anything: no figure is
asserted, only that every workload, baseline and target is produced.

The smoke run includes the distributed rows (one worker process per pair, five workflows):
on the servers of ``tests/servers.py`` when they answer; the pair tests below are skipped
without them, or fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks import dbos_w10, distributed
from benchmarks.common import median, p99, sizes_for
from benchmarks.report import build_report, format_report
from benchmarks.run_one import JOB_ORDER

from servers import NATS_URL, POSTGRES_URL, REDIS_URL, require_nats, require_postgres, require_redis

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TARGETS = 11 + 2 + 2  # the issues' targets (E2E at 1 and 50 callers), one per pair


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Any]:
    """One ``--smoke`` run for the whole module, on the test suite's servers."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {
        **os.environ,
        "RESUMABLE_BENCH_NATS": NATS_URL,
        "RESUMABLE_BENCH_POSTGRES": POSTGRES_URL,
        "RESUMABLE_BENCH_REDIS": REDIS_URL,
    }
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed, json.loads(out.read_text())


def test_smoke_run_reports_every_workload_and_target(smoke: tuple[Any, Any]) -> None:
    completed, report = smoke
    assert {row["job"] for row in report["rows"]} == set(JOB_ORDER)
    assert not report["meta"]["failures"]
    for row in report["rows"]:
        if row["impl"] == "dbos":
            assert row["status"] == "skipped in --smoke"
        elif row.get("status"):  # a distributed row whose server is not running here
            assert row["job"] in distributed.PAIRS, row
            assert row["status"].startswith(("not run: ", "not installed: ")), row
        else:
            assert row["n"] > 0 and row["median_us"] > 0, row
    assert len(report["targets"]) == SMOKE_TARGETS
    for target in report["targets"]:
        if "DBOS" in target["name"]:
            assert target["result"] == "dbos: skipped in --smoke"
        elif "embedded" in target["name"]:
            assert target["result"] == "no limit" or "not " in target["result"], target
        else:
            assert target["measured"] is not None and target["result"] in {"met", "missed"}
    assert "target" in completed.stdout and "W10 resumable sqlite direct" in completed.stdout
    assert "W10 resumable sqlite local x5 1 proc" in completed.stdout
    assert "w10-sqlite-direct done" in completed.stderr  # progress goes to stderr


def _pair_result(report: Any, job: str) -> tuple[Any, Any]:
    (row,) = [r for r in report["rows"] if r["job"] == job]
    (target,) = [t for t in report["targets"] if t["subject"] == row["key"]]
    return row, target


@pytest.mark.parametrize(
    ("job", "require"),
    [
        ("dist-nats-pg", (require_nats, require_postgres)),
        ("dist-redis-redis", (require_redis,)),
    ],
)
def test_a_distributed_pair_runs_end_to_end_and_leaves_nothing_behind(
    smoke: tuple[Any, Any], job: str, require: tuple[Any, ...]
) -> None:
    for server in require:
        server()
    _, report = smoke
    row, target = _pair_result(report, job)
    assert not row.get("status"), row
    assert row["n"] == 1 and row["steps_per_s"] > 0 and row["record_bytes"] > 0
    assert row["baseline"] == "W10/resumable/sqlite/local/x5/p1"
    assert target["result"] == "no limit" and target["measured"] > 0
    assert row["extra"]["processes"] == 1 and len(row["extra"]["worker_pids"]) == 1
    for pid in row["extra"]["worker_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the worker process is gone
    (suffix,) = row["extra"]["namespaces"]
    assert anyio.run(_leftovers, distributed.PAIRS[job], suffix) == []


async def _leftovers(pair: distributed.Pair, suffix: str) -> list[str]:
    """What is left on the servers of the namespace ``suffix``: stream, schema, keys."""
    namespace = distributed.Namespace(pair, suffix, distributed.server_urls())
    found: list[str] = []
    if pair.broker == "nats":
        import nats
        import nats.js.errors

        client = await nats.connect(NATS_URL)
        try:
            await client.jetstream().stream_info(namespace.stream)
            found.append(namespace.stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await client.close()
    if pair.memory == "postgres":
        import asyncpg

        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            if await connection.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", namespace.schema
            ):
                found.append(namespace.schema)
        finally:
            await connection.close()
    if "redis" in (pair.broker, pair.memory):
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            found += [k.decode() async for k in client.scan_iter(f"{namespace.redis_prefix}-*")]
        finally:
            await client.aclose()
    return found


def test_a_pair_whose_server_is_down_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    monkeypatch.setenv("RESUMABLE_BENCH_REDIS", closed)
    sizes = sizes_for("quick")
    rows = anyio.run(distributed.JOBS["dist-redis-redis"], sizes, tmp_path)
    assert [r["extra"]["processes"] for r in rows] == [1, 2, 4]
    assert {r["status"] for r in rows} == {f"not run: Redis not reachable at {closed}"}
    report = build_report(rows, sizes, {})
    ratios = [t for t in report["targets"] if "Redis + Redis" in t["name"]]
    assert [t["result"] for t in ratios] == [
        f"resumable: not run: Redis not reachable at {closed}"
    ] * 3
    assert "not run: Redis not reachable" in format_report(report)


def test_a_job_runs_in_its_own_process_and_prints_json() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_one", "w10-sqlite-direct", "--mode", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    (row,) = json.loads(completed.stdout)["rows"]
    assert row["key"] == "W10/resumable/sqlite/direct/x1"
    assert row["samples"] and row["rss_mib"] > 0 and row["file_bytes"] > 0


def test_without_dbos_the_rows_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dbos", None)  # import dbos raises ImportError
    (row,) = dbos_w10.run("dbos-concurrent", sizes_for("smoke"), tmp_path)
    assert row["status"] == "not installed: pip install -e '.[bench]'"
    assert row["concurrency"] == sizes_for("smoke").concurrency
    report = build_report([row], sizes_for("smoke"), {})
    dbos_target = next(t for t in report["targets"] if "DBOS" in t["name"])
    assert dbos_target["result"] == "dbos: not installed: pip install -e '.[bench]'"
    assert "not installed" in format_report(report)


def test_statistics() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert p99([float(i) for i in range(1, 201)]) == 198.0
    assert p99([5.0, 1.0]) == 5.0
