"""What a workflow yields, and the context it runs with.

A workflow is ``async def fn(ctx, init_data)`` written as an async generator. Each
``yield`` hands the driver a request and suspends until the answer is in::

    reply = yield call(payments, ChargeCard(...))       # the reply Event, .data typed
    a, b = yield gather(call(stock, ...), call(ship, ...))   # replies in call order
    yield complete(OrderResult(...))                    # ends the workflow

The values here are plain descriptions; the driver turns them into events.
"""

from __future__ import annotations

import random as _random
import uuid as _uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

import attrs

from resumable.backoff import backoff_delay
from resumable.contracts import Contract, VersionedContract
from resumable.domains import DomainSpec, check_domain_spec
from resumable.engine.frame import Frame
from resumable.errors import SetupError
from resumable.events import Event
from resumable.ids import derive_id
from resumable.types import WorkflowFunction
from resumable.workflowlog import WorkflowLogger

__all__ = [
    "Call",
    "Complete",
    "Context",
    "ContinueAsNew",
    "Gather",
    "Race",
    "Reply",
    "Request",
    "Retry",
    "Sleep",
    "Step",
    "WaitFor",
    "Workflow",
    "WorkflowFunction",
    "call",
    "complete",
    "continue_as_new",
    "gather",
    "race",
    "sleep",
    "sleep_until",
    "step",
    "wait_for",
]

S = TypeVar("S")

ParentClose = Literal["cancel", "abandon"]


@attrs.frozen
class Retry:
    """How to re-send a request whose reply is a system error.

    ``attempts`` counts every send, the first included. The wait before attempt ``n + 1`` is
    ``initial * factor ** (n - 1)`` seconds, at most ``max_interval``; it is a durable
    timer, so a crash in the middle neither loses nor resets the count. A system error whose
    ``errorName`` is in ``non_retryable`` is raised at once.
    """

    attempts: int = 3
    initial: float = 1.0
    factor: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.attempts < 1:
            raise SetupError(f"Retry(attempts=...) must be at least 1, got {self.attempts}")
        if self.initial < 0 or self.factor < 1 or self.max_interval < 0:
            raise SetupError(
                f"Retry needs initial >= 0, factor >= 1 and max_interval >= 0, got {self!r}"
            )
        object.__setattr__(self, "non_retryable", tuple(self.non_retryable))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return backoff_delay(attempt, self.initial, self.factor, self.max_interval)


@attrs.frozen
class Call:
    """Send a request to a service (or start a child workflow) and wait for its reply."""

    service: Contract | VersionedContract
    data: Any
    to: str | None = None
    redirectto: str | None = None
    accesscontrol: str | None = None
    executionunits: float | None = None
    domain: DomainSpec = None
    extensions: Mapping[str, str | int | float | bool | None] = attrs.field(factory=dict)
    timeout: float | None = None
    retry: Retry | None = None
    compensate: Call | None = None
    on_parent_close: ParentClose = "cancel"
    """For a child workflow: cancel it (the default) or let it run on when this workflow
    stops waiting for it (it ends, is cancelled, times out, or the call loses a race)."""

    def describe(self) -> str:
        return f"call {self.service.type}"


@attrs.frozen
class Gather:
    """Send several requests at once and wait for all replies, returned in call order."""

    calls: tuple[Call, ...]
    timeout: float | None = None

    def describe(self) -> str:
        return f"gather({', '.join(c.describe() for c in self.calls)})"


@attrs.frozen
class Sleep:
    """Wait until a moment: ``seconds`` after the step that yields it runs, or ``until``."""

    seconds: float | None = None
    until: datetime | None = None

    def describe(self) -> str:
        return "sleep"


@attrs.frozen
class WaitFor:
    """Wait for an event of ``type`` sent to this workflow's subject (a signal)."""

    type: str
    timeout: float | None = None

    def describe(self) -> str:
        return f"wait_for {self.type}"


RaceArm = Call | Sleep | WaitFor


@attrs.frozen
class Race:
    """Wait for the first of several requests, timers or signals; the rest are ignored."""

    arms: tuple[RaceArm, ...]

    def describe(self) -> str:
        return f"race({', '.join(a.describe() for a in self.arms)})"


@attrs.frozen
class Step:
    """Run a local function once and journal its result (``step(fn, *args)``)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    name: str
    result_type: Any = None

    def describe(self) -> str:
        return f"step {self.name}"


@attrs.frozen
class ContinueAsNew:
    """Restart the workflow on the same subject with new input and an empty journal."""

    data: Any

    def describe(self) -> str:
        return "continue_as_new"


@attrs.frozen
class Complete:
    """End the workflow with its completion payload, sent to the initiator."""

    data: Any
    executionunits: float | None = None
    domain: DomainSpec | None = None

    def describe(self) -> str:
        return "complete"


Request = Call | Gather | Race | Sleep | WaitFor | Step | ContinueAsNew | Complete
"""Anything a workflow may ``yield``."""

Reply = Event[object]
"""A reply as a workflow annotates it: ``reply: Reply = yield call(...)``. Its ``data`` is
``object`` until a ``match`` on the contract's Structs narrows it (docs/typing.md)."""

Workflow = AsyncGenerator[Request, Any]
"""The return annotation of a workflow function: ``async def fn(ctx, data) -> Workflow``.
The value of each ``yield`` depends on what was yielded, so annotate the variable it is
assigned to (``Reply``, ``tuple[Reply, Reply]`` for a gather of two, ...)."""


def _check_timeout(timeout: float | timedelta | None, where: str) -> float | None:
    if timeout is None:
        return None
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise SetupError(f"{where} must be a positive number of seconds, got {timeout!r}")
    return float(seconds)


def call(
    service: Contract | VersionedContract,
    data: Any,
    *,
    to: str | None = None,
    redirectto: str | None = None,
    accesscontrol: str | None = None,
    executionunits: float | None = None,
    domain: DomainSpec = None,
    extensions: Mapping[str, str | int | float | bool | None] | None = None,
    timeout: float | timedelta | None = None,
    retry: Retry | None = None,
    compensate: Call | None = None,
    on_parent_close: ParentClose = "cancel",
) -> Call:
    """A request to ``service`` with payload ``data``; ``yield`` it to get the reply Event.

    A ``sys.<type>.error`` reply raises ``ServiceError`` at the ``yield`` (after the
    ``retry`` policy, if any, is spent). ``timeout`` raises ``TimeoutError`` at the
    ``yield`` if no reply came in time; a later reply is ignored. ``compensate`` is the
    undo of this call: once the call succeeds it is pushed on the workflow's compensation
    stack, run in reverse order if the workflow later fails or is cancelled.

    Calling an ``OrchestratorContract`` starts a child workflow whose completion is the
    reply. ``domain`` None means the workflow's default (``Resumable(service_domain=...)``,
    local unless set); a domain sends the request to that domain's owner instead.
    ``on_parent_close`` says what happens to such a child when this workflow stops waiting
    for it (it ends, is cancelled or times out, or the call loses a race or times out):
    ``"cancel"`` (the default) cancels it, ``"abandon"`` lets it run on.
    """
    if not isinstance(service, Contract | VersionedContract):
        raise SetupError(f"call() needs a contract as its first argument, got {service!r}")
    check_domain_spec(domain, "call(domain=...)")
    if retry is not None and not isinstance(retry, Retry):
        raise SetupError(f"call(retry=...) takes a Retry(...), got {retry!r}")
    if compensate is not None:
        if not isinstance(compensate, Call):
            raise SetupError(f"call(compensate=...) takes a call(...), got {compensate!r}")
        if compensate.compensate is not None or compensate.timeout is not None:
            raise SetupError("a compensation call cannot itself have compensate= or timeout=")
    if on_parent_close not in ("cancel", "abandon"):
        raise SetupError(
            f"call(on_parent_close=...) takes 'cancel' or 'abandon', got {on_parent_close!r}"
        )
    return Call(
        service,
        data,
        to,
        redirectto,
        accesscontrol,
        executionunits,
        domain,
        dict(extensions or {}),
        _check_timeout(timeout, "call(timeout=...)"),
        retry,
        compensate,
        on_parent_close,
    )


def gather(*calls: Call, timeout: float | timedelta | None = None) -> Gather:
    """Several requests sent together; ``yield`` it to get their replies in call order.

    If any reply is a system error, ``ServiceError`` for the first of them (in call order)
    is raised once all replies are in. ``timeout`` raises ``TimeoutError`` if they are not
    all in by then; the missing replies are ignored when they come.
    """
    for item in calls:
        if not isinstance(item, Call):
            raise SetupError(f"gather() takes call(...) values, got {item!r}")
        if item.timeout is not None:
            raise SetupError("give gather(...) one timeout= instead of one per call")
    return Gather(tuple(calls), _check_timeout(timeout, "gather(timeout=...)"))


def race(*arms: RaceArm) -> Race:
    """The first of several calls, sleeps or signals to finish; ``yield`` it to get
    ``(index, value)``: which one won, and its reply event (None for a sleep).

    The winner is journaled, so a replay picks the same one; the losers' late replies are
    ignored. A winning system-error reply raises ``ServiceError``.
    """
    if len(arms) < 2:
        raise SetupError(f"race() needs at least two arms, got {len(arms)}")
    for arm in arms:
        if not isinstance(arm, Call | Sleep | WaitFor):
            raise SetupError(f"race() takes call(...), sleep(...) or wait_for(...), got {arm!r}")
        if arm.timeout is not None if not isinstance(arm, Sleep) else False:
            raise SetupError("inside race() use a sleep(...) arm instead of timeout=")
        if isinstance(arm, Call) and arm.retry is not None:
            raise SetupError(
                "retry= is not supported inside race(); race the retried call "
                "from a child workflow instead"
            )
    return Race(tuple(arms))


def sleep(duration: float | timedelta) -> Sleep:
    """A durable timer: ``yield sleep(30)`` resumes 30 seconds (of workflow time) later,
    even across a restart."""
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise SetupError(f"sleep() needs a duration >= 0 (seconds or timedelta), got {duration!r}")
    return Sleep(seconds=float(seconds))


def sleep_until(moment: datetime) -> Sleep:
    """A durable timer until ``moment``, a timezone-aware datetime."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise SetupError(
            f"sleep_until() needs a timezone-aware datetime (e.g. datetime.now(UTC)), got "
            f"{moment!r}"
        )
    return Sleep(until=moment.astimezone(UTC))


def wait_for(signal: str | Contract, *, timeout: float | timedelta | None = None) -> WaitFor:
    """Wait for a signal: an event of this type (or contract) sent to the workflow's subject.

    The workflow must list it in ``Resumable(signals=[...])``. A signal that arrived before
    the workflow waits is kept and returned at once. ``timeout`` raises ``TimeoutError``.
    """
    if isinstance(signal, Contract):
        type_ = signal.type
    elif isinstance(signal, str) and signal:
        type_ = signal
    else:
        raise SetupError(f"wait_for() takes an event type or a Contract, got {signal!r}")
    return WaitFor(type_, _check_timeout(timeout, "wait_for(timeout=...)"))


def step(fn: Callable[..., Any], *args: Any, result_type: Any = None, **kwargs: Any) -> Step:
    """Run ``fn(*args, **kwargs)`` (sync or async) once and journal its result.

    ``yield step(...)`` returns the result; on replay the journaled value is returned and
    ``fn`` is not run again. The result must be plain data or a msgspec Struct; it comes
    back as plain data unless ``result_type`` says what to convert it to. An exception from ``fn``
    is raised at the ``yield`` as ``StepError``. A crash after ``fn`` ran and before the
    step was journaled runs it again: make it idempotent, as any at-least-once step.
    """
    if not callable(fn):
        raise SetupError(f"step() needs a function, got {fn!r}")
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return Step(fn, tuple(args), dict(kwargs), str(name), result_type)


def continue_as_new(data: Any) -> ContinueAsNew:
    """Restart this workflow with ``data`` as its new input and an empty history, on the
    same subject: ``yield continue_as_new(...)`` keeps a long-running loop's record small."""
    return ContinueAsNew(data)


def complete(
    data: Any, *, executionunits: float | None = None, domain: DomainSpec | None = None
) -> Complete:
    """The workflow's result; ``yield complete(...)`` ends it (async generators cannot return).

    ``domain`` None means the workflow's default (``Resumable(complete_domain=...)``);
    pass ``[None]`` to force a local event.
    """
    check_domain_spec(domain, "complete(domain=...)")
    return Complete(data, executionunits, domain)


def _no_state() -> SetupError:
    return SetupError(
        "ctx.state is used, but this workflow has no explicit state: define an attrs class "
        "and pass it as Resumable(..., state=MyState); it is built with no arguments for "
        "each new instance and stored after every step"
    )


class _NoState:
    """The state of a workflow defined without ``state=``: reading ``ctx.state`` says so."""

    def __repr__(self) -> str:
        return "NO_STATE"


NO_STATE: Any = _NoState()


def state_of(ctx: Context[Any]) -> Any:
    """The context's state for the engine to store; None for a stateless workflow."""
    state = ctx._state
    return None if state is NO_STATE else state


class Context(Generic[S]):
    """What a running workflow sees besides its input: explicit state and deterministic helpers.

    ``state`` is persisted after every step. ``now()``, ``uuid()`` and ``random()`` return
    the same values when the workflow is replayed, so they are safe to branch on.
    """

    __slots__ = ("_frame", "_log", "_state", "subject", "version")

    def __init__(self, *, state: S, subject: str, version: str, frame: Frame | None = None) -> None:
        self._state = state
        self.subject = subject
        self.version = version
        self._frame = frame if frame is not None else Frame(subject)
        self._log: WorkflowLogger | None = None

    @property
    def log(self) -> WorkflowLogger:
        """A logger that writes each line once, not again when the workflow is replayed,
        with the instance's subject and step on every record (``resumable.workflow``)."""
        if self._log is None:
            self._log = WorkflowLogger(self._frame, self.subject, self.version)
        return self._log

    @property
    def state(self) -> S:
        """The workflow's explicit state, an instance of the ``state=`` class."""
        if self._state is NO_STATE:
            raise _no_state()
        return self._state

    @state.setter
    def state(self, value: S) -> None:
        if self._state is NO_STATE:
            raise _no_state()
        self._state = value

    @property
    def is_replaying(self) -> bool:
        """True while the engine rebuilds this workflow from its journal."""
        return self._frame.replaying

    def now(self) -> datetime:
        """The time of the event that resumed this step (UTC): the same on replay."""
        return datetime.fromisoformat(self._frame.time)

    def uuid(self) -> _uuid.UUID:
        """A UUID unique to this workflow, step and call: the same on replay."""
        frame = self._frame
        frame.counter += 1
        return _uuid.UUID(derive_id(frame.seed, frame.seq, "uuid", frame.counter))

    def patched(self, change_id: str) -> bool:
        """Whether this instance runs the code of change ``change_id``.

        True for an instance that reaches this line with the new code running live; False
        for an older instance replaying history that was made before the change. The answer
        is persisted, so it stays the same for the rest of the instance's life::

            if ctx.patched("send-receipt"):
                yield call(email, Receipt(...))
        """
        frame = self._frame
        decided = frame.patches.get(change_id)
        if decided is None:
            recorded = frame.recorded_patches.get(change_id)
            decided = recorded if recorded is not None else not frame.replaying
            frame.patches[change_id] = decided
        return decided

    def random(self) -> _random.Random:
        """A random generator seeded from the workflow and step: the same sequence on replay."""
        frame = self._frame
        frame.counter += 1
        return _random.Random(derive_id(frame.seed, frame.seq, "random", frame.counter))
