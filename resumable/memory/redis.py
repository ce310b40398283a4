"""Memory in Redis: records shared by every process that reaches one server.

Every key lives under ``{prefix}:``. Per record ``k``:

- ``{prefix}:r:{k}``: a hash with ``revision``, ``status``, ``header``, ``due`` (absent when
  nothing is due) and ``writer`` (the token of the last write, so a retried write is
  recognised);
- ``{prefix}:j:{k}``: the journal, a list only ever appended to (RPUSH);
- ``{prefix}:e:{k}``: a hash from event id to journal entry, for ``entry``;
- ``{prefix}:l:{k}``: the lease, a hash with ``owner`` and ``expires``.

And for all records: ``{prefix}:keys`` (a sorted set of every key, all at score 0, so it is
in byte order, which for UTF-8 is ``str`` order), ``{prefix}:s:{status}`` (the keys whose
status is ``status``) and ``{prefix}:due`` (keys scored by due time).

For ``list``, the record hash also holds ``since`` (its creation time, as 16 hex digits that
sort as the times do), ``updated`` and ``workflow``, and sorted sets at score 0 hold members
``since + key``, so they sort by ``(created, key)`` and a page is one ``ZRANGE BYLEX REV``:
``{prefix}:ls`` (every record), ``{prefix}:ls:s:{status}``, ``{prefix}:ls:w:{workflow}`` and
``{prefix}:ls:ws:{workflow}:{status}``. The write script moves a record between the status
sets when its status changes. A record written by a version without the listing enters it
at its next write.

``write``, ``lock`` and ``unlock`` are Lua scripts, so each runs atomically on the server,
checking before it changes anything. A write is as durable as the server is configured to
make it: run Redis with ``appendonly yes`` and ``appendfsync always`` for a write to be on
disk when ``write`` returns. The scripts start with a Redis 7 shebang, so the server must be
Redis 7 or later; they name keys they compute (the status sets), so it must be a standalone
server (or a single-shard proxy), not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis.asyncio
    import redis.exceptions
except ModuleNotFoundError as missing:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "RedisMemory needs the redis package (redis-py): pip install 'resumable[redis]'",
        name=missing.name,
    ) from missing

from resumable.errors import ConflictError, DuplicateEntryError, SetupError, Unavailable
from resumable.memory.base import Listed, Memory, Page, Stored
from resumable.memory.listing import STATUSES, check_query, page_of, workflow_of
from resumable.uri import redact_url as _redact

__all__ = ["RedisMemory"]

log = logging.getLogger("resumable.memory.redis")

_MAX_CONNECTIONS = 50
_POOL_TIMEOUT = 20.0
"""Connections per memory, and seconds a call waits for one when all are busy: redis-py's
defaults for a blocking pool. ``max_connections=`` and ``timeout=`` in the URL override them."""

_CONNECT_TIMEOUT = 5.0
_SOCKET_TIMEOUT = 30.0
"""Seconds to connect, and to wait for a reply: a server that hangs (stopped, a network
black hole) then fails the call as ``Unavailable`` instead of blocking it for ever.
``socket_connect_timeout=`` and ``socket_timeout=`` in the URL override them."""

_LEASE_GC_MARGIN_MS = 1000
"""How much longer than its ttl Redis keeps a lease key. The lease's own ``expires`` (by the
injected clock) decides who holds it; the key's expiry only collects abandoned leases."""

# Checks everything first, then changes: an error reply leaves the record as it was. The
# shebang makes Redis refuse the whole script up front when out of memory, not midway.
_WRITE = """#!lua
local record, journal, index, all, due_set = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local key, expected, status, header = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local due, reset, statuses, token = ARGV[5], ARGV[6] == '1', ARGV[7], ARGV[8]
local listed, since, updated, workflow = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local stored = redis.call('HMGET', record, 'revision', 'status', 'writer', 'since', 'workflow')
local found = tonumber(stored[1]) or 0
if found ~= expected then
  if found == expected + 1 and stored[3] == token then
    return {1, found}  -- this very write, retried after its reply was lost: it landed
  end
  return {0, found}
end
local seen = {}
for i = 13, #ARGV, 2 do
  local id = ARGV[i]
  if seen[id] or (not reset and redis.call('HEXISTS', index, id) == 1) then
    return {2, id}
  end
  seen[id] = true
end
if stored[2] and stored[2] ~= status then
  redis.call('ZREM', statuses .. stored[2], key)
end
redis.call('ZADD', statuses .. status, 0, key)
redis.call('ZADD', all, 0, key)
redis.call('HSET', record, 'revision', expected + 1, 'status', status, 'header', header,
  'writer', token, 'updated', updated)
-- The listing: members are since .. key, all at score 0, so they sort by (created, key).
if not stored[4] then  -- a new record (or one written before the listing existed)
  local member = since .. key
  redis.call('HSET', record, 'since', since)
  redis.call('ZADD', listed, 0, member)
  redis.call('ZADD', listed .. ':s:' .. status, 0, member)
  if workflow ~= '' then
    redis.call('HSET', record, 'workflow', workflow)
    redis.call('ZADD', listed .. ':w:' .. workflow, 0, member)
    redis.call('ZADD', listed .. ':ws:' .. workflow .. ':' .. status, 0, member)
  end
elseif stored[2] ~= status then
  local member = stored[4] .. key
  redis.call('ZREM', listed .. ':s:' .. stored[2], member)
  redis.call('ZADD', listed .. ':s:' .. status, 0, member)
  if stored[5] then
    redis.call('ZREM', listed .. ':ws:' .. stored[5] .. ':' .. stored[2], member)
    redis.call('ZADD', listed .. ':ws:' .. stored[5] .. ':' .. status, 0, member)
  end
end
if due == '' then
  redis.call('HDEL', record, 'due')
  redis.call('ZREM', due_set, key)
else
  redis.call('HSET', record, 'due', due)
  redis.call('ZADD', due_set, due, key)
end
if reset then
  redis.call('DEL', journal, index)
end
-- In chunks: unpack() of thousands of values overflows Lua's C stack.
local entries, indexed = {}, {}
for i = 13, #ARGV, 2 do
  entries[#entries + 1] = ARGV[i + 1]
  indexed[#indexed + 1] = ARGV[i]
  indexed[#indexed + 1] = ARGV[i + 1]
  if #entries == 1000 or i + 2 > #ARGV then
    redis.call('RPUSH', journal, unpack(entries))
    redis.call('HSET', index, unpack(indexed))
    entries, indexed = {}, {}
  end
end
return {1, expected + 1}
"""

# One page: the members below the cursor, newest first, each with its record's fields.
_LIST = """#!lua flags=no-writes
local members = redis.call('ZRANGE', KEYS[1], ARGV[1], '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[2])
local page = {}
for _, member in ipairs(members) do
  local fields = redis.call('HMGET', ARGV[3] .. string.sub(member, 17), 'workflow', 'status',
    'updated')
  page[#page + 1] = member
  page[#page + 1] = fields[1]
  page[#page + 1] = fields[2]
  page[#page + 1] = fields[3]
end
return page
"""

_LOCK = """#!lua
local held = redis.call('HMGET', KEYS[1], 'owner', 'expires')
if held[1] and held[1] ~= ARGV[1] and tonumber(held[2]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires', ARGV[3])
if ARGV[4] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

_UNLOCK = """#!lua
local held = redis.call('HMGET', KEYS[1], 'owner', 'expires')
if held[1] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if tonumber(held[2]) > tonumber(ARGV[2]) then
  return 1
end
return 0
"""

_OUTAGE_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
"""Error replies of a server that will serve again: a long script, a dataset loading, a
replica without its primary, a failover under way."""

_OK, _CONFLICT, _DUPLICATE = 1, 0, 2
"""The first element of the write script's reply."""


class RedisMemory(Memory):
    """Records, journals and leases in a Redis server, under keys starting ``{prefix}:``.

    Several processes may share one server and prefix. Leases compare ``expires`` times from
    ``clock``, so the processes sharing a prefix need clocks that agree. The client connects
    on first use; it runs on asyncio (anyio's asyncio backend), not trio.

    On first use it checks that the server keeps its data on disk (``appendonly yes``, or
    RDB snapshots with ``save``, which a restart can lose the last minutes of), and refuses
    with a ``SetupError`` a server that keeps nothing: a restart would lose every workflow.
    ``allow_volatile=True`` skips the check, for tests and throw-away data.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "resumable",
        clock: Callable[[], float] = time.time,
        allow_volatile: bool = False,
    ) -> None:
        if not prefix:
            raise SetupError("RedisMemory needs a non-empty prefix: its keys live under it")
        self.prefix = prefix
        self._where = _redact(url)
        self._clock = clock
        try:
            # Blocking: with every connection busy, callers queue for one instead of failing.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url,
                decode_responses=False,
                max_connections=_MAX_CONNECTIONS,
                timeout=_POOL_TIMEOUT,
                socket_connect_timeout=_CONNECT_TIMEOUT,
                socket_timeout=_SOCKET_TIMEOUT,
            )
        except ValueError as error:
            raise SetupError(
                f"invalid Redis URL {self._where!r}: {error}; write it as "
                "redis://[[user]:password@]host[:port][/db] (rediss:// for TLS)"
            ) from error
        self._pool = pool
        self._client = redis.asyncio.Redis.from_pool(pool)  # closes the pool with it
        self._write_script = self._client.register_script(_WRITE)
        self._lock_script = self._client.register_script(_LOCK)
        self._unlock_script = self._client.register_script(_UNLOCK)
        self._list_script = self._client.register_script(_LIST)
        self._closed = False
        self.allow_volatile = allow_volatile
        self._persistence_checked = allow_volatile

    @classmethod
    def from_url(cls, url: str) -> RedisMemory:
        """A memory for ``url``, whose optional ``prefix=`` query parameter sets the prefix
        and ``allow_volatile=1`` (or ``true``, ``yes``) skips the persistence check; the
        other parameters go to redis-py (``socket_timeout=``, ``max_connections=``...)."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = ("prefix", "allow_volatile")
        prefixes = [value for name, value in query if name == "prefix"]
        volatile = [value for name, value in query if name == "allow_volatile"]
        rest = urlencode([(name, value) for name, value in query if name not in ours])
        plain = urlunsplit(parts._replace(query=rest))
        allow = _flag(volatile[-1], "allow_volatile", url) if volatile else False
        if not prefixes:
            return cls(plain, allow_volatile=allow)
        return cls(plain, prefix=prefixes[-1], allow_volatile=allow)

    def __repr__(self) -> str:
        return f"RedisMemory({self._where!r}, prefix={self.prefix!r})"

    async def read(self, key: str, *, journal: bool = False) -> Stored | None:
        await self._check_persistence()
        with self._failures():
            if not journal:
                fields = await self._client.hmget(
                    self._record(key), ["revision", "status", "header"]
                )
                entries = None
            else:  # one transaction, so the header and the journal are of the same revision
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.hmget(self._record(key), ["revision", "status", "header"])
                    pipe.lrange(self._journal(key), 0, -1)
                    fields, entries = await pipe.execute()
        revision, status, header = fields
        if revision is None:
            return None
        return Stored(
            revision=int(revision),
            status=_text(status),
            header=_bytes(header),
            journal=None if entries is None else [_bytes(entry) for entry in entries],
        )

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
        await self._check_persistence()
        if due is not None and math.isnan(due):
            raise ValueError(f"due time of {key!r} is NaN; pass seconds since the epoch or None")
        now = float(self._clock())
        args: list[str | int | bytes] = [
            key,
            revision,
            status,
            bytes(header),
            "" if due is None else repr(float(due)),
            "1" if reset else "0",
            f"{self.prefix}:s:",
            os.urandom(16).hex(),  # this write's token: a retry of it is not a conflict
            f"{self.prefix}:ls",
            _since(now),
            repr(now),
            # Used at a record's first write only (or the first since the listing existed).
            workflow_of(key) or "",
        ]
        for event_id, entry in append:
            args += [event_id, bytes(entry)]
        keys = [
            self._record(key),
            self._journal(key),
            self._index(key),
            f"{self.prefix}:keys",
            f"{self.prefix}:due",
        ]
        with self._failures():
            code, value = await self._write_script(keys=keys, args=args)
        if code == _OK:
            return int(value)
        if code == _CONFLICT:
            raise ConflictError(key, revision, int(value) or None)
        raise DuplicateEntryError(key, _text(value))

    async def entry(self, key: str, event_id: str) -> bytes | None:
        await self._check_persistence()
        with self._failures():
            found = await self._client.hget(self._index(key), event_id)
        return None if found is None else _bytes(found)

    async def keys(self, status: str | None = None) -> list[str]:
        await self._check_persistence()
        name = f"{self.prefix}:keys" if status is None else f"{self.prefix}:s:{status}"
        with self._failures():
            found = await self._client.zrange(name, 0, -1)
        return [_text(member) for member in found]

    async def due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        await self._check_persistence()
        if limit <= 0:  # Redis reads a count of 0 or less as "no limit"
            return []
        with self._failures():
            found = await self._client.zrangebyscore(
                f"{self.prefix}:due",
                "-inf",
                "+inf" if now == math.inf else repr(float(now)),
                start=0,
                num=limit,
                withscores=True,
            )
        return [(_text(member), float(score)) for member, score in cast(list[Any], found)]

    async def lock(self, key: str, owner: str, ttl: float) -> bool:
        await self._check_persistence()
        if math.isnan(ttl):
            raise ValueError(f"lease ttl for {key!r} is NaN; pass a number of seconds")
        now = float(self._clock())
        gc_ms = "" if ttl == math.inf else str(max(0, math.ceil(ttl * 1000)) + _LEASE_GC_MARGIN_MS)
        with self._failures():
            taken = await self._lock_script(
                keys=[self._lease(key)], args=[owner, repr(now), repr(now + ttl), gc_ms]
            )
        return bool(taken)

    async def unlock(self, key: str, owner: str) -> bool:
        await self._check_persistence()
        now = float(self._clock())
        with self._failures():
            released = await self._unlock_script(keys=[self._lease(key)], args=[owner, repr(now)])
        return bool(released)

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        await self._check_persistence()
        query = check_query(workflow, status, limit, cursor)
        name = _listing_set(f"{self.prefix}:ls", query.workflow, query.status)
        top = "+" if query.after is None else f"({_since(query.after[0])}{query.after[1]}"
        with self._failures():
            flat = await self._list_script(
                keys=[name], args=[top, query.limit + 1, f"{self.prefix}:r:"]
            )
        rows = []
        for index in range(0, len(flat), 4):  # member, workflow, status, updated
            member = _text(flat[index])
            stored = None if flat[index + 1] is None else _text(flat[index + 1])
            created = _created(member[:16])
            updated = float(_text(flat[index + 3]))
            rows.append(Listed(member[16:], stored, _text(flat[index + 2]), created, updated))
        return page_of(rows, query.limit)

    async def count(self, *, workflow: str | None = None) -> dict[str, int]:
        await self._check_persistence()
        query = check_query(workflow, None, 1, None)
        listed = f"{self.prefix}:ls"
        with self._failures():
            async with self._client.pipeline(transaction=False) as pipe:
                for status in STATUSES:
                    pipe.zcard(_listing_set(listed, query.workflow, status))
                numbers = await pipe.execute()
        return {status: int(n) for status, n in zip(STATUSES, numbers, strict=True) if n}

    async def close(self) -> None:
        """Close the client and its connection pool. Safe to call twice."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    async def _check_persistence(self) -> None:
        """Refuse a server that keeps nothing on disk (once; ``allow_volatile`` skips it)."""
        if self._persistence_checked:
            return
        with self._failures():
            try:
                aof = await self._client.config_get("appendonly")
                rdb = await self._client.config_get("save")
            except redis.exceptions.ResponseError as error:  # renamed, disabled, not allowed
                raise SetupError(
                    f"cannot check that Redis at {self._where} keeps its data on disk: CONFIG "
                    f"GET was refused ({error}). Allow this user CONFIG GET appendonly and "
                    "save, or, once you have made sure the server persists (appendonly yes), "
                    "pass allow_volatile=True (?allow_volatile=1 in the URL) to skip the check"
                ) from error
        appendonly = _setting(aof, "appendonly")
        save = _setting(rdb, "save").strip()
        if appendonly == "yes":
            self._persistence_checked = True
            return
        if save:
            log.warning(
                "Redis at %s saves RDB snapshots only (save %r, appendonly no): a restart "
                "loses the writes since the last snapshot; run it with appendonly yes to keep "
                "every step",
                self._where,
                save,
            )
            self._persistence_checked = True
            return
        raise SetupError(
            f"Redis at {self._where} keeps nothing on disk (appendonly no, save ''): a restart "
            "would lose every workflow stored there. Turn persistence on (redis-server "
            "--appendonly yes, or appendonly yes in redis.conf; appendfsync always for every "
            "step on disk), or pass allow_volatile=True (?allow_volatile=1 in the URL) for "
            "tests and data you can lose"
        )

    def _record(self, key: str) -> str:
        return f"{self.prefix}:r:{key}"

    def _journal(self, key: str) -> str:
        return f"{self.prefix}:j:{key}"

    def _index(self, key: str) -> str:
        return f"{self.prefix}:e:{key}"

    def _lease(self, key: str) -> str:
        return f"{self.prefix}:l:{key}"

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Refuse calls after ``close``, and turn redis-py's errors into ones that say what
        went wrong where, and what to do about it."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; open a new RedisMemory to use the server")
        try:
            yield
        except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as error:
            raise PermissionError(
                f"Redis at {self._where} refused access: {error}; check the user and password "
                "in the URL and the user's ACL (it needs hashes, lists, sorted sets and EVALSHA)"
            ) from error
        except redis.exceptions.TimeoutError as error:
            raise Unavailable(
                f"Redis at {self._where} did not answer in time: {error}; check the server is "
                "not overloaded, or raise socket_timeout= in the URL",
                server=f"Redis at {self._where}",
            ) from error
        except redis.exceptions.ConnectionError as error:
            if "No connection available" in str(error):
                raise Unavailable(
                    f"all {self._pool.max_connections} connections to Redis at {self._where} "
                    f"stayed busy for {self._pool.timeout}s: run fewer concurrent operations, "
                    "or raise max_connections= or timeout= in the URL",
                    server=f"Redis at {self._where}",
                ) from error
            raise Unavailable(  # BusyLoadingError (LOADING) is a ConnectionError too
                f"cannot reach Redis at {self._where}: {error}; check the server runs there "
                "(redis-server) and the URL's host, port and scheme (rediss:// for TLS)",
                server=f"Redis at {self._where}",
            ) from error
        except redis.exceptions.ReadOnlyError as error:
            raise Unavailable(
                f"Redis at {self._where} is a read-only replica: {error}; after a failover "
                "this passes once the URL leads to the new primary, else point it there",
                server=f"Redis at {self._where}",
            ) from error
        except redis.exceptions.ClusterDownError as error:  # MASTERDOWN: a replica, cut off
            raise Unavailable(
                f"Redis at {self._where} cannot serve now: {error}; retried until it can",
                server=f"Redis at {self._where}",
            ) from error
        except redis.exceptions.OutOfMemoryError as error:
            raise RuntimeError(
                f"Redis at {self._where} is out of memory and refused the write, which "
                f"changed nothing: {error}; raise maxmemory or free space"
            ) from error
        except redis.exceptions.ResponseError as error:
            if str(error).startswith(_OUTAGE_REPLIES) or isinstance(
                error, redis.exceptions.TryAgainError
            ):
                raise Unavailable(
                    f"Redis at {self._where} cannot serve now: {error}; retried until it can",
                    server=f"Redis at {self._where}",
                ) from error
            if "WRONGTYPE" not in str(error):
                raise
            raise RuntimeError(
                f"a key under {self.prefix!r}: on Redis at {self._where} does not have the "
                f"type RedisMemory gives it ({error}); another program uses this prefix: "
                "give RedisMemory a prefix of its own"
            ) from error


def _setting(reply: Any, name: str) -> str:
    """One value of a CONFIG GET reply ("" if absent), whatever the client decoded."""
    for key, value in dict(reply or {}).items():
        if (key.decode() if isinstance(key, bytes) else str(key)) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def _flag(value: str, name: str, url: str) -> bool:
    """A yes/no URL parameter."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise SetupError(f"{name} in {_redact(url)!r} must be 1 or 0 (true or false), got {value!r}")


def _listing_set(listed: str, workflow: str | None, status: str | None) -> str:
    """The sorted set ``list`` reads for a filter, named as the write script names it."""
    if workflow is None:
        return listed if status is None else f"{listed}:s:{status}"
    return f"{listed}:w:{workflow}" if status is None else f"{listed}:ws:{workflow}:{status}"


def _since(created: float) -> str:
    """``created`` as 16 hex digits that sort as the numbers do (IEEE 754 bits, the sign
    flipped): a listing member starts with it, so members sort by ``(created, key)``."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", created))
    return f"{bits ^ _ALL_BITS if bits >> 63 else bits | _SIGN_BIT:016x}"


def _created(since: str) -> float:
    """The time ``_since`` encoded."""
    bits = int(since, 16)
    (created,) = struct.unpack(
        ">d", struct.pack(">Q", bits ^ _SIGN_BIT if bits >> 63 else bits ^ _ALL_BITS)
    )
    return float(created)


_SIGN_BIT, _ALL_BITS = 1 << 63, (1 << 64) - 1


def _bytes(value: object) -> bytes:
    """A value as Redis returned it: bytes, since the client never decodes."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes from Redis, got {type(value).__name__}: {value!r}")
    return value


def _text(value: object) -> str:
    """A key, status or event id as Redis returned it, as the ``str`` it was written from."""
    return _bytes(value).decode()
