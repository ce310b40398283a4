"""What a workflow yields, and the context it runs with.

A workflow is ``async def fn(ctx, init_data)`` written as an async generator. Each
``yield`` hands the driver a request and suspends until the answer is in::

    reply = yield call(payments, ChargeCard(...))       # the reply Event, .data typed
    a, b = yield gather(call(stock, ...), call(ship, ...))   # replies in call order
    yield complete(OrderResult(...))                    # ends the workflow

The values here are plain descriptions; the driver turns them into events.
"""

from __future__ import annotations

import random as _random
import uuid as _uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from resumable.contracts import Contract, VersionedContract
from resumable.domains import DomainSpec, check_domain_spec
from resumable.ids import derive_id

__all__ = [
    "Call",
    "Complete",
    "Context",
    "Gather",
    "Request",
    "WorkflowFunction",
    "call",
    "complete",
    "gather",
]

S = TypeVar("S")


@attrs.frozen
class Call:
    """Send a request to a service (or start a child workflow) and wait for its reply."""

    service: Contract | VersionedContract
    data: Any
    to: str | None = None
    redirectto: str | None = None
    accesscontrol: str | None = None
    executionunits: float | None = None
    domain: DomainSpec = None
    extensions: Mapping[str, str | int | float | bool | None] = attrs.field(factory=dict)

    def describe(self) -> str:
        return f"call {self.service.type}"


@attrs.frozen
class Gather:
    """Send several requests at once and wait for all replies, returned in call order."""

    calls: tuple[Call, ...]

    def describe(self) -> str:
        return f"gather({', '.join(c.describe() for c in self.calls)})"


@attrs.frozen
class Complete:
    """End the workflow with its completion payload, sent to the initiator."""

    data: Any
    executionunits: float | None = None
    domain: DomainSpec | None = None

    def describe(self) -> str:
        return "complete"


Request = Call | Gather | Complete


def call(
    service: Contract | VersionedContract,
    data: Any,
    *,
    to: str | None = None,
    redirectto: str | None = None,
    accesscontrol: str | None = None,
    executionunits: float | None = None,
    domain: DomainSpec = None,
    extensions: Mapping[str, str | int | float | bool | None] | None = None,
) -> Call:
    """A request to ``service`` with payload ``data``; ``yield`` it to get the reply Event.

    A ``sys.<type>.error`` reply raises ``ServiceError`` at the ``yield``. Calling an
    ``OrchestratorContract`` starts a child workflow whose completion is the reply.
    ``domain`` None means the workflow's default (``Resumable(service_domain=...)``, local
    unless set); a domain sends the request to that domain's owner instead of the broker.
    """
    if not isinstance(service, Contract | VersionedContract):
        raise TypeError(f"call() needs a contract as its first argument, got {service!r}")
    check_domain_spec(domain, "call(domain=...)")
    return Call(
        service,
        data,
        to,
        redirectto,
        accesscontrol,
        executionunits,
        domain,
        dict(extensions or {}),
    )


def gather(*calls: Call) -> Gather:
    """Several requests sent together; ``yield`` it to get their replies in call order.

    If any reply is a system error, ``ServiceError`` for the first of them (in call order)
    is raised once all replies are in.
    """
    for item in calls:
        if not isinstance(item, Call):
            raise TypeError(f"gather() takes call(...) values, got {item!r}")
    return Gather(tuple(calls))


def complete(
    data: Any, *, executionunits: float | None = None, domain: DomainSpec | None = None
) -> Complete:
    """The workflow's result; ``yield complete(...)`` ends it (async generators cannot return).

    ``domain`` None means the workflow's default (``Resumable(complete_domain=...)``);
    pass ``[None]`` to force a local event.
    """
    check_domain_spec(domain, "complete(domain=...)")
    return Complete(data, executionunits, domain)


WorkflowFunction = Callable[["Context[Any]", Any], AsyncGenerator[Any, Any]]


class Context(Generic[S]):
    """What a running workflow sees besides its input: explicit state and deterministic helpers.

    ``state`` is persisted after every step. ``now()``, ``uuid()`` and ``random()`` return
    the same values when the workflow is replayed, so they are safe to branch on.
    """

    __slots__ = ("_counter", "_seq", "_time", "is_replaying", "state", "subject", "version")

    def __init__(self, *, state: S, subject: str, version: str) -> None:
        self.state = state
        self.subject = subject
        self.version = version
        self.is_replaying = False
        self._seq = 0
        self._time = ""
        self._counter = 0

    def _enter_step(self, seq: int, time: str) -> None:
        self._seq = seq
        self._time = time
        self._counter = 0

    def now(self) -> datetime:
        """The time of the event that resumed this step (UTC): the same on replay."""
        return datetime.fromisoformat(self._time)

    def uuid(self) -> _uuid.UUID:
        """A UUID unique to this workflow, step and call: the same on replay."""
        self._counter += 1
        return _uuid.UUID(derive_id(self.subject, self._seq, "uuid", self._counter))

    def random(self) -> _random.Random:
        """A random generator seeded from the workflow and step: the same sequence on replay."""
        self._counter += 1
        return _random.Random(derive_id(self.subject, self._seq, "random", self._counter))
