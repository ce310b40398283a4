"""Golden tests: what the driver stores and emits, frozen byte for byte for eleven scenarios.

Each scenario hands fixed events (fixed ids, a ``VirtualClock``) to ``Resumable.execute`` and
records after every step each instance's stored header, the journal entries it gained (msgpack
as hex, with a decoded copy to read), and every emitted event. The goldens are
``tests/golden/<scenario>.json``; ``RESUMABLE_UPDATE_GOLDENS=1`` rewrites them. Every scenario
runs twice, the second time with the live-generator cache evicted before each delivery:
replay must store and emit the same bytes. Only public API is used, so the goldens outlive
a refactor of the driver (issue 10).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest

from resumable import (
    CANCEL_TYPE,
    Contract,
    Emit,
    Event,
    EventHandler,
    OrchestratorContract,
    Resumable,
    Retry,
    StepError,
    VirtualClock,
    call,
    complete,
    continue_as_new,
    gather,
    race,
    sleep,
    step,
    wait_for,
)
from resumable.memory import InMemoryMemory, Stored
from resumable.record import wire

pytestmark = pytest.mark.anyio

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("RESUMABLE_UPDATE_GOLDENS") == "1"
SHOP = "com.golden.shop"
"""Who starts the workflows: completions and system errors go here."""
STACK = "<stack>"
"""Stands in for every ``errorStack`` text: tracebacks name files, line numbers and driver
internals, which differ between checkouts and which a refactor may move."""

# ------------------------------------------------------------------------------------------
# contracts, services and workflows


class Number(msgspec.Struct):
    n: int


class Start(msgspec.Struct):
    n: int


class Result(msgspec.Struct):
    text: str


class Approval(msgspec.Struct):
    by: str


def service(name: str) -> Contract:
    return Contract(
        uri=f"#/contracts/golden/{name}",
        type=f"com.golden.{name}",
        versions={"1.0.0": {"accepts": Number, "emits": {f"evt.golden.{name}.done": Number}}},
    )


echo, flaky, broken = service("echo"), service("flaky"), service("broken")
approve = Contract(
    uri="#/signals/golden/approve",
    type="com.golden.approve",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)
golden = OrchestratorContract(
    uri="#/orchestrators/golden",
    name="golden.flow",
    versions={"1.0.0": {"init": Start, "complete": Result}},
)
helper = OrchestratorContract(
    uri="#/orchestrators/golden.helper",
    name="golden.helper",
    versions={"1.0.0": {"init": Start, "complete": Result}},
)


@attrs.define
class Notes:
    """Explicit state of ``records_context``."""

    doubled: int = 0
    step_error: str = ""
    token: str = ""
    roll: int = 0
    started_at: str = ""
    replied_at: str = ""
    later_token: str = ""


async def one_call(ctx: Any, start: Start) -> Any:
    reply = yield call(echo, Number(start.n))
    yield complete(Result(f"echo {reply.data.n}"))


async def three_calls(ctx: Any, start: Start) -> Any:
    replies = yield gather(*(call(echo, Number(n)) for n in (10, 20, 30)))
    yield complete(Result(",".join(str(r.data.n) for r in replies)))


async def call_or_timer(ctx: Any, start: Start) -> Any:
    index, value = yield race(call(echo, Number(1)), sleep(30))
    yield complete(Result(f"arm {index} won, value {value}"))


async def call_then_signal(ctx: Any, start: Start) -> Any:
    reply = yield call(echo, Number(start.n))
    signal = yield wait_for(approve)
    yield complete(Result(f"echo {reply.data.n}, approved by {signal.data.by}"))


async def changed_first_call(ctx: Any, start: Start) -> Any:
    reply = yield call(flaky, Number(start.n))  # was echo: replay diverges at step 0
    signal = yield wait_for(approve)
    yield complete(Result(f"flaky {reply.data.n}, approved by {signal.data.by}"))


async def retried_call(ctx: Any, start: Start) -> Any:
    # Floats on purpose: Retry(initial=2) keeps the int, which the header stores as an int
    # while its generator is cached and as a float once it is decoded again (RetrySpec's
    # fields are floats), so with ints the header bytes depend on the cache.
    retry = Retry(attempts=3, initial=2.0, factor=3.0)
    reply = yield call(flaky, Number(start.n), retry=retry)
    yield complete(Result(f"flaky {reply.data.n}"))


async def compensation_fails(ctx: Any, start: Start) -> Any:
    yield call(echo, Number(1), compensate=call(broken, Number(1)))
    yield call(echo, Number(-1))  # a system error reply: ServiceError, not caught
    yield complete(Result("unreachable"))


async def cancelled_while_waiting(ctx: Any, start: Start) -> Any:
    yield call(echo, Number(1), compensate=call(echo, Number(100)))
    yield wait_for(approve)  # the cancellation arrives here
    yield complete(Result("unreachable"))


async def two_generations(ctx: Any, start: Start) -> Any:
    reply = yield call(echo, Number(start.n))
    if start.n == 0:
        yield continue_as_new(Start(reply.data.n))
    yield complete(Result(f"generation two saw {reply.data.n}"))


async def calls_a_child(ctx: Any, start: Start) -> Any:
    reply = yield call(helper, Start(start.n))
    yield complete(Result(f"child said {reply.data.text!r}"))


def double(n: int) -> int:
    return 2 * n


def fails(n: int) -> int:
    raise ValueError(f"no luck with {n}")


async def records_context(ctx: Any, start: Start) -> Any:
    ctx.state.doubled = yield step(double, start.n)
    try:
        yield step(fails, start.n)
    except StepError as error:
        ctx.state.step_error = str(error)
    ctx.state.token = str(ctx.uuid())
    ctx.state.roll = ctx.random().randint(1, 10**6)
    ctx.state.started_at = ctx.now().isoformat()
    reply = yield call(echo, Number(ctx.state.doubled))
    ctx.state.replied_at = ctx.now().isoformat()
    ctx.state.later_token = str(ctx.uuid())
    yield complete(Result(f"echo {reply.data.n}"))


# ------------------------------------------------------------------------------------------
# a hand-driven run that records every step


class Run:
    """One run of a scenario: a memory, a clock, services, workflows, and the frozen steps.

    With ``evict`` every workflow's cache is dropped before each delivery, so every step
    replays the journal."""

    def __init__(self, evict: bool) -> None:
        self.evict = evict
        self.memory = InMemoryMemory()
        self.clock = VirtualClock()
        self.workflows: list[Resumable[Any]] = []
        self.labels: dict[str, str] = {}
        self.steps: list[dict[str, Any]] = []
        self._seen: dict[str, tuple[int, list[bytes]]] = {}
        self._flaky_errors = 2
        # The golden files keep where tracebacks go (errorStack), so they are opted into.
        self.handlers = {
            echo.type: EventHandler(echo, versions={"1.0.0": self._echo}, error_stack=True),
            flaky.type: EventHandler(flaky, versions={"1.0.0": self._flaky}, error_stack=True),
            broken.type: EventHandler(broken, versions={"1.0.0": self._broken}, error_stack=True),
        }

    @staticmethod
    def _echo(event: Event) -> Emit:
        if event.data.n < 0:
            raise ValueError(f"negative {event.data.n}")
        return Emit("evt.golden.echo.done", Number(event.data.n + 1))

    def _flaky(self, event: Event) -> Emit:
        """Fails the first two requests it gets in a run, then answers ``n + 1``."""
        if self._flaky_errors > 0:
            self._flaky_errors -= 1
            raise ConnectionError("flaky is down")
        return Emit("evt.golden.flaky.done", Number(event.data.n + 1))

    @staticmethod
    def _broken(event: Event) -> Emit:
        raise RuntimeError("broken cannot undo anything")

    def workflow(
        self, fn: Any, contract: OrchestratorContract = golden, **options: Any
    ) -> Resumable[Any]:
        workflow: Resumable[Any] = Resumable(
            contract,
            versions={"1.0.0": fn},
            services=[echo, flaky, broken, *options.pop("services", [])],
            signals=[approve],
            memory=self.memory,
            clock=self.clock,
            error_stack=True,
            **options,
        )
        self.workflows.append(workflow)
        return workflow

    def start(self, n: int = 1) -> Event:
        """The init event of the scenario's instance (labelled ``instance``)."""
        init = golden.init_event(
            Start(n), source=SHOP, execution_id="golden", id="init-1", time=self.clock()
        )
        self.labels[init.subject] = "instance"
        return init

    def signal(self, subject: str, by: str, id: str) -> Event:
        """A signal built as ``signal_event`` builds it, with a fixed id instead of a uuid4."""
        return approve.event(
            Approval(by),
            source="com.golden.boss",
            subject=subject,
            to=golden.type,
            id=id,
            time=self.clock(),
        )

    def cancel(self, subject: str, reason: str, id: str) -> Event:
        """A cancellation with ``cancel_event``'s fields and a fixed id instead of a uuid4."""
        return Event(
            id=id,
            source=golden.type,
            type=CANCEL_TYPE,
            subject=subject,
            data={"reason": reason},
            time=self.clock(),
            to=golden.type,
        )

    async def answer(self, request: Event) -> Event:
        """The service's reply, stamped with the run's clock; an error reply's stack (which
        names test files and line numbers) is dropped before the workflow stores it."""
        (reply,) = await self.handlers[request.type].execute(request)
        data = reply.data
        if isinstance(data, dict) and "errorStack" in data:
            data = {**data, "errorStack": None}
        return msgspec.structs.replace(reply, time=self.clock(), data=data)

    async def deliver(self, event: Event, workflow: Resumable[Any] | None = None) -> list[Event]:
        """``execute`` the event on its workflow (the first one listening on ``event.to``)."""
        if workflow is None:
            workflow = next(w for w in self.workflows if w.source == event.to)
        self._maybe_evict()
        emitted = await workflow.execute(event)
        await self._record({"delivered": event.id, "type": event.type}, emitted)
        return emitted

    async def fire(self, workflow: Resumable[Any], subject: str, after: float) -> list[Event]:
        """Move the clock ``after`` seconds on and deliver the timer event now due."""
        self.clock.advance(after)
        timer = await workflow.timer_event(subject)
        assert timer is not None, f"nothing is due for {self.labels[subject]} at {self.clock()}"
        return await self.deliver(timer, workflow)

    async def unpark(self, workflow: Resumable[Any], subject: str) -> list[Event]:
        self._maybe_evict()
        emitted = await workflow.unpark(subject)
        await self._record({"unparked": self.labels[subject]}, emitted)
        return emitted

    def _maybe_evict(self) -> None:
        if self.evict:
            for workflow in self.workflows:
                workflow.evict()

    async def _record(self, what: dict[str, Any], emitted: list[Event]) -> None:
        records: dict[str, Any] = {}
        for key in await self.memory.keys():
            assert key in self.labels, f"a record appeared for an unlabelled subject {key!r}"
            stored = await self.memory.read(key, journal=True)
            assert stored is not None and stored.journal is not None
            records[self.labels[key]] = self._freeze(key, stored)
        self.steps.append(
            {
                "step": len(self.steps),
                **what,
                "emitted": [event_json(event) for event in emitted],
                "records": dict(sorted(records.items())),
            }
        )

    def _freeze(self, key: str, stored: Stored) -> dict[str, Any]:
        """A record after a step: unchanged (same revision), or its header and the journal
        entries past the prefix it shares with the journal after the previous write."""
        assert stored.journal is not None
        record: dict[str, Any] = {"revision": stored.revision, "status": stored.status}
        revision, journal = self._seen.get(key, (0, []))
        if revision == stored.revision:
            return {**record, "unchanged": True}
        kept = 0
        while kept < min(len(journal), len(stored.journal)) and (
            journal[kept] == stored.journal[kept]
        ):
            kept += 1
        self._seen[key] = (stored.revision, list(stored.journal))
        header_hex, header = frozen(stored.header)
        appended = []
        for raw in stored.journal[kept:]:
            entry_hex, entry = frozen(raw)
            appended.append({"entry": entry, "msgpack": entry_hex})
        return {
            **record,
            "header": header,
            "header_msgpack": header_hex,
            "journal_kept": kept,
            "journal_appended": appended,
        }


def scrubbed(value: Any, stacks: list[str] | None = None) -> Any:
    """``value`` (decoded msgpack or JSON) with every ``errorStack`` text replaced by STACK;
    the texts replaced are added to ``stacks``."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "errorStack" and isinstance(v, str):
                out[k] = STACK
                if stacks is not None:
                    stacks.append(v)
            else:
                out[k] = scrubbed(v, stacks)
        return out
    if isinstance(value, list):
        return [scrubbed(v, stacks) for v in value]
    return value


def frozen(raw: bytes) -> tuple[str, Any]:
    """Stored msgpack as hex and decoded. The bytes are exact, except that each encoded
    ``errorStack`` text is replaced in place by the encoded STACK."""
    stacks: list[str] = []
    clean = scrubbed(msgspec.msgpack.decode(raw), stacks)
    for text in set(stacks):
        encoded = msgspec.msgpack.encode(text)
        assert encoded in raw, f"could not find the encoded stack {text[:60]!r}... to replace"
        raw = raw.replace(encoded, msgspec.msgpack.encode(STACK))
    assert msgspec.msgpack.decode(raw) == clean, "replacing the stacks changed something else"
    return raw.hex(), clean


def event_json(event: Event) -> Any:
    """An emitted event in full, as ``msgspec.json`` encodes it on the wire."""
    return scrubbed(msgspec.json.decode(msgspec.json.encode(wire(event))))


# ------------------------------------------------------------------------------------------
# the scenarios


async def single_call(run: Run) -> None:
    """One call and its reply; then the reply is delivered again (answered from the journal)."""
    run.workflow(one_call)
    (request,) = await run.deliver(run.start(41))
    reply = await run.answer(request)
    await run.deliver(reply)
    await run.deliver(reply)


async def gather_out_of_order(run: Run) -> None:
    """A gather of three calls whose replies arrive third, first, second."""
    run.workflow(three_calls)
    requests = await run.deliver(run.start())
    for index in (2, 0, 1):
        await run.deliver(await run.answer(requests[index]))


async def race_won_by_timer(run: Run) -> None:
    """race(call, sleep(30)): the timer fires first; the call's late reply is ignored."""
    workflow = run.workflow(call_or_timer)
    init = run.start()
    (request,) = await run.deliver(init)
    await run.fire(workflow, init.subject, after=30)
    await run.deliver(await run.answer(request))


async def kept_signal(run: Run) -> None:
    """A signal arrives while the workflow waits for a call; it is kept, then wait_for
    takes it at once when the workflow gets there."""
    run.workflow(call_then_signal)
    init = run.start()
    (request,) = await run.deliver(init)
    await run.deliver(run.signal(init.subject, "ann", id="signal-1"))
    await run.deliver(await run.answer(request))


async def retry_twice(run: Run) -> None:
    """A call with Retry(attempts=3, initial=2, factor=3) fails twice: each failure sets a
    backoff, a timer event re-sends the request, the third attempt succeeds."""
    workflow = run.workflow(retried_call)
    init = run.start()
    (request,) = await run.deliver(init)
    for backoff in (2, 6):
        await run.deliver(await run.answer(request))
        (request,) = await run.fire(workflow, init.subject, after=backoff)
    await run.deliver(await run.answer(request))


async def failing_compensation(run: Run) -> None:
    """A call with compensate= succeeds, the next call fails with a system error, and the
    compensation fails too: the instance ends failed, reporting both."""
    run.workflow(compensation_fails)
    (request,) = await run.deliver(run.start())
    (request,) = await run.deliver(await run.answer(request))
    (undo,) = await run.deliver(await run.answer(request))
    await run.deliver(await run.answer(undo))


async def cancel_with_compensation(run: Run) -> None:
    """A cancellation while the workflow waits for a signal, with a compensation on the
    stack: the compensation runs, then the instance ends cancelled. The cancellation is
    then delivered again (answered from the journal)."""
    run.workflow(cancelled_while_waiting)
    init = run.start()
    (request,) = await run.deliver(init)
    await run.deliver(await run.answer(request))
    cancel = run.cancel(init.subject, "customer asked", id="cancel-1")
    (undo,) = await run.deliver(cancel)
    await run.deliver(await run.answer(undo))
    await run.deliver(cancel)


async def continue_as_new_twice(run: Run) -> None:
    """Generation one calls and continues as new; generation two calls and completes. The
    reply that continued it, delivered again, is answered from the journal: with the
    request of generation two it produced the first time."""
    run.workflow(two_generations)
    (request,) = await run.deliver(run.start(0))
    first_reply = await run.answer(request)
    (request,) = await run.deliver(first_reply)
    await run.deliver(await run.answer(request))
    await run.deliver(first_reply)


async def park_and_unpark(run: Run) -> None:
    """Code that calls another service at step 0 replays the journal, diverges and parks;
    a signal that comes while parked is kept; unpark with the original code applies both."""
    original = run.workflow(call_then_signal)
    init = run.start()
    (request,) = await run.deliver(init, original)
    reply = await run.answer(request)
    changed = run.workflow(changed_first_call)
    changed.evict()
    await run.deliver(reply, changed)
    await run.deliver(run.signal(init.subject, "bob", id="signal-1"), changed)
    restored = run.workflow(call_then_signal)
    await run.unpark(restored, init.subject)


async def child_workflow(run: Run) -> None:
    """A parent calls an OrchestratorContract: the child runs on the same memory, calls a
    service, and its completion is the parent's reply."""
    parent = run.workflow(calls_a_child, services=[helper])
    child = run.workflow(one_call, contract=helper)
    (child_init,) = await run.deliver(run.start(7), parent)
    run.labels[child_init.subject] = "child"
    (request,) = await run.deliver(child_init, child)
    (completion,) = await run.deliver(await run.answer(request), child)
    await run.deliver(completion, parent)


async def local_step_and_context(run: Run) -> None:
    """Local steps (one raising StepError, caught) and ctx.uuid/random/now kept in state;
    the reply comes 5 seconds later, so ctx.now() moves."""
    run.workflow(records_context, state=Notes)
    (request,) = await run.deliver(run.start(21))
    run.clock.advance(5)
    await run.deliver(await run.answer(request))


SCENARIOS: list[Callable[[Run], Awaitable[None]]] = [
    single_call,
    gather_out_of_order,
    race_won_by_timer,
    kept_signal,
    retry_twice,
    failing_compensation,
    cancel_with_compensation,
    continue_as_new_twice,
    park_and_unpark,
    child_workflow,
    local_step_and_context,
]


# ------------------------------------------------------------------------------------------
# comparing with the goldens


def render(scenario: Callable[[Run], Awaitable[None]], run: Run) -> str:
    subjects = {label: subject for subject, label in sorted(run.labels.items())}
    document = {
        "scenario": scenario.__name__,
        "about": " ".join((scenario.__doc__ or "").split()),
        "subjects": dict(sorted(subjects.items())),
        "steps": run.steps,
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def parts(step: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    """A step split into the parts a mismatch names: ``name -> (decoded, raw hex or None)``."""
    out: dict[str, tuple[Any, str | None]] = {
        "delivery": ({k: v for k, v in step.items() if k not in ("emitted", "records")}, None),
        "emitted count": (len(step["emitted"]), None),
    }
    for index, event in enumerate(step["emitted"]):
        out[f"emitted[{index}] ({event.get('type')})"] = (event, None)
    for label, record in step["records"].items():
        status = {k: record.get(k) for k in ("revision", "status", "unchanged", "journal_kept")}
        out[f"{label}: revision and status"] = (status, None)
        if "header" in record:
            out[f"{label}: header"] = (record["header"], record["header_msgpack"])
        for index, entry in enumerate(record.get("journal_appended", [])):
            position = record["journal_kept"] + index
            out[f"{label}: journal[{position}]"] = (entry["entry"], entry["msgpack"])
    return out


def as_text(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False)


def decoded_from(value: Any, raw: str | None) -> Any:
    """What the bytes say, where there are bytes; else the value itself."""
    if raw is None:
        return value
    try:
        return scrubbed(msgspec.msgpack.decode(bytes.fromhex(raw)))
    except (ValueError, msgspec.DecodeError) as error:
        return f"<undecodable msgpack: {error}>"


def bytes_report(want: str | None, got: str | None) -> list[str]:
    """Where two hex strings first differ, with 24 bytes either side."""
    want, got = want or "", got or ""
    at = next(
        (i for i in range(0, min(len(want), len(got)), 2) if want[i : i + 2] != got[i : i + 2]),
        min(len(want), len(got)),
    )
    window = slice(max(0, at - 48), at + 48)
    return [
        f"raw msgpack differs at byte {at // 2} ({len(want) // 2} bytes in the golden, "
        f"{len(got) // 2} in this run); around it:",
        f"  golden:   ...{want[window]}...",
        f"  this run: ...{got[window]}...",
    ]


def first_difference(name: str, want: list[Any], got: list[Any]) -> str | None:
    """Where this run's steps first depart from the golden ones, in words, or None."""
    for index, (expected, actual) in enumerate(zip(want, got, strict=False)):
        expected_parts, actual_parts = parts(expected), parts(actual)
        differing = [
            part
            for part in {**expected_parts, **actual_parts}
            if as_text(expected_parts.get(part)) != as_text(actual_parts.get(part))
        ]
        if not differing:
            continue
        part = differing[0]
        want_value, want_raw = expected_parts.get(part, (None, None))
        got_value, got_raw = actual_parts.get(part, (None, None))
        diff = difflib.unified_diff(
            as_text(decoded_from(want_value, want_raw)).splitlines(),
            as_text(decoded_from(got_value, got_raw)).splitlines(),
            "golden",
            "this run",
            lineterm="",
        )
        lines = [
            f"scenario {name!r}, step {index} ({json.dumps(expected_parts['delivery'][0])}): "
            f"{part!r} differs (all differing parts of this step: {differing})",
            "\n".join(diff) or "(the decoded values are equal: only the bytes differ)",
        ]
        if want_raw != got_raw:
            lines += bytes_report(want_raw, got_raw)
        if as_text(decoded_from(want_value, want_raw)) != as_text(want_value):
            lines.append("(the golden's decoded copy does not match its own bytes)")
        return "\n".join(lines)
    if len(want) != len(got):
        return f"scenario {name!r}: the golden has {len(want)} steps, this run {len(got)}"
    return None


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_golden(scenario: Callable[[Run], Awaitable[None]]) -> None:
    name = scenario.__name__
    path = GOLDEN_DIR / f"{name}.json"
    cached, evicted = Run(evict=False), Run(evict=True)
    await scenario(cached)
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(render(scenario, cached))
    assert path.exists(), f"no golden file {path}: write it with RESUMABLE_UPDATE_GOLDENS=1"
    text = path.read_text()
    golden_steps = json.loads(text)["steps"]
    hint = "\nIf the change is intended, rewrite with RESUMABLE_UPDATE_GOLDENS=1 and say why."
    await scenario(evicted)
    for run in (cached, evicted):
        mode = "evicted before every delivery" if run.evict else "live cache"
        problem = first_difference(name, golden_steps, run.steps)
        if problem is not None:
            pytest.fail(f"[{mode}] {problem}{hint}", pytrace=False)
        assert render(scenario, run) == text, f"[{mode}] {path} differs outside its steps"
