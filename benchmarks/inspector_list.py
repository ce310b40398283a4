"""The inspector's instance list with 100,000 instances, on SQLite and PostgreSQL, as a
ratio to a bare ``SELECT`` of the same page (target: the page under 200 ms).

``python -m benchmarks.inspector_list [--instances N] [--rounds R]`` fills a fresh SQLite
file (and, when it answers, a fresh schema on ``RESUMABLE_BENCH_POSTGRES``, default the
test server) with N records through ``Memory.write``, then times, each R times:

- **bare SELECT**: the page's query alone on one connection (``SELECT key, workflow,
  status, created, updated ... ORDER BY created DESC, key DESC LIMIT 51``);
- **bare counts**: the counts per status alone (``SELECT status, count(*) ... GROUP BY
  status``), which the page shows above the list and which grow with the records;
- **list page**: ``GET /`` of the inspector app (in process, through httpx): the counts
  per status, the page from ``Memory.list``, the ids parsed from the subjects, the HTML;
- **list page, parked**: ``GET /?status=parked`` (a filter on the status index);
- **list page 3**: the third page, reached with the cursor of the second.

Prints one row per backend and page: the median and p99 in ms, and the ratio of the
median to the bare SELECT's. Not part of ``python -m benchmarks``' report table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from html import unescape
from pathlib import Path
from typing import Any

import anyio
import httpx

from resumable.memory import Memory, SQLiteMemory
from resumable.record import Header, encode_header
from resumable.subject import new_subject
from resumable.ui import create_app

POSTGRES = os.environ.get("RESUMABLE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_MS = 200.0
PAGE = 50
BARE = (
    "SELECT key, workflow, status, created, updated FROM {table} "
    "ORDER BY created DESC, key DESC LIMIT 51"
)
COUNTS = "SELECT status, count(*) FROM {table} GROUP BY status"
STATUSES = ["done"] * 90 + ["active"] * 6 + ["failed"] * 3 + ["parked"]


async def fill(memory: Memory, count: int, concurrency: int = 64) -> None:
    """``count`` records of a workflow, one write each (most done, some active, failed or
    parked), written by ``concurrency`` tasks so the backends commit them in groups."""
    header = encode_header(
        Header(
            status="done",
            version="1.0.0",
            seq=3,
            init_event_id="init",
            parent_subject=None,
            state={"payment_id": "pay-1", "steps": 2},
        )
    )
    numbers = iter(range(count))

    async def writer() -> None:
        for n in numbers:
            key = new_subject(
                orchestrator="arvo.orc.order.fulfil",
                version="1.0.0",
                initiator="com.shop.web",
                execution_id=f"order-{n}",
            )
            status = STATUSES[n % len(STATUSES)]
            await memory.write(key, revision=0, status=status, header=header)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(writer)


async def timed(run: Callable[[], Awaitable[Any]], rounds: int) -> list[float]:
    for _ in range(3):
        await run()
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def row(backend: str, what: str, samples: list[float], bare: float | None) -> dict[str, Any]:
    median = statistics.median(samples)
    ordered = sorted(samples)
    return {
        "backend": backend,
        "what": what,
        "median_ms": median,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "ratio": None if bare is None else median / bare,
        "under_target": median < TARGET_MS,
    }


async def measure(
    backend: str,
    memory: Memory,
    bare: Callable[[], Awaitable[Any]],
    counts: Callable[[], Awaitable[Any]],
    rounds: int,
) -> list[dict[str, Any]]:
    """The rows of one backend: the bare SELECT, then the inspector's pages."""
    app = create_app(memory)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
    try:
        first = await client.get("/")
        assert first.status_code == 200 and first.text.count('class="id"') == PAGE
        second = await client.get(_next(first.text))
        third_url = _next(second.text)

        async def page(url: str) -> None:
            response = await client.get(url)
            assert response.status_code == 200

        base = statistics.median(await timed(bare, rounds))
        rows = [row(backend, "bare SELECT of the page", [base], None)]
        rows[0]["ratio"] = 1.0
        rows.append(row(backend, "bare counts per status", await timed(counts, rounds), base))
        for what, url in (
            ("list page", "/"),
            ("list page, parked", "/?status=parked"),
            ("list page 3", third_url),
        ):
            rows.append(row(backend, what, await timed(lambda u=url: page(u), rounds), base))
        return rows
    finally:
        await client.aclose()


def _next(html: str) -> str:
    found = re.search(r'rel="next" href="([^"]+)"', html)
    assert found is not None, "the page has no link to the next one"
    return unescape(found.group(1))


async def sqlite_rows(tmp: Path, count: int, rounds: int) -> list[dict[str, Any]]:
    path = tmp / "inspector.db"
    memory = SQLiteMemory(path)
    try:
        began = time.perf_counter()
        await fill(memory, count)
        _say(f"sqlite: {count} records written in {time.perf_counter() - began:.1f}s")
        connection = sqlite3.connect(path)
        sql = BARE.format(table="records")

        async def bare() -> None:
            connection.execute(sql).fetchall()

        async def counts() -> None:
            connection.execute(COUNTS.format(table="records")).fetchall()

        try:
            return await measure("sqlite", memory, bare, counts, rounds)
        finally:
            connection.close()
    finally:
        await memory.close()


async def postgres_rows(count: int, rounds: int) -> list[dict[str, Any]]:
    import asyncpg

    from resumable.memory.postgres import PostgresMemory

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    memory = PostgresMemory(POSTGRES, schema=schema)
    try:
        began = time.perf_counter()
        await fill(memory, count)
        _say(f"postgresql: {count} records written in {time.perf_counter() - began:.1f}s")
        connection = await asyncpg.connect(POSTGRES)
        sql = BARE.format(table=f'"{schema}".records')
        try:
            await connection.execute(f'ANALYZE "{schema}".records')

            async def bare() -> None:
                await connection.fetch(sql)

            async def counts() -> None:
                await connection.fetch(COUNTS.format(table=f'"{schema}".records'))

            return await measure("postgresql", memory, bare, counts, rounds)
        finally:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await connection.close()
    finally:
        await memory.close()


def postgres_answers() -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(POSTGRES)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 1.0):
            return True
    except OSError:
        return False


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def format_rows(rows: list[dict[str, Any]], count: int) -> str:
    lines = [
        f"The inspector's instance list, {count:,} instances (target: under {TARGET_MS:.0f} ms)",
        f"{'backend':<11} {'page':<26} {'median ms':>10} {'p99 ms':>8} {'x bare':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['backend']:<11} {r['what']:<26} {r['median_ms']:>10.2f} {r['p99_ms']:>8.2f} "
            f"{r['ratio']:>8.1f}"
        )
    return "\n".join(lines)


async def main(count: int, rounds: int, postgres: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as name:
        rows = await sqlite_rows(Path(name), count, rounds)
    if postgres:
        rows += await postgres_rows(count, rounds)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inspector_list")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows here")
    args = parser.parse_args()
    use_postgres = not args.no_postgres and postgres_answers()
    if not use_postgres and not args.no_postgres:
        _say(f"PostgreSQL does not answer at {POSTGRES}: its rows are left out")
    result = anyio.run(main, args.instances, args.rounds, use_postgres)
    print(format_rows(result, args.instances))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    failed = [r for r in result if not r["under_target"]]
    sys.exit(1 if failed else 0)
