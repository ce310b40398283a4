"""What every broker does with a message it cannot hand out: decode it safely, bound the
reason it gives, and count what it had to drop.

A message on a topic may be anything a foreign producer wrote: JSON nested too deep to
parse (``RecursionError``), invalid UTF-8, garbage, JSON that is not a CloudEvent, or more
bytes than any event may hold. ``decode`` turns every one of those into ``Undecodable``,
so a broker dead-letters that message alone and delivers the rest of its batch.
"""

from __future__ import annotations

import logging
from typing import Final

from resumable.errors import ResumableError
from resumable.events import Event, from_json, to_json
from resumable.limits import MAX_EVENT_BYTES, LimitViolation
from resumable.metrics import TOPIC, instruments

__all__ = [
    "MAX_REASON_CHARS",
    "DeadLetterNotFound",
    "Undecodable",
    "UndecodableDeadLetter",
    "bound",
    "decode",
    "dropped",
    "encode",
]

log = logging.getLogger("resumable.broker")

MAX_REASON_CHARS: Final = 1024
"""The longest dead-letter reason a broker stores; longer ones are cut, with a marker."""


class Undecodable(ResumableError, ValueError):
    """A message is not an event this library can handle; the message says why (bounded)."""


class DeadLetterNotFound(ResumableError, LookupError):
    """No dead letter of that topic has that id (replayed already, or a typo)."""


class UndecodableDeadLetter(ResumableError, ValueError):
    """A dead letter that is not an event cannot be replayed: only its raw bytes are kept."""


def bound(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """``reason`` cut to ``limit`` characters, saying how much was cut, so a dead letter
    (and a NATS header holding its reason) stays small whatever the error quoted."""
    if len(reason) <= limit:
        return reason
    marker = f" [... {len(reason):,} more characters cut]"  # as long as any real marker
    keep = max(0, limit - len(marker))
    return reason[:keep] + f" [... {len(reason) - keep:,} more characters cut]"


def decode(raw: bytes | None) -> Event:
    """The event ``raw`` holds, or ``Undecodable`` whatever went wrong (a missing body,
    too many bytes, bad JSON or UTF-8, nesting too deep, not a CloudEvent)."""
    if raw is None:
        raise Undecodable("undecodable: the message has no event body")
    if len(raw) > MAX_EVENT_BYTES:
        raise Undecodable(
            f"undecodable: {len(raw):,} bytes, over the limit of {MAX_EVENT_BYTES:,} bytes "
            "for one event"
        )
    try:
        return from_json(raw)
    except Exception as error:  # RecursionError, UnicodeDecodeError, EventError, ...
        raise Undecodable(bound(f"undecodable: {type(error).__name__}: {error}")) from None


def dropped(topic: str, what: str, error: BaseException) -> None:
    """Log and count a message that could not even be dead-lettered, and was dropped
    rather than delivered again for ever."""
    log.error(
        "%s on %r could not be dead-lettered (%s: %s); it was dropped",
        what,
        topic,
        type(error).__name__,
        bound(str(error), 300),
    )
    instruments().dropped.add(1, {TOPIC: topic})


def encode(event: Event) -> bytes:
    """The event's JSON, or ``LimitViolation`` if it is over ``MAX_EVENT_BYTES``: what
    NATS and Redis refuse to publish (and would dead-letter on receive)."""
    payload = to_json(event)
    if len(payload) > MAX_EVENT_BYTES:
        raise LimitViolation(
            "data",
            f"event {event.id} ({event.type}) is {len(payload):,} bytes as JSON, over the "
            f"limit of {MAX_EVENT_BYTES:,} bytes a broker carries; keep large data elsewhere "
            "and send a reference to it",
        )
    return payload
