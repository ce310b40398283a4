"""The persisted record of one workflow instance: a small header and an append-only journal.

The header is rewritten on every step: status, explicit state, and the ids of the
replies the workflow waits for, so it stays small however wide a ``gather`` is. The
journal gets one entry per consumed event: the event, what the step emitted, and what the
workflow yielded. That is everything needed to replay the generator, to answer a
redelivered event with the events it produced the first time, and to re-send the requests
still unanswered after a crash (the journal is the outbox).

Everything is msgpack through msgspec: a record read from storage can never run code.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from resumable.backoff import backoff_delay
from resumable.contracts import ErrorData
from resumable.events import Event, build_trusted

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "DONE",
    "FAILED",
    "PARKED",
    "Entry",
    "Header",
    "Inline",
    "Mode",
    "Parked",
    "ReplayEntry",
    "RetrySpec",
    "Slot",
    "Undo",
    "Unwind",
    "decode_entry",
    "decode_for_replay",
    "decode_header",
    "encode_entry",
    "encode_header",
    "wire",
]

ACTIVE: Final = "active"
DONE: Final = "done"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
PARKED: Final = "parked"

Status = Literal["active", "done", "failed", "cancelled", "parked"]

RETIRED: Final = "retired"
"""``Entry.how`` of an event consumed by the previous generation, carried into the new
journal by ``continue_as_new`` (without its payload) so a redelivery of it is known."""

IGNORED_LIMIT: Final = 1024
"""How many abandoned request ids (race losers, timed-out calls) a record remembers, so
their late replies are dropped quietly."""


class RetrySpec(msgspec.Struct, kw_only=True, frozen=True):
    """A ``Retry`` policy as persisted with the request it applies to."""

    attempts: int
    initial: float
    factor: float
    max_interval: float
    non_retryable: tuple[str, ...] = ()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return backoff_delay(attempt, self.initial, self.factor, self.max_interval)


class Undo(msgspec.Struct, kw_only=True, frozen=True):
    """A compensation on the stack: the request to send if the workflow has to unwind."""

    service: str
    """The uri of the service contract."""
    data: Any
    retry: RetrySpec | None = None


class Slot(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One thing the workflow waits for: a reply, a timer or a signal."""

    kind: Literal["call", "timer", "signal"] = "call"
    service: str = ""
    """The uri of the contract that answers (a call), or the signal's event type."""
    requests: list[str] = []
    """Ids of the request event, one copy per domain; a reply to any copy fills the slot."""
    sent_by: str | None = None
    """The consumed event whose journal entry holds those requests (the outbox)."""
    reply: str | None = None
    """The id of the event that filled the slot, once it is in."""
    due: float | None = None
    """When a timer fires, or when a failed call is sent again (seconds since the epoch)."""
    attempt: int = 1
    retry: RetrySpec | None = None
    undo: Undo | None = None
    """Pushed on the compensation stack when the call succeeds."""
    children: list[str] = []
    """Subjects of the child workflows this call started, cancelled if it is abandoned."""


class Unwind(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The workflow ended by an error or a cancellation and runs its compensations."""

    reason: Literal["failed", "cancelled"]
    error: ErrorData
    failures: list[ErrorData] = []
    """Compensations whose reply was a system error: reported, the rest still run."""


class Parked(msgspec.Struct, kw_only=True):
    """Why an instance stopped: its history no longer matches the code."""

    message: str
    step: int | None = None
    recorded: str | None = None
    replayed: str | None = None


Mode = Literal["call", "gather", "race", "none"]


class Header(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The rewritten part of a record."""

    status: Status
    version: str
    seq: int
    """How many journal entries the record has."""
    init_event_id: str
    parent_subject: str | None
    state: Any
    """The explicit state, unstructured by cattrs."""
    waiting: list[Slot] = []
    mode: Mode = "none"
    """How the slots resume the workflow: one reply, all of them, or the first."""
    deadline: float | None = None
    """When the current wait times out."""
    waits_for: str | None = None
    """What the workflow yielded and waits on, e.g. ``call com.payments.charge``."""
    workflow_deadline: float | None = None
    """When the instance times out (``Resumable(timeout=)``), across generations."""
    run_deadline: float | None = None
    """When this generation times out (``Resumable(run_timeout=)``)."""
    cancelling: bool = False
    """A cancellation was raised in the workflow; its end counts as cancelled."""
    inbox: list[tuple[str, str]] = []
    """``(type, id)`` of signals that came before the workflow waited for them (in the journal)."""
    ignored: list[str] = []
    """Request ids whose late replies are dropped (losers of a race, timed-out calls)."""
    undo: list[Undo] = []
    """The compensation stack, last pushed last."""
    unwinding: Unwind | None = None
    patches: dict[str, bool] = {}
    generation: int = 0
    """How many times the workflow continued as new."""
    parked: Parked | None = None
    parked_events: list[Event] = []
    """Events that came while parked, applied in order once it is unparked."""
    result: Any = None
    error: ErrorData | None = None
    traceparent: str | None = None
    """The trace of the step last written, so the timer event that wakes the instance
    (made from the record alone) continues that trace."""
    tracestate: str | None = None
    baggage: str | None = None
    """That step's W3C baggage, carried on the timer event likewise."""

    def next_due(self) -> float | None:
        """When the record next needs waking, for ``Memory.write(due=...)``."""
        if self.status != ACTIVE:
            return None
        times = [slot.due for slot in self.waiting if slot.due is not None and slot.reply is None]
        if self.deadline is not None:
            times.append(self.deadline)
        if self.unwinding is None:
            if self.workflow_deadline is not None:
                times.append(self.workflow_deadline)
            if self.run_deadline is not None:
                times.append(self.run_deadline)
        return min(times) if times else None


class Inline(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A yield answered within the step that made it: a local step, a kept signal."""

    yielded: str
    value: Any = None
    error: ErrorData | None = None
    event: str | None = None
    """The id of the signal event returned (already in the journal)."""


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One journal entry: a consumed event and what the step did with it."""

    event: Event
    produced: list[Event]
    resumed: list[str] | None = None
    """Ids of the events sent into the generator, in call order; ``[]`` for the start;
    None if the event was only stored (a partial ``gather``, an early signal, a retry)."""
    how: str = ""
    """How those events resumed it: call, gather, race:<i>, sleep, signal, timeout, cancel;
    ``retired`` for an event of the previous generation (see ``RETIRED``)."""
    inline: list[Inline] = []
    yielded: str | None = None
    """What the generator did next: a request description, or how it ended."""


class ReplayEntry(msgspec.Struct, kw_only=True):
    """What replay reads of a journal entry: the emitted events are skipped, not decoded."""

    event: Event
    resumed: list[str] | None = None
    how: str = ""
    inline: list[Inline] = []
    yielded: str | None = None


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(Header)
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_replay_decoder = msgspec.msgpack.Decoder(ReplayEntry)


def wire(event: Event) -> Event:
    """The event with its payload as plain data, as it travels and is stored."""
    if isinstance(event.data, msgspec.Struct):
        return msgspec.structs.replace(event, data=msgspec.to_builtins(event.data))
    return event


def encode_header(header: Header) -> bytes:
    return _encoder.encode(header)


def decode_header(raw: bytes) -> Header:
    """Decode a header; its events were validated when built, so they are not again."""
    return build_trusted(lambda: _header_decoder.decode(raw))


def encode_entry(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode_for_replay(raws: list[bytes]) -> list[ReplayEntry]:
    """Decode journal entries for replay (trusted, and without their emitted events)."""
    return build_trusted(lambda: [_replay_decoder.decode(raw) for raw in raws])


def decode_entry(raw: bytes) -> Entry:
    """Decode a journal entry; its events were validated when built, so they are not again."""
    return build_trusted(lambda: _entry_decoder.decode(raw))
