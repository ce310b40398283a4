"""Rebuilding a suspended generator from its journal, and what each wake sends into it.

``wake_value`` is shared by live steps and replay, so both feed a generator the same
values. ``replay`` calls the workflow function again and feeds it its journaled answers,
checking at every step that it yields what was recorded (``NonDeterminismError``
otherwise, which parks the instance).
"""

from __future__ import annotations

from typing import Any, assert_never

import msgspec

from resumable.engine.cache import Live
from resumable.engine.definition import TIMER_TYPE, Definition
from resumable.engine.frame import Frame
from resumable.engine.generator import Invalid, Yielded, as_request, describe, step
from resumable.engine.transitions import Wake
from resumable.engine.turn import seed_of
from resumable.errors import Cancelled, NonDeterminismError, ServiceError, StepError
from resumable.events import Event
from resumable.record import Header, Inline, decode_for_replay
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

__all__ = ["diverged", "replay", "step_value", "wake_value"]


def wake_value(
    defn: Definition[Any], wake: Wake, events: list[Event], waits_for: str | None
) -> tuple[Any, BaseException | None]:
    """What a wake-up sends into the generator: a value, or an error to raise at the
    ``yield``. The same for a live step and for replay."""
    match wake.how:
        case "call":
            return events[0], defn.service_error(events[0])
        case "gather":
            first = next((e for e in events if defn.is_error(e)), None)
            return events, None if first is None else ServiceError(first)
        case "race":
            if not events or events[0].type == TIMER_TYPE:  # a sleep arm won
                return (wake.arm, None), None
            return (wake.arm, events[0]), defn.service_error(events[0])
        case "timeout":
            return None, TimeoutError(f"timed out waiting for {waits_for}")
        case "cancel":
            return None, Cancelled(str(events[0].data.get("reason", "")))
        case "signal":
            return events[0], None
        case "sleep" | "start":
            return None, None
        case _:
            assert_never(wake.how)


def step_value(request: Step, plain: Any) -> Any:
    """A local step's journaled result as the workflow gets it."""
    return plain if request.result_type is None else msgspec.convert(plain, request.result_type)


def diverged(key: str, seq: int, recorded: str | None, now: str) -> NonDeterminismError:
    return NonDeterminismError(
        f"workflow {key!r} no longer matches its history: step {seq} was "
        f"`{recorded}`, now `{now}`. The code changed under a running instance; deploy "
        "the change as a new contract version, or guard it with ctx.patched(...)",
        subject=key,
        step=seq,
        recorded=recorded,
        replayed=now,
    )


def replay(
    defn: Definition[Any], key: str, header: Header, journal: list[bytes], revision: int
) -> Live:
    """Rebuild the suspended generator of ``key`` by feeding it its journal, checking
    every step. ``header`` and ``revision`` are the record's, as read with the journal."""
    fn = defn.function(header.version, f"instance {key}")
    entries = decode_for_replay(journal)
    received = {entry.event.id: entry.event for entry in entries}
    frame = Frame(
        seed_of(key, header.generation), replaying=True, recorded_patches=dict(header.patches)
    )
    ctx: Context[Any] = Context(
        state=defn.new_state(), subject=key, version=header.version, frame=frame
    )
    init = entries[0].event
    versioned = defn.contract.versions[header.version]
    frame.enter(0, init.time)
    gen = fn(ctx, msgspec.convert(init.data, versioned.accepts))
    waits_for: str | None = None
    for seq, entry in enumerate(entries):
        if seq == 0:
            outcome = step(gen)
        elif entry.resumed is None:
            continue
        else:
            wake = Wake.parse(entry.how)
            if wake is None:
                raise diverged(key, seq, entry.how, "a journal entry that resumed nothing")
            resumed = entry.resumed
            events = (  # one event resumed it, as a rule: no comprehension needed
                [defn.typed(received[resumed[0]])]
                if len(resumed) == 1
                else [defn.typed(received[i]) for i in resumed]
            )
            value, error = wake_value(defn, wake, events, waits_for)
            frame.enter(seq, entry.event.time)
            outcome = step(gen, value, error)
        for record in entry.inline:
            now = describe(outcome)
            if now != record.yielded:
                raise diverged(key, seq, record.yielded, now)
            assert isinstance(outcome, Yielded)
            outcome = step(gen, *_inline(defn, outcome.value, record, received))
        now = describe(outcome)
        if now != entry.yielded and not (entry.yielded == "timeout" and entry.resumed is None):
            raise diverged(key, seq, entry.yielded, now)
        waits_for = now
    rebuilt = msgspec.msgpack.decode(msgspec.msgpack.encode(defn.unstructure(state_of(ctx))))
    if rebuilt != header.state:
        raise NonDeterminismError(
            f"workflow {key!r}: replaying its history gives explicit state {rebuilt!r}, "
            f"but {header.state!r} was stored. State must change only in workflow code "
            "between yields, the same way on every run",
            subject=key,
            recorded=repr(header.state),
            replayed=repr(rebuilt),
        )
    frame.replaying = False
    partial = {  # replies already in for the current wait (a gather part-way through)
        index: defn.typed(received[slot.reply])
        for index, slot in enumerate(header.waiting)
        if slot.reply is not None and slot.reply in received
    }
    return Live(gen, ctx, frame, header, revision, partial)


def _inline(
    defn: Definition[Any], value: Any, record: Inline, received: dict[str, Event]
) -> tuple[Any, BaseException | None]:
    """What a journaled inline answer sends into the generator on replay."""
    request = as_request(value)
    match request:
        case Step():
            if record.error is not None:
                return None, StepError(record.error.errorName, record.error.errorMessage)
            return step_value(request, record.value), None
        case Invalid():
            assert record.error is not None
            return None, TypeError(record.error.errorMessage)
        case Race() | WaitFor():
            assert record.event is not None
            signal = defn.typed(received[record.event])
            return ((record.value, signal) if isinstance(request, Race) else signal), None
        case Gather():
            return [], None  # an empty gather
        case Call() | Sleep() | ContinueAsNew() | Complete():
            raise AssertionError(f"{describe(Yielded(value))} is never answered inline")
        case _:
            assert_never(request)
