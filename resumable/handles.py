"""A workflow handle: one instance, named by the user's own id, and what you can ask of it.

``Runtime.start`` and ``Runtime.handle`` (or ``Client``'s) return one. The handle holds the
workflow's contract and the id; the subject (Arvo's wire name of the instance) is derived
from them, so a handle made in another process, or after a restart, finds the same
instance.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from resumable.contracts import Contract, OrchestratorContract
from resumable.queries import WorkflowStatus

if TYPE_CHECKING:
    from resumable.client import Client

__all__ = ["WorkflowHandle", "WorkflowInfo", "WorkflowPage"]


@attrs.frozen
class WorkflowInfo:
    """One instance as ``list`` shows it. ``created``/``updated`` are None where the memory
    backend does not keep them."""

    id: str
    """The user's id (the subject's execution id)."""
    workflow: str
    """The workflow's topic, e.g. ``arvo.orc.order.fulfil``."""
    status: str
    version: str
    subject: str
    created: datetime | None = None
    updated: datetime | None = None


@attrs.frozen
class WorkflowPage:
    """A page of ``list``: pass ``cursor`` back for the next page; None on the last."""

    items: list[WorkflowInfo]
    cursor: str | None


class WorkflowHandle:
    """The instance ``id`` of the workflow ``contract``, reached through ``client``."""

    def __init__(self, client: Client, contract: OrchestratorContract, id: str) -> None:
        self._client = client
        self.contract = contract
        self.id = id
        self._subject: str | None = None

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.contract.name} {self.id!r}>"

    @property
    def workflow(self) -> str:
        """The workflow's topic (its init event type)."""
        return self.contract.type

    async def subject(self) -> str:
        """The instance's subject: found in memory under any version of the contract."""
        if self._subject is None:
            self._subject = await self._client._find(self)
        return self._subject

    async def status(self) -> WorkflowStatus[Any]:
        """The stored status (from memory, no code runs). Raises ``WorkflowNotFound``."""
        return await self._client._status(self)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the instance to end and return its completion data, typed as the
        contract's ``complete`` Struct. Raises ``WorkflowFailed`` (with the system error),
        ``WorkflowCancelled``, ``WorkflowNotFound``, or ``TimeoutError`` after ``timeout``
        seconds (None: wait for ever)."""
        return await self._client._result(self, timeout)

    async def signal(self, signal: Contract | str, data: Any, *, id: str | None = None) -> None:
        """Send ``signal`` (one of the workflow's ``signals``) with ``data``. With ``id``,
        sending it again is harmless: the instance takes it once. Raises
        ``WorkflowNotFound`` or ``WorkflowFinished``."""
        await self._client._signal(self, signal, data, id)

    async def cancel(self, reason: str = "") -> None:
        """Cancel the instance: ``Cancelled`` is raised at its current ``yield``, its
        compensations run, and ``result()`` raises ``WorkflowCancelled``. Raises
        ``WorkflowNotFound`` or ``WorkflowFinished``."""
        await self._client._cancel(self, reason)
