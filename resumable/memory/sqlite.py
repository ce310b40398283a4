"""Memory in one SQLite file: the embedded default, durable and shared by processes on a host.

Writes are group committed (``resumable.memory.group``): concurrent writes share one
transaction, run in a worker thread with one commit, so they share the cost of each fsync.

Reads run on the caller's thread through a second connection, each in its own read
transaction (a consistent snapshot). They see only committed writes, which are durable, and
cost microseconds, less than a hand-off to a thread.

Leases live in a second small file beside the first (``<path>-leases``), written on the
caller's thread with ``synchronous=OFF``: a lease is a hint with a time to live, not data,
so it needs no fsync, and keeping it apart means taking one never waits on a record commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from resumable.errors import ConflictError, DuplicateEntryError, Unavailable
from resumable.memory.base import Listed, Memory, Page, Stored
from resumable.memory.group import GroupCommit, Op
from resumable.memory.listing import check_query, page_of, select_counts, select_page, workflow_of

__all__ = ["SQLiteMemory"]

T = TypeVar("T")

_BUSY_TIMEOUT = 30.0
"""Seconds to wait for another process's write transaction on the same file."""

_TABLES = (
    """CREATE TABLE IF NOT EXISTS records (
        key TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        status TEXT NOT NULL,
        header BLOB NOT NULL,
        due REAL,
        workflow TEXT,
        created REAL,
        updated REAL
    )""",
    """CREATE TABLE IF NOT EXISTS journal (
        key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY (key, seq)
    )""",
)

_ADDED_COLUMNS = {"due": "REAL", "workflow": "TEXT", "created": "REAL", "updated": "REAL"}
"""Columns of ``records`` that files made by earlier versions lack, and their types."""

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS records_by_status ON records (status, key)",
    "CREATE INDEX IF NOT EXISTS records_by_due ON records (due) WHERE due IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS journal_by_event ON journal (key, event_id)",
    # list(): one index per filter, each in page order. None on ``updated``: every step
    # changes it, and an index on it would cost every write.
    "CREATE INDEX IF NOT EXISTS records_listed ON records (created, key)",
    "CREATE INDEX IF NOT EXISTS records_listed_by_status ON records (status, created, key)",
    "CREATE INDEX IF NOT EXISTS records_listed_by_workflow ON records (workflow, created, key)",
    "CREATE INDEX IF NOT EXISTS records_listed_by_workflow_status"
    " ON records (workflow, status, created, key)",
)

_LEASES_SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
"""


class SQLiteMemory(GroupCommit, Memory):
    """Records, journals and leases in a SQLite file, in WAL mode with ``synchronous=FULL``.

    A write is fsynced before it returns. The file may be opened by several processes at once;
    leases use the wall clock ``clock`` for that reason. The connection opens on first use.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        super().__init__()
        self.path = os.fspath(path)
        self._clock = clock
        self._connection: sqlite3.Connection | None = None  # the writer, in the worker thread
        self._reader: sqlite3.Connection | None = None
        self._leases: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteMemory({self.path!r})"

    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        with self._locked_file():
            reader = await self._reader_connection()
            if not journal:  # one statement is a consistent snapshot on its own
                return _read(reader, key, journal=False)
            return _snapshot(reader, lambda c: _read(c, key, journal=True))

    async def write(
        self,
        key: str,
        *,
        revision: int,
        status: str,
        header: bytes,
        append: Sequence[tuple[str, bytes]] = (),
        due: float | None = None,
        reset: bool = False,
    ) -> int:
        # Snapshot the arguments now: the write runs later, and a bytearray could change.
        header = bytes(header)
        entries = [(event_id, bytes(entry)) for event_id, entry in append]
        workflow = workflow_of(key) if revision == 0 else None
        now = self._clock()
        with self._locked_file():
            written: int = await self._submit(
                lambda connection: _write(
                    connection, key, revision, status, header, entries, due, reset, workflow, now
                ),
                key=key,
            )
        return written

    async def entry(self, key: str, event_id: str) -> bytes | None:
        with self._locked_file():
            return _snapshot(await self._reader_connection(), lambda c: _entry(c, key, event_id))

    async def keys(self, status: str | None = None) -> list[str]:
        with self._locked_file():
            return _snapshot(await self._reader_connection(), lambda c: _keys(c, status))

    async def due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        with self._locked_file():
            return _snapshot(await self._reader_connection(), lambda c: _due(c, now, limit))

    async def lock(self, key: str, owner: str, ttl: float) -> bool:
        with self._locked_file():
            return _lock(await self._leases_connection(), key, owner, ttl, self._clock())

    async def unlock(self, key: str, owner: str) -> bool:
        with self._locked_file():
            return _unlock(await self._leases_connection(), key, owner, self._clock())

    async def _reader_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            self._check_open()
            await self._submit(lambda connection: None)  # the writer creates file and schema
            if self._reader is None:
                self._reader = _open(self.path, synchronous="FULL")
        return self._reader

    async def _leases_connection(self) -> sqlite3.Connection:
        if self._leases is None:
            self._check_open()
            await self._reader_connection()  # fails clearly if the directory is missing
            if self._leases is None:
                leases = _open(f"{self.path}-leases", synchronous="OFF")
                leases.executescript(_LEASES_SCHEMA)
                self._leases = leases
        return self._leases

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; open a new SQLiteMemory to use the file")

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[None]:
        """A file another connection kept locked past the busy timeout is ``Unavailable``
        (it frees up); every other error passes unchanged."""
        try:
            yield
        except sqlite3.OperationalError as error:
            text = str(error).lower()
            if "locked" not in text and "busy" not in text:
                raise
            raise Unavailable(
                f"SQLite memory {self.path!r} stayed locked by another connection for over "
                f"{_BUSY_TIMEOUT}s ({error}); nothing was changed, retry once it is free",
                server=f"SQLite file {self.path!r}",
            ) from error

    async def close(self) -> None:
        """Let queued operations finish, then close the connection. Safe to call twice."""
        self._closed = True
        await self._drain()
        connection, self._connection = self._connection, None
        if connection is not None:
            await anyio.to_thread.run_sync(connection.close)
        for name in ("_reader", "_leases"):
            other = getattr(self, name)
            setattr(self, name, None)
            if other is not None:
                other.close()

    async def _execute(self, batch: list[Op]) -> None:
        """sqlite3 blocks: the batch runs in a worker thread, one thread hop per batch."""
        await anyio.to_thread.run_sync(self._run_batch, batch)

    def _run_batch(self, batch: list[Op]) -> None:
        """In a worker thread: run ``batch`` in one transaction, each op in its own savepoint."""
        try:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
        except Exception as error:
            self._fail(batch, error)
            return
        outcomes: list[tuple[Any, Exception | None]] = []
        try:
            for op in batch:
                connection.execute("SAVEPOINT op")
                try:
                    outcomes.append((op.run(connection), None))
                except Exception as error:
                    connection.execute("ROLLBACK TO op")
                    outcomes.append((None, error))
                connection.execute("RELEASE op")
            connection.execute("COMMIT")
        except Exception as error:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            self._fail(batch, error)
            return
        self._settle(batch, outcomes)

    def _connect(self) -> sqlite3.Connection:
        """The connection, opened and set up on first use (in the worker thread)."""
        if self._connection is not None:
            return self._connection
        directory = os.path.dirname(os.path.abspath(self.path))
        if self.path != ":memory:" and not os.path.isdir(directory):
            raise FileNotFoundError(
                f"cannot open SQLite memory {self.path!r}: directory {directory!r} does not "
                "exist; create it first"
            )
        connection = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal" and self.path != ":memory:":
                raise sqlite3.OperationalError(
                    f"SQLite memory {self.path!r} cannot use WAL mode (got {mode!r}); put the "
                    "file on a local file system"
                )
            connection.execute("PRAGMA synchronous = FULL")
            _migrate(connection, self._clock())
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    # Last of the methods: below it, ``list`` in an annotation would name this method.
    async def list(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        query = check_query(workflow, status, limit, cursor)
        sql, params = select_page("records", query, lambda _: "?")
        rows = (await self._reader_connection()).execute(sql, params)  # one statement: a snapshot
        return page_of([Listed(*row) for row in rows], query.limit)

    async def count(self, *, workflow: str | None = None) -> dict[str, int]:
        sql, params = select_counts("records", check_query(workflow, None, 1, None), "?")
        rows = (await self._reader_connection()).execute(sql, params)
        return {status: number for status, number in rows}


def _open(path: str, *, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode for use on the caller's thread (reads, leases)."""
    connection = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        connection.close()
        raise
    return connection


def _snapshot(connection: sqlite3.Connection, run: Callable[[sqlite3.Connection], T]) -> T:
    """Run reads in one read transaction, so they see one consistent committed state."""
    connection.execute("BEGIN")
    try:
        return run(connection)
    finally:
        connection.execute("COMMIT")


def _read(connection: sqlite3.Connection, key: str, journal: bool) -> Stored | None:
    row = connection.execute(
        "SELECT revision, status, header FROM records WHERE key = ?", (key,)
    ).fetchone()
    if row is None:
        return None
    entries: list[bytes] | None = None
    if journal:
        entries = [
            entry
            for (entry,) in connection.execute(
                "SELECT entry FROM journal WHERE key = ? ORDER BY seq", (key,)
            )
        ]
    return Stored(revision=row[0], status=row[1], header=row[2], journal=entries)


def _write(
    connection: sqlite3.Connection,
    key: str,
    revision: int,
    status: str,
    header: bytes,
    entries: list[tuple[str, bytes]],
    due: float | None,
    reset: bool,
    workflow: str | None,
    now: float,
) -> int:
    row = connection.execute(
        "SELECT revision, status FROM records WHERE key = ?", (key,)
    ).fetchone()
    found: int | None = None if row is None else row[0]
    if found != (revision if revision != 0 else None):
        raise ConflictError(key, revision, found)
    seen: set[str] = set()
    for event_id, _ in entries:
        if event_id in seen or (not reset and _entry(connection, key, event_id) is not None):
            raise DuplicateEntryError(key, event_id)
        seen.add(event_id)
    if revision == 0:
        connection.execute(
            "INSERT INTO records (key, revision, status, header, due, workflow, created, updated)"
            " VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
            (key, status, header, due, workflow, now, now),
        )
    elif row[1] == status:  # most steps: not setting status spares the indexes holding it
        connection.execute(
            "UPDATE records SET revision = ?, header = ?, due = ?, updated = ? WHERE key = ?",
            (revision + 1, header, due, now, key),
        )
    else:
        connection.execute(
            "UPDATE records SET revision = ?, status = ?, header = ?, due = ?, updated = ?"
            " WHERE key = ?",
            (revision + 1, status, header, due, now, key),
        )
    if reset:
        connection.execute("DELETE FROM journal WHERE key = ?", (key,))
    if entries:
        (start,) = connection.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM journal WHERE key = ?", (key,)
        ).fetchone()
        connection.executemany(
            "INSERT INTO journal (key, seq, event_id, entry) VALUES (?, ?, ?, ?)",
            [(key, start + i, event_id, entry) for i, (event_id, entry) in enumerate(entries)],
        )
    return revision + 1


def _entry(connection: sqlite3.Connection, key: str, event_id: str) -> bytes | None:
    row = connection.execute(
        "SELECT entry FROM journal WHERE key = ? AND event_id = ?", (key, event_id)
    ).fetchone()
    return None if row is None else cast(bytes, row[0])


def _keys(connection: sqlite3.Connection, status: str | None) -> list[str]:
    if status is None:
        rows = connection.execute("SELECT key FROM records ORDER BY key")
    else:
        rows = connection.execute(
            "SELECT key FROM records WHERE status = ? ORDER BY key", (status,)
        )
    return [key for (key,) in rows]


def _due(connection: sqlite3.Connection, now: float, limit: int) -> list[tuple[str, float]]:
    rows = connection.execute(
        "SELECT key, due FROM records WHERE due IS NOT NULL AND due <= ? ORDER BY due, key LIMIT ?",
        (now, limit),
    )
    return [(key, due) for key, due in rows]


def _migrate(connection: sqlite3.Connection, now: float) -> None:
    """Create the tables, or bring a file made by an earlier version up to date: add the
    columns it lacks, derive the listing's from each record (``now`` stands for the unknown
    times of its writes) and create the indexes. In one transaction, so processes opening
    the file at once do not race."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for table in _TABLES:
            connection.execute(table)
        columns = {row[1] for row in connection.execute("PRAGMA table_info(records)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in columns:
                connection.execute(f"ALTER TABLE records ADD COLUMN {name} {kind}")
        if "created" not in columns:
            connection.create_function("resumable_workflow", 1, workflow_of, deterministic=True)
            connection.execute(
                "UPDATE records SET workflow = resumable_workflow(key), created = ?, updated = ?",
                (now, now),
            )
        for index in _INDEXES:
            connection.execute(index)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _lock(connection: sqlite3.Connection, key: str, owner: str, ttl: float, now: float) -> bool:
    """Take or renew the lease in one statement: it changes a row only if the key is free,
    expired, or already ``owner``'s."""
    cursor = connection.execute(
        "INSERT INTO locks (key, owner, expires) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires"
        " WHERE locks.owner = excluded.owner OR locks.expires <= ?",
        (key, owner, now + ttl, now),
    )
    return cursor.rowcount == 1


def _unlock(connection: sqlite3.Connection, key: str, owner: str, now: float) -> bool:
    row = connection.execute(
        "DELETE FROM locks WHERE key = ? AND owner = ? RETURNING expires", (key, owner)
    ).fetchone()
    return row is not None and bool(row[0] > now)
