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

from resumable.contracts import ErrorData
from resumable.events import Event, build_trusted

__all__ = [
    "ACTIVE",
    "DONE",
    "FAILED",
    "Entry",
    "Header",
    "ReplayEntry",
    "Slot",
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

Status = Literal["active", "done", "failed"]


class Slot(msgspec.Struct, kw_only=True):
    """One reply the workflow waits for, by id: the events themselves are in the journal."""

    service: str
    """The uri of the service contract that answers."""
    requests: list[str]
    """Ids of the request event, one copy per domain; a reply to any copy fills the slot."""
    reply: str | None = None
    """The id of the reply, once it is in."""


class Header(msgspec.Struct, kw_only=True):
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
    sent_by: str | None = None
    """The consumed event whose journal entry holds the requests waited on (the outbox)."""
    gather: bool = False
    """Whether the current wait is a ``gather`` (a list reply) rather than a ``call``."""
    waits_for: str | None = None
    """What the workflow yielded and waits on, e.g. ``call com.payments.charge``."""
    result: Any = None
    error: ErrorData | None = None


class Entry(msgspec.Struct, kw_only=True):
    """One journal entry: a consumed event and what the step did with it."""

    event: Event
    produced: list[Event]
    resumed: list[str] | None = None
    """Ids of the replies sent into the generator, in call order; ``[]`` for the start;
    None if the event was only stored (a partial ``gather``)."""
    yielded: str | None = None
    """What the generator did next: a request description, or how it ended."""


class ReplayEntry(msgspec.Struct, kw_only=True):
    """What replay reads of a journal entry: the emitted events are skipped, not decoded."""

    event: Event
    resumed: list[str] | None = None
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
