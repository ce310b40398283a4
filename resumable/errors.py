"""Errors, split as Arvo splits them.

A *violation* is raised to whoever called ``execute``: nothing is persisted, so the caller
can retry the event or dead-letter it. Any other exception raised by user code becomes a
``sys.<type>.error`` event instead (see ``ServiceError`` for the receiving side).
"""

from __future__ import annotations

from typing import Any


class ViolationError(Exception):
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


class TransactionViolation(ViolationError):
    """Memory could not be locked, read or written; ``cause`` says which."""

    type = "OrchestratorTransaction"

    READ_FAILURE = "READ_MACHINE_MEMORY_FAILURE"
    LOCK_FAILURE = "LOCK_MACHINE_MEMORY_FAILURE"
    WRITE_FAILURE = "WRITE_MACHINE_MEMORY_FAILURE"
    LOCK_UNACQUIRED = "LOCK_UNACQUIRED"

    def __init__(self, cause: str, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{cause}] {message}", metadata)
        self.cause = cause


class ConflictError(Exception):
    """A compare-and-set write found another revision than the one it was based on."""

    def __init__(self, key: str, expected: int, found: int | None) -> None:
        super().__init__(
            f"record {key!r} is at revision {found}, not {expected}: another writer "
            "advanced it; re-read the record and apply the event again"
        )
        self.key = key
        self.expected = expected
        self.found = found


class DuplicateEntryError(ValueError):
    """A journal append named an event id the record has already journaled."""

    def __init__(self, key: str, event_id: str) -> None:
        super().__init__(
            f"record {key!r} already has a journal entry for event {event_id!r} (or the "
            "append repeats it): each consumed event is journaled once; nothing was written"
        )
        self.key = key
        self.event_id = event_id


class ServiceError(Exception):
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


class StepError(Exception):
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
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def is_violation(error: BaseException) -> bool:
    """True for the errors that must be raised to the caller, never turned into events."""
    return isinstance(error, ViolationError)


class WorkflowNotFound(Exception):
    """No instance of that workflow has that id (or it is not in this memory)."""

    def __init__(self, workflow: str, id: str, message: str) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.id = id


class WorkflowFinished(Exception):
    """The instance has ended (done, failed or cancelled), so it cannot take that request."""

    def __init__(self, workflow: str, id: str, status: str, message: str) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.id = id
        self.status = status


class WorkflowIdConflict(Exception):
    """An instance with that id was already started with another payload."""

    def __init__(self, workflow: str, id: str, message: str) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.id = id


class WorkflowFailed(Exception):
    """``handle.result()`` of an instance that failed; ``error`` is its system error
    (``errorName``, ``errorMessage``, ``errorStack``)."""

    def __init__(self, workflow: str, id: str, error: Any) -> None:
        name = getattr(error, "errorName", "Error")
        text = getattr(error, "errorMessage", str(error))
        super().__init__(f"workflow {workflow} instance {id!r} failed: {name}: {text}")
        self.workflow = workflow
        self.id = id
        self.error = error


class WorkflowCancelled(Exception):
    """``handle.result()`` of an instance that was cancelled; ``reason`` says why.

    Not ``Cancelled``: that one is a ``BaseException`` raised inside workflow code to unwind
    it, and an app's ``except Exception`` handlers must see this one."""

    def __init__(self, workflow: str, id: str, reason: str) -> None:
        super().__init__(f"workflow {workflow} instance {id!r} was cancelled: {reason}")
        self.workflow = workflow
        self.id = id
        self.reason = reason
