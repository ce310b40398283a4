"""The parts of ``Memory.list`` every backend shares: checking the arguments, the cursor,
and the workflow name a record's key gives."""

from __future__ import annotations

import base64
import binascii
import math
import typing
from collections.abc import Callable

import msgspec

from resumable.memory.base import Listed, Page
from resumable.record import Status
from resumable.subject import SubjectError, parse_subject_shared

__all__ = [
    "MAX_LIMIT",
    "STATUSES",
    "Query",
    "check_query",
    "page_of",
    "select_counts",
    "select_page",
    "workflow_of",
]

STATUSES: tuple[str, ...] = typing.get_args(Status)
MAX_LIMIT = 1000

_encode_position = msgspec.json.Encoder().encode
_decode_position = msgspec.json.Decoder(tuple[float, str]).decode


class Query(msgspec.Struct, frozen=True):
    """``list``'s arguments, checked; ``after`` is where the previous page ended."""

    workflow: str | None
    status: str | None
    limit: int
    after: tuple[float, str] | None


def check_query(workflow: str | None, status: str | None, limit: int, cursor: str | None) -> Query:
    """The query ``list`` was asked for, or a ``ValueError`` naming the bad argument."""
    if workflow is not None and not isinstance(workflow, str):
        raise ValueError(
            f"workflow must be None or an orchestrator name such as 'arvo.orc.order.fulfil', "
            f"got {workflow!r}"
        )
    if status is not None and status not in STATUSES:
        raise ValueError(
            f"status must be None or one of {', '.join(map(repr, STATUSES))}, got {status!r}"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
    return Query(workflow, status, limit, None if cursor is None else _decode_cursor(cursor))


def page_of(rows: list[Listed], limit: int) -> Page:
    """The page for ``rows``, fetched as up to ``limit + 1`` records: one more than the page
    holds says whether another page follows."""
    if len(rows) <= limit:
        return Page(items=rows, cursor=None)
    items = rows[:limit]
    last = items[-1]
    raw = _encode_position((last.created, last.key))
    return Page(items=items, cursor=base64.urlsafe_b64encode(raw).decode("ascii"))


def select_page(table: str, query: Query, mark: Callable[[int], str]) -> tuple[str, list[object]]:
    """The SQL selecting one page of ``query`` (plus one row) from ``table``, with its
    parameters; ``mark(n)`` writes the placeholder of the n-th parameter (from 1).

    Only the filters asked for appear, so each variant's WHERE matches an index on
    ``([workflow,] [status,] created, key)`` and the page is read from it in order."""
    conditions: list[str] = []
    params: list[object] = []

    def param(value: object) -> str:
        params.append(value)
        return mark(len(params))

    if query.workflow is not None:
        conditions.append(f"workflow = {param(query.workflow)}")
    if query.status is not None:
        conditions.append(f"status = {param(query.status)}")
    if query.after is not None:
        created, key = query.after
        conditions.append(f"(created, key) < ({param(created)}, {param(key)})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (
        f"SELECT key, workflow, status, created, updated FROM {table}{where}"
        f" ORDER BY created DESC, key DESC LIMIT {param(query.limit + 1)}",
        params,
    )


def select_counts(table: str, query: Query, mark: str) -> tuple[str, list[object]]:
    """The SQL counting the records of each status (of ``query.workflow``, if set) from the
    listing index on ``([workflow,] status, created, key)``; ``mark`` is the placeholder."""
    if query.workflow is None:
        return f"SELECT status, count(*) FROM {table} GROUP BY status", []
    return (
        f"SELECT status, count(*) FROM {table} WHERE workflow = {mark} GROUP BY status",
        [query.workflow],
    )


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True)
        created, key = _decode_position(raw)
    except (AttributeError, UnicodeError, binascii.Error, msgspec.DecodeError):
        pass
    else:
        if math.isfinite(created):
            return created, key
    raise ValueError(
        f"cursor {cursor!r} is not one list() returned: pass None for the first page, or the "
        "cursor of the page before it"
    )


def workflow_of(key: str) -> str | None:
    """The orchestrator's name in ``key`` if it is an orchestration subject, else None."""
    try:
        return parse_subject_shared(key).name
    except SubjectError:
        return None
