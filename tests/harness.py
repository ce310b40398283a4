"""Test helpers: a fixed clock, the order workflow, test services (``Number`` in, ``Number``
out), and a hand-driven event network."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from resumable import Contract, Emit, Event, EventHandler, Resumable
from resumable.demo import make_workflow
from resumable.memory import Memory, SQLiteMemory, Stored

from orders import OrderState

FIXED_TIME = "2026-01-01T00:00:00.000+00:00"
SHOP = "com.shop.web"
"""The initiator of the order workflows in tests: their reports go to this topic."""


class Number(msgspec.Struct):
    n: int


def service(name: str) -> Contract:
    """A test service's contract: ``com.test.<name>``, answering ``evt.test.<name>.done``."""
    return Contract(
        uri=f"#/contracts/{name}",
        type=f"com.test.{name}",
        versions={"1.0.0": {"accepts": Number, "emits": {f"evt.test.{name}.done": Number}}},
    )


echo_contract = service("echo")


async def plus_one(event: Event) -> Emit:
    """The echo service: answers ``n + 1``; a negative ``n`` raises (a system error)."""
    if event.data.n < 0:
        raise ValueError(f"negative {event.data.n}")
    return Emit("evt.test.echo.done", Number(event.data.n + 1))


def echo_handler() -> EventHandler:
    return EventHandler(echo_contract, versions={"1.0.0": plus_one})


def fixed_clock() -> str:
    return FIXED_TIME


def order_workflow(memory: Memory, **options: Any) -> Resumable[OrderState]:
    return make_workflow(memory, clock=fixed_clock, **options)


class Host:
    """A workflow on a SQLite file that a test can crash: ``crash("evict")`` drops the live
    generator, ``crash("restart")`` (or ``restart()``) is a new process: a new memory
    object and a new driver, made by ``build(memory)``; ``crash("none")`` does nothing."""

    def __init__(self, build: Callable[[Memory], Resumable[Any]], path: Path) -> None:
        self.build, self.path = build, path
        self.memory = SQLiteMemory(path)
        self.workflow = build(self.memory)

    async def crash(self, how: str) -> None:
        if how == "evict":
            self.workflow.evict()
        elif how == "restart":
            await self.restart()

    async def restart(self) -> None:
        await self.memory.close()
        self.memory = SQLiteMemory(self.path)
        self.workflow = self.build(self.memory)

    async def close(self) -> None:
        await self.memory.close()


def sqlite_stores(directory: Path) -> Callable[[], Callable[[], Memory]]:
    """For ``Scenario(memory=...)``: each run a new SQLite file in ``directory``, which
    each runtime of the run opens with its own ``SQLiteMemory`` (and opens anew at a
    restart, as a new process would)."""

    def store() -> Callable[[], Memory]:
        path = directory / f"{uuid.uuid4().hex}.db"
        return lambda: SQLiteMemory(path)

    return store


def untimed(events: list[Event]) -> list[Event]:
    """Events with their time blanked, to compare runs whose services stamp real time."""
    return [msgspec.structs.replace(e, time=FIXED_TIME) for e in events]


class Network:
    """Delivers events by hand so a test controls order, duplicates and cache drops."""

    def __init__(self, handlers: list[Any]) -> None:
        self.handlers = {h.source: h for h in handlers}
        self.inflight: list[Event] = []
        self.outside: list[Event] = []
        self.delivered: list[Event] = []

    def add(self, events: list[Event]) -> None:
        for event in events:
            if event.to in self.handlers:
                self.inflight.append(event)
            else:
                self.outside.append(event)

    async def deliver(self, index: int = 0) -> list[Event]:
        event = self.inflight.pop(index)
        return await self.redeliver(event)

    async def redeliver(self, event: Event) -> list[Event]:
        self.delivered.append(event)
        outputs = await self.handlers[event.to].execute(event)
        self.add(outputs)
        return outputs

    async def run(self) -> None:
        while self.inflight:
            await self.deliver(0)


async def snapshot(memory: Memory) -> dict[str, Stored | None]:
    """Everything a memory holds, to check that a rejected event changed nothing."""
    return {key: await memory.read(key, journal=True) for key in await memory.keys()}
