"""Errors, split as Arvo splits them.

A *violation* is raised to whoever called ``execute``: nothing is persisted, so the caller
can retry the event or dead-letter it. Any other exception raised by user code becomes a
``sys.<type>.error`` event instead (see ``ServiceError`` for the receiving side).

Every exception class the library defines derives from ``ResumableError`` (except
``Cancelled``, see there), so ``except ResumableError`` catches whatever the library raises
on purpose; each also keeps the built-in base it always had (``ValueError``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "Cancelled",
    "ConfigViolation",
    "ConflictError",
    "ContractViolation",
    "DuplicateEntryError",
    "ExecutionViolation",
    "NonDeterminismError",
    "PayloadError",
    "ResumableError",
    "ServiceError",
    "SetupError",
    "StateError",
    "StepError",
    "TransactionCause",
    "TransactionViolation",
    "Unavailable",
    "UnknownVersionError",
    "ViolationError",
    "WorkflowAwaitError",
    "is_unavailable",
    "is_violation",
]


class ResumableError(Exception):
    """The root of every error class this library defines (``Cancelled`` aside)."""


class SetupError(ResumableError, TypeError, ValueError):
    """Something was built wrong: a constructor or factory got an argument of the wrong
    type or value (a contract, handler, ``Retry``, ``call``, memory, broker, ``Worker``).

    Raised where the mistake is made, before anything runs; fix the code. It is both a
    ``TypeError`` and a ``ValueError`` so code that caught either still does. (Not named
    ``ConfigError``: ``ConfigViolation`` is Arvo's name for an *event* that cannot be
    routed, raised by ``execute``, and the two must not be mistaken for each other.)
    """


class WorkflowAwaitError(ResumableError, RuntimeError):
    """Raised inside a workflow at an ``await`` that waits on the event loop (I/O, sleep).

    A workflow's code runs between events and is replayed after a restart, so it must not
    wait on anything itself: ask a service with ``yield call(...)``, run local code once
    with ``yield step(...)``, fan out with ``yield gather(...)``. Awaiting a coroutine that
    finishes without suspending is fine.
    """


class ViolationError(ResumableError):
    """Base of every violation; ``type`` names the class of problem as Arvo does."""

    type: str = "Violation"

    def __init__(self, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata

    def __str__(self) -> str:
        return f"ViolationError<{self.type}> {self.message}"


class ContractViolation(ViolationError):
    """An event or payload does not match its contract (bad data, dataschema mismatch)."""

    type = "Contract"


class ConfigViolation(ViolationError):
    """The event cannot be routed to code: wrong type, unknown version, unknown contract."""

    type = "Config"


class ExecutionViolation(ViolationError):
    """The event cannot be executed: bad subject, no workflow to resume, reply nobody awaits."""

    type = "Execution"


class UnknownVersionError(ConfigViolation, SetupError, KeyError):
    """A contract, workflow or handler was asked for a version it does not have.

    The one type for that mistake, wherever it is made: a violation when an event names
    the version (``execute`` raises it to the caller), a ``SetupError`` when code does,
    and still the ``KeyError``/``ValueError`` that ``contract.version(...)`` and
    ``Resumable(...)`` raised before.
    """

    def __init__(self, message: str, version: str, known: Sequence[str]) -> None:
        super().__init__(message, {"version": version, "known": list(known)})
        self.version = version
        self.known = list(known)


_MISSING_FIELD = re.compile(r"Object missing required field `([^`]*)`")
_AT_PATH = re.compile(r" - at `\$((?:[.\[][^`]*)?)`$")


class PayloadError(ResumableError, msgspec.ValidationError):
    """A payload does not match its contract's schema; the message names the contract, its
    version, the event type and the field.

    A ``msgspec.ValidationError`` too, so code that caught msgspec's error still does.
    ``field`` is the path of the offending field (``amount_cents``, ``items[0].sku``),
    or ``""`` for the payload as a whole.
    """

    def __init__(self, *, uri: str, version: str, type: str, schema: str, error: str) -> None:
        field = _field_of(error)
        where = f"field {field!r}" if field else "the payload"
        super().__init__(
            f"{type} payload for contract {uri!r} version {version} ({schema}): {where}: "
            f"{error}. Build it as {schema}(...) with the fields the contract declares"
        )
        self.uri = uri
        self.version = version
        self.type = type
        self.field = field


def _field_of(error: str) -> str:
    """The dotted path of the field msgspec's message points at."""
    at = _AT_PATH.search(error)
    path = at.group(1) if at else ""
    missing = _MISSING_FIELD.match(error)
    if missing:
        path = f"{path}.{missing.group(1)}"
    return path[1:] if path.startswith(".") else path


class StateError(ResumableError, TypeError):
    """A workflow's explicit state holds a value that cannot be stored.

    Raised as the workflow's own error (the instance fails and reports it), not as a
    storage failure to retry: storing it again cannot succeed. ``field`` is the path in
    the state, ``value_type`` the type that cannot be stored.
    """

    def __init__(self, workflow: str, field: str, value_type: str) -> None:
        super().__init__(
            f"workflow {workflow!r}: explicit state field {field!r} holds a value of type "
            f"{value_type}, which cannot be stored; keep state to plain data (str, int, "
            "float, bool, None, lists and dicts of them, attrs classes, msgspec Structs, "
            "datetimes)"
        )
        self.workflow = workflow
        self.field = field
        self.value_type = value_type


class NonDeterminismError(ExecutionViolation):
    """Replaying a workflow asked for different steps than its journal recorded."""

    type = "NonDeterminism"

    def __init__(
        self,
        message: str,
        *,
        subject: str,
        step: int | None = None,
        recorded: str | None = None,
        replayed: str | None = None,
    ) -> None:
        super().__init__(
            message, {"subject": subject, "step": step, "recorded": recorded, "replayed": replayed}
        )
        self.subject = subject
        self.step = step
        self.recorded = recorded
        self.replayed = replayed


TransactionCause = Literal[
    "READ_MACHINE_MEMORY_FAILURE",
    "LOCK_MACHINE_MEMORY_FAILURE",
    "WRITE_MACHINE_MEMORY_FAILURE",
    "LOCK_UNACQUIRED",
]
"""Why memory failed a transaction: Arvo's names, also ``TransactionViolation``'s constants."""


class TransactionViolation(ViolationError):
    """Memory could not be locked, read or written; ``cause`` says which."""

    type = "OrchestratorTransaction"

    READ_FAILURE: Final = "READ_MACHINE_MEMORY_FAILURE"
    LOCK_FAILURE: Final = "LOCK_MACHINE_MEMORY_FAILURE"
    WRITE_FAILURE: Final = "WRITE_MACHINE_MEMORY_FAILURE"
    LOCK_UNACQUIRED: Final = "LOCK_UNACQUIRED"

    def __init__(
        self, cause: TransactionCause, message: str, metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"[{cause}] {message}", metadata)
        self.cause: TransactionCause = cause


class ConflictError(ResumableError):
    """A compare-and-set write found another revision than the one it was based on."""

    def __init__(self, key: str, expected: int, found: int | None) -> None:
        super().__init__(
            f"record {key!r} is at revision {found}, not {expected}: another writer "
            "advanced it; re-read the record and apply the event again"
        )
        self.key = key
        self.expected = expected
        self.found = found


class DuplicateEntryError(ResumableError, ValueError):
    """A journal append named an event id the record has already journaled."""

    def __init__(self, key: str, event_id: str) -> None:
        super().__init__(
            f"record {key!r} already has a journal entry for event {event_id!r} (or the "
            "append repeats it): each consumed event is journaled once; nothing was written"
        )
        self.key = key
        self.event_id = event_id


class Unavailable(ResumableError, ConnectionError):
    """A server the library needs (a memory's database, a broker) could not be reached or
    did not answer: refused, reset or closed connections, a server shutting down or still
    starting, a timeout, a failover to a read-only replica, a busy SQLite file.

    An infrastructure fault, not a fault of the event being handled: the same call can
    succeed once the server is back. ``Worker`` retries such deliveries with backoff for as
    long as the fault lasts and never dead-letters them. ``server`` names the backend and
    where it is (passwords left out). A ``ConnectionError`` too, as the backends raised before.
    """

    def __init__(self, message: str, *, server: str = "") -> None:
        super().__init__(message)
        self.server = server

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def is_unavailable(error: BaseException) -> bool:
    """True if ``error`` is an ``Unavailable``, or was raised because of one (its
    ``__cause__`` chain holds one, as in a ``TransactionViolation`` the
    driver raised when memory could not be read): an infrastructure fault to retry.
    Only explicit causes (``raise ... from``) are followed: an error raised while handling
    an outage may be a bug of its own."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, Unavailable):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


class ServiceError(ResumableError):
    """Raised at a workflow's ``yield`` when the reply is a ``sys.<type>.error`` event.

    ``event`` is the error event; ``name``, ``message`` and ``stack`` come from its payload.
    """

    def __init__(self, event: Any) -> None:
        data = event.data
        self.event = event
        self.name: str = data.errorName
        self.message: str = data.errorMessage
        self.stack: str | None = data.errorStack
        super().__init__(f"{event.type} from {event.source}: {self.name}: {self.message}")


class StepError(ResumableError):
    """Raised at ``yield step(fn)`` when ``fn`` raised: the same on replay, where ``fn`` is not
    run again. ``name`` and ``message`` describe the original exception."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class Cancelled(BaseException):
    """Raised at a workflow's current ``yield`` when the workflow is cancelled.

    It derives from ``BaseException`` (as ``asyncio.CancelledError`` does) so that
    ``except Exception`` does not swallow it. ``finally`` and ``except Cancelled`` blocks
    run and may still ``yield`` (to compensate); then the workflow ends as cancelled.
    For the same reason it is the one library error that is not a ``ResumableError``
    (which is an ``Exception``): ``except ResumableError`` must not stop a cancellation.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def is_violation(error: BaseException) -> bool:
    """True for the errors that must be raised to the caller, never turned into events."""
    return isinstance(error, ViolationError)


class WorkflowNotFound(ResumableError, LookupError):
    """No instance of that workflow has that id (or it is not in this memory)."""

    def __init__(self, workflow: str, id: str, message: str) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.id = id


class WorkflowFinished(ResumableError):
    """The instance has ended (done, failed or cancelled), so it cannot take that request."""

    def __init__(self, workflow: str, id: str, status: str, message: str) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.id = id
        self.status = status


class WorkflowIdConflict(ResumableError, ValueError):
    """An instance with that id was already started with another payload."""

    def __init__(self, workflow: str, id: str, message: str) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.id = id


class WorkflowFailed(ResumableError):
    """``handle.result()`` of an instance that failed; ``error`` is its system error
    (``errorName``, ``errorMessage``, ``errorStack``)."""

    def __init__(self, workflow: str, id: str, error: Any) -> None:
        name = getattr(error, "errorName", "Error")
        text = getattr(error, "errorMessage", str(error))
        super().__init__(f"workflow {workflow} instance {id!r} failed: {name}: {text}")
        self.workflow = workflow
        self.id = id
        self.error = error


class WorkflowCancelled(ResumableError):
    """``handle.result()`` of an instance that was cancelled; ``reason`` says why.

    Not ``Cancelled``: that one is a ``BaseException`` raised inside workflow code to unwind
    it, and an app's ``except Exception`` handlers must see this one."""

    def __init__(self, workflow: str, id: str, reason: str) -> None:
        super().__init__(f"workflow {workflow} instance {id!r} was cancelled: {reason}")
        self.workflow = workflow
        self.id = id
        self.reason = reason
