"""Limits on what an event may hold, the same on every memory and broker backend.

Every backend must be able to store what a workflow is given: PostgreSQL refuses a NUL in
text and index entries over about 2.7 KB, NATS headers and payloads have maximum sizes.
So the limits below are checked before anything is written (``check_event``), and an
event that breaks one is refused with ``LimitViolation``: a violation that can never
succeed, which a ``Worker`` dead-letters at once instead of retrying.
"""

from __future__ import annotations

import re
from typing import Final

from resumable.errors import ExecutionViolation
from resumable.events import Event

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_ID_BYTES",
    "MAX_SUBJECT_BYTES",
    "MAX_TEXT_BYTES",
    "LimitViolation",
    "check_event",
]

MAX_ID_BYTES: Final = 512
"""The longest event id, in UTF-8 bytes (journal keys are indexed with the subject)."""
MAX_SUBJECT_BYTES: Final = 2048
"""The longest subject, in UTF-8 bytes: the key of a workflow instance's record."""
MAX_TEXT_BYTES: Final = 1024
"""The longest ``type``, ``source`` or ``to``, in UTF-8 bytes."""
MAX_EVENT_BYTES: Final = 1_000_000
"""The largest encoded event (its JSON) a broker carries: under NATS's default 1 MiB
payload limit, with room for headers. Brokers refuse a larger publish and dead-letter a
larger message they receive."""

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_last_passed: Event | None = None
"""The last event that passed."""
_fine: dict[tuple[str, str, str, str | None], None] = {}
"""(subject, type, source, to) that passed: an instance's events share them."""


def _fine_rest(event: Event) -> bool:
    """Check the subject, type, source and ``to`` of an event whose combination was not
    seen lately; remember them if they pass."""
    subject, type_, source, to = event.subject, event.type, event.source, event.to
    rest = f"{subject}{type_}{source}{to or ''}"
    if not (
        rest.isascii()
        and len(subject) <= MAX_SUBJECT_BYTES
        and len(type_) <= MAX_TEXT_BYTES
        and len(source) <= MAX_TEXT_BYTES
        and (to is None or len(to) <= MAX_TEXT_BYTES)
        and rest.isprintable()  # for ASCII: no control character
    ):
        return False
    if len(_fine) >= 4096:
        _fine.clear()
    _fine[(subject, type_, source, to)] = None
    return True


class LimitViolation(ExecutionViolation, ValueError):
    """An event breaks one of the limits every backend can store (``field`` names which).

    Raised before anything is written; the same event can never succeed, so it is
    dead-lettered at once rather than retried."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, {"field": field})
        self.field = field


def _short(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57] + "...")


def _check(event_id: str, field: str, value: str | None, limit: int) -> None:
    if value is None:
        return
    size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise LimitViolation(
            field,
            f"event {_short(event_id)}: {field} is {size:,} bytes, over the limit of "
            f"{limit:,} bytes ({_short(value)}); every backend must be able to store it, "
            "so shorten it",
        )
    if _CONTROL.search(value):
        raise LimitViolation(
            field,
            f"event {_short(event_id)}: {field} {_short(value)} holds a NUL or another "
            "control character, which not every backend can store; remove it",
        )


def check_event(event: Event) -> None:
    """Raise ``LimitViolation`` if ``event`` breaks a limit: id, subject, type, source and
    ``to`` within their byte limits, with no NUL or other control character."""
    global _last_passed
    if event is _last_passed:  # published, then executed: checked once (events are frozen)
        return
    id_ = event.id
    if (  # the common case, cheaply: a short printable ASCII id, the rest seen before
        len(id_) <= MAX_ID_BYTES
        and id_.isascii()
        and id_.isprintable()  # for ASCII: no control character
        and ((event.subject, event.type, event.source, event.to) in _fine or _fine_rest(event))
    ):
        _last_passed = event
        return
    _check(event.id, "id", event.id, MAX_ID_BYTES)
    _check(event.id, "subject", event.subject, MAX_SUBJECT_BYTES)
    _check(event.id, "type", event.type, MAX_TEXT_BYTES)
    _check(event.id, "source", event.source, MAX_TEXT_BYTES)
    _check(event.id, "to", event.to, MAX_TEXT_BYTES)
