"""The schedule simulator: run a scenario under a delivery schedule and check it ends as an
undisturbed run of the same inputs does.

A ``Scenario`` is the workflows and services, the instances to start, and the signals to
send at given moments. A ``Schedule`` is a list of disturbances, each applied while events
are in flight: deliver one out of order, deliver one twice, crash while one is applied
(before its record is written, or after and before its events are published), drop the
live generators, hand over to a second runtime on the same memory. When the schedule runs
out, events are delivered in order; time moves only when nothing is in flight, to the next
due timer or signal, as in the undisturbed run. ``check`` then compares with that run:
the same status, state, result and completion events for every instance, the same
requests to every service, each request answered the same way every time it was delivered
(ids and payloads, see ``compare``), and no violation raised.

``simulate(scenario)`` lets hypothesis choose the schedules and shrink a failing one; the
error prints it as ``Schedule([...])``, to paste into ``check(scenario, ...)``.

(Over 500 lines: the schedule, its runner and the comparison with the undisturbed run
are one algorithm; split, each part would need the others' private state.)
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import attrs
import msgspec

from resumable.contracts import Contract, OrchestratorContract
from resumable.driver import Resumable
from resumable.errors import ResumableError
from resumable.events import Event
from resumable.handler import EventHandler
from resumable.memory import InMemoryMemory, Memory
from resumable.testing.compare import differences, identity
from resumable.testing.env import Instance, WorkflowEnv, _first_millisecond_at_or_after
from resumable.testing.host import CrashPoint

__all__ = [
    "Crash",
    "Deliver",
    "Duplicate",
    "Evict",
    "Handover",
    "Outcome",
    "Scenario",
    "Schedule",
    "ScheduleFailed",
    "SignalAt",
    "SimulationReport",
    "Start",
    "acheck",
    "check",
    "run_once",
    "run_schedule",
    "schedules",
    "simulate",
]

Handlers = Iterable[Resumable[Any] | EventHandler]

# ----------------------------------------------------------------------------------
# inputs


@attrs.frozen
class Start:
    """Start instance ``id`` of ``workflow`` with ``data`` when the scenario begins."""

    workflow: OrchestratorContract
    data: Any
    id: str
    version: str | None = None


@attrs.frozen
class SignalAt:
    """Send ``signal`` with ``data`` to instance ``id`` of ``workflow``, ``at`` seconds
    after the scenario begins (at once if ``at`` is 0)."""

    at: float
    workflow: OrchestratorContract
    id: str
    signal: Contract | str
    data: Any


class Scenario:
    """What to run: ``handlers`` (workflows and services, or a function making them anew,
    for services that keep state), the instances to ``start`` and the ``signals`` to send.
    ``max_steps`` bounds the deliveries of one run (more is reported as a loop).

    ``memory`` makes each run's store: a new ``Memory`` (by default an ``InMemoryMemory``),
    or a function opening connections to a new store, which each runtime calls and calls
    again when it restarts (``WorkflowEnv(memory=...)``): a run on a real backend."""

    def __init__(
        self,
        handlers: Handlers | Callable[[], Handlers],
        *,
        start: Sequence[Start],
        signals: Sequence[SignalAt] = (),
        max_steps: int = 5_000,
        memory: Callable[[], Memory | Callable[[], Memory]] = InMemoryMemory,
    ) -> None:
        if not start:
            raise ValueError("a Scenario needs at least one Start(...)")
        self._handlers = handlers if callable(handlers) else list(handlers)
        self.start = list(start)
        self.signals = sorted(signals, key=lambda s: s.at)
        self.max_steps = max_steps
        self.memory = memory
        self._reference: Outcome | None = None

    def env(
        self, runtimes: int = 2, memory: Memory | Callable[[], Memory] | None = None
    ) -> WorkflowEnv:
        """A new environment with this scenario's workflows and services, on ``memory``
        (by default a new store from the scenario's ``memory``)."""
        made = self._handlers() if callable(self._handlers) else self._handlers
        store = memory if memory is not None else self.memory()
        return WorkflowEnv(made, runtimes=runtimes, memory=store)

    async def reference(self) -> Outcome:
        """The undisturbed run (computed once)."""
        if self._reference is None:
            self._reference = await run_schedule(self, Schedule())
            problem = self._reference.problem
            if problem is not None:
                raise ScheduleFailed(f"the undisturbed run itself fails: {problem}")
        return self._reference


# ----------------------------------------------------------------------------------
# schedules


def _where(at: int, index: int) -> str:
    return f"at={at}" if index == 0 else f"at={at}, index={index}"


@attrs.frozen
class Deliver:
    """At step ``at``, deliver the ``index``-th event in flight (modulo how many there are)
    instead of the first: an out-of-order delivery."""

    at: int
    index: int = 0

    def __repr__(self) -> str:
        return f"Deliver({_where(self.at, self.index)})"


@attrs.frozen
class Duplicate:
    """At step ``at``, deliver the ``index``-th event in flight and keep a copy in flight:
    it is delivered again later."""

    at: int
    index: int = 0

    def __repr__(self) -> str:
        return f"Duplicate({_where(self.at, self.index)})"


@attrs.frozen
class Crash:
    """At step ``at``, the process dies while applying the ``index``-th event in flight, at
    ``point``; the event stays in flight and a restart re-sends the unanswered requests."""

    at: int
    point: CrashPoint = "before-publish"
    index: int = 0

    def __repr__(self) -> str:
        return f"Crash({_where(self.at, self.index)}, point={self.point!r})"


@attrs.frozen
class Evict:
    """Before step ``at``, the runtime delivering drops its live generators."""

    at: int

    def __repr__(self) -> str:
        return f"Evict(at={self.at})"


@attrs.frozen
class Handover:
    """Before step ``at``, the other runtime on the same memory takes over delivering."""

    at: int

    def __repr__(self) -> str:
        return f"Handover(at={self.at})"


Op = Deliver | Duplicate | Crash | Evict | Handover


class Schedule(tuple[Op, ...]):
    """Disturbances, each at a step of the run (a step delivers one event; unless a
    disturbance says otherwise, the first in flight). ``repr`` is code that rebuilds it."""

    def __new__(cls, ops: Iterable[Op] = ()) -> Schedule:
        return super().__new__(cls, tuple(ops))

    def __repr__(self) -> str:
        return f"Schedule([{', '.join(map(repr, self))}])"


def schedules(
    *, steps: int = 40, max_ops: int = 8, crashes: bool = True, handovers: bool = True
) -> Any:
    """A hypothesis strategy of ``Schedule``s of up to ``max_ops`` disturbances in the
    first ``steps`` steps (``crashes``/``handovers`` False leaves those out). It shrinks
    towards fewer and earlier disturbances."""
    from hypothesis import strategies as st

    at = st.integers(0, max(steps - 1, 0))
    index = st.integers(0, 3)
    ops: list[Any] = [
        st.builds(Deliver, at, index),
        st.builds(Duplicate, at, index),
        st.builds(Evict, at),
    ]
    if crashes:
        points = st.sampled_from(["before-publish", "before-write"])
        ops.append(st.builds(Crash, at, points, index))
    if handovers:
        ops.append(st.builds(Handover, at))
    return st.lists(st.one_of(*ops), max_size=max_ops).map(Schedule)


# ----------------------------------------------------------------------------------
# running and checking


@attrs.frozen
class Outcome:
    """How one run ended: per instance what a user observes, per service what it did."""

    instances: dict[str, dict[str, Any]]
    completions: dict[str, dict[str, Any]]
    """Events sent outside (completions, reports), by id, as ``compare.identity``."""
    requests: dict[str, list[str]]
    """Per service, the ids of the distinct requests it got, sorted."""
    sent: dict[str, dict[str, Any]]
    """Every event the workflows emitted (requests, completions, signals), by id, as
    ``compare.identity``, in the order of first emission. ``check`` compares them less
    ``parentid`` (the event that woke the step: it depends on the order replies arrive in)."""
    trace: list[str]
    schedule: Schedule
    """The disturbances the run applied, indices resolved: replays this run exactly."""
    problem: str | None = None
    deliveries: int = 0


def _label(event: Event) -> str:
    return f"{event.type} (id {event.id[:8]})"


async def run_schedule(scenario: Scenario, schedule: Schedule) -> Outcome:
    """Run ``scenario`` under ``schedule``; the outcome says what it ended with, and
    ``problem`` what broke during the run (a violation, a loop, an answer that changed)."""
    store = scenario.memory()
    env = scenario.env(memory=store)
    began = env.clock.time()
    instances = [
        await env.start(s.workflow, s.data, id=s.id, version=s.version) for s in scenario.start
    ]
    signals = list(scenario.signals)
    queue = sorted(schedule, key=lambda op: op.at)  # stable: list order within a step
    applied: list[Op] = []
    trace: list[str] = []
    problem: str | None = None
    step = 0
    try:
        while True:
            if env.delivered > scenario.max_steps:
                problem = f"still running after {scenario.max_steps} deliveries (a loop?)"
                break
            if not env.pending:
                if not await _next_moment(env, began, signals, trace):
                    break
                continue
            while queue and queue[0].at <= step and isinstance(queue[0], Evict | Handover):
                applied.append(_apply(env, queue.pop(0), step, trace))
                await _act(env, applied[-1])
            if queue and queue[0].at <= step:
                op = _apply(env, queue.pop(0), step, trace)
                if op != Deliver(step):  # delivering the first in flight is no disturbance
                    applied.append(op)
                await _act(env, op)
            else:
                trace.append(f"step {step}: deliver {_label(env.pending[0])}")
                await env.step(0)
            step += 1
    except Exception as error:  # a violation, or the simulated world broke
        problem = f"{type(error).__name__}: {error}"
        trace.append(f"raised {problem}")
    if problem is None:
        problem = _answers_changed(env) or _sent_differently(env)
    try:
        return Outcome(
            instances={i.id: await _observe(env, i) for i in instances},
            completions={e.id: _public(e) for e in env.outside},
            requests=_requests(env),
            sent={e.id: _public(e) for e in env.emitted if e.source in env.workflows},
            trace=trace,
            schedule=Schedule(applied),
            problem=problem,
            deliveries=env.delivered,
        )
    finally:
        await env.close()
        if isinstance(store, Memory):  # made for this run; an opener's the env closed
            await store.close()


def _apply(env: WorkflowEnv, op: Op, step: int, trace: list[str]) -> Op:
    """``op`` as applied at ``step``, its index resolved against what is in flight; what it
    does goes to ``trace``."""
    if isinstance(op, Deliver | Duplicate | Crash):
        index = op.index % len(env.pending)
        event = _label(env.pending[index])
        if isinstance(op, Deliver):
            trace.append(f"step {step}: deliver {event} out of order")
            return Deliver(step, index)
        if isinstance(op, Duplicate):
            trace.append(f"step {step}: deliver {event}, and again later (a duplicate)")
            return Duplicate(step, index)
        trace.append(f"step {step}: crash {op.point} while applying {event}; restart")
        return Crash(step, op.point, index)
    if isinstance(op, Evict):
        trace.append(f"step {step}: runtime {env.runtime} drops its live generators")
        return Evict(step)
    trace.append(f"step {step}: runtime {(env.runtime + 1) % len(env.hosts)} takes over")
    return Handover(step)


async def _act(env: WorkflowEnv, op: Op) -> None:
    if isinstance(op, Deliver):
        await env.step(op.index)
    elif isinstance(op, Duplicate):
        await env.step(op.index, keep=True)
    elif isinstance(op, Crash):
        await env.step(op.index, crash=op.point)
    elif isinstance(op, Evict):
        env.hosts[env.runtime].crash()
    else:
        env.runtime = (env.runtime + 1) % len(env.hosts)


async def _next_moment(
    env: WorkflowEnv, began: float, signals: list[SignalAt], trace: list[str]
) -> bool:
    """Nothing in flight: move the clock to the next timer or signal; False if none."""
    due = await env.next_due()
    signal_at = began + signals[0].at if signals else None
    if due is None and signal_at is None:
        return False
    if signal_at is not None and (due is None or signal_at <= due):
        signal = signals.pop(0)
        env.clock.set(signal_at)
        instance = env.instance(signal.workflow, signal.id)
        env.signal(instance, signal.signal, signal.data)
        name = signal.signal if isinstance(signal.signal, str) else signal.signal.type
        trace.append(f"at +{signal.at:g}s signal {name} to {signal.id}")
        return True
    assert due is not None
    env.clock.set(_first_millisecond_at_or_after(due))
    trace.append(f"time moves to +{env.clock.time() - began:g}s")
    await env.advance(0)
    return True


def _public(event: Event) -> dict[str, Any]:
    plain = identity(event)
    plain.pop("data", None)
    plain["data"] = _without_stack(msgspec.to_builtins(event.data))
    return plain


def _without_stack(data: Any) -> Any:
    """An error payload less its stack trace, which names the lines the run went through."""
    if isinstance(data, dict) and "errorStack" in data:
        return {k: v for k, v in data.items() if k != "errorStack"}
    return data


async def _observe(env: WorkflowEnv, instance: Instance) -> dict[str, Any]:
    try:
        status = await env.status(instance)
    except LookupError:
        return {"status": "never started"}
    return {
        "status": status.status,
        "state": msgspec.to_builtins(status.state) if status.state is not None else None,
        "result": status.result,
        "error": None
        if status.error is None
        else f"{status.error.errorName}: {status.error.errorMessage}",
        "waits_for": status.waits_for,
        "steps": status.steps,
        "compensations": status.compensations,
    }


def _requests(env: WorkflowEnv) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for call in env.calls:
        out.setdefault(call.service, set()).add(call.request.id)
    return {service: sorted(ids) for service, ids in sorted(out.items())}


def _answers_changed(env: WorkflowEnv) -> str | None:
    """The first request a service answered differently when it came again, if any."""
    first: dict[str, tuple[Event, ...]] = {}
    for call in env.calls:
        before = first.setdefault(call.request.id, call.replies)
        if before is call.replies:
            continue
        if len(before) != len(call.replies):
            return (
                f"service {call.service} answered request {call.request.id} with "
                f"{len(before)} events, then with {len(call.replies)} when it came again: it "
                "must do its effect once per request id"
            )
        for a, b in zip(before, call.replies, strict=True):
            changed = differences(a, b)
            if changed:
                return (
                    f"service {call.service} answered request {call.request.id} differently "
                    f"when it came again ({'; '.join(changed)}): it must do its effect once "
                    "per request id and answer a repeated request the same way"
                )
    return None


def _sent_differently(env: WorkflowEnv) -> str | None:
    """The first event a workflow emitted again (answering a redelivery from its journal)
    that differs from its first emission, if any: a redelivery must get the same events."""
    first: dict[str, Event] = {}
    for event in env.emitted:
        if event.source not in env.workflows:
            continue
        before = first.setdefault(event.id, event)
        changed = differences(before, event)
        if changed:
            return (
                f"workflow {event.source} emitted event {event.id} ({event.type}) again, "
                f"differently ({'; '.join(changed)}): a redelivered event must get the events "
                "it produced the first time"
            )
    return None


class ScheduleFailed(ResumableError, AssertionError):
    """A schedule made the scenario end differently from the undisturbed run."""


def _causeless(sent: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Emitted events less ``parentid``, which names what woke the step: the last reply to
    arrive, so it changes with the order of arrival while the step does the same."""
    return {i: {k: v for k, v in e.items() if k != "parentid"} for i, e in sent.items()}


def _changed(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which attributes differ between two events as plain data, and how."""
    names = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
    return "; ".join(f"{n}: {a.get(n)!r} -> {b.get(n)!r}" for n in names)


def _compare(reference: Outcome, got: Outcome) -> list[str]:
    found: list[str] = []
    if got.problem is not None:
        found.append(got.problem)
    for id, expected in reference.instances.items():
        actual = got.instances.get(id)
        for name, value in expected.items():
            if actual is None or actual.get(name) != value:
                found.append(
                    f"instance {id!r}: {name} is {None if actual is None else actual.get(name)!r}, "
                    f"undisturbed {value!r}"
                )
    ref = reference.completions
    if got.completions != ref:
        extra = sorted(got.completions.keys() - reference.completions.keys())
        missing = sorted(reference.completions.keys() - got.completions.keys())
        found.append(
            f"events sent outside differ: {len(extra)} extra, {len(missing)} missing"
            + "".join(
                f"\n      extra {got.completions[i]['type']} {got.completions[i]['data']}"
                for i in extra
            )
            + "".join(f"\n      missing {ref[i]['type']} {ref[i]['data']}" for i in missing)
        )
    sent, ref_sent = _causeless(got.sent), _causeless(reference.sent)
    if sent != ref_sent:
        extra = sorted(sent.keys() - ref_sent.keys())
        missing = sorted(ref_sent.keys() - sent.keys())
        changed = sorted(i for i in sent.keys() & ref_sent.keys() if sent[i] != ref_sent[i])
        found.append(
            f"events the workflows emitted differ: {len(extra)} extra, {len(missing)} missing, "
            f"{len(changed)} changed"
            + "".join(f"\n      extra {got.sent[i]['type']} {got.sent[i]['data']}" for i in extra)
            + "".join(
                f"\n      missing {reference.sent[i]['type']} {reference.sent[i]['data']}"
                for i in missing
            )
            + "".join(
                f"\n      changed {got.sent[i]['type']} {_changed(ref_sent[i], sent[i])}"
                for i in changed
            )
        )
    for service in sorted(reference.requests.keys() | got.requests.keys()):
        want, have = reference.requests.get(service, []), got.requests.get(service, [])
        if want != have:
            found.append(
                f"service {service} got {len(have)} distinct requests, undisturbed "
                f"{len(want)}: each effect must be asked for once, under one request id"
            )
    return found


async def acheck(scenario: Scenario, schedule: Schedule) -> Outcome:
    """``check``, for a test already in an event loop."""
    reference = await scenario.reference()
    got = await run_schedule(scenario, schedule)
    found = _compare(reference, got)
    if found:
        lines = "\n".join(f"  {n}. {step}" for n, step in enumerate(got.trace, start=1))
        raise ScheduleFailed(
            "the scenario ended differently from its undisturbed run:\n  - "
            + "\n  - ".join(found)
            + f"\nwhat the schedule did:\n{lines or '  (nothing: the undisturbed order)'}"
            + f"\nreplay it with: check(scenario, {got.schedule!r})"
        )
    return got


def check(scenario: Scenario, schedule: Schedule) -> Outcome:
    """Run ``scenario`` under ``schedule`` and raise ``ScheduleFailed`` if it ends
    differently from the undisturbed run; returns the outcome."""
    return anyio.run(acheck, scenario, schedule)


@attrs.frozen
class SimulationReport:
    """What ``simulate`` ran: how many schedules, in how long."""

    schedules: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.schedules / self.seconds if self.seconds else 0.0


def simulate(
    scenario: Scenario,
    *,
    max_examples: int = 200,
    max_ops: int = 8,
    crashes: bool = True,
    handovers: bool = True,
    settings: Any = None,
) -> SimulationReport:
    """Check ``scenario`` under ``max_examples`` schedules hypothesis chooses; a failure
    is shrunk and raised as ``ScheduleFailed``, with the schedule to paste into ``check``.
    ``settings`` (a ``hypothesis.settings``) replaces the defaults."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as Settings

    runs = 0

    def one(schedule: Schedule) -> None:
        nonlocal runs
        runs += 1
        check(scenario, schedule)

    if settings is None:
        settings = Settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
    reference = anyio.run(scenario.reference)
    steps = reference.deliveries + 2
    strategy = schedules(steps=steps, max_ops=max_ops, crashes=crashes, handovers=handovers)
    test: Callable[[], None] = settings(given(strategy)(one))  # type: ignore[no-untyped-call]
    began = _time.perf_counter()
    test()
    return SimulationReport(runs, _time.perf_counter() - began)


def run_once(scenario: Scenario, schedule: Schedule) -> Outcome:
    """Run ``scenario`` under ``schedule`` without comparing (to look at its outcome)."""
    return anyio.run(run_schedule, scenario, schedule)
