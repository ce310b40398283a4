"""RedisMemory runs the shared conformance suite against a real Redis, plus checks of its
key layout, atomicity across clients, persistence across instances and URL handling."""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable.errors import ConflictError, DuplicateEntryError
from resumable.memory import Stored
from resumable.memory.redis import RedisMemory, _created, _since

from .conformance import FakeClock, MemoryConformance, check_two_instances_share, subject
from servers import require_redis

pytestmark = pytest.mark.anyio


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex}"


async def _drop(url: str, prefix: str) -> None:
    """Delete every key under ``prefix:``."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        names = [name async for name in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to look at what RedisMemory stored."""
    client = redis.asyncio.Redis.from_url(url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(url: str) -> AsyncIterator[str]:
    """A prefix of this test's own, emptied afterwards."""
    prefix = _prefix()
    yield prefix
    await _drop(url, prefix)


@pytest.fixture
async def memory(url: str, prefix: str) -> AsyncIterator[RedisMemory]:
    memory = RedisMemory(url, prefix=prefix, allow_volatile=True)
    yield memory
    await memory.close()


class TestRedisMemory(MemoryConformance):
    @pytest.fixture
    async def memory(self, url: str, prefix: str, clock: FakeClock) -> AsyncIterator[RedisMemory]:
        memory = RedisMemory(url, prefix=prefix, clock=clock, allow_volatile=True)
        yield memory
        await memory.close()


# Layout: what is really stored in Redis.


async def test_journal_is_a_list_appended_to_not_rewritten(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    journal = f"{prefix}:j:k"
    revision = await memory.write("k", revision=0, status="s", header=b"", append=[("e1", b"1")])
    assert await raw.type(journal) == b"list"
    await raw.lset(journal, 0, b"changed behind its back")  # a rewrite would undo this
    revision = await memory.write(
        "k", revision=revision, status="s", header=b"", append=[("e2", b"2"), ("e3", b"3")]
    )
    await memory.write("k", revision=revision, status="s", header=b"", append=[("e4", b"4")])
    assert await raw.lrange(journal, 0, -1) == [b"changed behind its back", b"2", b"3", b"4"]
    stored = await memory.read("k", journal=True)
    assert stored is not None and stored.journal == [b"changed behind its back", b"2", b"3", b"4"]


async def test_every_key_lives_under_the_prefix(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    marker = uuid.uuid4().hex
    await memory.write(marker, revision=0, status=marker, header=b"h", append=[("e", b"x")], due=5)
    assert await memory.lock(marker, "alice", ttl=30)
    found = [name async for name in raw.scan_iter(match=f"*{marker}*", count=1000)]
    assert sorted(found) == sorted(
        f"{prefix}:{kind}:{marker}".encode() for kind in ["r", "j", "e", "l", "s", "ls:s"]
    )
    assert await raw.zrange(f"{prefix}:keys", 0, -1) == [marker.encode()]
    assert await raw.zrange(f"{prefix}:due", 0, -1, withscores=True) == [(marker.encode(), 5.0)]


async def test_a_status_change_moves_the_key_between_status_sets(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    revision = await memory.write("k", revision=0, status="open", header=b"")
    await memory.write("k", revision=revision, status="done", header=b"")
    assert await raw.exists(f"{prefix}:s:open") == 0  # emptied, so Redis removed it
    assert await raw.zrange(f"{prefix}:s:done", 0, -1) == [b"k"]


async def test_leases_get_a_real_expiry_and_records_none(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    await memory.write("k", revision=0, status="s", header=b"", append=[("e", b"x")], due=1.0)
    assert await memory.lock("k", "alice", ttl=30)
    lease_ms = await raw.pttl(f"{prefix}:l:k")
    assert 0 < lease_ms <= 31_000  # the ttl plus a margin: Redis collects abandoned leases
    for kind in ["r", "j", "e"]:
        assert await raw.pttl(f"{prefix}:{kind}:k") == -1  # records never expire
    assert await memory.lock("k", "alice", ttl=math.inf)
    assert await raw.pttl(f"{prefix}:l:k") == -1
    assert await memory.lock("k", "bob", ttl=1) is False


async def test_a_large_append_is_written_in_chunks(memory: RedisMemory) -> None:
    """Lua's unpack() fails beyond a few thousand values; the script appends in chunks."""
    append = [(f"e{index}", b"%d" % index) for index in range(10_000)]
    assert await memory.write("k", revision=0, status="s", header=b"", append=append) == 1
    stored = await memory.read("k", journal=True)
    assert stored is not None and stored.journal == [entry for _, entry in append]
    assert await memory.entry("k", "e9999") == b"9999"


# Atomicity and sharing.


async def test_concurrent_cas_writers_have_one_winner_per_revision(url: str, prefix: str) -> None:
    """Tasks on two clients race to advance one record: each revision is won exactly once,
    and the journal holds the winners' entries in revision order."""
    clients = [
        RedisMemory(url, prefix=prefix, allow_volatile=True),
        RedisMemory(url, prefix=prefix, allow_volatile=True),
    ]
    won: dict[int, str] = {}
    conflicts = 0

    async def writer(name: str, memory: RedisMemory) -> None:
        nonlocal conflicts
        for step in range(10):
            while True:
                stored = await memory.read("k")
                current = 0 if stored is None else stored.revision
                event_id = f"{name}.{step}"
                try:
                    revision = await memory.write(
                        "k",
                        revision=current,
                        status="s",
                        header=event_id.encode(),
                        append=[(event_id, event_id.encode())],
                    )
                except ConflictError:
                    conflicts += 1
                    continue
                assert revision not in won, f"revision {revision} won twice"
                won[revision] = event_id
                break

    try:
        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(writer, f"w{index}", clients[index % 2])
        assert sorted(won) == list(range(1, 201))
        assert conflicts > 0, "the writers never raced; the test proves nothing"
        stored = await clients[1].read("k", journal=True)
        assert stored is not None and stored.revision == 200
        assert stored.journal == [won[revision].encode() for revision in range(1, 201)]
        assert stored.header == won[200].encode()
    finally:
        for client in clients:
            await client.close()


async def test_a_retried_write_whose_reply_was_lost_succeeds_once(
    memory: RedisMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py resends a command after a connection error; the same write landing twice
    must return its revision, not a conflict, and append nothing twice."""
    script = memory._write_script
    calls = 0

    async def twice(**arguments: Any) -> Any:
        nonlocal calls
        calls += 1
        await script(**arguments)  # applied, but the reply is "lost"
        return await script(**arguments)

    monkeypatch.setattr(memory, "_write_script", twice)
    assert await memory.write("k", revision=0, status="s", header=b"h", append=[("e", b"x")]) == 1
    assert await memory.write("k", revision=1, status="s", header=b"i", append=[("f", b"y")]) == 2
    assert calls == 2
    assert await memory.read("k", journal=True) == Stored(2, "s", b"i", [b"x", b"y"])
    with pytest.raises(ConflictError):  # another write at the same revision still conflicts
        await memory.write("k", revision=1, status="s", header=b"j")
    with pytest.raises(DuplicateEntryError):
        await memory.write("k", revision=2, status="s", header=b"j", append=[("e", b"z")])


async def test_a_new_instance_on_the_prefix_sees_the_data(url: str, prefix: str) -> None:
    clock = FakeClock()
    first = RedisMemory(url, prefix=prefix, clock=clock, allow_volatile=True)
    await first.write("k", revision=0, status="open", header=b"h1", append=[("e1", b"x")])
    await first.write("k", revision=1, status="done", header=b"h2", append=[("e2", b"y")], due=7)
    assert await first.lock("k", "alice", ttl=60)
    await first.close()

    second = RedisMemory(url, prefix=prefix, clock=clock, allow_volatile=True)
    try:
        assert await second.read("k", journal=True) == Stored(2, "done", b"h2", [b"x", b"y"])
        assert await second.entry("k", "e2") == b"y"
        assert await second.keys(status="done") == ["k"]
        assert await second.due(10.0) == [("k", 7.0)]
        assert await second.lock("k", "bob", ttl=60) is False
        assert await second.unlock("k", "alice") is True
        assert await second.write("k", revision=2, status="done", header=b"h3") == 3
    finally:
        await second.close()


async def test_two_instances_share_records_and_leases(url: str, prefix: str) -> None:
    clock = FakeClock()
    await check_two_instances_share(
        RedisMemory(url, prefix=prefix, clock=clock, allow_volatile=True),
        RedisMemory(url, prefix=prefix, clock=clock, allow_volatile=True),
        clock,
    )


async def test_prefixes_isolate(url: str, prefix: str) -> None:
    other_prefix = _prefix()
    one = RedisMemory(url, prefix=prefix, allow_volatile=True)
    other = RedisMemory(url, prefix=other_prefix, allow_volatile=True)
    try:
        await one.write("k", revision=0, status="s", header=b"one", append=[("e", b"1")], due=1)
        assert await other.read("k") is None
        assert await other.entry("k", "e") is None
        assert await other.keys() == [] and await other.keys(status="s") == []
        assert await other.due(math.inf) == []
        assert await other.write("k", revision=0, status="s", header=b"other") == 1
        assert await one.lock("k", "alice", ttl=60)
        assert await other.lock("k", "bob", ttl=60)
        assert await one.read("k") == Stored(1, "s", b"one")
    finally:
        await one.close()
        await other.close()
        await _drop(url, other_prefix)


# URLs and errors.


async def test_from_url_takes_the_prefix_out_of_the_url(url: str, prefix: str) -> None:
    memory = RedisMemory.from_url(f"{url}?prefix={prefix}&socket_timeout=7&allow_volatile=1")
    try:
        assert memory.prefix == prefix and memory.allow_volatile
        kwargs = memory._client.connection_pool.connection_kwargs
        assert "prefix" not in kwargs and "allow_volatile" not in kwargs
        assert kwargs["socket_timeout"] == 7.0
        await memory.write("k", revision=0, status="s", header=b"h")  # redis-py accepts the URL
    finally:
        await memory.close()
    same = RedisMemory(url, prefix=prefix, allow_volatile=True)
    try:
        assert await same.read("k") == Stored(1, "s", b"h")
    finally:
        await same.close()


async def test_from_url_without_prefix_uses_the_default(url: str) -> None:
    memory = RedisMemory.from_url(url)
    try:
        assert memory.prefix == "resumable"
    finally:
        await memory.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_is_a_clear_error() -> None:
    port = _closed_port()
    memory = RedisMemory(f"redis://user:s3cret@127.0.0.1:{port}/0")  # no I/O yet
    try:
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}") as caught:
            await memory.read("k")
        assert "s3cret" not in str(caught.value)
        assert "redis-server" in str(caught.value)
    finally:
        await memory.close()


def test_a_bad_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid Redis URL 'http://u:\\*\\*\\*@host/'"):
        RedisMemory("http://u:pw@host/")


async def test_a_foreign_key_under_the_prefix_is_a_clear_error(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    await raw.set(f"{prefix}:keys", b"not a sorted set")
    with pytest.raises(RuntimeError, match="prefix of its own"):
        await memory.keys()


async def test_closed_memory_refuses_calls(memory: RedisMemory) -> None:
    await memory.write("k", revision=0, status="s", header=b"")
    await memory.close()
    await memory.close()
    with pytest.raises(RuntimeError, match="closed"):
        await memory.read("k")


async def test_listing_sets_follow_the_status_in_the_write_script(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    key = subject("x1")
    revision = await memory.write(key, revision=0, status="active", header=b"")
    (member,) = await raw.zrange(f"{prefix}:ls", 0, -1)
    assert member.endswith(key.encode()) and len(member) == len(key) + 16
    workflow = "arvo.orc.order.fulfil"
    for name in ["ls:s:active", f"ls:w:{workflow}", f"ls:ws:{workflow}:active"]:
        assert await raw.zrange(f"{prefix}:{name}", 0, -1) == [member], name
    await memory.write(key, revision=revision, status="done", header=b"")
    assert await raw.exists(f"{prefix}:ls:s:active", f"{prefix}:ls:ws:{workflow}:active") == 0
    for name in ["ls:s:done", f"ls:w:{workflow}", f"ls:ws:{workflow}:done"]:
        assert await raw.zrange(f"{prefix}:{name}", 0, -1) == [member], name


async def test_a_record_from_before_the_listing_enters_it_at_its_next_write(
    memory: RedisMemory, raw: redis.asyncio.Redis, prefix: str
) -> None:
    key = subject("legacy")
    revision = await memory.write(key, revision=0, status="active", header=b"")
    # What a version without the listing left behind: no listing fields, in no listing set.
    await raw.hdel(f"{prefix}:r:{key}", "since", "workflow", "updated")
    await raw.delete(*[name async for name in raw.scan_iter(match=f"{prefix}:ls*")])
    assert (await memory.list()).items == []
    await memory.write(key, revision=revision, status="done", header=b"")
    (listed,) = (await memory.list(workflow="arvo.orc.order.fulfil", status="done")).items
    assert (listed.key, listed.workflow, listed.status) == (key, "arvo.orc.order.fulfil", "done")
    assert (await memory.list(status="active")).items == []


# ``+ 0.0`` turns -0.0 into 0.0: the two are equal as times but not as bits.
@given(st.lists(st.floats(allow_nan=False).map(lambda value: value + 0.0), max_size=20))
@settings(suppress_health_check=[HealthCheck.too_slow])  # a loaded CI machine: still checked
def test_since_sorts_as_the_times_do_and_decodes_back(times: list[float]) -> None:
    encoded = [_since(value) for value in times]
    assert all(len(since) == 16 for since in encoded)
    assert [_created(since) for since in encoded] == times
    assert sorted(encoded) == [_since(value) for value in sorted(times)]
