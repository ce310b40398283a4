"""Local steps (step(fn)), the deterministic helpers on ctx, and the await guard."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from resumable import (
    Event,
    EventHandler,
    Resumable,
    StepError,
    WorkflowAwaitError,
    call,
    complete,
    step,
)
from resumable.memory import InMemoryMemory, Memory

import harness
from harness import SHOP, Number, echo_contract, fixed_clock, plus_one
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio


echo = EventHandler(echo_contract, versions={"1.0.0": plus_one})


def make(fn: Any, memory: Memory | None = None, **options: Any) -> Resumable[Any]:
    options.setdefault("clock", fixed_clock)
    return Resumable(
        orders,
        versions={"1.0.0": fn},
        services=[echo_contract],
        memory=memory if memory is not None else InMemoryMemory(),
        **options,
    )


def start(**options: Any) -> Event:
    return orders.init_event(PlaceOrder("o", 1), source=SHOP, **options)


async def answer(request: Event, **options: Any) -> Event:
    (reply,) = await echo.execute(request)
    return msgspec.structs.replace(reply, **options) if options else reply


class Host(harness.Host):
    """The workflow ``fn`` over a SQLite file, run to its end with a crash before each step."""

    def __init__(self, fn: Any, path: Path) -> None:
        super().__init__(lambda memory: make(fn, memory), path)

    async def run(self, init: Event, crash: str) -> list[Event]:
        """Deliver ``init`` and every echo reply, crashing before each workflow step."""
        outside: list[Event] = []
        inflight = await self.workflow.execute(init)
        while inflight:
            event = inflight.pop(0)
            if event.to == SHOP:
                outside.append(event)
                continue
            await self.crash(crash)
            inflight.extend(await self.workflow.execute(await answer(event)))
        return outside


CRASHES = ["evict", "restart"]


# ------------------------------------------------------------------------------------------
# step(fn)


@pytest.mark.parametrize("crash", CRASHES)
async def test_step_runs_once_and_replay_returns_the_journaled_value(
    tmp_path: Path, crash: str
) -> None:
    calls: list[tuple[int, int]] = []
    seen: list[Any] = []

    def pick(a: int, *, b: int) -> dict[str, Any]:
        calls.append((a, b))
        return {"sum": a + b, "tags": ["x", "y"]}

    async def wf(ctx, order):
        value = yield step(pick, 2, b=3)
        seen.append(value)
        reply = yield call(echo_contract, Number(value["sum"]))
        seen.append(value)
        reply = yield call(echo_contract, Number(reply.data.n))
        yield complete(OrderResult(f"{value['sum']}:{reply.data.n}"))

    host = Host(wf, tmp_path / "wf.db")
    (done,) = await host.run(start(), crash)
    assert done.data["status"] == "5:7"
    assert calls == [(2, 3)]
    assert seen and all(value == {"sum": 5, "tags": ["x", "y"]} for value in seen)
    await host.close()


async def test_an_async_step_is_awaited_for_real() -> None:
    calls: list[int] = []

    async def fetch(n: int) -> int:
        await anyio.sleep(0)  # a step may wait on the event loop: it runs once, live
        calls.append(n)
        return n * 10

    async def wf(ctx, order):
        value = yield step(fetch, 4)
        reply = yield call(echo_contract, Number(value))
        yield complete(OrderResult(f"{value}:{reply.data.n}"))

    workflow = make(wf)
    (request,) = await workflow.execute(start())
    assert request.data == {"n": 40}
    workflow.evict()
    (done,) = await workflow.execute(await answer(request))
    assert done.data["status"] == "40:41"
    assert calls == [4]


async def test_result_type_converts_the_journaled_value_live_and_on_replay() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    def numbers() -> list[Number]:
        return [Number(1), Number(2)]

    async def wf(ctx, order):
        plain = yield step(numbers)
        typed = yield step(numbers, result_type=list[Number])
        one = yield step(lambda: {"n": 7}, result_type=Number)
        seen.append((plain, typed, one))
        yield call(echo_contract, Number(1))
        yield complete(OrderResult("ok"))

    workflow = make(wf)
    (request,) = await workflow.execute(start())
    workflow.evict()
    await workflow.execute(await answer(request))
    assert len(seen) == 2 and seen[0] == seen[1]
    plain, typed, one = seen[1]
    assert plain == [{"n": 1}, {"n": 2}]
    assert typed == [Number(1), Number(2)] and all(isinstance(t, Number) for t in typed)
    assert isinstance(one, Number) and one == Number(7)


@pytest.mark.parametrize("crash", CRASHES)
async def test_a_raising_step_raises_step_error_the_same_on_replay(
    tmp_path: Path, crash: str
) -> None:
    calls: list[str] = []
    errors: list[tuple[str, str]] = []

    def lookup() -> None:
        calls.append("lookup")
        raise LookupError("no such thing")

    async def wf(ctx, order):
        try:
            yield step(lookup)
        except StepError as error:
            errors.append((error.name, error.message))
        yield call(echo_contract, Number(1))
        yield complete(OrderResult("recovered"))

    host = Host(wf, tmp_path / "wf.db")
    (done,) = await host.run(start(), crash)
    assert done.data["status"] == "recovered"
    assert calls == ["lookup"]
    assert errors == [("LookupError", "no such thing")] * 2
    await host.close()


async def test_an_uncaught_step_error_fails_the_workflow() -> None:
    async def broken(ctx, order):
        yield step(int, "not a number")
        yield complete(OrderResult("never"))

    workflow = make(broken)
    init = start()
    (error,) = await workflow.execute(init)
    assert error.type == "sys.arvo.orc.order.fulfil.error"
    assert error.data["errorName"] == "StepError"
    assert error.data["errorMessage"].startswith("ValueError: invalid literal for int()")
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"


async def test_a_result_that_cannot_be_journaled_is_a_step_error() -> None:
    caught: list[StepError] = []

    class Opaque:
        pass

    async def wf(ctx, order):
        for fn, kind in ((Opaque, None), (lambda: {"n": "x"}, Number)):
            try:
                yield step(fn, result_type=kind)
            except StepError as error:
                caught.append(error)
        yield call(echo_contract, Number(1))
        yield complete(OrderResult("ok"))

    workflow = make(wf)
    (request,) = await workflow.execute(start())
    assert [e.name for e in caught] == ["TypeError", "TypeError"]
    assert "returned Opaque, which cannot be journaled" in caught[0].message
    assert "returned dict" in caught[1].message
    workflow.evict()
    await workflow.execute(await answer(request))
    assert [e.name for e in caught[2:]] == ["TypeError", "TypeError"]
    assert [e.message for e in caught[2:]] == [e.message for e in caught[:2]]


def test_step_needs_a_function() -> None:
    with pytest.raises(TypeError, match="needs a function"):
        step(3)  # type: ignore[arg-type]
    assert step(len, [1]).describe() == "step len"


# ------------------------------------------------------------------------------------------
# deterministic helpers


async def test_now_uuid_and_random_are_the_same_on_replay() -> None:
    seen: list[tuple[str, tuple[Any, ...]]] = []

    def snap(ctx: Any, where: str) -> None:
        values = (ctx.now(), str(ctx.uuid()), ctx.random().random(), str(ctx.uuid()))
        seen.append((where, values))

    async def wf(ctx, order):
        snap(ctx, "start")
        yield step(len, "abc")  # answered inline, in the same step
        snap(ctx, "after step")
        yield call(echo_contract, Number(1))
        snap(ctx, "after reply")
        yield complete(OrderResult("ok"))

    workflow = make(wf)
    init = start(time="2026-03-01T10:00:00.000+00:00")
    (request,) = await workflow.execute(init)
    workflow.evict()
    reply = await answer(request, time="2026-03-01T10:05:00.000+00:00")
    await workflow.execute(reply)
    live = dict(seen[:2])
    replayed = dict(seen[2:4])
    assert [w for w, _ in seen] == ["start", "after step", "start", "after step", "after reply"]
    assert live == replayed
    assert live["start"][0].isoformat() == "2026-03-01T10:00:00+00:00"
    assert seen[4][1][0].isoformat() == "2026-03-01T10:05:00+00:00"
    # within one step every call gives a new value; across steps too
    everything = [v for _, values in seen[2:] for v in (values[1], values[3])]
    assert len(set(everything)) == len(everything)


async def test_is_replaying_is_true_during_replay_only() -> None:
    marks: list[tuple[str, bool]] = []
    ran: list[bool] = []

    def local(ctx: Any) -> int:
        ran.append(ctx.is_replaying)
        return 1

    async def wf(ctx, order):
        marks.append(("start", ctx.is_replaying))
        yield call(echo_contract, Number(1))
        marks.append(("after 1", ctx.is_replaying))
        yield step(local, ctx)
        yield call(echo_contract, Number(2))
        marks.append(("after 2", ctx.is_replaying))
        yield complete(OrderResult("ok"))

    workflow = make(wf)
    (request,) = await workflow.execute(start())
    workflow.evict()
    (request,) = await workflow.execute(await answer(request))
    workflow.evict()
    await workflow.execute(await answer(request))
    assert marks == [
        ("start", False),
        ("start", True),  # replay of step 0
        ("after 1", False),  # then live
        ("start", True),
        ("after 1", True),
        ("after 2", False),
    ]
    assert ran == [False]

    marks.clear()
    warm = make(wf)
    (request,) = await warm.execute(start())
    (request,) = await warm.execute(await answer(request))
    await warm.execute(await answer(request))
    assert marks == [("start", False), ("after 1", False), ("after 2", False)]


# ------------------------------------------------------------------------------------------
# the await guard


async def helper() -> int:
    return 2


@pytest.mark.parametrize("evict", [False, True])
async def test_a_suspending_await_raises_workflow_await_error_at_its_line(evict: bool) -> None:
    caught: list[tuple[int, str]] = []

    async def wf(ctx, order):
        n = await helper()  # finishes without suspending: fine
        frame = inspect.currentframe()
        assert frame is not None
        try:
            line = frame.f_lineno + 1
            await asyncio.sleep(0.01)
        except WorkflowAwaitError as error:
            caught.append((line, str(error)))
        try:
            line = frame.f_lineno + 1
            await asyncio.gather(helper(), helper())
        except WorkflowAwaitError as error:
            caught.append((line, str(error)))
        reply = yield call(echo_contract, Number(n))
        yield complete(OrderResult(str(reply.data.n)))

    workflow = make(wf)
    (request,) = await workflow.execute(start())
    assert request.data == {"n": 2}
    assert len(caught) == 2
    for line, message in caught:
        assert f"line {line} of {__file__}" in message
        assert "step(" in message and "yield call(...)" in message
    assert caught[0][0] != caught[1][0]
    if evict:
        workflow.evict()
    (done,) = await workflow.execute(await answer(request))
    assert done.data["status"] == "3"
    assert len(caught) == (4 if evict else 2)
    assert caught[2:] == (caught[:2] if evict else [])


async def test_an_uncaught_asyncio_gather_fails_the_workflow() -> None:
    async def wf(ctx, order):
        yield call(echo_contract, Number(1))
        await asyncio.gather(helper(), helper())
        yield complete(OrderResult("never"))

    workflow = make(wf)
    init = start()
    (request,) = await workflow.execute(init)
    (error,) = await workflow.execute(await answer(request))
    assert error.data["errorName"] == "WorkflowAwaitError"
    assert "test_steps.py" in error.data["errorMessage"]
    status = await workflow.status(init.subject)
    assert status is not None and status.status == "failed"
