"""A broker on Redis Streams: one stream per topic, one consumer group shared by workers.

Keys, under ``prefix`` (``resumable`` by default):

- ``{prefix}:topic:{topic}``: the topic's stream; each entry holds the event's JSON
  (``resumable.events.to_json``) in its ``event`` field. ``receive`` reads new entries with
  XREADGROUP in the consumer group ``group`` (created on first receive, from the start of
  the stream); ``ack`` is XACK and XDEL, so the stream holds only unsettled events.
- ``{prefix}:delay:{topic}``: a sorted set of entry ids nacked with a delay, scored by the
  time (``clock``) they may be delivered again. The entry stays pending in the group
  meanwhile, so a crash loses nothing; ``receive`` claims the due ones with XCLAIM.
- ``{prefix}:dead:{topic}``: a stream of dead letters (``event``, ``reason``, ``attempts``).
- ``{prefix}:seen:{topic}:{event id}``: set by ``publish`` with a time to live of
  ``duplicate_window``; while it lives, a re-publish of that event is dropped (one script
  sets it and adds the entry), like JetStream's duplicate window.

A delivery not settled within ``ack_wait`` (its consumer died, or is too slow) is taken
over by the next ``receive`` of any consumer with XAUTOCLAIM. ``Delivery.attempt`` is the
entry's delivery count in the group's pending list. Every step that must not interleave
with another consumer's (claiming, nacking, dead-lettering) is one Lua script.

Acks delete the entry from the stream (XDEL): one consumer group per topic and prefix.
Give each group of workers that must see every event its own ``prefix``. Needs Redis 6.2
or later (XAUTOCLAIM); the keys of a topic are not hash-tagged, so not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

try:
    import redis.asyncio as aioredis
    import redis.exceptions
    from redis.commands.core import AsyncScript
    from redis.exceptions import ResponseError
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"RedisBroker needs the redis package (redis-py) ({error}); install it with: "
        "pip install 'resumable[redis]'"
    ) from error

from resumable.brokers.base import Broker, DeadLetter, Delivery
from resumable.errors import SetupError, Unavailable
from resumable.events import Event, EventError, from_json, to_json
from resumable.uri import redact_url

__all__ = ["RedisBroker", "RedisDelivery"]

log = logging.getLogger("resumable.broker.redis")

# KEYS: stream, seen. ARGV: event JSON, duplicate window (ms; 0: no deduplication).
# Add the entry unless the same event was published within the window.
_PUBLISH = """
local window = tonumber(ARGV[2])
if window > 0 and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', window) then return 0 end
redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
return 1
"""

# KEYS: stream, delays. ARGV: group, consumer, now, limit.
# The nacked entries whose delay is over: taken off the delay set and claimed, atomically,
# so two consumers never both deliver one.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
if #due == 0 then return {} end
redis.call('ZREM', KEYS[2], unpack(due))
local out = {}
for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(due))) do
  if type(entry) == 'table' then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    table.insert(out, {entry[1], entry[2], pending[1][4]})
  end
end
return out
"""

# KEYS: stream, delays. ARGV: group, consumer, min_idle_ms, limit.
# Entries pending longer than ack_wait, except those waiting out a nack's delay (their idle
# time is reset by the JUSTID claim; the delay set delivers them). Only the ones delivered
# are claimed again without JUSTID, so their delivery count is the attempt number.
_CLAIM_EXPIRED = """
local limit = tonumber(ARGV[4])
local cursor = '0-0'
local chosen = {}
for _ = 1, 10 do
  local found = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
                           'COUNT', limit - #chosen, 'JUSTID')
  cursor = found[1]
  for _, id in ipairs(found[2]) do
    if not redis.call('ZSCORE', KEYS[2], id) then table.insert(chosen, id) end
  end
  if #chosen >= limit or cursor == '0-0' then break end
end
if #chosen == 0 then return {} end
local out = {}
for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(chosen))) do
  if type(entry) == 'table' then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    table.insert(out, {entry[1], entry[2], pending[1][4]})
  end
end
return out
"""

# KEYS: stream, delays. ARGV: group, consumer, id, attempt, due.
# Schedule redelivery only if this delivery still holds the entry: not acked, and not
# taken over by another consumer after ack_wait (which delivers it again anyway).
_NACK = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 then return 0 end
if pending[1][2] ~= ARGV[2] or tonumber(pending[1][4]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
return 1
"""

# KEYS: stream. ARGV: group, consumer, id, attempt.
# Reset the entry's idle time (XCLAIM to the same consumer, JUSTID: the delivery count
# stays) only if this delivery still holds it, so a consumer that took it over keeps it.
_EXTEND = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 then return 0 end
if pending[1][2] ~= ARGV[2] or tonumber(pending[1][4]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# KEYS: stream, delays, dead. ARGV: group, id, event, reason, attempts.
# Dead-letter an entry that is still pending (not acked or dead-lettered already).
_DEAD_LETTER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then return 0 end
redis.call('XADD', KEYS[3], '*', 'event', ARGV[3], 'reason', ARGV[4], 'attempts', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


def default_consumer() -> str:
    """A consumer name unique to this process: ``hostname-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _persists(appendonly: object, save: object) -> bool:
    """True if CONFIG GET replies show AOF on, or RDB snapshots configured."""

    def value(reply: object, name: str) -> str:
        for key, found in dict(reply or {}).items():  # type: ignore[call-overload]
            if (key.decode() if isinstance(key, bytes) else str(key)) == name:
                return found.decode() if isinstance(found, bytes) else str(found)
        return ""

    return value(appendonly, "appendonly") == "yes" or bool(value(save, "save").strip())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _Keys:
    """The Redis keys of one topic."""

    __slots__ = ("dead", "delays", "seen", "stream")

    def __init__(self, prefix: str, topic: str) -> None:
        self.stream = f"{prefix}:topic:{topic}"
        self.delays = f"{prefix}:delay:{topic}"
        self.dead = f"{prefix}:dead:{topic}"
        self.seen = f"{prefix}:seen:{topic}"


class RedisDelivery(Delivery):
    """A delivery of one stream entry, pending in the consumer group until settled."""

    def __init__(
        self,
        broker: RedisBroker,
        keys: _Keys,
        topic: str,
        entry_id: str,
        raw: bytes,
        event: Event,
        attempt: int,
    ) -> None:
        self.event = event
        self.topic = topic
        self.attempt = attempt
        self.entry_id = entry_id
        self._broker = broker
        self._keys = keys
        self._raw = raw

    def __repr__(self) -> str:
        return (
            f"<RedisDelivery {self.event.id} ({self.entry_id}) on {self.topic!r} "
            f"attempt {self.attempt}{' ' + self._settled if self._settled else ''}>"
        )

    async def ack(self) -> None:
        """XACK and XDEL the entry (even if another consumer took it over since: the event
        is handled either way) and drop any redelivery scheduled for it."""
        self._mark_settled("acked")
        broker, keys = self._broker, self._keys
        with broker._outage("acking an event"):
            await self._ack(broker, keys)

    async def _ack(self, broker: RedisBroker, keys: _Keys) -> None:
        async with broker.client.pipeline(transaction=True) as pipe:
            pipe.xack(keys.stream, broker.group, self.entry_id)
            pipe.xdel(keys.stream, self.entry_id)
            pipe.zrem(keys.delays, self.entry_id)
            await pipe.execute()

    async def nack(self, delay: float = 0.0) -> None:
        if not delay >= 0:
            raise ValueError(f"nack delay must be 0 or more seconds, got {delay!r}")
        self._mark_settled("nacked")
        broker = self._broker
        with broker._outage("nacking an event"):
            await broker._nack(
                keys=[self._keys.stream, self._keys.delays],
                args=[
                    broker.group,
                    broker.consumer,
                    self.entry_id,
                    self.attempt,
                    broker.clock() + delay,
                ],
            )

    async def extend(self) -> None:
        """Reset the entry's idle time in the group's pending list, so no other consumer
        claims it for another ``ack_wait``; nothing once settled or taken over."""
        if self._settled is not None:
            return
        broker = self._broker
        await broker._extend(
            keys=[self._keys.stream],
            args=[broker.group, broker.consumer, self.entry_id, self.attempt],
        )

    async def dead_letter(self, reason: str) -> None:
        self._mark_settled("dead-lettered")
        broker, keys = self._broker, self._keys
        with broker._outage("dead-lettering an event"):
            await broker._dead_letter(
                keys=[keys.stream, keys.delays, keys.dead],
                args=[broker.group, self.entry_id, self._raw, reason, self.attempt],
            )


class RedisBroker(Broker):
    """At-least-once delivery through Redis Streams; see the module docstring for the keys.

    ``consumer`` names this broker in the consumer group (unique per process by default);
    ``ack_wait`` is how long a delivery may stay unsettled before another consumer takes it
    over; a re-publish of an event id within ``duplicate_window`` seconds is dropped (0
    turns that off); ``clock`` (wall-clock seconds, shared by every consumer) times nack
    delays. On the first publish it logs a warning if the server keeps nothing on disk
    (``allow_volatile=True`` silences it).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "resumable",
        group: str = "workers",
        consumer: str | None = None,
        ack_wait: float = 5.0,
        duplicate_window: float = 120.0,
        clock: Callable[[], float] = time.time,
        allow_volatile: bool = False,
    ) -> None:
        if not ack_wait > 0:
            raise SetupError(f"ack_wait must be more than 0 seconds, got {ack_wait!r}")
        if not duplicate_window >= 0:
            raise SetupError(
                f"duplicate_window must be 0 or more seconds, got {duplicate_window!r}"
            )
        if not prefix or not group:
            raise SetupError(
                f"prefix and group must be non-empty (got prefix={prefix!r}, group={group!r})"
            )
        self.url = url
        self.prefix = prefix
        self.group = group
        self.consumer = consumer or default_consumer()
        self.ack_wait = ack_wait
        self.duplicate_window = duplicate_window
        self.clock = clock
        # A hung server fails calls (as Unavailable) rather than blocking them for ever;
        # the URL's own socket_connect_timeout= and socket_timeout= win. Blocking reads
        # wait at most a second, well within the socket timeout.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=5.0, socket_timeout=30.0
        )
        self._groups: set[str] = set()
        self._closed = False
        self.allow_volatile = allow_volatile
        self._persistence_checked = allow_volatile
        self._publish = self.client.register_script(_PUBLISH)
        self._claim_due = self.client.register_script(_CLAIM_DUE)
        self._claim_expired = self.client.register_script(_CLAIM_EXPIRED)
        self._nack = self.client.register_script(_NACK)
        self._extend = self.client.register_script(_EXTEND)
        self._dead_letter = self.client.register_script(_DEAD_LETTER)

    @classmethod
    def from_url(cls, url: str) -> RedisBroker:
        """A broker from one URL: ``redis://host:port/db?prefix=app&group=workers``;
        ``prefix``, ``group``, ``consumer``, ``ack_wait``, ``duplicate_window`` and
        ``allow_volatile`` are optional query parameters, the rest go to redis-py."""
        parts = urlsplit(url)
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        seconds = ("ack_wait", "duplicate_window")
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ("prefix", "group", "consumer", "allow_volatile", *seconds):
                ours[name] = value
            else:
                theirs.append((name, value))
        redis_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        options: dict[str, Any] = {
            k: v for k, v in ours.items() if k not in seconds and k != "allow_volatile"
        }
        if "allow_volatile" in ours:
            flag = ours["allow_volatile"].strip().lower()
            if flag not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                raise SetupError(
                    f"allow_volatile in {redact_url(url)!r} must be 1 or 0 (true or false), "
                    f"got {ours['allow_volatile']!r}"
                )
            options["allow_volatile"] = flag in ("1", "true", "yes", "on")
        for name in seconds:
            if name in ours:
                try:
                    options[name] = float(ours[name])
                except ValueError:
                    raise SetupError(
                        f"{name} in {redact_url(url)!r} must be a number of seconds, "
                        f"got {ours[name]!r}"
                    ) from None
        return cls(redis_url, **options)

    def __repr__(self) -> str:
        return f"<RedisBroker prefix={self.prefix!r} group={self.group!r} {self.consumer!r}>"

    def keys(self, topic: str) -> tuple[str, str, str]:
        """The topic's stream, delay set and dead-letter stream keys."""
        keys = _Keys(self.prefix, topic)
        return keys.stream, keys.delays, keys.dead

    async def publish(self, event: Event) -> None:
        """XADD the event's JSON to its topic's stream, unless the same event id was
        published there within ``duplicate_window``."""
        if not event.to:
            raise ValueError(f"event {event.id} has no 'to' topic; it cannot be routed")
        self._check_open()
        keys = _Keys(self.prefix, event.to)
        with self._outage(f"publishing event {event.id}"):
            await self._check_persistence()
            added = await self._publish(
                keys=[keys.stream, f"{keys.seen}:{event.id}"],
                args=[to_json(event), int(self.duplicate_window * 1000)],
            )
        if not added:
            log.debug("event %s was published already; the copy is dropped", event.id)

    async def receive(
        self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
    ) -> list[Delivery]:
        """Nacked entries now due, then entries left unsettled past ``ack_wait``, then new
        ones; blocks in XREADGROUP, waking to look for due and expired entries."""
        self._check_open()
        if max_messages < 1:
            raise ValueError(f"max_messages must be 1 or more, got {max_messages!r}")
        keys = _Keys(self.prefix, topic)
        with self._outage(f"receiving from {topic!r}"):
            try:
                return await self._receive(keys, topic, max_messages, timeout)
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                self._groups.discard(topic)  # the stream was deleted since: make it again
                return await self._receive(keys, topic, max_messages, timeout)

    async def _receive(
        self, keys: _Keys, topic: str, max_messages: int, timeout: float
    ) -> list[Delivery]:
        await self._ensure_group(keys, topic)
        deadline = time.monotonic() + max(timeout, 0.0)
        poll = max(0.01, min(self.ack_wait / 4, 1.0))  # how often to look for expired ones
        while True:
            entries = await self._claimed(self._claim_due, keys, self.clock(), max_messages)
            if len(entries) < max_messages:
                min_idle = int(self.ack_wait * 1000)
                left = max_messages - len(entries)
                entries += await self._claimed(self._claim_expired, keys, min_idle, left)
            block: float | None = None
            if not entries:
                left_time = deadline - time.monotonic()
                if left_time > 0:
                    block = min(left_time, poll, await self._until_due(keys))
            if len(entries) < max_messages:
                entries += await self._read_new(keys, max_messages - len(entries), block)
            if entries or time.monotonic() >= deadline:
                entries.sort(key=lambda entry: _stream_id(entry[0]))
                return await self._deliveries(keys, topic, entries)

    async def _ensure_group(self, keys: _Keys, topic: str) -> None:
        if topic in self._groups:
            return
        try:
            await self.client.xgroup_create(keys.stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._groups.add(topic)

    async def _claimed(
        self, script: AsyncScript, keys: _Keys, argument: float, limit: int
    ) -> list[tuple[str, bytes | None, int]]:
        found = await script(
            keys=[keys.stream, keys.delays],
            args=[self.group, self.consumer, argument, limit],
        )
        out: list[tuple[str, bytes | None, int]] = []
        for entry_id, fields, count in found:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append((_text(entry_id), values.get(b"event"), int(count)))
        return out

    async def _until_due(self, keys: _Keys) -> float:
        first = await self.client.zrange(keys.delays, 0, 0, withscores=True)
        if not first:
            return float("inf")
        return max(0.001, float(first[0][1]) - self.clock())

    async def _read_new(
        self, keys: _Keys, count: int, block: float | None
    ) -> list[tuple[str, bytes | None, int]]:
        response: Any = await self.client.xreadgroup(
            self.group,
            self.consumer,
            {keys.stream: ">"},
            count=count,
            block=None if block is None else max(1, int(block * 1000)),
        )
        out: list[tuple[str, bytes | None, int]] = []
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                raw = fields.get(b"event") if fields else None
                out.append((_text(entry_id), raw if isinstance(raw, bytes) else None, 1))
        return out

    async def _deliveries(
        self, keys: _Keys, topic: str, entries: Sequence[tuple[str, bytes | None, int]]
    ) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for entry_id, raw, attempt in entries:
            try:
                if raw is None:
                    raise EventError("<event>", "the stream entry has no 'event' field")
                event = from_json(raw)
            except EventError as error:
                await self._set_aside(keys, topic, entry_id, raw, attempt, error)
                continue
            deliveries.append(RedisDelivery(self, keys, topic, entry_id, raw, event, attempt))
        return deliveries

    async def _set_aside(
        self,
        keys: _Keys,
        topic: str,
        entry_id: str,
        raw: bytes | None,
        attempt: int,
        error: EventError,
    ) -> None:
        """An entry that is not an event can never be handled: dead-letter it at once."""
        log.error("entry %s on %s is not a valid event (%s); dead-lettered", entry_id, topic, error)
        await self._dead_letter(
            keys=[keys.stream, keys.delays, keys.dead],
            args=[self.group, entry_id, raw or b"", f"undecodable: {error}", attempt],
        )

    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        """The dead-letter stream of ``topic``, oldest first (entries that were not valid
        events are logged and left out)."""
        self._check_open()
        out: list[DeadLetter] = []
        entries: Any = await self.client.xrange(_Keys(self.prefix, topic).dead)
        for entry_id, fields in entries:
            try:
                event = from_json(fields[b"event"])
            except (EventError, KeyError) as error:
                log.warning("dead letter %s on %s is not a valid event: %s", entry_id, topic, error)
                continue
            reason = _text(fields.get(b"reason", b""))
            attempts = int(fields.get(b"attempts", b"0"))
            out.append(DeadLetter(event=event, topic=topic, reason=reason, attempts=attempts))
        return out

    async def close(self) -> None:
        """Close the connections. Deliveries not settled come back to other consumers after
        ``ack_wait``; the consumer stays in the group so nothing it held is lost."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self.client.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; make a new RedisBroker to use it again")

    async def _check_persistence(self) -> None:
        """Warn once if the server keeps nothing on disk (``allow_volatile`` silences it):
        a restart then loses every queued event. Nothing is refused: the workflows'
        outboxes, re-sent by the workers' sweeps, bring lost requests back."""
        if self._persistence_checked:
            return
        self._persistence_checked = True
        try:
            appendonly = await self.client.config_get("appendonly")
            save = await self.client.config_get("save")
        except ResponseError as error:  # CONFIG renamed, disabled or not allowed
            log.warning(
                "cannot check that Redis at %s keeps its streams on disk (CONFIG GET: %s); "
                "run it with appendonly yes, or pass allow_volatile=True to silence this",
                redact_url(self.url),
                error,
            )
            return
        if not _persists(appendonly, save):
            log.warning(
                "Redis at %s keeps nothing on disk (appendonly no, save ''): a restart loses "
                "every queued event (the workflows' requests are re-sent from their records, "
                "within recover_interval, but events to services and timers in flight are "
                "lost). Run it with appendonly yes, or pass allow_volatile=True (?allow_"
                "volatile=1) to silence this",
                redact_url(self.url),
            )

    @contextlib.contextmanager
    def _outage(self, doing: str) -> Iterator[None]:
        """Turn the errors of a server that is down, restarting, loading or failing over
        into ``Unavailable`` (redis-py reconnects on the next call); others pass."""
        try:
            yield
        except redis.exceptions.AuthenticationError:
            raise
        except (
            redis.exceptions.ConnectionError,  # refused, reset, closed; LOADING too
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,  # a failover left us on a replica
            redis.exceptions.ClusterDownError,  # MASTERDOWN
            redis.exceptions.TryAgainError,
            OSError,
        ) as error:
            where = redact_url(self.url)
            raise Unavailable(
                f"Redis at {where} is unavailable while {doing} ({type(error).__name__}: "
                f"{error}); retry once it is back",
                server=f"Redis at {where}",
            ) from error
        except ResponseError as error:
            if not str(error).startswith("BUSY"):
                raise
            where = redact_url(self.url)
            raise Unavailable(
                f"Redis at {where} is busy running a script while {doing} ({error}); retry "
                "once it is free",
                server=f"Redis at {where}",
            ) from error
