"""Reading an instance's status and history from memory alone: no worker, no workflow code.

The explicit state is the query model. ``read_status`` decodes a record's header (and, if
asked, its journal) into a ``WorkflowStatus``; ``Resumable.status`` adds the typed state,
and ``resumable inspect`` prints it for any memory URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import attrs

from resumable.contracts import ErrorData
from resumable.memory import Memory
from resumable.record import Parked, decode_entry, decode_header
from resumable.state import structure_state

__all__ = ["HistoryStep", "WorkflowStatus", "read_status", "subjects"]

S = TypeVar("S")


@attrs.frozen
class HistoryStep:
    """One journal entry: the event consumed, how it woke the workflow, what followed."""

    seq: int
    event_id: str
    event_type: str
    source: str
    time: str | None
    woke: str | None
    """How the event resumed the workflow (``call``, ``gather``, ``race:1``, ``sleep``,
    ``signal``, ``timeout``, ``cancel``, ``start``), or None if it was only stored."""
    inline: list[str]
    """Steps answered within this one (local steps, kept signals)."""
    yielded: str | None
    produced: list[str]
    """Types of the events emitted."""


@attrs.frozen
class WorkflowStatus(Generic[S]):
    """A workflow instance as stored: read from memory only, no code runs."""

    subject: str
    status: str
    version: str
    steps: int
    state: S
    waits_for: str | None
    result: Any
    error: ErrorData | None
    due: datetime | None = None
    """When a timer, timeout or retry of this instance fires next."""
    compensations: list[str] = attrs.Factory(list)
    """The services of the compensations on the stack, next to run first."""
    generation: int = 0
    parked: Parked | None = None
    history: list[HistoryStep] | None = None


async def read_status(
    memory: Memory,
    subject: str,
    *,
    history: bool = False,
    state_type: type[Any] | None = None,
) -> WorkflowStatus[Any] | None:
    """The status of instance ``subject`` from ``memory``; the state is plain data unless
    ``state_type`` (the workflow's attrs class) is given. None if there is none."""
    stored = await memory.read(subject, journal=history)
    if stored is None:
        return None
    header = decode_header(stored.header)
    state = structure_state(header.state, state_type)
    due = header.next_due()
    steps: list[HistoryStep] | None = None
    if history:
        steps = []
        for seq, raw in enumerate(stored.journal or []):
            entry = decode_entry(raw)
            steps.append(
                HistoryStep(
                    seq=seq,
                    event_id=entry.event.id,
                    event_type=entry.event.type,
                    source=entry.event.source,
                    time=entry.event.time,
                    woke=None if entry.resumed is None else (entry.how or "call"),
                    inline=[record.yielded for record in entry.inline],
                    yielded=entry.yielded,
                    produced=[event.type for event in entry.produced],
                )
            )
    return WorkflowStatus(
        subject=subject,
        status=header.status,
        version=header.version,
        steps=header.seq,
        state=state,
        waits_for=header.waits_for,
        result=header.result,
        error=header.error,
        due=None if due is None else datetime.fromtimestamp(due, UTC),
        compensations=[undo.service for undo in reversed(header.undo)],
        generation=header.generation,
        parked=header.parked,
        history=steps,
    )


async def subjects(memory: Memory, workflow: str, status: str | None = None) -> list[str]:
    """The subjects of every instance of ``workflow`` (with ``status``), newest first,
    read page by page through the memory's index."""
    out: list[str] = []
    cursor: str | None = None
    while True:
        page = await memory.list(workflow=workflow, status=status, limit=1000, cursor=cursor)
        out.extend(listed.key for listed in page.items)
        if page.cursor is None:
            return out
        cursor = page.cursor
