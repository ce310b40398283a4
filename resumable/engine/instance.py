"""``decide``: one event and the stored instance in, a ``Decision`` out.

The only entry point of the engine. It finds what the event is to the instance (its
start, a reply to an open slot, a timer, a signal, a cancellation, or something already
seen), applies it with one small function per kind, and returns the new header, the
journal entries to append and the events to emit. Storage is read only through the
``Journal`` it is given; the time is the ``time``/``now`` it is given.
"""

from __future__ import annotations

import logging
from typing import Any, assert_never

from resumable.contracts import PARENT_SUBJECT_KEY, ErrorData
from resumable.engine import emit
from resumable.engine.advance import advance, new_live, next_compensation, resume, unwind
from resumable.engine.cache import Live
from resumable.engine.definition import Definition, EventKind
from resumable.engine.replay import replay
from resumable.engine.transitions import (
    CALL,
    CANCEL,
    GATHER,
    SIGNAL,
    SLEEP,
    START,
    TIMEOUT,
    Due,
    Wake,
    abandon,
    due_action,
    due_in,
    due_retries,
    find_slot,
    ignore,
    push_filled_undo,
    push_undo,
    schedule_retry,
)
from resumable.engine.turn import Decision, Journal, Turn
from resumable.errors import ExecutionViolation, NonDeterminismError, TransactionViolation
from resumable.events import Event
from resumable.record import (
    ACTIVE,
    PARKED,
    Entry,
    Header,
    Parked,
    decode_entry,
    decode_header,
    encode_entry,
    wire,
)
from resumable.subject import Subject, SubjectError, instance_name, parse_subject
from resumable.telemetry import TraceHeaders

__all__ = ["Stored", "decide"]

log = logging.getLogger("resumable")


class Stored:
    """The stored instance as the shell read it: revision, header bytes, and the live
    generator if the cache holds the one of that revision."""

    __slots__ = ("header", "live", "revision")

    def __init__(self, revision: int, header: bytes, live: Live | None) -> None:
        self.revision = revision
        self.header = header
        self.live = live


async def decide(
    defn: Definition[Any],
    event: Event,
    typed: Event,
    subject: Subject,
    stored: Stored | None,
    journal: Journal,
    *,
    time: str,
    now: float,
    headers: TraceHeaders,
) -> Decision:
    """Apply ``event`` (``typed``: validated, payload decoded) to the instance ``stored``
    (None: there is none yet) at the step's ``time``/``now``."""
    key = event.subject
    kind = defn.kind_of(event)
    if stored is None:
        if kind != "init":
            raise ExecutionViolation(
                f"workflow {key!r} does not exist, and event {event.id} ({event.type}) is "
                f"not its init event ({defn.source}); a workflow starts with an init event"
            )
        return await _start(defn, event, typed, subject, journal, time, now, headers)
    live = stored.live
    header = live.header if live is not None else decode_header(stored.header)
    if header.status == PARKED:
        return _while_parked(header, event)
    if header.status != ACTIVE or kind == "init":
        return await _seen_or(
            key,
            event,
            header,
            journal,
            f"workflow {key!r} has already started; init event {event.id} is a second "
            "init for the same subject"
            if header.status == ACTIVE
            else None,
        )
    index: int | None = None
    if kind == "reply":
        index = find_slot(header, event, defn.repliers.get(event.type, ()))
        if index is None:
            quiet = event.parentid is not None and event.parentid in header.ignored
            return await _seen_or(
                key,
                event,
                header,
                journal,
                None if quiet else _unmatched(key, event, header),
            )
        if header.waiting[index].due is not None:
            # In a retry backoff: this may be the error reply that began it, delivered
            # again. Answer it from the journal rather than schedule the retry anew.
            raw = await journal.entry(event.id)
            if raw is not None:
                return Decision(list(decode_entry(raw).produced))
    else:  # nothing in the header tells a redelivered timer, signal or cancel: look
        raw = await journal.entry(event.id)
        if raw is not None:
            return Decision(list(decode_entry(raw).produced))
    turn = Turn(key, event, subject, headers, header, stored.revision, time, now, journal, live)
    try:
        late = None if kind == "timer" else _overdue(turn.header, kind, now)
        if late is not None:
            changed = True
            if kind == "signal":  # the timeout came first; the signal waits for a wait_for
                turn.header.inbox.append((typed.type, event.id))
            await _fire(defn, turn, late, [] if late.what == "timer" else [event])
        else:
            changed = await _apply(defn, turn, kind, index, typed)
    except NonDeterminismError as error:
        return _park(stored, event, error)
    return _commit(turn) if changed else Decision([])


def _unmatched(key: str, event: Event, header: Header) -> str:
    """Why a reply fills no slot, for the violation."""
    waits = header.waits_for or "nothing"
    if event.parentid is None:
        return (
            f"workflow {key!r} has no open call that reply {event.id} ({event.type}) can "
            f"answer: it has no parentid, so it is matched by its type, and no call waiting "
            f"for that type is open (it waits for {waits})"
        )
    return (
        f"workflow {key!r} is not waiting for a reply to event {event.parentid!r} "
        f"(event {event.id}, {event.type}); it waits for {waits}"
    )


def _overdue(header: Header, kind: EventKind, now: float) -> Due | None:
    """What fell due before this event was applied, though no timer event has come yet:
    the event then finds the deadline passed (a reply or signal after its wait's timeout,
    anything after the instance's), or a race already won by its timer arm."""
    if header.unwinding is not None or not (
        header.deadline or header.workflow_deadline or header.run_deadline or header.mode == "race"
    ):
        return None  # nothing that falls due could change what this event does
    due = due_action(header, now, retries=False)
    if due is None or (kind == "cancel" and due.what not in ("workflow", "run")):
        return None
    if due.what == "timer" and header.mode != "race":
        return None  # a plain sleep: the event is simply kept, the timer fires on its own
    return due


async def _apply(
    defn: Definition[Any], turn: Turn, kind: EventKind, index: int | None, typed: Event
) -> bool:
    """Apply the event by its kind; False if it changed nothing (a timer with nothing due),
    so nothing is written."""
    if turn.header.unwinding is not None:
        return await _on_unwinding(defn, turn, kind, index, typed)
    match kind:
        case "reply":
            assert index is not None
            await _on_reply(defn, turn, index, typed)
        case "timer":
            return await _on_timer(defn, turn)
        case "cancel":
            await _on_cancel(defn, turn)
        case "signal":
            await _on_signal(defn, turn, typed)
        case "init":
            raise AssertionError("an init of an existing instance is answered before")
        case _:
            assert_never(kind)
    return True


def _commit(turn: Turn) -> Decision:
    """The decision that writes what the turn changed: the header, and one journal entry
    for its event."""
    header = turn.header
    header.seq += 1
    header.traceparent, header.tracestate, header.baggage = turn.headers
    entry = Entry(
        event=wire(turn.event),
        produced=turn.produced,
        resumed=turn.resumed,
        how="" if turn.wake is None else turn.wake.encode(),
        inline=turn.inline,
        yielded=turn.yielded,
    )
    append = [(turn.event.id, encode_entry(entry))]
    if turn.reset is not None:
        append = [*turn.reset, *append]
    live = turn.live
    keep = live is not None and header.status == ACTIVE and header.unwinding is None
    return Decision(
        turn.produced, header, append, reset=turn.reset is not None, live=live if keep else None
    )


async def _live(defn: Definition[Any], turn: Turn) -> Live:
    """The suspended generator: the cached one, or rebuilt by replaying the journal."""
    if turn.live is None:
        journal = await turn.journal.entries(turn.revision)
        turn.live = replay(defn, turn.key, turn.header, journal, turn.revision)
    return turn.live


# ----------------------------------------------------------------------------------
# what each kind of event does


async def _start(
    defn: Definition[Any],
    event: Event,
    typed: Event,
    subject: Subject,
    journal: Journal,
    time: str,
    now: float,
    headers: TraceHeaders,
) -> Decision:
    key = event.subject
    parent = event.data.get(PARENT_SUBJECT_KEY) if isinstance(event.data, dict) else None
    if parent is not None:
        try:
            parse_subject(parent)
        except SubjectError as error:
            raise ExecutionViolation(
                f"init event {event.id} has an invalid '{PARENT_SUBJECT_KEY}': {error}"
            ) from None
    header = Header(
        status=ACTIVE,
        version=subject.version,
        seq=0,
        init_event_id=event.id,
        parent_subject=parent,
        state=None,
        workflow_deadline=None if defn.timeout is None else due_in(now, defn.timeout),
        run_deadline=None if defn.run_timeout is None else due_in(now, defn.run_timeout),
    )
    live = new_live(defn, key, header, event, typed.data, 0)
    turn = Turn(key, event, subject, headers, header, 0, time, now, journal, live)
    turn.resumed, turn.wake = [], START
    await advance(defn, turn, None, None)
    return _commit(turn)


async def _on_reply(defn: Definition[Any], turn: Turn, index: int, typed: Event) -> None:
    slot = turn.header.waiting[index]
    if slot.retry is not None and _retries(defn, turn, index, typed):
        return
    live = turn.live or await _live(defn, turn)
    header = turn.header
    slot = header.waiting[index]
    slot.reply = turn.event.id
    live.replies[index] = typed
    if header.mode == "gather":
        if any(s.reply is None for s in header.waiting):
            return  # stored; the generator resumes when all are in
        replies = [live.replies[i] for i in range(len(header.waiting))]
        push_undo(header, range(len(replies)), lambda i: defn.is_error(replies[i]))
        await resume(defn, turn, GATHER, replies)
    elif header.mode == "race":
        _abandon(defn, turn, keep=index)
        if slot.undo is not None:
            push_undo(header, [index], lambda _: defn.is_error(typed))
        await resume(defn, turn, Wake("race", index), [typed])
    else:
        if slot.undo is not None:
            push_undo(header, [index], lambda _: defn.is_error(typed))
        await resume(defn, turn, CALL, [typed])


def _retries(defn: Definition[Any], turn: Turn, index: int, reply: Event) -> bool:
    """If ``reply`` is a system error the slot's policy retries, schedule the retry."""
    slot = turn.header.waiting[index]
    name = reply.data.errorName if defn.is_error(reply) else None
    delay = schedule_retry(slot, name, turn.now)
    if delay is None:
        return False
    log.info("retrying %s in %.3gs (attempt %d)", slot.service, delay, slot.attempt + 1)
    return True


def _abandon(defn: Definition[Any], turn: Turn, keep: int | None = None) -> None:
    """Stop waiting for the open slots but ``keep``, cancelling the children left."""
    children = abandon(turn.header, keep)
    if children:
        turn.produced.extend(emit.cancel_children(defn, children, turn))


async def _on_timer(defn: Definition[Any], turn: Turn) -> bool:
    now = float(turn.event.data["now"])
    due = due_action(turn.header, now)
    if due is None:
        return False
    if due.what == "retry":
        return await _resend_due(turn, now)
    await _fire(defn, turn, due, [turn.event])
    return True


async def _fire(defn: Definition[Any], turn: Turn, due: Due, events: list[Event]) -> None:
    """What is due fires: a deadline (the instance's or the wait's) or a timer slot;
    ``events`` are what the generator is woken with (none for a race's timer arm won
    before its timer event came)."""
    header = turn.header
    if due.what in ("workflow", "run"):
        await _keep_compensations(defn, turn)
        _abandon(defn, turn)
        turn.yielded = "timeout"
        turn.live = None
        limit = (
            f"its timeout of {defn.timeout}s"
            if due.what == "workflow"
            else f"the run_timeout of {defn.run_timeout}s of its generation {header.generation}"
        )
        error = ErrorData("TimeoutError", f"workflow {defn.uri!r} ran past {limit}")
        unwind(defn, turn, False, error)
        return
    await _live(defn, turn)
    if due.what == "wait":
        await _keep_compensations(defn, turn)
        _abandon(defn, turn)
        await resume(defn, turn, TIMEOUT, events)
        return
    assert due.index is not None
    header.waiting[due.index].reply = turn.event.id
    if header.mode == "race":
        _abandon(defn, turn, keep=due.index)
        await resume(defn, turn, Wake("race", due.index), events)
    else:
        await resume(defn, turn, SLEEP, events)


async def _keep_compensations(defn: Definition[Any], turn: Turn) -> None:
    """Before a gather is given up (timeout, cancellation), push the compensations of
    its calls that did succeed: their effects happened and must be undone on failure."""
    header = turn.header
    if header.mode != "gather" or not any(s.reply and s.undo for s in header.waiting):
        return
    live = await _live(defn, turn)
    push_filled_undo(header, lambda i: defn.is_error(live.replies[i]))


async def _resend_due(turn: Turn, now: float) -> bool:
    """Send again the calls whose retry backoff has passed; False if there were none."""
    indexes = due_retries(turn.header, now)
    for index in indexes:
        await _resend(turn, index)
    return bool(indexes)


async def _resend(turn: Turn, index: int) -> None:
    header = turn.header
    slot = header.waiting[index]
    assert slot.sent_by is not None
    raw = await turn.journal.entry(slot.sent_by)
    if raw is None:
        raise TransactionViolation(
            TransactionViolation.READ_FAILURE,
            f"workflow {turn.key!r}: the journal entry {slot.sent_by} holding the request to "
            f"retry ({slot.service}) is missing; the record is damaged",
        )
    old = [e for e in decode_entry(raw).produced if e.id in slot.requests]
    slot.attempt += 1
    ignore(header, slot.requests)
    new = emit.attempts(old, turn, index, slot.attempt)
    slot.requests = [e.id for e in new]
    slot.sent_by = turn.event.id
    slot.due = None
    turn.produced.extend(new)


async def _on_cancel(defn: Definition[Any], turn: Turn) -> None:
    if turn.header.cancelling:
        return  # journaled, so a redelivery is known; nothing more to do
    await _live(defn, turn)
    turn.header.cancelling = True
    await _keep_compensations(defn, turn)
    _abandon(defn, turn)
    await resume(defn, turn, CANCEL, [turn.event])


async def _on_signal(defn: Definition[Any], turn: Turn, typed: Event) -> None:
    for index, slot in enumerate(turn.header.waiting):
        if slot.kind == "signal" and slot.reply is None and slot.service == typed.type:
            await _live(defn, turn)
            turn.header.waiting[index].reply = turn.event.id
            if turn.header.mode == "race":
                _abandon(defn, turn, keep=index)
                await resume(defn, turn, Wake("race", index), [typed])
            else:
                await resume(defn, turn, SIGNAL, [typed])
            return
    turn.header.inbox.append((typed.type, turn.event.id))  # kept until it is waited for


async def _on_unwinding(
    defn: Definition[Any], turn: Turn, kind: EventKind, index: int | None, typed: Event
) -> bool:
    """While compensations run, only their replies (and retry timers) matter."""
    header = turn.header
    unwinding = header.unwinding
    assert unwinding is not None
    if kind == "reply":
        assert index is not None
        if _retries(defn, turn, index, typed):
            return True
        if defn.is_error(typed):
            unwinding.failures.append(typed.data)
        header.waiting[index].reply = turn.event.id
        next_compensation(defn, turn)
    elif kind == "timer":
        return await _resend_due(turn, float(turn.event.data["now"]))
    return True  # a signal or cancellation during compensation: journaled, ignored


# ----------------------------------------------------------------------------------
# redeliveries and parked instances


async def _seen_or(
    key: str, event: Event, header: Header, journal: Journal, violation: str | None
) -> Decision:
    """A redelivered event gets the events it produced; anything else is rejected."""
    raw = await journal.entry(event.id)
    if raw is not None:
        return Decision(list(decode_entry(raw).produced))
    if violation is None:
        log.info("workflow %s is %s: event %s ignored", instance_name(key), header.status, event.id)
        return Decision([])
    raise ExecutionViolation(violation)


def park(header: Header, error: NonDeterminismError) -> None:
    header.status = PARKED
    header.parked = Parked(
        message=str(error), step=error.step, recorded=error.recorded, replayed=error.replayed
    )


def _park(stored: Stored, event: Event, error: NonDeterminismError) -> Decision:
    """Stop an instance whose history no longer matches its code, keeping the event."""
    header = decode_header(stored.header)
    park(header, error)
    header.parked_events = [wire(event)]
    log.error("workflow %s parked: %s", instance_name(event.subject), error)
    return Decision([], header)


def _while_parked(header: Header, event: Event) -> Decision:
    if any(e.id == event.id for e in header.parked_events):
        return Decision([])
    header.parked_events.append(wire(event))
    return Decision([], header)
