"""What the inspector's pages show, read from memory alone: no workflow code runs.

Each function returns plain attrs objects that the templates render (and escape); the
page handlers in ``resumable.ui.app`` only pick which one to call.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import attrs
import msgspec

from resumable.events import Event
from resumable.memory import Memory
from resumable.memory.listing import STATUSES
from resumable.record import Header, Parked, decode_entry, decode_header
from resumable.subject import SubjectError, is_subject, parse_subject_shared

__all__ = [
    "PAGE_SIZE",
    "SCAN_LIMIT",
    "Child",
    "DiffRow",
    "InstanceView",
    "ListView",
    "Row",
    "SlotView",
    "StepView",
    "list_instances",
    "load_instance",
    "pretty",
    "when",
]

PAGE_SIZE = 50
"""Instances on one page of the list."""
SCAN_LIMIT = 20_000
"""Most instances one search by id reads (ids are not indexed): it says where it stopped."""
TIMELINE_LIMIT = 1000
"""Most journal steps the instance page shows (the newest)."""


def pretty(value: Any) -> str:
    """``value`` as indented JSON, for people (anything JSON cannot hold is shown as text)."""
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False, default=str)


def when(epoch: float | None) -> str:
    """Seconds since the epoch as a UTC time to the millisecond, or '' for None."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(" ", timespec="milliseconds")[:23]


@attrs.frozen
class Row:
    """One instance on the list."""

    subject: str
    id: str
    """The user's id: the subject's execution id (the key itself for a non-subject key)."""
    workflow: str
    version: str
    status: str
    created: str
    updated: str


@attrs.frozen
class ListView:
    """One page of the instance list, with the counts and the filters that made it."""

    rows: list[Row]
    counts: dict[str, int]
    total: int
    workflow: str
    status: str
    id: str
    cursor: str | None
    """Where the next (older) page starts, or None on the last page."""
    scanned: int | None = None
    """For a search by id: how many instances were read to find these."""


def _row(key: str, workflow: str | None, status: str, created: float, updated: float) -> Row:
    try:
        parsed = parse_subject_shared(key)
    except SubjectError:
        return Row(key, key, workflow or "", "", status, when(created), when(updated))
    return Row(
        key,
        parsed.execution_id,
        parsed.name,
        parsed.version,
        status,
        when(created),
        when(updated),
    )


async def list_instances(
    memory: Memory,
    *,
    workflow: str = "",
    status: str = "",
    id: str = "",
    cursor: str | None = None,
    limit: int = PAGE_SIZE,
) -> ListView:
    """The newest instances (of ``workflow``, with ``status``, whose id contains ``id``),
    from ``cursor`` on. Raises ``ValueError`` for an unknown status or a bad cursor."""
    if status and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    counts = await memory.count(workflow=workflow or None)
    rows: list[Row] = []
    scanned: int | None = None
    if not id:
        page = await memory.list(
            workflow=workflow or None, status=status or None, limit=limit, cursor=cursor
        )
        rows = [_row(i.key, i.workflow, i.status, i.created, i.updated) for i in page.items]
        next_cursor = page.cursor
    else:
        scanned = 0
        next_cursor = cursor
        while len(rows) < limit and scanned < SCAN_LIMIT:
            page = await memory.list(
                workflow=workflow or None, status=status or None, limit=200, cursor=next_cursor
            )
            scanned += len(page.items)
            for item in page.items:
                row = _row(item.key, item.workflow, item.status, item.created, item.updated)
                if id in row.id:
                    rows.append(row)
            next_cursor = page.cursor
            if next_cursor is None:
                break
    return ListView(
        rows=rows,
        counts={s: counts.get(s, 0) for s in STATUSES},
        total=sum(counts.values()),
        workflow=workflow,
        status=status,
        id=id,
        cursor=next_cursor,
        scanned=scanned,
    )


def looks_like_subject(text: str) -> bool:
    """True if ``text`` is a whole orchestration subject (a search goes straight to it)."""
    return len(text) > 40 and is_subject(text)


@attrs.frozen
class SlotView:
    """One thing the instance waits for."""

    kind: str
    service: str
    received: bool
    due: str
    attempt: int


@attrs.frozen
class StepView:
    """One journal step: the event that woke the workflow, how, and what followed."""

    seq: int
    time: str
    event_type: str
    event_id: str
    source: str
    data: str
    woke: str
    """How the event resumed it (call, gather, race:1, signal, timeout, cancel, start), or
    'stored' when it was only kept."""
    inline: list[str]
    yielded: str
    produced: list[tuple[str, str]]
    """(type, to) of every event the step emitted."""


@attrs.frozen
class Child:
    """A child workflow the instance started."""

    subject: str
    id: str
    workflow: str


@attrs.frozen
class DiffRow:
    """One step of a parked instance: what its journal recorded, what the code yields now."""

    seq: int
    recorded: str
    replayed: str
    diverged: bool


@attrs.frozen
class InstanceView:
    """One instance, everything the page shows."""

    subject: str
    id: str
    workflow: str
    initiator: str
    status: str
    version: str
    generation: int
    steps: int
    revision: int
    state: str
    waits_for: str
    due: str
    deadline: str
    slots: list[SlotView]
    compensations: list[str]
    result: str
    error: str
    parent: str
    children: list[Child]
    parked: Parked | None
    diff: list[DiffRow]
    parked_events: list[str]
    timeline: list[StepView]
    hidden_steps: int


def _children(subject: str, header: Header, produced: list[Event]) -> list[Child]:
    found: dict[str, Child] = {}
    subjects = [e.subject for e in produced] + [c for s in header.waiting for c in s.children]
    for candidate in subjects:
        if candidate == subject or candidate in found:
            continue
        try:
            parsed = parse_subject_shared(candidate)
        except SubjectError:
            continue
        found[candidate] = Child(candidate, parsed.execution_id, parsed.name)
    return list(found.values())


def _diff(parked: Parked, steps: list[StepView]) -> list[DiffRow]:
    """The journal's yields up to where the replay diverged, beside what replay made of
    them: the same until the step the parking names."""
    last = parked.step if parked.step is not None else len(steps) - 1
    rows = [DiffRow(s.seq, s.yielded, s.yielded, False) for s in steps if s.seq < last]
    rows.append(DiffRow(last, parked.recorded or "-", parked.replayed or "-", True))
    return rows


async def load_instance(memory: Memory, subject: str) -> InstanceView | None:
    """The instance ``subject`` as stored, with its whole history; None if there is none."""
    stored = await memory.read(subject, journal=True)
    if stored is None:
        return None
    header = decode_header(stored.header)
    try:
        parsed = parse_subject_shared(subject)
        id_, workflow, initiator = parsed.execution_id, parsed.name, parsed.initiator
    except SubjectError:
        id_, workflow, initiator = subject, "", ""
    journal = stored.journal or []
    steps: list[StepView] = []
    produced: list[Event] = []
    for seq, raw in enumerate(journal):
        entry = decode_entry(raw)
        produced.extend(entry.produced)
        event = entry.event
        steps.append(
            StepView(
                seq=seq,
                time=event.time or "",
                event_type=event.type,
                event_id=event.id,
                source=event.source,
                data=pretty(event.data),
                woke="stored" if entry.resumed is None else (entry.how or "call"),
                inline=[item.yielded for item in entry.inline],
                yielded=entry.yielded or "",
                produced=[(e.type, e.to or "") for e in entry.produced],
            )
        )
    error = ""
    if header.error is not None:
        error = f"{header.error.errorName}: {header.error.errorMessage}"
    return InstanceView(
        subject=subject,
        id=id_,
        workflow=workflow,
        initiator=initiator,
        status=header.status,
        version=header.version,
        generation=header.generation,
        steps=header.seq,
        revision=stored.revision,
        state=pretty(header.state),
        waits_for=header.waits_for or "",
        due=when(header.next_due()),
        deadline=when(header.deadline),
        slots=[
            SlotView(
                kind=slot.kind,
                service=slot.service,
                received=slot.reply is not None,
                due=when(slot.due),
                attempt=slot.attempt,
            )
            for slot in header.waiting
        ],
        compensations=[undo.service for undo in reversed(header.undo)],
        result="" if header.result is None else pretty(header.result),
        error=error,
        parent=header.parent_subject or "",
        children=_children(subject, header, produced),
        parked=header.parked,
        diff=[] if header.parked is None else _diff(header.parked, steps),
        parked_events=[f"{e.type} ({e.id})" for e in header.parked_events],
        timeline=steps[-TIMELINE_LIMIT:],
        hidden_steps=max(0, len(steps) - TIMELINE_LIMIT),
    )
