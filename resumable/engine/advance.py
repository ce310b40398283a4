"""Running a woken generator to its next wait, and what its yields and its end become.

``resume`` sends what woke the workflow into its generator; ``advance`` runs it on,
answering inline what needs no event (local steps, kept signals, empty gathers), then
sets up the wait it yields (its slots and requests), or completes it, continues it as
new, or unwinds it (compensations, then the report) when it raises.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, assert_never

import msgspec

from resumable.contracts import ErrorData
from resumable.engine import emit
from resumable.engine.cache import Live
from resumable.engine.definition import Definition
from resumable.engine.frame import Frame
from resumable.engine.generator import (
    Ended,
    Invalid,
    Outcome,
    Raised,
    Yielded,
    as_request,
    describe,
    step,
)
from resumable.engine.replay import step_value, wake_value
from resumable.engine.transitions import (
    START,
    Wake,
    abandon,
    begin_wait,
    clear_wait,
    due_in,
    finish_unwind,
    ms,
    next_undo,
    retry_spec,
    start_unwind,
)
from resumable.engine.turn import Turn, seed_of
from resumable.errors import (
    Cancelled,
    ConfigViolation,
    ContractViolation,
    ServiceError,
    StateError,
    StepError,
    TransactionViolation,
    is_violation,
)
from resumable.events import Event
from resumable.record import (
    ACTIVE,
    DONE,
    RETIRED,
    Entry,
    Header,
    Inline,
    Mode,
    Slot,
    Undo,
    decode_entry,
    decode_for_replay,
    encode_entry,
    wire,
)
from resumable.subject import instance_name
from resumable.workflow import (
    Call,
    Complete,
    Context,
    ContinueAsNew,
    Gather,
    Race,
    Sleep,
    Step,
    WaitFor,
    state_of,
)

__all__ = ["advance", "new_live", "next_compensation", "resume", "unwind"]

log = logging.getLogger("resumable")


def new_live(
    defn: Definition[Any], key: str, header: Header, init: Event, data: Any, revision: int
) -> Live:
    """A new generation's generator, before its first step."""
    fn = defn.function(header.version, lambda: f"subject of event {init.id}")
    frame = Frame(seed_of(key, header.generation))
    ctx: Context[Any] = Context(
        state=defn.new_state(), subject=key, version=header.version, frame=frame
    )
    frame.enter(0, init.time)
    return Live(fn(ctx, data), ctx, frame, header, revision)


async def resume(defn: Definition[Any], turn: Turn, wake: Wake, events: list[Event]) -> None:
    """Send what woke the workflow into its generator and run it to its next wait."""
    live = turn.live
    assert live is not None
    value, error = wake_value(defn, wake, events, turn.header.waits_for)
    turn.resumed = [e.id for e in events]
    turn.wake = wake
    live.frame.enter(turn.header.seq, turn.event.time)
    await advance(defn, turn, value, error)


async def advance(
    defn: Definition[Any], turn: Turn, value: Any, error: BaseException | None
) -> None:
    """Run the generator to its next wait and turn what it yields into events."""
    live = turn.live
    assert live is not None
    header = turn.header
    outcome = step(live.gen, value, error)
    if not (isinstance(outcome, Yielded) and isinstance(outcome.value, Call | Complete)):
        outcome = await _run_inline(defn, turn, live, outcome)  # the common case needs none
    turn.yielded = describe(outcome)
    if isinstance(outcome, Raised):
        _ended_by(defn, turn, outcome.error)
        return
    if isinstance(outcome, Ended):
        _ended_by(
            defn,
            turn,
            RuntimeError(
                f"workflow {defn.uri!r} finished without yielding complete(...); "
                "end it with 'yield complete(result)'"
            ),
        )
        return
    try:
        state = defn.unstructure(state_of(live.ctx))
    except StateError as error:
        _ended_by(defn, turn, error)
        return
    request = as_request(outcome.value)
    match request:
        case Complete():
            produced = emit.completion(defn, request, turn)
            after = step(live.gen, None)
            if not isinstance(after, Ended):
                _ended_by(
                    defn,
                    turn,
                    after.error
                    if isinstance(after, Raised)
                    else RuntimeError(
                        f"workflow {defn.uri!r} yielded `{describe(after)}` after "
                        "complete(...); complete must be the last thing a workflow yields. A "
                        "`finally` block runs after complete(...) too, when nothing can be "
                        "sent any more: do that cleanup before complete(...), or in "
                        "`except Cancelled` for a cancellation"
                    ),
                )
                return
            turn.produced.extend(produced)
            header.status = DONE
            header.result = produced[-1].data if produced else None
            clear_wait(header)
            header.undo = []
        case ContinueAsNew():
            await _continue_as_new(defn, turn, request)
            return
        case Call() | Gather() | Race() | Sleep() | WaitFor():
            _wait(defn, turn, request)
        case Step() | Invalid():
            raise AssertionError("answered inline")
        case _:
            assert_never(request)
    header.state = state
    _keep_patches(header, live)


def _keep_patches(header: Header, live: Live) -> None:
    """Put the ``ctx.patched`` answers in the header to write (a copy only if any)."""
    if live.frame.patches or header.patches:
        header.patches = dict(live.frame.patches)


async def _run_inline(defn: Definition[Any], turn: Turn, live: Live, outcome: Outcome) -> Outcome:
    """Answer at once what needs no event (local steps, kept signals, empty gathers),
    journaling each answer, until the workflow yields something to wait for."""
    while isinstance(outcome, Yielded):
        request = as_request(outcome.value)
        value: Any = None
        error: BaseException | None = None
        match request:
            case Call() | Complete() | Sleep() | ContinueAsNew():
                return outcome
            case Gather():
                if request.calls:
                    return outcome
                record = Inline(yielded=describe(outcome))
                value = []
            case Step():
                record = Inline(yielded=describe(outcome))
                value, record.value, record.error = await _run_step(request)
                if record.error is not None:
                    error = StepError(record.error.errorName, record.error.errorMessage)
            case WaitFor() | Race():
                kept = _kept(turn.header, request)
                if kept is None:
                    return outcome
                index, event_id = kept
                signal = await _kept_signal(defn, turn, event_id)
                record = Inline(yielded=describe(outcome), event=event_id)
                if isinstance(request, Race):
                    record.value = index
                    value = (index, signal)
                else:
                    value = signal
            case Invalid():
                message = (
                    f"workflow yielded {request.value!r}; yield call(...), gather(...), "
                    "race(...), sleep(...), wait_for(...), step(...), continue_as_new(...) or "
                    "complete(...)"
                )
                record = Inline(yielded=describe(outcome), error=ErrorData("TypeError", message))
                error = TypeError(message)
            case _:
                assert_never(request)
        turn.inline.append(record)
        outcome = step(live.gen, value, error)
    return outcome


async def _run_step(request: Step) -> tuple[Any, Any, ErrorData | None]:
    """Run a local step once: (value for the workflow, value to journal, error)."""
    try:
        result = request.fn(*request.args, **request.kwargs)
        if inspect.isawaitable(result):
            result = await result
    except Exception as error:
        return None, None, ErrorData(type(error).__name__, str(error))
    try:
        plain = msgspec.msgpack.decode(msgspec.msgpack.encode(result))
        value = step_value(request, plain)
    except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as error:
        return (
            None,
            None,
            ErrorData(
                "TypeError",
                f"step {request.name} returned {type(result).__name__}, which cannot be "
                f"journaled or converted ({error}); return plain data or a msgspec Struct",
            ),
        )
    return value, plain, None


def _kept(header: Header, request: WaitFor | Race) -> tuple[int, str] | None:
    """The first kept signal this wait (or one arm of this race) takes, removed."""
    arms = request.arms if isinstance(request, Race) else (request,)
    for position, (type_, event_id) in enumerate(header.inbox):
        for index, arm in enumerate(arms):
            if isinstance(arm, WaitFor) and arm.type == type_:
                del header.inbox[position]
                return index, event_id
    return None


async def _kept_signal(defn: Definition[Any], turn: Turn, event_id: str) -> Event:
    if event_id == turn.event.id:  # kept by this very step (it came after a timeout)
        return defn.typed(turn.event)
    raw = await turn.journal.entry(event_id)
    if raw is None:
        raise TransactionViolation(
            TransactionViolation.READ_FAILURE,
            f"workflow {turn.key!r}: kept signal {event_id} is not in its journal",
        )
    return defn.typed(decode_entry(raw).event)


def _wait(
    defn: Definition[Any], turn: Turn, request: Call | Gather | Race | Sleep | WaitFor
) -> None:
    """Set up what the workflow now waits for, and build the requests it sends."""
    assert turn.live is not None
    arms: tuple[Call | Sleep | WaitFor, ...]
    mode: Mode
    match request:
        case Gather():
            arms, mode, timeout = request.calls, "gather", request.timeout
        case Race():
            arms, mode, timeout = request.arms, "race", None
        case Sleep():
            arms, mode, timeout = (request,), "call", None
        case Call() | WaitFor():
            arms, mode, timeout = (request,), "call", request.timeout
        case _:
            assert_never(request)
    slots: list[Slot] = []
    for index, arm in enumerate(arms):
        match arm:
            case Call():
                slot, requests = emit.requests(defn, arm, index, turn)
                slot.retry = retry_spec(arm.retry)
                slot.undo = None if arm.compensate is None else _undo(defn, arm.compensate)
                turn.produced.extend(requests)
            case Sleep():
                due = (
                    ms(arm.until.timestamp())
                    if arm.until is not None
                    else due_in(turn.now, arm.seconds or 0)
                )
                slot = Slot(kind="timer", due=due)
            case WaitFor():
                defn.check_signal(arm.type)
                slot = Slot(kind="signal", service=arm.type)
            case _:
                assert_never(arm)
        slots.append(slot)
    deadline = None if timeout is None else due_in(turn.now, timeout)
    assert turn.yielded is not None
    begin_wait(turn.header, mode, slots, deadline, turn.yielded)
    turn.live.replies = {}


def _undo(defn: Definition[Any], call: Call) -> Undo:
    versioned, data = defn.payload(call, ": the compensation payload")
    return Undo(service=versioned.uri, data=data, retry=retry_spec(call.retry))


def _ended_by(defn: Definition[Any], turn: Turn, error: BaseException) -> None:
    """The generator raised: unwind (compensate, then report), or re-raise a violation."""
    if is_violation(error):
        raise error
    live = turn.live
    assert live is not None
    with contextlib.suppress(StateError):  # unstorable: the last stored state stays
        turn.header.state = defn.unstructure(state_of(live.ctx))
    _keep_patches(turn.header, live)
    turn.live = None
    log.info("workflow %s ended at step %d: %r", instance_name(turn.key), turn.header.seq, error)
    cancelled = turn.header.cancelling or isinstance(error, Cancelled)
    unwind(defn, turn, cancelled, _report(error, cancelled, defn.error_stack))


def _report(error: BaseException, cancelled: bool, stack: bool) -> ErrorData:
    """What the system error says: a service's own error name and message for an unhandled
    ``ServiceError``; for a failure in the cleanup after a cancellation, the cancellation
    with that failure."""
    data = ErrorData.of(error, stack=stack)
    if isinstance(error, ServiceError):
        data = ErrorData(error.name, error.message, data.errorStack)
    if not cancelled or isinstance(error, Cancelled):
        return data
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, Cancelled):
        cause = cause.__context__
    reason = cause.reason if isinstance(cause, Cancelled) else ""
    return ErrorData(
        "Cancelled",
        f"{reason} (and the cleanup after the cancellation failed: {data.errorName}: "
        f"{data.errorMessage})",
        data.errorStack,
    )


def unwind(defn: Definition[Any], turn: Turn, cancelled: bool, error: ErrorData) -> None:
    """Start running the compensation stack (last pushed first), then report."""
    start_unwind(turn.header, cancelled, error)
    next_compensation(defn, turn)


def next_compensation(defn: Definition[Any], turn: Turn) -> None:
    """Send the next compensation, last pushed first; or report the end."""
    header = turn.header
    undo = next_undo(header)
    if undo is None:
        turn.produced.extend(emit.system_error(defn, finish_unwind(header), turn))
        return
    versioned = defn.services.get(undo.service)
    if versioned is None:
        raise ConfigViolation(
            f"workflow {defn.uri!r} must compensate with {undo.service!r}, which "
            "is no longer in its services; add it back to Resumable(..., services=[...])"
        )
    slot, requests = emit.requests(defn, Call(versioned, undo.data), 0, turn)
    slot.retry = undo.retry
    begin_wait(header, "call", [slot], None, f"compensate {versioned.type}")
    turn.produced.extend(requests)


async def _retired(turn: Turn, old: Header) -> list[tuple[str, bytes]]:
    """The events the ending generation consumed, as payload-free journal entries for
    the next one, so a late redelivery of one is dropped quietly rather than taken for
    a new event (a signal kept twice, a reply nobody awaits). Only one generation back:
    the journal stays as bounded as ``continue_as_new`` promises."""
    journal = await turn.journal.entries(turn.revision)
    inbox = {event_id for _, event_id in old.inbox}  # carried over whole, as before
    out: list[tuple[str, bytes]] = []
    for entry in decode_for_replay(journal):
        event = entry.event
        if entry.how == RETIRED or event.id in inbox:
            continue
        stub = msgspec.structs.replace(event, data={}, dataschema=None)
        out.append((event.id, encode_entry(Entry(event=stub, produced=[], how=RETIRED))))
    return out


async def _continue_as_new(defn: Definition[Any], turn: Turn, request: ContinueAsNew) -> None:
    """Start the next generation: new input, fresh state, a new journal, same subject."""
    old = turn.header
    if turn.wake is START and old.generation > 0:
        raise ContractViolation(
            f"workflow {defn.uri!r} yielded continue_as_new(...) as the first "
            "thing of a new generation; that would loop forever"
        )
    generation = old.generation + 1
    init, data = emit.generation_init(defn, turn, request.data, generation)
    kept: list[tuple[str, bytes]] = []
    for _, event_id in old.inbox:
        raw = await turn.journal.entry(event_id)
        if raw is not None:
            kept.append((event_id, encode_entry(Entry(event=decode_entry(raw).event, produced=[]))))
    retired = await _retired(turn, old)
    abandon(old)
    header = Header(
        status=ACTIVE,
        version=old.version,
        seq=0,
        init_event_id=old.init_event_id,  # the parent's request: completions answer it
        parent_subject=old.parent_subject,
        state=None,
        workflow_deadline=old.workflow_deadline,
        run_deadline=None if defn.run_timeout is None else due_in(turn.now, defn.run_timeout),
        inbox=list(old.inbox),
        ignored=list(old.ignored),
        generation=generation,
    )
    first = Turn(
        turn.key,
        init,
        turn.subject,
        turn.headers,
        header,
        turn.revision,
        turn.time,
        turn.now,
        turn.journal,
        new_live(defn, turn.key, header, init, data, turn.revision),
    )
    first.resumed, first.wake = [], START
    await advance(defn, first, None, None)
    header.seq = 1 + len(kept) + len(retired)
    entry = Entry(
        event=wire(init),
        produced=first.produced,
        resumed=[],
        how=START.encode(),
        inline=first.inline,
        yielded=first.yielded,
    )
    turn.reset = [(init.id, encode_entry(entry)), *kept, *retired]
    turn.header = header
    turn.live = first.live
    turn.produced.extend(first.produced)
    turn.resumed, turn.wake, turn.inline = None, None, []
    turn.yielded = "continue_as_new"
