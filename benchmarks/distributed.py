"""The distributed rows: W10 run by 1, 2 and 4 worker processes on real servers, and the
SQLite embedded run they are compared with.

A row publishes ``dist_workflows`` W10 init events at once and waits until every workflow has
sent its completion to the runner's topic; a sample is that wall time, from the first
publish to the last completion, divided by the steps taken (11 per workflow). Worker
start-up and a warm-up batch are not timed.

- ``dist-sqlite-embedded``, the baseline: one process. A ``Worker`` runs the workflow (on
  ``SQLiteMemory``, a fresh file) and its service on a ``LocalBroker``'s in-process
  transport, with the runner in the same event loop: the same worker code and concurrency
  as a one-process distributed row, with no server and no network.
- ``dist-nats-pg``, ``dist-redis-redis``: ``python -m benchmarks.dist_worker`` (the
  ``resumable worker`` command) in 1, 2 and 4 processes, each running the workflow and the
  service, on NATS JetStream + PostgreSQL or Redis Streams + Redis. Every row gets its own
  stream, subject prefix, schema or key prefixes, removed afterwards.

A server that does not answer makes its rows say ``not run: <server> not reachable at
<url>``. The URLs come from ``RESUMABLE_BENCH_NATS``, ``RESUMABLE_BENCH_POSTGRES`` and
``RESUMABLE_BENCH_REDIS``, or default to the servers on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from benchmarks.common import W10_STEPS, N, Row, Sizes, file_bytes, progress, row
from benchmarks.dist_worker import PARENT_ENV, handlers
from benchmarks.workloads import RUNNER, WTEN
from resumable.brokers import Broker, LocalBroker
from resumable.events import Event
from resumable.memory import Memory, SQLiteMemory
from resumable.worker import Worker

__all__ = [
    "EMBEDDED",
    "JOBS",
    "PAIRS",
    "Namespace",
    "Pair",
    "Workers",
    "row_key",
    "server_urls",
    "why_not_run",
]

ROOT = Path(__file__).resolve().parent.parent

READY_TIMEOUT = 30.0
"""Seconds for every worker process to start consuming."""
STALL_TIMEOUT = 60.0
"""Seconds without a single completion before a batch is declared stuck."""
STOP_TIMEOUT = 15.0
"""Seconds a worker gets to drain after SIGTERM before it is killed."""
RECEIVE_BATCH = 100
"""Completions the runner takes from the broker per receive."""

DEFAULT_URLS = {
    "NATS": "nats://127.0.0.1:4222",
    "PostgreSQL": "postgresql://postgres@127.0.0.1:5432/test",
    "Redis": "redis://127.0.0.1:6379/0",
}
URL_ENV = {
    "NATS": "RESUMABLE_BENCH_NATS",
    "PostgreSQL": "RESUMABLE_BENCH_POSTGRES",
    "Redis": "RESUMABLE_BENCH_REDIS",
}
CLIENTS = {
    "NATS": ("nats", "nats"),
    "PostgreSQL": ("asyncpg", "postgres"),
    "Redis": ("redis", "redis"),
}
"""Per server: the client module it needs, and the extra of pyproject.toml that installs it."""


@dataclass(frozen=True)
class Pair:
    """A broker and a memory on real servers: ``broker`` is the rows' path, ``memory``
    their memory (``nats``/``postgres``, ``redis``/``redis``)."""

    broker: str
    memory: str
    title: str
    servers: tuple[str, ...]


PAIRS = {
    "dist-nats-pg": Pair("nats", "postgres", "NATS + PostgreSQL", ("NATS", "PostgreSQL")),
    "dist-redis-redis": Pair("redis", "redis", "Redis + Redis", ("Redis",)),
}

EMBEDDED = Pair("local", "sqlite", "SQLite embedded", ())
"""The baseline: a Worker on a LocalBroker and SQLiteMemory, in the runner's process."""


def server_urls() -> dict[str, str]:
    """Where each server is: its ``RESUMABLE_BENCH_*`` variable, or the loopback default."""
    return {name: os.environ.get(URL_ENV[name], url) for name, url in DEFAULT_URLS.items()}


def row_key(pair: Pair, workflows: int, processes: int) -> str:
    """The key of the row of ``pair`` with ``workflows`` at once on ``processes`` workers."""
    return f"W10/resumable/{pair.memory}/{pair.broker}/x{workflows}/p{processes}"


def _row(
    pair: Pair,
    sizes: Sizes,
    processes: int,
    samples: list[float],
    *,
    stored: float | None = None,
    on_disk: float | None = None,
) -> Row:
    return row(
        "W10",
        "resumable",
        pair.memory,
        pair.broker,
        sizes.dist_workflows,
        W10_STEPS,
        samples,
        key=row_key(pair, sizes.dist_workflows, processes),
        record_bytes=stored,
        file_bytes=on_disk,
        extra={"processes": processes, "worker_concurrency": sizes.dist_concurrency},
    )


def _status_rows(pair: Pair, sizes: Sizes, status: str) -> list[Row]:
    rows = [_row(pair, sizes, processes, []) for processes in sizes.dist_processes]
    for item in rows:
        item["status"] = status
    return rows


# --- servers and namespaces -----------------------------------------------------------------


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


DEFAULT_PORTS = {"nats": 4222, "tls": 4222, "postgresql": 5432, "postgres": 5432}
"""The port a URL without one means (Redis's too, below)."""


def _answers(url: str) -> bool:
    """Whether something accepts TCP connections where ``url`` points, within a second."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 6379)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), 1.0):
            return True
    except OSError:
        return False


def why_not_run(pair: Pair, urls: dict[str, str]) -> str | None:
    """Why ``pair`` cannot run here (a client not installed, a server not answering), or None."""
    for name in pair.servers:
        module, extra = CLIENTS[name]
        try:
            __import__(module)
        except ImportError:
            return f"not installed: {module} (pip install -e '.[{extra}]')"
        if not _answers(urls[name]):
            return f"not run: {name} not reachable at {urls[name]}"
    return None


@dataclass(frozen=True)
class Namespace:
    """The broker and memory URLs of one row, under names no other row uses."""

    pair: Pair
    suffix: str
    urls: dict[str, str]

    @property
    def broker_url(self) -> str:
        if self.pair.broker == "nats":
            return with_query(self.urls["NATS"], stream=self.stream, prefix=f"bench{self.suffix}")
        return with_query(self.urls["Redis"], prefix=f"{self.redis_prefix}-b")

    @property
    def memory_url(self) -> str:
        if self.pair.memory == "postgres":
            return with_query(self.urls["PostgreSQL"], schema=self.schema)
        return with_query(self.urls["Redis"], prefix=f"{self.redis_prefix}-m", allow_volatile="1")

    @property
    def stream(self) -> str:
        return f"BENCH_{self.suffix}"

    @property
    def schema(self) -> str:
        return f"bench_{self.suffix}"

    @property
    def redis_prefix(self) -> str:
        return f"bench-{self.suffix}"

    async def drop(self) -> None:
        """Remove what the row left on the servers: the stream, the schema, the keys."""
        if self.pair.broker == "nats":
            await _delete_stream(self.urls["NATS"], self.stream)
        if self.pair.memory == "postgres":
            await _drop_schema(self.urls["PostgreSQL"], self.schema)
        if "redis" in (self.pair.broker, self.pair.memory):
            await _delete_keys(self.urls["Redis"], f"{self.redis_prefix}-*")


def new_namespace(pair: Pair, urls: dict[str, str]) -> Namespace:
    return Namespace(pair, uuid.uuid4().hex[:10], urls)


async def _delete_stream(url: str, stream: str) -> None:
    import nats
    import nats.js.errors

    client = await nats.connect(url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


async def _drop_schema(url: str, schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


async def _delete_keys(url: str, pattern: str) -> None:
    import redis.asyncio

    client: Any = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


# --- worker processes -----------------------------------------------------------------------


class Workers:
    """``count`` worker processes on one namespace, each logging to a file in ``logs``.

    Use as a context manager: leaving it stops every process (SIGTERM, which drains, then
    SIGKILL after ``STOP_TIMEOUT``), whatever happened inside. Each process also gets
    SIGTERM from Linux if this one dies first (``benchmarks.dist_worker``)."""

    def __init__(self, count: int, namespace: Namespace, concurrency: int, logs: Path) -> None:
        self.namespace = namespace
        self.concurrency = concurrency
        self.logs = [logs / f"worker-{namespace.suffix}-{slot}.log" for slot in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.peak_rss_mib: float | None = None
        """The largest peak RSS of the processes (Linux), read just before stopping them."""

    def __enter__(self) -> Workers:
        paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            PARENT_ENV: str(os.getpid()),
        }
        command = [
            sys.executable,
            "-m",
            "benchmarks.dist_worker",
            "--broker",
            self.namespace.broker_url,
            "--memory",
            self.namespace.memory_url,
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            "ERROR",
        ]
        try:
            for log in self.logs:
                with log.open("wb") as out:
                    self.processes.append(
                        subprocess.Popen(
                            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
                        )
                    )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def ready(self) -> None:
        """Wait until every process says it is consuming; fail if one exits or is slow."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(b" consuming " in log.read_bytes() for log in self.logs):
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the workers did not start consuming within {READY_TIMEOUT:.0f}s"
                )
            await anyio.sleep(0.02)

    def check(self) -> None:
        """Raise if a worker process has exited."""
        for slot, process in enumerate(self.processes):
            code = process.poll()
            if code is not None:
                raise RuntimeError(
                    f"worker process {slot} (pid {process.pid}) exited with status {code}"
                )

    def stop(self) -> None:
        """SIGTERM every process still running, wait for the drain, SIGKILL what is left."""
        running = [p for p in self.processes if p.poll() is None]
        self.peak_rss_mib = _peak_rss_mib([p.pid for p in running])
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot, process in enumerate(self.processes):
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                progress(f"worker {slot} (pid {process.pid}) did not drain in time: killed")
                process.kill()
                process.wait()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def cpu_seconds(self) -> float | None:
        """CPU time the worker processes have used so far (Linux; None elsewhere)."""
        return process_cpu_seconds(self.pids)

    def tails(self) -> str:
        """The end of every worker's log, for error messages."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {log.name}\n{text[-2000:]}")
        return "\n".join(parts)


def _peak_rss_mib(pids: list[int]) -> float | None:
    """The largest ``VmHWM`` (peak resident set) of ``pids``, in MiB; None off Linux."""
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks) if peaks else None


# --- CPU accounting (Linux /proc; None elsewhere) -------------------------------------------


def process_cpu_seconds(pids: list[int]) -> float | None:
    """User plus system CPU seconds used so far by ``pids`` (every thread of each)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is state
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine so far, from ``/proc/stat``."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


# --- the runner -----------------------------------------------------------------------------


CpuClock = Callable[[], float | None]
"""CPU seconds used so far by the processes running the benchmark (workers and runner)."""


@dataclass(frozen=True)
class Batch:
    """One timed batch: wall time from the first publish to the last completion, steps,
    the share of the machine's CPUs that were busy meanwhile (every process: servers too),
    and the CPU seconds of the benchmark's own processes."""

    seconds: float
    steps: int
    busy: float | None
    cpu: float | None

    @property
    def sample(self) -> float:
        """µs per step, wall time."""
        return self.seconds * 1e6 / self.steps


async def run_batch(broker: Broker, count: int, check: Callable[[], None]) -> float:
    """Publish ``count`` W10 inits and take their completions from the runner's topic;
    seconds from the first publish to the last completion."""
    inits = [WTEN.init_event(N(0), source=RUNNER) for _ in range(count)]
    waiting = {init.subject for init in inits}
    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(_publish_all, broker, inits)
        end = await _await_completions(broker, waiting, check)
    return end - start


async def _publish_all(broker: Broker, inits: list[Event]) -> None:
    for init in inits:
        await broker.publish(init)


async def _await_completions(broker: Broker, waiting: set[str], check: Callable[[], None]) -> float:
    """Take completions until none of ``waiting`` is left; when the last one came."""
    total = len(waiting)
    last = time.monotonic()
    end = time.perf_counter()
    while waiting:
        deliveries = await broker.receive(RUNNER, max_messages=RECEIVE_BATCH, timeout=0.5)
        for delivery in deliveries:
            event = delivery.event
            await delivery.ack()
            if event.subject not in waiting:
                continue  # a copy of a completion already counted (at-least-once delivery)
            _check_completion(event)
            waiting.discard(event.subject)
            end, last = time.perf_counter(), time.monotonic()
        if not deliveries:
            check()
            if time.monotonic() - last > STALL_TIMEOUT:
                raise RuntimeError(
                    f"{total - len(waiting)} of {total} workflows completed, then none for "
                    f"{STALL_TIMEOUT:.0f}s; the workers are stuck or too slow"
                )
    return end


def _check_completion(event: Event) -> None:
    data = event.data if isinstance(event.data, dict) else {"n": getattr(event.data, "n", None)}
    if event.type != WTEN.complete_type or data.get("n") != 10:
        raise RuntimeError(
            f"workflow {event.subject} ended with {event.type} {event.data!r}, not "
            f"{WTEN.complete_type} {{'n': 10}}: W10 is broken on this pair"
        )


async def timed_batch(
    broker: Broker, count: int, check: Callable[[], None], cpu: CpuClock
) -> Batch:
    """``run_batch``, with the CPU the machine and the benchmark's processes spent on it."""
    machine_before, cpu_before = machine_ticks(), cpu()
    seconds = await run_batch(broker, count, check)
    machine_after, cpu_after = machine_ticks(), cpu()
    busy = used = None
    if machine_before and machine_after and machine_after[1] > machine_before[1]:
        busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
    if cpu_before is not None and cpu_after is not None:
        used = cpu_after - cpu_before
    return Batch(seconds, count * W10_STEPS, busy, used)


async def measure(
    broker: Broker, sizes: Sizes, check: Callable[[], None], cpu: CpuClock, what: str
) -> list[Batch]:
    """A warm-up batch, then ``dist_batches`` timed ones."""
    await run_batch(broker, sizes.dist_warmup, check)
    batches = []
    for _ in range(sizes.dist_batches):
        batch = await timed_batch(broker, sizes.dist_workflows, check, cpu)
        batches.append(batch)
        progress(f"{what}: {_describe(batch)}")
    return batches


def _describe(batch: Batch) -> str:
    text = (
        f"{batch.steps:,} steps in {batch.seconds:.2f} s, "
        f"{batch.steps / batch.seconds:,.0f} steps/s"
    )
    if batch.cpu is not None:
        text += f", {batch.cpu * 1e6 / batch.steps:,.0f} µs CPU/step in the benchmark's processes"
    if batch.busy is not None:
        text += f", machine {batch.busy:.0%} busy"
    return text


def _batch_extra(batches: list[Batch]) -> dict[str, Any]:
    """Per batch: CPU µs per step of the benchmark's processes, and how busy the machine was."""
    return {
        "cpu_us_per_step": [b.cpu * 1e6 / b.steps for b in batches if b.cpu is not None],
        "machine_busy": [b.busy for b in batches if b.busy is not None],
    }


async def record_bytes(memory: Memory, subject: str) -> float | None:
    """Stored bytes per step of the workflow ``subject`` (header and journal), if stored."""
    stored = await memory.read(subject, journal=True)
    if stored is None or stored.journal is None:
        return None
    return (len(stored.header) + sum(map(len, stored.journal))) / W10_STEPS


async def _a_completed_subject(memory: Memory) -> str:
    keys = await memory.keys(status="done")
    if not keys:
        raise RuntimeError("no W10 workflow is stored as done after the run")
    return keys[0]


# --- the jobs -------------------------------------------------------------------------------


async def embedded_job(sizes: Sizes, tmp: Path) -> list[Row]:
    """The baseline: a Worker on a LocalBroker and SQLiteMemory, in this process."""
    path = tmp / "dist-embedded.db"
    memory = SQLiteMemory(path)
    broker = LocalBroker()
    worker = Worker(handlers(memory), broker=broker, concurrency=sizes.dist_concurrency, poll=0.1)
    try:
        async with anyio.create_task_group() as group:
            await group.start(worker.run)
            try:
                batches = await measure(
                    broker, sizes, lambda: None, time.process_time, EMBEDDED.title
                )
            finally:
                worker.stop()
        stored = await record_bytes(memory, await _a_completed_subject(memory))
    finally:
        await memory.close()
    steps_run = (sizes.dist_warmup + sizes.dist_batches * sizes.dist_workflows) * W10_STEPS
    done = _row(
        EMBEDDED,
        sizes,
        1,
        [b.sample for b in batches],
        stored=stored,
        on_disk=file_bytes(path) / steps_run,
    )
    done["extra"].update(_batch_extra(batches))
    return [done]


def pair_job(name: str) -> Callable[[Sizes, Path], Awaitable[list[Row]]]:
    """The job of one pair: a row per worker process count, or rows saying why not run."""
    pair = PAIRS[name]

    async def job(sizes: Sizes, tmp: Path) -> list[Row]:
        urls = server_urls()
        reason = why_not_run(pair, urls)
        if reason is not None:
            progress(f"{pair.title}: {reason}")
            return _status_rows(pair, sizes, reason)
        return [await _pair_row(pair, sizes, n, urls, tmp) for n in sizes.dist_processes]

    return job


async def _pair_row(
    pair: Pair, sizes: Sizes, processes: int, urls: dict[str, str], tmp: Path
) -> Row:
    """One row: ``processes`` workers on a fresh namespace, measured, stopped, cleaned up."""
    from resumable.brokers import from_url as broker_from_url
    from resumable.memory import from_url as memory_from_url

    namespace = new_namespace(pair, urls)
    what = f"{pair.title}, {processes} process{'es' if processes > 1 else ''}"
    broker = broker_from_url(namespace.broker_url)
    memory = memory_from_url(namespace.memory_url)
    try:
        with Workers(processes, namespace, sizes.dist_concurrency, tmp) as workers:

            def cpu() -> float | None:
                used = workers.cpu_seconds()
                return None if used is None else used + time.process_time()

            try:
                await workers.ready()
                batches = await measure(broker, sizes, workers.check, cpu, what)
            except Exception as error:
                raise RuntimeError(f"{what}: {error}\n{workers.tails()}") from error
        stored = await record_bytes(memory, await _a_completed_subject(memory))
    finally:
        with anyio.CancelScope(shield=True):
            await broker.close()
            await memory.close()
            await _drop(namespace)
    done = _row(pair, sizes, processes, [b.sample for b in batches], stored=stored)
    done["extra"].update(_batch_extra(batches))
    # What the row used, for checking that nothing was left behind.
    done["extra"].update(namespaces=[namespace.suffix], worker_pids=workers.pids)
    done["rss_mib"] = workers.peak_rss_mib  # the workers', not this runner's
    return done


async def _drop(namespace: Namespace) -> None:
    """Remove the row's data from the servers; a failure is reported, not raised (it must
    not hide the row's own error)."""
    try:
        await namespace.drop()
    except Exception as error:
        progress(
            f"could not remove {namespace.suffix}'s stream, schema or keys ({error}); "
            "names starting with bench may be left on the servers"
        )


JOBS: dict[str, Callable[[Sizes, Path], Awaitable[list[Row]]]] = {
    "dist-sqlite-embedded": embedded_job,
    "dist-nats-pg": pair_job("dist-nats-pg"),
    "dist-redis-redis": pair_job("dist-redis-redis"),
}
