"""The wait state machine of one instance, pure and synchronous.

Everything here reads and changes a ``Header`` and nothing else: which slot a reply fills,
when a wait is complete, what is due at time ``now`` (a parameter: no clock is read),
retry backoff, the compensation stack and its unwinding. No I/O, no workflow code, so it
is tested on hand-built headers alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Final, Literal

import attrs

from resumable.contracts import ErrorData
from resumable.errors import ExecutionViolation
from resumable.events import Event
from resumable.record import (
    CANCELLED,
    FAILED,
    IGNORED_LIMIT,
    Header,
    Mode,
    RetrySpec,
    Slot,
    Undo,
    Unwind,
)
from resumable.workflow import Retry

__all__ = [
    "CALL",
    "CANCEL",
    "GATHER",
    "SIGNAL",
    "SLEEP",
    "START",
    "TIMEOUT",
    "Due",
    "Wake",
    "abandon",
    "begin_wait",
    "clear_wait",
    "due_action",
    "due_in",
    "find_slot",
    "finish_unwind",
    "ms",
    "next_undo",
    "push_undo",
    "retry_spec",
    "schedule_retry",
    "start_unwind",
]

How = Literal["start", "call", "gather", "race", "sleep", "signal", "timeout", "cancel"]


@attrs.frozen(slots=True)
class Wake:
    """How an event resumed the generator; ``arm`` is the winning arm of a race.

    Journaled as text (``call``, ``race:1`` ...) in ``Entry.how``."""

    how: How
    arm: int | None = None

    def encode(self) -> str:
        return self.how if self.arm is None else f"{self.how}:{self.arm}"

    @staticmethod
    def parse(text: str) -> Wake | None:
        """The wake journaled as ``text``; None for an event that was only stored."""
        known = _BY_TEXT.get(text)
        if known is not None:
            return known
        how, _, arm = text.partition(":")
        if how == "race" and arm.isdigit():
            return Wake("race", int(arm))
        return None


START: Final = Wake("start")
CALL: Final = Wake("call")
GATHER: Final = Wake("gather")
SLEEP: Final = Wake("sleep")
SIGNAL: Final = Wake("signal")
TIMEOUT: Final = Wake("timeout")
CANCEL: Final = Wake("cancel")
_BY_TEXT: Final[dict[str, Wake]] = {
    w.how: w for w in (START, CALL, GATHER, SLEEP, SIGNAL, TIMEOUT, CANCEL)
}


def ms(moment: float) -> float:
    """``moment`` to the millisecond, the precision of event times: a due time stored this
    way is reached exactly by a clock that reads milliseconds (a virtual one included)."""
    return round(moment, 3)


def due_in(now: float, seconds: float) -> float:
    """The due time ``seconds`` after ``now``, to the millisecond (see ``ms``)."""
    return ms(now + seconds)


def retry_spec(retry: Retry | None) -> RetrySpec | None:
    """A ``Retry`` policy as persisted in a slot: its times as floats, as they decode, so
    a header is the same bytes whether its generator stayed cached or not."""
    if retry is None:
        return None
    return RetrySpec(
        attempts=retry.attempts,
        initial=float(retry.initial),
        factor=float(retry.factor),
        max_interval=float(retry.max_interval),
        non_retryable=retry.non_retryable,
    )


# ----------------------------------------------------------------------------------
# waiting


def begin_wait(
    header: Header, mode: Mode, slots: list[Slot], deadline: float | None, waits_for: str
) -> None:
    header.waiting = slots
    header.mode = mode
    header.deadline = deadline
    header.waits_for = waits_for


def clear_wait(header: Header) -> None:
    header.waiting = []
    header.mode = "none"
    header.deadline = None
    header.waits_for = None


def find_slot(header: Header, event: Event, answering: Collection[str] = ()) -> int | None:
    """The open call slot a reply answers: the one whose request id is the reply's
    ``parentid``. A reply without ``parentid`` (arvo-core 2.x services send none) answers
    the one open call to a service in ``answering``, the uris of the contracts that may
    reply with its type; if several such calls are open it is ambiguous: a violation."""
    parentid = event.parentid
    if parentid is not None:
        for index, slot in enumerate(header.waiting):
            if slot.kind == "call" and slot.reply is None and parentid in slot.requests:
                return index
        return None
    open_calls = [
        index
        for index, slot in enumerate(header.waiting)
        if slot.kind == "call" and slot.reply is None and slot.service in answering
    ]
    if len(open_calls) > 1:
        services = ", ".join(header.waiting[i].service for i in open_calls)
        raise ExecutionViolation(
            f"workflow {event.subject!r}: reply {event.id} ({event.type}) has no parentid, "
            f"and {len(open_calls)} open calls may be answered by that type ({services}); "
            "without parentid a reply is matched only when exactly one open call accepts "
            "its type. Have the service set parentid to the request's id (arvo-core 3.x "
            "does), or do not wait on two calls of that type at once"
        )
    return open_calls[0] if open_calls else None


def ignore(header: Header, ids: Iterable[str]) -> None:
    """Remember request ids whose replies are no longer wanted, so they are dropped quietly."""
    header.ignored.extend(ids)
    if len(header.ignored) > IGNORED_LIMIT:
        del header.ignored[: len(header.ignored) - IGNORED_LIMIT]


def abandon(header: Header, keep: int | None = None) -> list[str]:
    """Stop waiting for every open slot but ``keep``: their late replies will be ignored.
    Returns the subjects of the child workflows so left, to be cancelled."""
    children: list[str] = []
    for index, slot in enumerate(header.waiting):
        if index != keep and slot.reply is None:
            ignore(header, slot.requests)
            children.extend(slot.children)
    return children


# ----------------------------------------------------------------------------------
# time


@attrs.frozen(slots=True)
class Due:
    """What is due at a given time: the whole instance's deadline (``workflow``, or one
    generation's, ``run``), the current wait's (``wait``), a timer slot (``timer``), or
    failed calls to send again (``retry``)."""

    what: Literal["workflow", "run", "wait", "timer", "retry"]
    index: int | None = None


def due_action(header: Header, now: float, *, retries: bool = True) -> Due | None:
    """What fires at ``now``, most urgent first; deadlines before timers that fall later."""
    if header.unwinding is None:
        if header.workflow_deadline is not None and header.workflow_deadline <= now:
            return Due("workflow")
        if header.run_deadline is not None and header.run_deadline <= now:
            return Due("run")
    first: tuple[float, int] | None = None
    for index, slot in enumerate(header.waiting):
        due = slot.due
        open_timer = slot.kind == "timer" and slot.reply is None and due is not None
        if open_timer and due is not None and due <= now and (first is None or due < first[0]):
            first = (due, index)
    deadline = header.deadline
    if deadline is not None and deadline <= now and (first is None or deadline < first[0]):
        return Due("wait")
    if first is not None:
        return Due("timer", first[1])
    if retries and due_retries(header, now):
        return Due("retry")
    return None


def due_retries(header: Header, now: float) -> list[int]:
    """The call slots whose retry backoff has passed."""
    return [
        index
        for index, slot in enumerate(header.waiting)
        if slot.kind == "call" and slot.reply is None and slot.due is not None and slot.due <= now
    ]


def schedule_retry(slot: Slot, error_name: str | None, now: float) -> float | None:
    """If the reply is a system error (``error_name``) the slot's policy retries, set the
    durable timer for the next attempt and return its delay; else None."""
    retry = slot.retry
    if retry is None or error_name is None or slot.attempt >= retry.attempts:
        return None
    if error_name in retry.non_retryable:
        return None
    delay = retry.delay(slot.attempt)
    slot.due = due_in(now, delay)
    return delay


# ----------------------------------------------------------------------------------
# compensation


def push_undo(header: Header, indexes: Iterable[int], failed: Callable[[int], bool]) -> None:
    """Push the compensations of the calls at ``indexes`` that succeeded, in call order."""
    for index in indexes:
        undo = header.waiting[index].undo
        if undo is not None and not failed(index):
            header.undo.append(undo)


def push_filled_undo(header: Header, failed: Callable[[int], bool]) -> None:
    """Push the compensations of the calls already answered with success: the part of a
    ``gather`` that succeeded before it timed out or was cancelled."""
    push_undo(
        header,
        [i for i, slot in enumerate(header.waiting) if slot.kind == "call" and slot.reply],
        failed,
    )


def start_unwind(header: Header, cancelled: bool, error: ErrorData) -> None:
    clear_wait(header)
    header.unwinding = Unwind(reason="cancelled" if cancelled else "failed", error=error)


def next_undo(header: Header) -> Undo | None:
    """The next compensation to send, last pushed first; None when the stack is empty."""
    return header.undo.pop() if header.undo else None


def finish_unwind(header: Header) -> ErrorData:
    """End the unwinding: the instance is failed or cancelled; returns what to report."""
    unwind = header.unwinding
    assert unwind is not None
    error = unwind.error
    if unwind.failures:
        failed = "; ".join(f"{f.errorName}: {f.errorMessage}" for f in unwind.failures)
        error = ErrorData(
            error.errorName,
            f"{error.errorMessage} (and {len(unwind.failures)} compensation(s) failed: {failed})",
            error.errorStack,
        )
    header.status = CANCELLED if unwind.reason == "cancelled" else FAILED
    header.error = error
    header.unwinding = None
    clear_wait(header)
    return error
