"""Servers the fault tests own: PostgreSQL, Redis and NATS started on spare loopback ports in
temporary directories, which a test may stop and start again as it likes.

The machine's shared servers (5432, 6379, 4222) are never touched: other tests and people
use them. Each server here keeps its data directory across a restart (PostgreSQL's cluster,
Redis's append-only file, NATS's JetStream store), so a restart tests what a deployment
would see, and ``close`` stops the process and removes the directory.

``require_binary`` skips a test when a server's binary is missing, except under ``CI=true``,
where it fails: CI must not pass by skipping what it was meant to check.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("RESUMABLE_FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = Path(os.environ.get("RESUMABLE_FAULTS_REDIS_SERVER", "/usr/bin/redis-server"))
NATS_SERVER = Path(os.environ.get("RESUMABLE_FAULTS_NATS_SERVER", "/usr/sbin/nats-server"))
START_LIMIT = 30.0
"""Most seconds a server may take to answer after it is started."""


def require_binary(path: Path, name: str) -> Path:
    """``path`` if it is an executable file; otherwise skip (fail under ``CI=true``)."""
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = f"{name} is not installed at {path}: the fault tests start their own {name}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def spare_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def wait_until_answers(port: int, what: str, log: Path, limit: float = START_LIMIT) -> None:
    """Block until ``port`` accepts connections; fail with the server's log after ``limit``."""
    deadline = time.monotonic() + limit
    while not answers(port):
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} did not answer on port {port} in {limit:.0f}s:\n{tail}")
        time.sleep(0.05)


def wait_until_closed(port: int, what: str, limit: float = START_LIMIT) -> None:
    """Block until nothing accepts connections on ``port`` any more."""
    deadline = time.monotonic() + limit
    while answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} still answers on port {port} {limit:.0f}s after stopping")
        time.sleep(0.05)


class OwnedServer:
    """What every owned server has: a temporary directory, a port, a log, and a way to
    stop and start again keeping its data."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"resumable-faults-{self.name.lower()}-"))
        self.port = spare_port()
        self.log = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, how: str) -> None:
        raise NotImplementedError

    def ensure_started(self) -> None:
        """Start the server unless it answers already (a failed test may have left it down)."""
        if not answers(self.port):
            self.start()

    def _spawn(self, argv: list[str]) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_until_answers(self.port, self.name, self.log)

    def _signal(self, number: signal.Signals) -> None:
        """Send ``number`` to the server process and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(number)
        try:
            self.process.wait(timeout=START_LIMIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        wait_until_closed(self.port, self.name)

    def close(self) -> None:
        """Stop the server at once and remove its directory."""
        with contextlib.suppress(Exception):
            self.stop("kill")
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnedRedis(OwnedServer):
    """``redis-server`` with the append-only file on (fsync every second, no RDB), so that
    a restart keeps what was written; ``stop("term")`` is a clean shutdown (the file is
    flushed), ``stop("kill")`` a crash."""

    name = "Redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = require_binary(REDIS_SERVER, "redis-server")
        self._spawn(
            [
                str(binary),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
            ]
        )

    def stop(self, how: str) -> None:
        self._signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)


class OwnedNats(OwnedServer):
    """``nats-server`` with JetStream, its store in the server's directory (kept across a
    restart); ``stop("term")`` is a clean shutdown, ``stop("kill")`` a crash."""

    name = "NATS"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require_binary(NATS_SERVER, "nats-server")
        store = self.dir / "jetstream"
        store.mkdir(exist_ok=True)
        self._spawn(
            [str(binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)]
        )

    def stop(self, how: str) -> None:
        self._signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)


class OwnedPostgres(OwnedServer):
    """A PostgreSQL cluster made by ``initdb`` (trust authentication, user ``postgres``),
    run by ``pg_ctl``; ``stop(mode)`` takes pg_ctl's shutdown modes: ``fast`` (clients are
    disconnected, a checkpoint is written) or ``immediate`` (a crash: recovery on start).

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
    user and its commands run as that user."""

    name = "PostgreSQL"

    def __init__(self) -> None:
        super().__init__()
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, and there is no postgres user to run PostgreSQL")
            self.user = "postgres"
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            list(argv),
            user=self.user,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=120,
            cwd=self.dir,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')}\n{log}"
            )

    def start(self) -> None:
        require_binary(PG_BIN / "postgres", "PostgreSQL")
        if not self._initialised:
            self._run(
                str(require_binary(PG_BIN / "initdb", "initdb")),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            )
            self._initialised = True
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(START_LIMIT)),
            "-o",
            options,
        )
        wait_until_answers(self.port, self.name, self.log)

    def stop(self, how: str) -> None:
        mode = "immediate" if how == "kill" else how
        if not (self.data / "postmaster.pid").exists():
            return
        self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w")
        wait_until_closed(self.port, self.name)
