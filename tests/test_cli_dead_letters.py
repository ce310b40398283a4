"""``resumable dead-letters list|replay`` on real brokers (Redis Streams, NATS JetStream):
every dead letter listed, the undecodable ones too, in text and in the documented JSON
shape; replaying by id or --all delivers at once and empties the dead letters."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from resumable.brokers import Broker, from_url
from resumable.cli import main
from resumable.demo import init_for, orders
from resumable.events import to_json

from servers import require_nats, require_redis

ROOT = Path(__file__).resolve().parent.parent
TOPIC = orders.type
GARBAGE = b"\x00\xff not an event"


def _nats_url() -> str:
    suffix = uuid.uuid4().hex[:12]
    return f"{require_nats()}?stream=CLI_{suffix}&prefix=cli{suffix}"


def _redis_url() -> str:
    return f"{require_redis()}?prefix=cli-{uuid.uuid4().hex}"


async def _inject(broker: Broker, raw: bytes) -> None:
    """Put ``raw`` on TOPIC as a foreign producer would."""
    from resumable.brokers.nats import NatsBroker
    from resumable.brokers.redis import RedisBroker

    if isinstance(broker, RedisBroker):
        await broker.client.xadd(broker.keys(TOPIC)[0], {"event": raw})
        return
    assert isinstance(broker, NatsBroker)
    import nats

    await broker._jetstream()
    nc = await nats.connect(broker.url)
    try:
        await nc.jetstream().publish(broker.subject(TOPIC), raw, stream=broker.stream)
    finally:
        await nc.close()


async def _cleanup(url: str) -> None:
    from resumable.brokers.nats import NatsBroker
    from resumable.brokers.redis import RedisBroker

    broker = from_url(url)
    try:
        if isinstance(broker, RedisBroker):
            keys = [k async for k in broker.client.scan_iter(f"{broker.prefix}:*")]
            if keys:
                await broker.client.delete(*keys)
        elif isinstance(broker, NatsBroker):
            js = await broker._jetstream()
            with contextlib.suppress(Exception):
                await js.delete_stream(broker.stream)
    finally:
        await broker.close()


def _on(url: str, work: Callable[[Broker], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        broker = from_url(url)
        try:
            return await work(broker)
        finally:
            await broker.close()

    return anyio.run(run)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A broker URL on a namespace of its own holding two dead events and one garbage."""
    made = _redis_url() if request.param == "redis" else _nats_url()

    async def fill(broker: Broker) -> None:
        await broker.publish(init_for(1))
        await broker.publish(init_for(2))
        await _inject(broker, GARBAGE)
        got: list[Any] = []
        with anyio.fail_after(10):
            while len(got) < 2:
                got += await broker.receive(TOPIC, max_messages=5, timeout=0.5)
        for delivery in got:
            await delivery.dead_letter(f"TransactionViolation: down for {delivery.event.id}")

    _on(made, fill)
    try:
        yield made
    finally:
        anyio.run(_cleanup, made)


def test_list_shows_every_dead_letter_in_text_and_json(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead-letters", "list", "--broker", url, "--topic", TOPIC]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ATTEMPTS", "EVENT", "REASON"]
    assert len(lines) == 4
    assert "(not an event: 15 bytes)" in lines[1]  # oldest first: set aside on receive
    assert init_for(1).id in lines[2] and "TransactionViolation: down" in lines[2]
    assert main(["dead-letters", "list", "--broker", url, "--topic", TOPIC, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["topic"] == TOPIC
    garbage, first, second = listed["dead_letters"]
    assert set(first) == {"id", "topic", "reason", "attempts", "event", "size", "raw"}
    assert garbage["event"] is None and base64.b64decode(garbage["raw"]) == GARBAGE
    assert garbage["reason"].startswith("undecodable: ") and garbage["size"] == len(GARBAGE)
    assert first["event"]["id"] == init_for(1).id and first["raw"] is None
    assert first["size"] == len(to_json(init_for(1))) and first["attempts"] == 1
    assert second["event"]["id"] == init_for(2).id


def test_replay_by_id_and_all_delivers_at_once(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["dead-letters", "replay", "--broker", url, "--topic", TOPIC]
    listed = _on(url, lambda broker: broker.dead_letters(TOPIC))
    garbage, first, _ = listed
    assert main([*base, first.id, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "topic": TOPIC,
        "replayed": [{"id": first.id, "event_id": init_for(1).id, "type": orders.type}],
        "failed": [],
        "skipped": [],
    }
    assert main([*base, first.id, garbage.id]) == 1  # replayed already; not an event
    err = capsys.readouterr().err
    assert "no dead letter" in err and "cannot be replayed" in err
    assert main([*base, "--all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["event_id"] for r in out["replayed"]] == [init_for(2).id]
    assert out["skipped"] == [{"id": garbage.id, "error": "not an event: cannot be replayed"}]

    async def delivered(broker: Broker) -> list[str]:
        got: list[Any] = []
        with anyio.fail_after(10):  # inside the duplicate window, yet delivered
            while len(got) < 2:
                got += await broker.receive(TOPIC, max_messages=5, timeout=0.5)
        for delivery in got:
            await delivery.ack()
        return [d.event.id for d in got]

    assert _on(url, delivered) == [init_for(1).id, init_for(2).id]
    assert [d.id for d in _on(url, lambda broker: broker.dead_letters(TOPIC))] == [garbage.id]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["dead-letters", "replay", "--broker", "redis://127.0.0.1:1/0", "--topic", TOPIC]
    assert main(base) == 2
    assert "give dead letter IDs or --all" in capsys.readouterr().err
    assert main([*base, "x", "--all"]) == 2
    assert main(["dead-letters", "list", "--broker", "local://", "--topic", TOPIC]) == 2
    assert "in-process broker" in capsys.readouterr().err


def test_the_installed_command_lists_dead_letters() -> None:
    url = _redis_url()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "resumable", "dead-letters", "list", "--broker", url,
             "--topic", TOPIC, "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        anyio.run(_cleanup, url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"topic": TOPIC, "dead_letters": []}
