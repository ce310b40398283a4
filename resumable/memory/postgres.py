"""Memory in PostgreSQL: records shared by every process that reaches the server.

Writes are group committed (``resumable.memory.group``): concurrent writes share one
transaction on one connection, so they share the cost of each commit's WAL flush. A batch
runs its writes in key order, the same in every process, so batches of two processes lock
records in one order and cannot deadlock. A ``write`` returns once its commit is done.

Reads and leases run on other connections of the pool, each as a single statement (a
consistent snapshot on its own), so they never wait behind a batch.

Tables live in one PostgreSQL schema (``resumable`` unless told otherwise), which isolates
one memory from another in the same database. They are created on first connect, under a
transaction-scoped advisory lock so processes starting together do not race, and stamped
with a version in ``schema_version``; a version newer than this code knows is an error.

Lease times come from ``clock`` (the caller's wall clock), sent as parameters: the server's
``now()`` is never used, so every process must agree on the time, as with SQLite.

(Over 500 lines: the schema and its migrations, the group-committed write and the
listing are SQL that belongs to this one backend.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from resumable.errors import ConflictError, DuplicateEntryError, SetupError, Unavailable
from resumable.memory.base import Listed, Memory, Page, Stored
from resumable.memory.group import GroupCommit, Op
from resumable.memory.listing import check_query, page_of, select_counts, select_page, workflow_of
from resumable.uri import redact_url as _redact

try:
    import asyncpg
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresMemory needs asyncpg; install it with: pip install 'resumable[postgres]'"
    ) from error

__all__ = ["SCHEMA_VERSION", "PostgresMemory"]

_MIGRATIONS: tuple[str, ...] = (
    # Version 1. ``key`` sorts by code point (COLLATE "C"), as ``keys`` and ``due`` promise.
    """
    CREATE TABLE {s}.records (
        key text COLLATE "C" PRIMARY KEY,
        revision bigint NOT NULL,
        status text NOT NULL,
        header bytea NOT NULL,
        due double precision
    );
    CREATE INDEX records_by_status ON {s}.records (status, key);
    CREATE INDEX records_by_due ON {s}.records (due, key) WHERE due IS NOT NULL;
    CREATE TABLE {s}.journal (
        key text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        event_id text NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (key, seq),
        UNIQUE (key, event_id)
    );
    CREATE TABLE {s}.locks (
        key text COLLATE "C" PRIMARY KEY,
        owner text NOT NULL,
        expires double precision NOT NULL
    );
    """,
    # Version 2: what ``list`` reads, with one index per filter in page order (none on
    # ``updated``: every step changes it). ``_fill_listing`` fills rows already there.
    """
    ALTER TABLE {s}.records
        ADD COLUMN workflow text COLLATE "C",
        ADD COLUMN created double precision,
        ADD COLUMN updated double precision;
    CREATE INDEX records_listed ON {s}.records (created, key);
    CREATE INDEX records_listed_by_status ON {s}.records (status, created, key);
    CREATE INDEX records_listed_by_workflow ON {s}.records (workflow, created, key);
    CREATE INDEX records_listed_by_workflow_status
        ON {s}.records (workflow, status, created, key);
    """,
)
"""DDL that takes the schema from version ``i`` to ``i + 1``; never edit a released one."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The newest schema version this code knows how to use."""

_LISTING_VERSION = 2
"""The version that added ``list``'s columns, which ``_fill_listing`` fills for old rows."""

_LOCK_CLASS = 0x7273_6D62
"""First key of the advisory lock taken while creating tables (``rsmb``); the second is
derived from the schema name, so different schemas do not wait for each other."""

_CLOSE_GRACE = 10.0
"""Seconds ``close`` waits for connections still in use before it drops them."""


async def _keep_session(connection: Any) -> None:
    """Skip the reset query on release: nothing here changes session state, so it would only
    add a round trip to every read. asyncpg still rolls back an open transaction."""


class _Statements:
    """The SQL of every operation, with the schema name quoted in once."""

    def __init__(self, schema: str) -> None:
        s = _quote_identifier(schema)
        self.read = f"SELECT revision, status, header FROM {s}.records WHERE key = $1"
        self.read_journal = (
            "SELECT r.revision, r.status, r.header,"
            f" ARRAY(SELECT j.entry FROM {s}.journal j WHERE j.key = r.key ORDER BY j.seq)"
            f" FROM {s}.records r WHERE r.key = $1"
        )
        self.revision = f"SELECT revision FROM {s}.records WHERE key = $1"
        # A write in one statement: the compare-and-set, then the appends only if it matched.
        # It returns whether it matched and which event ids were new (``_write`` judges).
        self.create = _write_statement(
            s,
            f"INSERT INTO {s}.records (key, revision, status, header, due, workflow, created,"
            " updated) VALUES ($1, 1, $2, $3, $4, $7, $8, $8)"
            " ON CONFLICT (key) DO NOTHING RETURNING key",
            arrays=5,
        )
        self.update = _write_statement(
            s,
            f"UPDATE {s}.records SET revision = revision + 1, status = $3, header = $4, due = $5,"
            " updated = $8 WHERE key = $1 AND revision = $2 RETURNING key",
            arrays=6,
        )
        self.records = f"{s}.records"
        self.hold = f"SELECT FROM {s}.records WHERE key = $1 FOR UPDATE"
        self.clear = f"DELETE FROM {s}.journal WHERE key = $1"
        self.entry = f"SELECT entry FROM {s}.journal WHERE key = $1 AND event_id = $2"
        self.keys = f"SELECT key FROM {s}.records ORDER BY key"
        self.keys_by_status = f"SELECT key FROM {s}.records WHERE status = $1 ORDER BY key"
        self.due = (
            f"SELECT key, due FROM {s}.records WHERE due IS NOT NULL AND due <= $1"
            " ORDER BY due, key LIMIT $2"
        )
        # Take or renew in one statement: it changes a row only if the key is free, expired,
        # or already ``owner``'s.
        self.lock = (
            f"INSERT INTO {s}.locks AS held (key, owner, expires) VALUES ($1, $2, $3)"
            " ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires"
            " WHERE held.owner = excluded.owner OR held.expires <= $4 RETURNING true"
        )
        self.unlock = f"DELETE FROM {s}.locks WHERE key = $1 AND owner = $2 RETURNING expires"


def _write_statement(s: str, compare_and_set: str, arrays: int) -> str:
    """``compare_and_set`` (returning the key if it matched) plus the journal appends, whose
    event ids and entries are parameters ``arrays`` and ``arrays + 1``."""
    return (
        f"WITH written AS ({compare_and_set}), appended AS ("
        f"INSERT INTO {s}.journal (key, seq, event_id, entry)"
        " SELECT written.key, start.seq + e.ord - 1, e.event_id, e.entry FROM written,"
        f" (SELECT COALESCE(MAX(seq) + 1, 0) AS seq FROM {s}.journal WHERE key = $1) AS start,"
        f" unnest(${arrays}::text[], ${arrays + 1}::bytea[])"
        " WITH ORDINALITY AS e(event_id, entry, ord)"
        " ON CONFLICT (key, event_id) DO NOTHING RETURNING event_id)"
        " SELECT EXISTS (SELECT FROM written), ARRAY(SELECT event_id FROM appended)"
    )


class PostgresMemory(GroupCommit, Memory):
    """Records, journals and leases in tables of one PostgreSQL schema, through asyncpg.

    A write is committed (to the server's ``synchronous_commit`` promise) before it returns.
    Any number of processes may share the schema; leases use the wall clock ``clock`` for that
    reason. The constructor does no I/O: the pool of up to ``pool_size`` connections opens,
    and the tables are created, on first use. asyncio only.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "resumable",
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
    ) -> None:
        _check_schema_name(schema)
        if pool_size < 2:
            raise SetupError(
                f"pool_size must be at least 2, not {pool_size}: one connection writes batches "
                "while the others serve reads and leases"
            )
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._clock = clock
        self._sql = _Statements(schema)
        self._pool: Any = None  # asyncpg.Pool once connected
        self._connecting = asyncio.Lock()
        self._closed = False  # no new calls
        self._shut = False  # the pool is closed for good

    @classmethod
    def from_url(cls, url: str) -> PostgresMemory:
        """A memory for ``postgresql://user:password@host:port/database?schema=name``.

        ``postgres://`` works too. ``schema`` is optional (default ``resumable``); every other
        query parameter goes to asyncpg unchanged.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise SetupError(
                f"{_redact(url)!r} is not a PostgreSQL URL: write "
                "postgresql://user:password@host:port/database?schema=name"
            )
        kept: list[str] = []
        schemas: list[str] = []
        for pair in parts.query.split("&") if parts.query else []:
            name, _, value = pair.partition("=")
            if unquote_plus(name) == "schema":
                schemas.append(unquote_plus(value))
            else:
                kept.append(pair)
        if len(schemas) > 1:
            raise SetupError(f"{_redact(url)!r} names the schema {len(schemas)} times; keep one")
        dsn = urlunsplit(parts._replace(query="&".join(kept)))
        return cls(dsn, schema=schemas[0]) if schemas else cls(dsn)

    def __repr__(self) -> str:
        return f"PostgresMemory({_redact(self.dsn)!r}, schema={self.schema!r})"

    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        with self._failures():
            pool = await self._ready()
            row = await pool.fetchrow(self._sql.read_journal if journal else self._sql.read, key)
        if row is None:
            return None
        entries = list(row[3]) if journal else None
        return Stored(revision=row[0], status=row[1], header=row[2], journal=entries)

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
        sql = self._sql
        workflow = workflow_of(key) if revision == 0 else None
        now = self._clock()
        with self._failures():
            written: int = await self._submit(
                lambda connection: _write(
                    connection,
                    sql,
                    key,
                    revision,
                    status,
                    header,
                    entries,
                    due,
                    reset,
                    workflow,
                    now,
                ),
                key=key,
            )
        return written

    async def entry(self, key: str, event_id: str) -> bytes | None:
        with self._failures():
            pool = await self._ready()
            return cast("bytes | None", await pool.fetchval(self._sql.entry, key, event_id))

    async def keys(self, status: str | None = None) -> list[str]:
        with self._failures():
            pool = await self._ready()
            if status is None:
                rows = await pool.fetch(self._sql.keys)
            else:
                rows = await pool.fetch(self._sql.keys_by_status, status)
        return [row[0] for row in rows]

    async def due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        with self._failures():
            pool = await self._ready()
            rows = await pool.fetch(self._sql.due, now, limit)
        return [(row[0], row[1]) for row in rows]

    async def lock(self, key: str, owner: str, ttl: float) -> bool:
        now = self._clock()
        with self._failures():
            pool = await self._ready()
            return await pool.fetchval(self._sql.lock, key, owner, now + ttl, now) is not None

    async def unlock(self, key: str, owner: str) -> bool:
        now = self._clock()
        with self._failures():
            pool = await self._ready()
            expires = await pool.fetchval(self._sql.unlock, key, owner)
        return expires is not None and bool(expires > now)

    async def close(self) -> None:
        """Let queued writes finish, then close the pool. Safe to call twice.

        A connection still in use after ``_CLOSE_GRACE`` seconds (a call stuck on a server
        that stopped answering) is dropped rather than waited for: closing always ends."""
        self._closed = True
        await self._drain()
        async with self._connecting:
            pool, self._pool, self._shut = self._pool, None, True
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_GRACE)
            except TimeoutError:
                pool.terminate()

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Turn the errors of a server that is down, restarting or failing over into
        ``Unavailable``; anything else (a bug, bad input) passes unchanged."""
        try:
            yield
        except Unavailable:
            raise
        except Exception as error:
            if not _is_outage(error):
                raise
            where = _redact(self.dsn)
            raise Unavailable(
                f"PostgreSQL at {where} is unavailable ({type(error).__name__}: {error}); "
                "the call changed nothing or its outcome is unknown, and is safe to retry "
                "once the server is back",
                server=f"PostgreSQL at {where}",
            ) from error

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new PostgresMemory to go on")

    async def _ready(self) -> Any:
        """The pool, for a new call: refused once ``close`` began."""
        self._check_open()
        return await self._connect()

    async def _connect(self) -> Any:
        """The pool, opened (and the schema brought up to date) on first use."""
        if self._pool is not None:
            return self._pool
        async with self._connecting:
            if self._pool is None:
                if self._shut:
                    raise RuntimeError(f"{self!r} is closed; create a new PostgresMemory")
                self._pool = await self._open()
        return self._pool

    async def _open(self) -> Any:
        where = _redact(self.dsn)
        try:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, reset=_keep_session
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            if _is_outage(error):
                raise Unavailable(
                    f"cannot connect to PostgreSQL at {where}: {error}. Check that the server "
                    "runs there and the URL's host and port are right (a worker waits for it "
                    "and goes on once it is back)",
                    server=f"PostgreSQL at {where}",
                ) from error
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {where}: {error}. Check that the server runs "
                "there and that the user, password and database in the URL are right"
            ) from error
        try:
            async with pool.acquire() as connection:
                await _migrate(connection, self.schema, where, self._clock())
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _execute(self, batch: list[Op]) -> None:
        """asyncpg is asynchronous: the batch runs on the event loop, in the leader's task."""
        await self._run_batch(batch)

    async def _run_batch(self, batch: list[Op]) -> None:
        """Run ``batch`` in one transaction, each op in its own savepoint, and resolve it."""
        try:
            pool = await self._connect()
        except Exception as error:
            self._fail(batch, error)
            return
        # Key order, the same in every process, so batches running at once lock records in one
        # order and cannot deadlock. The sort is stable: writes to one key keep their order.
        batch = sorted(batch, key=lambda op: op.key)
        outcomes: list[tuple[Any, Exception | None]] = []
        try:
            async with pool.acquire() as connection:
                try:
                    # One round trip between operations: release one savepoint, open the next.
                    # Read committed whatever the server's default: the compare-and-set relies
                    # on an UPDATE re-checking its WHERE after waiting for a row lock.
                    await connection.execute("BEGIN ISOLATION LEVEL READ COMMITTED; SAVEPOINT op")
                    for index, op in enumerate(batch):
                        if index:
                            await connection.execute("RELEASE SAVEPOINT op; SAVEPOINT op")
                        try:
                            outcomes.append((await op.run(connection), None))
                        except Exception as error:
                            await connection.execute("ROLLBACK TO SAVEPOINT op")
                            outcomes.append((None, error))
                    await connection.execute("COMMIT")
                except BaseException:
                    # Keep the first error: a connection the server dropped is detached from
                    # its proxy, which then refuses even is_closed().
                    with contextlib.suppress(Exception):
                        if not connection.is_closed() and connection.is_in_transaction():
                            await connection.execute("ROLLBACK")
                    raise
        except Exception as error:
            self._fail(batch, error)
            return
        self._settle(batch, outcomes)

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
        sql, params = select_page(self._sql.records, query, lambda n: f"${n}")
        with self._failures():
            pool = await self._ready()
            rows = await pool.fetch(sql, *params)
        return page_of([Listed(*row) for row in rows], query.limit)

    async def count(self, *, workflow: str | None = None) -> dict[str, int]:
        query = check_query(workflow, None, 1, None)
        sql, params = select_counts(self._sql.records, query, "$1")
        with self._failures():
            pool = await self._ready()
            rows = await pool.fetch(sql, *params)
        return {row[0]: row[1] for row in rows}


async def _write(
    connection: Any,
    sql: _Statements,
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
    """One compare-and-set write, inside the batch's savepoint: raising undoes it."""
    if reset:  # lock the record before its journal rows, as every write does; undone on failure
        await connection.execute(sql.hold, key)
        await connection.execute(sql.clear, key)
    ids = [event_id for event_id, _ in entries]
    blobs = [entry for _, entry in entries]
    if revision == 0:
        row = await connection.fetchrow(
            sql.create, key, status, header, due, ids, blobs, workflow, now
        )
    else:
        row = await connection.fetchrow(
            sql.update, key, revision, status, header, due, ids, blobs, now
        )
    matched, added = row
    if not matched:
        raise ConflictError(key, revision, await connection.fetchval(sql.revision, key))
    if len(added) != len(ids):  # some event id was journaled already, or repeats in ``ids``
        new = set(added)
        seen: set[str] = set()
        for event_id in ids:
            if event_id in seen or event_id not in new:
                raise DuplicateEntryError(key, event_id)
            seen.add(event_id)
    return revision + 1


async def _migrate(connection: Any, schema: str, where: str, now: float) -> None:
    """Bring ``schema`` to ``SCHEMA_VERSION``: nothing to do (and no lock) if it is there.
    ``now`` stands for the unknown write times of records older than the listing."""
    version = await _installed_version(connection, schema)
    if version == SCHEMA_VERSION:
        return
    _check_known(version, schema, where)
    s = _quote_identifier(schema)
    try:
        async with connection.transaction():
            # Serialises processes creating the same schema; released by the commit.
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, _lock_key(schema)
            )
            version = await _installed_version(connection, schema)  # someone may have won
            _check_known(version, schema, where)
            if version is None:
                await connection.execute(
                    f"CREATE SCHEMA IF NOT EXISTS {s};"
                    f" CREATE TABLE {s}.schema_version (version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            for step in range(version or 0, SCHEMA_VERSION):
                await connection.execute(_MIGRATIONS[step].format(s=s))
                if step + 1 == _LISTING_VERSION:  # its rows need Python: SQL cannot read subjects
                    await _fill_listing(connection, s, now)
                await connection.execute(
                    f"INSERT INTO {s}.schema_version (version) VALUES ($1)", step + 1
                )
    except asyncpg.PostgresError as error:
        raise RuntimeError(
            f"cannot create the resumable tables in schema {schema!r} at {where}: {error}. "
            "Connect once as a user allowed to create them, or fix the schema by hand"
        ) from error


async def _fill_listing(connection: Any, s: str, now: float) -> None:
    """Version 2 for the records already there: each one's workflow from its key (Python
    decodes subjects, SQL cannot), and ``now`` as its creation and update times."""
    keys = [row[0] for row in await connection.fetch(f"SELECT key FROM {s}.records")]
    if keys:
        await connection.execute(
            f"UPDATE {s}.records AS r SET workflow = f.workflow, created = $3, updated = $3"
            " FROM unnest($1::text[], $2::text[]) AS f(key, workflow) WHERE r.key = f.key",
            keys,
            [workflow_of(key) for key in keys],
            now,
        )


async def _installed_version(connection: Any, schema: str) -> int | None:
    """The schema's version, or None if it has no ``schema_version`` table yet.

    Asks ``pg_tables`` rather than ``to_regclass``: a catalog query reads the statement's
    snapshot, where ``to_regclass`` may answer from a cache that predates the advisory lock.
    """
    exists = await connection.fetchval(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_tables"
        " WHERE schemaname = $1 AND tablename = 'schema_version')",
        schema,
    )
    if not exists:
        return None
    table = f"{_quote_identifier(schema)}.schema_version"
    version = await connection.fetchval(f"SELECT max(version) FROM {table}")
    return None if version is None else int(version)


_OUTAGE_STATES: Final = frozenset(
    {
        "57P01",  # admin_shutdown: a fast or immediate shutdown ended the session
        "57P02",  # crash_shutdown: another backend crashed, the server restarts
        "57P03",  # cannot_connect_now: starting up, shutting down or in recovery
        "53300",  # too_many_connections
        "25006",  # read_only_sql_transaction: a failover left us on a standby
    }
)
"""SQLSTATEs of a server that cannot serve now but will (class 08 is handled as a class)."""


_LOST_CONNECTION: Final = (
    "connection is closed",
    "connection was closed",
    "released back to the pool",
    "another operation",
)
"""How asyncpg's interface errors read when the server dropped the connection."""


def _is_outage(error: BaseException) -> bool:
    """True for an error of the server's availability, not of the call: a refused, reset or
    lost connection, a timeout, a shutdown or restart, a failover, no free connection."""
    if isinstance(error, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True  # refused, reset, unreachable, timed out; SQLSTATE class 08
    if isinstance(error, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        # The client's view of a connection the server dropped mid-call: closed, detached
        # from its pool proxy, or left with an operation that will never finish.
        text = str(error)
        return any(sign in text for sign in _LOST_CONNECTION)
    state = getattr(error, "sqlstate", None)
    return isinstance(state, str) and (state.startswith("08") or state in _OUTAGE_STATES)


def _check_known(version: int | None, schema: str, where: str) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise RuntimeError(
            f"schema {schema!r} at {where} is at version {version}, but this resumable knows "
            f"versions up to {SCHEMA_VERSION} only: a newer release created it. Upgrade "
            "resumable, or use another schema"
        )


def _check_schema_name(schema: str) -> None:
    if not schema or "\x00" in schema or len(schema.encode()) > 63:
        raise SetupError(
            f"schema name {schema!r} is unusable: PostgreSQL takes 1 to 63 bytes without NUL"
        )


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lock_key(schema: str) -> int:
    """A signed 32-bit key for ``schema``, stable across processes (unlike ``hash``)."""
    return zlib.crc32(schema.encode()) - (1 << 31)
