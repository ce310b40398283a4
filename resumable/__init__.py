"""resumable: event-driven workflows as plain async generators that survive restarts.

Workflows ``yield`` requests to services; the driver persists their explicit state and a
journal after every step and resumes them, here or on another machine, when the reply
arrives. Events, contracts and subjects follow Arvo's wire format.
"""

from resumable.clock import VirtualClock
from resumable.contracts import (
    Contract,
    ContractError,
    ErrorData,
    OrchestratorContract,
    VersionedContract,
)
from resumable.driver import CANCEL_TYPE, TIMER_TYPE, Resumable
from resumable.errors import (
    Cancelled,
    ConfigViolation,
    ConflictError,
    ContractViolation,
    ExecutionViolation,
    NonDeterminismError,
    ResumableError,
    ServiceError,
    SetupError,
    StepError,
    TransactionViolation,
    ViolationError,
    WorkflowAwaitError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowFinished,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from resumable.events import Event, EventError
from resumable.handler import Emit, EventHandler
from resumable.handles import WorkflowHandle, WorkflowInfo, WorkflowPage
from resumable.queries import HistoryStep, WorkflowStatus
from resumable.runtime import Client, Runtime
from resumable.workflow import (
    Context,
    Retry,
    call,
    complete,
    continue_as_new,
    gather,
    race,
    sleep,
    sleep_until,
    step,
    wait_for,
)

__all__ = [
    "CANCEL_TYPE",
    "TIMER_TYPE",
    "Cancelled",
    "Client",
    "ConfigViolation",
    "ConflictError",
    "Context",
    "Contract",
    "ContractError",
    "ContractViolation",
    "Emit",
    "ErrorData",
    "Event",
    "EventError",
    "EventHandler",
    "ExecutionViolation",
    "HistoryStep",
    "NonDeterminismError",
    "OrchestratorContract",
    "Resumable",
    "ResumableError",
    "Retry",
    "Runtime",
    "ServiceError",
    "SetupError",
    "StepError",
    "TransactionViolation",
    "VersionedContract",
    "ViolationError",
    "VirtualClock",
    "WorkflowAwaitError",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowFinished",
    "WorkflowHandle",
    "WorkflowIdConflict",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowPage",
    "WorkflowStatus",
    "call",
    "complete",
    "continue_as_new",
    "gather",
    "race",
    "sleep",
    "sleep_until",
    "step",
    "wait_for",
]

__version__ = "0.1.0"
