"""Private PostgreSQL, Redis and NATS servers for fault tests: started by the test on a spare
loopback port in a temporary directory, stopped and started again at will, and always
removed at the end. The machine's shared servers are never touched.

A missing binary skips the test with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = Path("/usr/bin/redis-server")
NATS_SERVER = Path("/usr/sbin/nats-server")

__all__ = [
    "OwnNats",
    "OwnPostgres",
    "OwnRedis",
    "own_nats",
    "own_postgres",
    "own_redis",
    "spare_port",
]


def spare_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _missing(what: str, path: Path) -> None:
    reason = f"{what} is not installed at {path}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout}s"
                ) from None
            time.sleep(0.05)


class OwnPostgres:
    """A PostgreSQL cluster of this test's own (``initdb`` in ``directory``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = spare_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # PostgreSQL refuses to run as root: run it as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.directory / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (sessions ended with 57P01) or ``immediate`` (a crash)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A private cluster in a fresh directory under /tmp (pytest's are root's alone, and
    the server may have to run as the postgres user)."""
    if not (PG_BIN / "postgres").exists():
        _missing("PostgreSQL", PG_BIN)
    server = OwnPostgres(Path(tempfile.mkdtemp(prefix="resumable-pg-")))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


class OwnRedis:
    """A redis-server of this test's own, with its files in ``directory``."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.options = options
        self.port = spare_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        where = ["--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "no"]
        files = ["--dir", str(self.directory), "--logfile", str(self.directory / "log")]
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), *where, *files, "--daemonize", "no", *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM (a clean shutdown that flushes the AOF) or SIGKILL (a crash)."""
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(how)
            process.wait(timeout=30)

    def remove(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def own_redis(directory: Path, *options: str) -> Iterator[OwnRedis]:
    if not REDIS_SERVER.exists():
        _missing("redis-server", REDIS_SERVER)
    server = OwnRedis(directory, *options)
    try:
        server.start()
        yield server
    finally:
        server.remove()


class OwnNats:
    """A nats-server with JetStream of this test's own, its store in ``directory`` (kept
    across a restart, as a deployment's is)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = spare_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        where = ["-a", "127.0.0.1", "-p", str(self.port)]
        files = ["-sd", str(self.directory / "jetstream"), "-l", str(self.directory / "log")]
        self.process = subprocess.Popen(
            [str(NATS_SERVER), *where, "-js", *files],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL (a crash); the store stays."""
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(how)
            process.wait(timeout=30)

    def remove(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def own_nats(directory: Path) -> Iterator[OwnNats]:
    if not NATS_SERVER.exists():
        _missing("nats-server", NATS_SERVER)
    server = OwnNats(directory)
    try:
        server.start()
        yield server
    finally:
        server.remove()
