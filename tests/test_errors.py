"""resumable.errors: one root for the library's errors, one error for a thing built wrong."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest

import resumable
from resumable import stepping
from resumable.brokers import LocalBroker
from resumable.brokers import from_url as broker_from_url
from resumable.brokers.nats import NatsBroker
from resumable.brokers.redis import RedisBroker
from resumable.clock import VirtualClock
from resumable.contracts import Contract, ContractError
from resumable.demo import PrintLabel, shipping
from resumable.errors import (
    Cancelled,
    ResumableError,
    SetupError,
    TransactionViolation,
    WorkflowAwaitError,
)
from resumable.handler import Emit, EventHandler
from resumable.memory import from_url as memory_from_url
from resumable.memory.postgres import PostgresMemory
from resumable.memory.redis import RedisMemory
from resumable.worker import Worker
from resumable.workflow import Retry, call, gather, race, sleep, sleep_until, step, wait_for


def _library_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a module of the package."""
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(resumable.__path__, "resumable."):
        if info.name == "resumable.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == info.name:
                found.append(value)
    return found


def test_every_library_error_derives_from_the_root_except_cancelled() -> None:
    found = _library_exceptions()
    assert len(found) >= 15
    outside = [cls.__qualname__ for cls in found if not issubclass(cls, ResumableError)]
    assert outside == ["Cancelled"]
    assert not issubclass(Cancelled, Exception)  # except Exception must not stop a cancel


def test_errors_keep_their_built_in_bases() -> None:
    from resumable.errors import DuplicateEntryError
    from resumable.events import EventError
    from resumable.subject import SubjectError

    for cls in (SubjectError, EventError, DuplicateEntryError, ContractError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(WorkflowAwaitError, RuntimeError)
    assert issubclass(SetupError, TypeError) and issubclass(SetupError, ValueError)
    assert issubclass(ContractError, SetupError)


def test_workflow_await_error_lives_in_errors_and_is_still_in_stepping() -> None:
    assert stepping.WorkflowAwaitError is WorkflowAwaitError
    assert resumable.WorkflowAwaitError is WorkflowAwaitError
    assert resumable.ResumableError is ResumableError and resumable.SetupError is SetupError


def test_transaction_causes_are_the_class_constants() -> None:
    error = TransactionViolation(TransactionViolation.LOCK_UNACQUIRED, "taken")
    assert error.cause == "LOCK_UNACQUIRED"
    assert TransactionViolation.READ_FAILURE == "READ_MACHINE_MEMORY_FAILURE"
    assert TransactionViolation.LOCK_FAILURE == "LOCK_MACHINE_MEMORY_FAILURE"
    assert TransactionViolation.WRITE_FAILURE == "WRITE_MACHINE_MEMORY_FAILURE"
    assert str(error) == "ViolationError<OrchestratorTransaction> [LOCK_UNACQUIRED] taken"


class _Data(msgspec.Struct):
    n: int


async def _one(event: Any) -> None:
    return None


def _handler() -> EventHandler:
    return EventHandler(shipping, {"1.0.0": _one})


def _subscribe_twice() -> None:
    broker = LocalBroker()
    broker.subscribe("com.shipping.label", _handler())
    broker.subscribe("com.shipping.label", _handler())


BUILT_WRONG: dict[str, Callable[[], object]] = {
    "Retry attempts": lambda: Retry(attempts=0),
    "Retry factor": lambda: Retry(factor=0.5),
    "call contract": lambda: call("com.x.y", {}),  # type: ignore[arg-type]
    "call retry": lambda: call(shipping, PrintLabel("o"), retry=3),  # type: ignore[arg-type]
    "call timeout": lambda: call(shipping, PrintLabel("o"), timeout=-1),
    "call domain": lambda: call(shipping, PrintLabel("o"), domain="UPPER"),
    "gather item": lambda: gather(42),  # type: ignore[arg-type]
    "race arms": lambda: race(sleep(1)),
    "sleep": lambda: sleep(-1),
    "sleep_until": lambda: sleep_until(datetime(2026, 1, 1)),
    "wait_for": lambda: wait_for(3),  # type: ignore[arg-type]
    "step": lambda: step(3),  # type: ignore[arg-type]
    "EventHandler contract": lambda: EventHandler(42, {}),  # type: ignore[arg-type]
    "EventHandler versions": lambda: EventHandler(shipping, {}),
    "Emit domain": lambda: Emit("evt.x.y", {}, domain="Not A Domain"),
    "Contract": lambda: Contract(
        uri="#/c", type="bad", versions={"1.0.0": {"accepts": _Data, "emits": {}}}
    ),
    "VirtualClock": lambda: VirtualClock(datetime(2026, 1, 1)),
    "memory URL scheme": lambda: memory_from_url("ftp://x"),
    "memory URL no scheme": lambda: memory_from_url("nothing"),
    "memory URL no file": lambda: memory_from_url("sqlite://"),
    "PostgresMemory pool": lambda: PostgresMemory("postgresql://127.0.0.1/db", pool_size=1),
    "PostgresMemory schema": lambda: PostgresMemory("postgresql://127.0.0.1/db", schema=""),
    "PostgresMemory URL": lambda: PostgresMemory.from_url("mysql://127.0.0.1/db"),
    "RedisMemory prefix": lambda: RedisMemory(prefix=""),
    "RedisMemory URL": lambda: RedisMemory("http://127.0.0.1"),
    "broker URL scheme": lambda: broker_from_url("ftp://x"),
    "broker URL no scheme": lambda: broker_from_url("nothing"),
    "LocalBroker ack_wait": lambda: LocalBroker(ack_wait=0),
    "LocalBroker duplicate_window": lambda: LocalBroker(duplicate_window=-1),
    "LocalBroker subscribe twice": lambda: _subscribe_twice(),
    "NatsBroker stream": lambda: NatsBroker(stream="a.b"),
    "NatsBroker prefix": lambda: NatsBroker(subject_prefix="a..b"),
    "NatsBroker ack_wait": lambda: NatsBroker(ack_wait=0),
    "NatsBroker max_deliver": lambda: NatsBroker(max_deliver=0),
    "NatsBroker URL parameter": lambda: NatsBroker.from_url("nats://127.0.0.1?nope=1"),
    "NatsBroker URL number": lambda: NatsBroker.from_url("nats://127.0.0.1?ack_wait=x"),
    "RedisBroker ack_wait": lambda: RedisBroker(ack_wait=0),
    "RedisBroker prefix": lambda: RedisBroker(prefix=""),
    "RedisBroker URL number": lambda: RedisBroker.from_url("redis://127.0.0.1?ack_wait=x"),
    "Worker no handler": lambda: Worker([], broker=LocalBroker()),
    "Worker not a handler": lambda: Worker([42], broker=LocalBroker()),  # type: ignore[list-item]
    "Worker concurrency": lambda: Worker([_handler()], broker=LocalBroker(), concurrency=0),
    "Worker backoff": lambda: Worker([_handler()], broker=LocalBroker(), backoff=(1, 0.5, 2)),
    "Worker poll": lambda: Worker([_handler()], broker=LocalBroker(), poll=0),
}


@pytest.mark.parametrize("build", BUILT_WRONG.values(), ids=BUILT_WRONG.keys())
def test_a_thing_built_wrong_raises_setup_error(build: Callable[[], object]) -> None:
    with pytest.raises(SetupError):
        build()
