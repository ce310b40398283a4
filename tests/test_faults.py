"""Server faults: PostgreSQL, NATS and Redis restarted under three workers and 300 orders.

Each fault runs on servers this file starts itself, on spare loopback ports in temporary
directories (``tests/own_servers.py``), never on the machine's shared ones:

- PostgreSQL as the memory (NATS the broker), stopped with ``pg_ctl -m immediate`` (a crash:
  crash recovery on start) or ``-m fast`` (clients disconnected, a checkpoint);
- NATS as the broker (PostgreSQL the memory), killed with SIGKILL, its JetStream store kept;
- Redis with the append-only file on, stopped with SIGTERM: as memory and broker at once,
  and as the memory alone (NATS the broker), where deliveries keep coming while it is down;

each down for 2 s and for 20 s. Three ``resumable worker`` processes run the demo's order
workflow and services (``tests/chaos_worker.py``, with default leases, ack deadlines and
attempts), the effects counted in the shared PostgreSQL, which is never restarted. The test
publishes 300 orders over six seconds and, three seconds in, stops the server, waits, and
starts it again on the same port and data.

Checked at the end: every order reported to the shop exactly once (one report event per
order, one report in its journal, the outcome the demo's mix says), nothing dead-lettered,
one effect per (kind, order), no worker died. The time to drain (seconds from the server
answering again to the last order's report) is printed, and each fault's figures (lost,
duplicates, dead letters, drain seconds...) are written to ``.artifacts/faults/<fault>.json``
and appended to ``.artifacts/faults/runs.jsonl``, whether the test passes or not.

Bounded: a fault gets ``DRAIN_LIMIT`` seconds after the restart to drain, and its test at
most ``RUN_LIMIT`` seconds plus the time down; the whole file takes about four minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from chaos_worker import create_effects_table, expected_outcome, outcome, split_schema

from resumable.brokers import Broker
from resumable.brokers import from_url as broker_from_url
from resumable.demo import init_for, make_handlers, make_workflow, orders
from resumable.memory import Memory
from resumable.memory import from_url as memory_from_url
from resumable.record import decode_entry

from own_servers import OwnNats, OwnPostgres, OwnRedis, own_nats, own_postgres, own_redis
from servers import require_postgres

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".artifacts" / "faults"
ORDERS = 300
WORKERS = 3
PUBLISH_OVER = 6.0
"""Seconds over which the orders arrive (evenly)."""
FAULT_AT = 3.0
"""Seconds after the first order when the server is stopped: half the orders are in."""
DRAIN_LIMIT = 60.0
"""Most seconds, after the server answers again, for every order to be reported."""
QUIET = 3.0
"""Seconds to keep listening after the last report, for a second report of any order."""
RUN_LIMIT = 150.0
"""Most seconds for one fault, besides its time down, whatever happens."""
NAP = 0.3
"""Seconds the workflow sleeps before completing, so reports come from timer steps."""
SHOP = "com.shop.web"


@dataclass(frozen=True)
class Fault:
    """One fault: which server goes down, how it is stopped, and for how long."""

    server: str
    how: str
    down: float

    @property
    def name(self) -> str:
        return f"{self.server}-{self.how}-{self.down:g}s"


FAULTS = [
    Fault(server, how, down)
    for server, how in [
        ("postgres", "immediate"),
        ("postgres", "fast"),
        ("nats", "kill"),
        ("redis", "term"),
        ("redis-memory", "term"),
    ]
    for down in (2.0, 20.0)
]


@dataclass
class Figures:
    """What one fault did, as written to ``.artifacts/faults``."""

    fault: str
    server: str
    how: str
    down_s: float
    orders: int
    reported: int = 0
    lost: int = 0
    """Orders with no report when the drain limit ran out."""
    duplicates: int = 0
    """Orders reported twice (two report ids) or with two reports in their journal."""
    duplicate_effects: int = 0
    """(kind, order) pairs done under two idempotency keys."""
    dead_letters: int = 0
    wrong_outcomes: int = 0
    unfinished: int = 0
    """Records not finished (neither done nor failed) at the end."""
    worker_exits: int = 0
    """Workers that exited before they were asked to stop."""
    drain_s: float | None = None
    """Seconds from the server answering again to the last report (None: never drained)."""
    stopped_s: float = 0.0
    """Seconds after the first order when the server was stopped."""
    repeated_requests: int = 0
    """Service requests answered again from the effect table (redeliveries: harmless)."""
    report_copies: int = 0
    """Report deliveries beyond one per order: copies, harmless when ``duplicates`` is 0."""
    run_s: float = 0.0
    commit: str = ""
    at: str = ""
    statuses: dict[str, int] = field(default_factory=dict)


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), *params.items()])))


@dataclass
class Deployment:
    """The URLs the workers get for one fault, and the server the fault stops."""

    broker_url: str
    memory_url: str
    effects_url: str
    target: Server


@dataclass
class Worker:
    """One ``resumable worker`` process and its log."""

    slot: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, deployment: Deployment) -> None:
        paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "CHAOS_EFFECTS": deployment.effects_url,
            "CHAOS_NAP": str(NAP),
        }
        env.pop("CHAOS_LOCK_TTL", None)  # the default lease: what a deployment gets
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "resumable",
                    "worker",
                    "chaos_worker:handlers",
                    "--broker",
                    deployment.broker_url,
                    "--memory",
                    deployment.memory_url,
                    "--log-level",
                    "WARNING",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def ready(self) -> bool:
        return b" consuming " in self.log.read_bytes()

    def tail(self) -> str:
        text = self.log.read_text(errors="replace")
        return f"--- {self.log.name}\n{text[-3000:]}"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip()


Server = OwnPostgres | OwnRedis | OwnNats


def answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def stop(server: Server, fault: Fault) -> None:
    """Stop ``server`` the way ``fault`` says: pg_ctl's mode, or a signal."""
    if isinstance(server, OwnPostgres):
        server.stop(fault.how)
    else:
        server.stop(signal.SIGKILL if fault.how == "kill" else signal.SIGTERM)


@pytest.fixture(scope="module")
def owned_postgres() -> Iterator[OwnPostgres]:
    with own_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def owned_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnNats]:
    with own_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="module")
def owned_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    """Redis with the append-only file on (fsync every second, no snapshots)."""
    options = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
    with own_redis(tmp_path_factory.mktemp("redis"), *options) as server:
        yield server


@pytest.fixture
async def deployment(request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """The servers of the fault's deployment, running, with names of their own."""
    fault: Fault = request.param
    effects_pg = require_postgres()
    suffix = uuid.uuid4().hex[:10]
    effects_schema = f"faults_fx_{suffix}"
    if fault.server == "redis":
        redis: OwnRedis = request.getfixturevalue("owned_redis")
        servers: list[Server] = [redis]
        chosen = Deployment(
            with_query(redis.url, prefix=f"faults-{suffix}-b"),
            with_query(redis.url, prefix=f"faults-{suffix}-m"),
            with_query(effects_pg, schema=effects_schema),
            redis,
        )
    elif fault.server == "redis-memory":
        redis = request.getfixturevalue("owned_redis")
        nats: OwnNats = request.getfixturevalue("owned_nats")
        servers = [nats, redis]
        chosen = Deployment(
            with_query(nats.url, stream=f"FAULTS_{suffix}", prefix=f"faults{suffix}"),
            with_query(redis.url, prefix=f"faults-{suffix}-m"),
            with_query(effects_pg, schema=effects_schema),
            redis,
        )
    else:
        nats = request.getfixturevalue("owned_nats")
        postgres: OwnPostgres = request.getfixturevalue("owned_postgres")
        servers = [nats, postgres]
        chosen = Deployment(
            with_query(nats.url, stream=f"FAULTS_{suffix}", prefix=f"faults{suffix}"),
            with_query(postgres.url, schema=f"faults_{suffix}"),
            with_query(effects_pg, schema=effects_schema),
            nats if fault.server == "nats" else postgres,
        )
    for server in servers:  # a fault before may have left one stopped
        if not answers(server.port):
            server.start()
    yield chosen
    connection = await asyncpg.connect(effects_pg)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{effects_schema}" CASCADE')
    finally:
        await connection.close()


class Reports:
    """The shop's view: every report event received, by order subject, with the time the
    first one came."""

    def __init__(self) -> None:
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.first: dict[str, Any] = {}
        self.at: dict[str, float] = {}
        self.deliveries = 0

    def add(self, event: Any) -> None:
        self.deliveries += 1
        self.ids[event.subject].add(event.id)
        if event.subject not in self.first:
            self.first[event.subject] = event
            self.at[event.subject] = time.monotonic()


async def keep_trying(what: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``what`` until it answers: the test's own clients wait out the outage too
    (their failures are not the system's)."""
    while True:
        try:
            return await what(*args, **kwargs)
        except Exception:  # any client error during the outage: try again
            await anyio.sleep(0.2)


async def run_fault(fault: Fault, deployment: Deployment, tmp_path: Path) -> Figures:
    """Run one fault under load and measure it; returns its figures (asserted by the test)."""
    began = time.monotonic()
    figures = Figures(fault.name, fault.server, fault.how, fault.down, ORDERS)
    figures.commit, figures.at = git_commit(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    workers = [Worker(slot, tmp_path / f"worker-{slot}.log") for slot in range(WORKERS)]
    broker: Broker = broker_from_url(deployment.broker_url)
    reports = Reports()
    try:
        dsn, schema = split_schema(deployment.effects_url)
        connection = await asyncpg.connect(dsn)
        try:
            await create_effects_table(connection, schema)
        finally:
            await connection.close()
        for w in workers:
            w.start(deployment)
        with anyio.fail_after(30):
            while not all(w.ready() for w in workers):
                for w in workers:
                    assert w.process is not None
                    if w.process.poll() is not None:
                        pytest.fail(f"worker {w.slot} exited at start:\n{w.tail()}")
                await anyio.sleep(0.05)

        async def place_orders() -> None:
            for n in range(ORDERS):
                await keep_trying(broker.publish, init_for(n))
                await anyio.sleep(PUBLISH_OVER / ORDERS)

        async def listen() -> None:
            while True:
                for delivery in await keep_trying(broker.receive, SHOP, max_messages=200):
                    reports.add(delivery.event)
                    # A delivery is settled once: an ack the outage broke is not tried
                    # again (that raises "already settled" for ever); the report comes
                    # back after ack_wait instead, and counts as a copy.
                    with contextlib.suppress(Exception):
                        await delivery.ack()

        back = 0.0
        async with anyio.create_task_group() as running:
            published = time.monotonic()
            running.start_soon(place_orders)
            running.start_soon(listen)
            await anyio.sleep(FAULT_AT)
            figures.stopped_s = round(time.monotonic() - published, 2)
            await anyio.to_thread.run_sync(stop, deployment.target, fault)
            await anyio.sleep(fault.down)
            await anyio.to_thread.run_sync(deployment.target.start)
            back = time.monotonic()
            while len(reports.first) < ORDERS and time.monotonic() - back < DRAIN_LIMIT:
                await anyio.sleep(0.1)
            if len(reports.first) == ORDERS:
                figures.drain_s = round(max(reports.at.values()) - back, 2)
                await anyio.sleep(QUIET)  # a second report would come by then
            running.cancel_scope.cancel()

        figures.worker_exits = sum(
            1 for w in workers if w.process is not None and w.process.poll() is not None
        )
        for w in workers:  # SIGTERM drains each, which exits 0
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                await anyio.to_thread.run_sync(lambda p=w.process: p.wait(timeout=20))

        await count(figures, reports, deployment, broker)
    finally:
        for w in workers:
            if w.process is not None and w.process.poll() is None:
                w.process.kill()
                w.process.wait()
        with contextlib.suppress(Exception):
            await broker.close()
    figures.run_s = round(time.monotonic() - began, 1)
    return figures


async def count(figures: Figures, reports: Reports, deployment: Deployment, broker: Broker) -> None:
    """Fill ``figures`` from the reports, the records, the effect table and the dead letters."""
    subjects = {init_for(n).subject: n for n in range(ORDERS)}
    figures.reported = len(reports.first)
    figures.report_copies = reports.deliveries - len(reports.first)
    figures.lost = sum(1 for s in subjects if s not in reports.first)
    duplicated = {s for s, ids in reports.ids.items() if len(ids) > 1}
    figures.wrong_outcomes = sum(
        1 for s, e in reports.first.items() if outcome(e) != expected_outcome(subjects[s])
    )

    memory: Memory = memory_from_url(deployment.memory_url)
    statuses: Counter[str] = Counter()
    try:
        for subject in subjects:
            stored = await memory.read(subject, journal=True)
            if stored is None or stored.journal is None:
                statuses["missing"] += 1
                continue
            statuses[stored.status] += 1
            journaled = [
                e.id
                for raw in stored.journal
                for e in decode_entry(raw).produced
                if e.type in (orders.complete_type, orders.system_error_type)
            ]
            if len(journaled) > 1:
                duplicated.add(subject)
        topics = [make_workflow(memory).source, *(h.source for h in make_handlers())]
        for topic in topics:
            figures.dead_letters += len(await broker.dead_letters(topic))
    finally:
        await memory.close()
    figures.duplicates = len(duplicated)
    figures.statuses = dict(statuses)
    figures.unfinished = ORDERS - statuses["done"] - statuses["failed"]

    dsn, schema = split_schema(deployment.effects_url)
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            f'SELECT kind, order_id, count(*) AS keys, sum(attempts) AS asked FROM "{schema}"'
            ".effects GROUP BY kind, order_id"
        )
    finally:
        await connection.close()
    figures.duplicate_effects = sum(1 for r in rows if r["keys"] != 1)
    figures.repeated_requests = int(sum(r["asked"] for r in rows) - sum(r["keys"] for r in rows))


def record(figures: Figures) -> None:
    """Write the fault's figures where CI keeps artifacts, and print them."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = asdict(figures)
    (ARTIFACTS / f"{figures.fault}.json").write_text(json.dumps(data, indent=2) + "\n")
    with (ARTIFACTS / "runs.jsonl").open("a") as runs:
        runs.write(json.dumps(data) + "\n")
    drained = "never drained" if figures.drain_s is None else f"drained {figures.drain_s:.1f}s"
    print(
        f"\n{figures.fault}: {figures.reported}/{figures.orders} reported, {drained} after the "
        f"restart; lost {figures.lost}, duplicates {figures.duplicates}, duplicate effects "
        f"{figures.duplicate_effects}, dead letters {figures.dead_letters}, unfinished "
        f"{figures.unfinished}, worker exits {figures.worker_exits}; {figures.run_s:.0f}s in all"
    )


@pytest.mark.parametrize("deployment", FAULTS, ids=[f.name for f in FAULTS], indirect=True)
async def test_server_restart_loses_nothing(
    deployment: Deployment, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fault: Fault = request.node.callspec.params["deployment"]
    with anyio.fail_after(RUN_LIMIT + fault.down):
        figures = await run_fault(fault, deployment, tmp_path)
    record(figures)
    problems = {name: getattr(figures, name) for name in MUST_BE_ZERO if getattr(figures, name)}
    if figures.drain_s is None or problems:
        logs = "\n".join(worker_log(path) for path in sorted(tmp_path.glob("worker-*.log")))
        pytest.fail(
            f"{fault.name}: {figures.reported} of {ORDERS} orders reported "
            f"{DRAIN_LIMIT:.0f}s after the restart; {problems}\n{logs}"
        )


MUST_BE_ZERO = (
    "lost",
    "duplicates",
    "duplicate_effects",
    "dead_letters",
    "wrong_outcomes",
    "unfinished",
    "worker_exits",
)


def worker_log(path: Path) -> str:
    """The end of a worker's log without its periodic health lines."""
    lines = [
        line
        for line in path.read_text(errors="replace").splitlines()
        if line.strip() and not line.lstrip("\r\x1b[K").startswith("resumable worker: in flight")
    ]
    return f"--- {path.name}\n" + "\n".join(lines[-15:])
