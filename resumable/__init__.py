"""resumable: event-driven workflows as plain async generators that survive restarts.

Workflows ``yield`` requests to services; the driver persists their explicit state and a
journal after every step and resumes them, here or on another machine, when the reply
arrives. Events, contracts and subjects follow Arvo's wire format.
"""

from resumable.contracts import (
    Contract,
    ContractError,
    ErrorData,
    OrchestratorContract,
    VersionedContract,
)
from resumable.driver import Resumable, WorkflowAwaitError, WorkflowStatus
from resumable.errors import (
    ConfigViolation,
    ConflictError,
    ContractViolation,
    ExecutionViolation,
    NonDeterminismError,
    ServiceError,
    TransactionViolation,
    ViolationError,
)
from resumable.events import Event, EventError
from resumable.handler import Emit, EventHandler
from resumable.workflow import Context, call, complete, gather

__all__ = [
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
    "NonDeterminismError",
    "OrchestratorContract",
    "Resumable",
    "ServiceError",
    "TransactionViolation",
    "VersionedContract",
    "ViolationError",
    "WorkflowAwaitError",
    "WorkflowStatus",
    "call",
    "complete",
    "gather",
]

__version__ = "0.1.0"
