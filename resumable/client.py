"""``Client``: start workflows under your own ids and wait on them, from any process.

A ``Client`` runs no workflow: it publishes init events, signals and cancellations to the
broker the workers use, and reads instances from their memory. ``Runtime``
(``resumable.runtime``) is a ``Client`` that also hosts workers in the caller's event loop.

An instance is named by the workflow and the user's id: its subject is Arvo's, with the
id as the execution id and the client's ``source`` as the initiator, so the same id
always names the same instance.

(Over 500 lines: one class whose verbs share its lifecycle, broker and memory, most of
it error messages that name the workflow and the user's id.)
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import msgspec

from resumable.brokers import Broker
from resumable.brokers import from_url as broker_from_url
from resumable.contracts import Contract, OrchestratorContract, semver_key
from resumable.driver import CANCEL_TYPE, Resumable
from resumable.errors import (
    ExecutionViolation,
    Unavailable,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowFinished,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from resumable.events import Event, now_iso
from resumable.handles import WorkflowHandle, WorkflowInfo, WorkflowPage
from resumable.ids import derive_id
from resumable.memory import Memory
from resumable.memory import from_url as memory_from_url
from resumable.queries import WorkflowStatus, read_status
from resumable.record import ACTIVE, CANCELLED, DONE, FAILED
from resumable.subject import SubjectError, new_subject, parse_subject

__all__ = ["DEFAULT_SOURCE", "Client"]

log = logging.getLogger("resumable.runtime")

DEFAULT_SOURCE = "com.resumable.client"
"""The initiator of the instances a runtime or client starts: their completions go there."""

_ENDED = (DONE, FAILED, CANCELLED)


def _digest(typed: msgspec.Struct) -> str:
    """A stable digest of an init payload (defaults filled in, key order aside)."""
    plain = msgspec.to_builtins(typed)
    return hashlib.blake2b(msgspec.json.encode(plain, order="sorted"), digest_size=16).hexdigest()


class Client:
    """Starts workflows under your ids and waits on them; runs none of them itself.

    ``broker`` and ``memory`` are objects or URLs (``nats://...``, ``redis://...``;
    ``postgresql://...``, ``sqlite:///app.db``): the ones the workers use. Objects made
    from URLs are closed on exit. ``source`` is the initiator of the instances it starts
    (their completions are published to it; several clients may share it). ``poll`` bounds
    how long ``result`` waits between two looks at memory, for completions another
    process received; ``accept_timeout`` bounds how long ``start`` waits for a worker to
    take the init event.
    """

    def __init__(
        self,
        *,
        broker: Broker | str,
        memory: Memory | str,
        source: str = DEFAULT_SOURCE,
        clock: Callable[[], str] | None = None,
        poll: float = 0.5,
        accept_timeout: float = 30.0,
    ) -> None:
        try:
            new_subject(orchestrator="arvo.orc.check", version="1.0.0", initiator=source)
        except SubjectError as error:
            raise ValueError(f"source {source!r} cannot start workflows: {error}") from None
        if not poll > 0:
            raise ValueError(f"poll must be more than 0 seconds, got {poll!r}")
        if not accept_timeout > 0:
            raise ValueError(f"accept_timeout must be more than 0 seconds, got {accept_timeout!r}")
        self._specs = (broker, memory)
        self._owned: builtins.list[Broker | Memory] = []
        self._open_all()
        self._closed = False
        self.source = source
        self.clock: Callable[[], str] = clock if clock is not None else now_iso
        self.poll = poll
        self.accept_timeout = accept_timeout
        self._hosted: dict[str, Resumable[Any]] = {}
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._waiting = 0
        self._busy = 0
        self._group: anyio.abc.TaskGroup | None = None
        self._listening = anyio.CancelScope()

    def _open_all(self) -> None:
        """Make the broker and memory (those given as URLs: again after an exit)."""
        self.broker: Broker = self._open(self._specs[0], broker_from_url)
        self.memory: Memory = self._open(self._specs[1], memory_from_url)

    def _open(self, spec: Any, from_url: Callable[[str], Any]) -> Any:
        if isinstance(spec, str):
            made = from_url(spec)
            self._owned.append(made)
            return made
        return spec

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source} on {self.broker!r}, {self.memory!r}>"

    # ---------------------------------------------------------------------------------
    # lifecycle

    async def __aenter__(self) -> Any:
        if self._group is not None:
            raise RuntimeError(f"{self!r} is already running")
        if self._closed:  # entered again: what was closed on exit is made anew
            self._open_all()
            self._reopened()
            self._closed = False
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        try:
            await self._started(self._group)
        except BaseException:
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)
            self._group = None
            await self._close_owned()
            raise
        return self

    def _reopened(self) -> None:
        """Hook: rebuild what used the broker and memory of the previous run."""

    async def _started(self, group: anyio.abc.TaskGroup) -> None:
        self._listening = anyio.CancelScope()
        group.start_soon(self._listen)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                self._listening.cancel()
                await self._stopping()
                group.cancel_scope.cancel()
                await group.__aexit__(kind, error, traceback)
        finally:
            await self._close_owned()

    async def _stopping(self) -> None:
        """Hook: what to finish before the background tasks are cancelled."""

    async def _close_owned(self) -> None:
        self._closed = True
        for owned in reversed(self._owned):
            try:
                await owned.close()
            except Exception as error:
                log.warning("closing %r failed: %s", owned, error)
        self._owned.clear()

    def _check_running(self) -> None:
        if self._group is None:
            raise RuntimeError(
                f"{type(self).__name__} is not running: use it as "
                f"'async with {type(self).__name__}(...) as rt:'"
            )

    async def _listen(self) -> None:
        """Take the completions addressed to ``source`` and wake whoever waits on them."""
        with self._listening:
            await self._listen_forever()

    async def _listen_forever(self) -> None:
        while True:
            try:
                deliveries = await self.broker.receive(
                    self.source, max_messages=64, timeout=self.poll
                )
            except Exception as error:
                log.warning("receiving completions on %r failed: %s", self.source, error)
                await anyio.sleep(self.poll)
                continue
            for delivery in deliveries:
                for waiter in self._waiters.get(delivery.event.subject, ()):
                    waiter.set()
                try:
                    await delivery.ack()
                except Exception as error:
                    log.debug("could not ack completion %s: %s", delivery.event.id, error)

    # ---------------------------------------------------------------------------------
    # the public verbs

    def handle(self, workflow: OrchestratorContract | Resumable[Any], id: str) -> WorkflowHandle:
        """A handle on instance ``id`` of ``workflow`` (started earlier, maybe elsewhere)."""
        return WorkflowHandle(self, self._contract_of(workflow), id)

    async def start(
        self,
        workflow: OrchestratorContract | Resumable[Any],
        data: Any,
        *,
        id: str,
        version: str | None = None,
    ) -> WorkflowHandle:
        """Start instance ``id`` of ``workflow`` with init ``data`` and return its handle,
        once the start is durable. Starting an id that exists returns its handle and runs
        nothing again; with another payload it raises ``WorkflowIdConflict``. ``version``
        defaults to the newest the runtime runs (else the contract's latest)."""
        self._check_running()
        contract = self._contract_of(workflow)
        hosted = self._hosted.get(contract.type)
        if version is None:
            version = (
                max(hosted.functions, key=semver_key)
                if hosted is not None
                else contract.latest.version
            )
        subject = self._subject_for(contract, version, id)
        typed, _ = contract.version(version).validate_accepts(data)
        init = contract.init_event(
            data,
            source=self.source,
            version=version,
            execution_id=id,
            id=derive_id(subject, "start", _digest(typed)),
            time=self.clock(),
        )
        handle = WorkflowHandle(self, contract, id)
        memory = self._memory_for(contract)
        for candidate in self._subjects(contract, id):
            if await memory.read(candidate) is not None:
                if candidate == subject:
                    await self._check_same_start(handle, subject, init.id)
                handle._subject = candidate
                return handle
        if hosted is not None:
            try:
                await self._execute(hosted, init, handle)
            except ExecutionViolation:
                await self._check_same_start(handle, subject, init.id)  # lost a race?
                raise
        else:
            await self.broker.publish(init)
            await self._accepted(handle, subject, init.id)
        await self._check_same_start(handle, subject, init.id)
        handle._subject = subject
        return handle

    async def list(
        self,
        workflow: OrchestratorContract | Resumable[Any] | None = None,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """Instances (of ``workflow``, with ``status``), ``limit`` at a time; pass the
        page's ``cursor`` back for the next page."""
        contract = None if workflow is None else self._contract_of(workflow)
        memory = self.memory if contract is None else self._memory_for(contract)
        page = await memory.list(
            workflow=None if contract is None else contract.type,
            status=status,
            limit=limit,
            cursor=cursor,
        )
        items = []
        for listed in page.items:
            try:
                parsed = parse_subject(listed.key)
            except SubjectError:
                continue
            items.append(
                WorkflowInfo(
                    id=parsed.execution_id,
                    workflow=parsed.name,
                    status=listed.status,
                    version=parsed.version,
                    subject=listed.key,
                    created=datetime.fromtimestamp(listed.created, UTC),
                    updated=datetime.fromtimestamp(listed.updated, UTC),
                )
            )
        return WorkflowPage(items=items, cursor=page.cursor)

    # ---------------------------------------------------------------------------------
    # what handles call

    def _contract_of(self, workflow: Any) -> OrchestratorContract:
        if isinstance(workflow, Resumable):
            return workflow.contract
        if isinstance(workflow, OrchestratorContract):
            return workflow
        raise TypeError(
            f"expected a workflow (Resumable) or its OrchestratorContract, got {workflow!r}"
        )

    def _memory_for(self, contract: OrchestratorContract) -> Memory:
        hosted = self._hosted.get(contract.type)
        return hosted.memory if hosted is not None else self.memory

    def _memories(self) -> builtins.list[Memory]:
        found: dict[int, Memory] = {id(self.memory): self.memory}
        for workflow in self._hosted.values():
            found.setdefault(id(workflow.memory), workflow.memory)
        return list(found.values())

    def _subject_for(self, contract: OrchestratorContract, version: str, id: str) -> str:
        if not isinstance(id, str):
            raise TypeError(f"a workflow id is a str, got {id!r}")
        try:
            return new_subject(
                orchestrator=contract.type, version=version, initiator=self.source, execution_id=id
            )
        except SubjectError as error:
            raise ValueError(f"{id!r} cannot be a workflow id: {error}") from None

    def _subjects(self, contract: OrchestratorContract, id: str) -> builtins.list[str]:
        """The subjects ``id`` has under each version of ``contract``, newest first."""
        versions = sorted(contract.versions, key=semver_key, reverse=True)
        return [self._subject_for(contract, version, id) for version in versions]

    async def _find(self, handle: WorkflowHandle) -> str:
        memory = self._memory_for(handle.contract)
        for subject in self._subjects(handle.contract, handle.id):
            if await memory.read(subject) is not None:
                return subject
        raise WorkflowNotFound(
            handle.workflow,
            handle.id,
            f"workflow {handle.workflow} has no instance {handle.id!r} started by "
            f"{self.source} in {memory!r}; start it with start({handle.contract.name}, ..., "
            f"id={handle.id!r})",
        )

    async def _check_same_start(self, handle: WorkflowHandle, subject: str, init_id: str) -> None:
        """Raise ``WorkflowIdConflict`` if ``subject`` was started by another init event."""
        memory = self._memory_for(handle.contract)
        if await memory.entry(subject, init_id) is not None:
            return
        status = await read_status(memory, subject)
        if status is None or status.generation > 0:  # continued as new: nothing to compare
            return
        raise WorkflowIdConflict(
            handle.workflow,
            handle.id,
            f"workflow {handle.workflow} already has an instance {handle.id!r}, started with "
            "another payload; use another id, or handle(...) to reach that one",
        )

    async def _accepted(self, handle: WorkflowHandle, subject: str, init_id: str) -> None:
        """Wait until a worker has written the record the init event ``init_id`` starts."""
        memory = self._memory_for(handle.contract)
        wait = 0.01
        with anyio.move_on_after(self.accept_timeout):
            while await memory.read(subject) is None:
                await anyio.sleep(wait)
                wait = min(wait * 2, self.poll)
            return
        raise TimeoutError(
            f"no worker started workflow {handle.workflow} instance {handle.id!r} within "
            f"{self.accept_timeout}s of publishing its init event {init_id}; is a worker "
            f"running {handle.workflow} on {self.broker!r} and {memory!r}? The event stays "
            "queued: starting the same id again is safe"
        )

    async def _execute(
        self, workflow: Resumable[Any], event: Event, handle: WorkflowHandle
    ) -> None:
        """Hook for a runtime that runs ``workflow``: execute ``event`` in this process."""
        raise NotImplementedError

    async def _status(self, handle: WorkflowHandle) -> WorkflowStatus[Any]:
        subject = await handle.subject()
        hosted = self._hosted.get(handle.workflow)
        status = await read_status(
            self._memory_for(handle.contract),
            subject,
            state_type=None if hosted is None else hosted.state_type,
        )
        if status is None:
            raise WorkflowNotFound(
                handle.workflow,
                handle.id,
                f"workflow {handle.workflow} instance {handle.id!r} is no longer in memory",
            )
        return status

    async def _live(self, handle: WorkflowHandle, verb: str) -> str:
        """The subject of a running instance; raise for an unknown or ended one."""
        subject = await handle.subject()
        stored = await self._memory_for(handle.contract).read(subject)
        if stored is not None and stored.status in _ENDED:
            raise WorkflowFinished(
                handle.workflow,
                handle.id,
                stored.status,
                f"cannot {verb} workflow {handle.workflow} instance {handle.id!r}: it has "
                f"ended ({stored.status})",
            )
        return subject

    async def _result(self, handle: WorkflowHandle, timeout: float | None) -> Any:
        subject = await handle.subject()
        memory = self._memory_for(handle.contract)
        waiter = anyio.Event()
        waiters = self._waiters.setdefault(subject, set())
        waiters.add(waiter)
        self._waiting += 1
        status = ACTIVE
        try:
            with anyio.fail_after(timeout):
                wait = 0.02
                while True:
                    try:
                        stored = await memory.read(subject)
                    except Unavailable:  # an outage: wait it out, within the timeout
                        await anyio.sleep(wait)
                        wait = min(wait * 2, self.poll)
                        continue
                    if stored is None:
                        raise WorkflowNotFound(
                            handle.workflow,
                            handle.id,
                            f"workflow {handle.workflow} instance {handle.id!r} is no longer "
                            "in memory",
                        )
                    status = stored.status
                    if status in _ENDED:
                        break
                    with anyio.move_on_after(wait):
                        await waiter.wait()
                    if waiter.is_set():
                        waiter = anyio.Event()
                        waiters.add(waiter)
                    wait = min(wait * 2, self.poll)
        except TimeoutError:
            raise TimeoutError(
                f"workflow {handle.workflow} instance {handle.id!r} did not end within "
                f"{timeout}s (it is {status})"
            ) from None
        finally:
            self._waiting -= 1
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(subject, None)
        return self._outcome(handle, await self._status(handle))

    def _outcome(self, handle: WorkflowHandle, status: WorkflowStatus[Any]) -> Any:
        if status.status == FAILED:
            raise WorkflowFailed(handle.workflow, handle.id, status.error)
        if status.status == CANCELLED:
            reason = "" if status.error is None else status.error.errorMessage
            raise WorkflowCancelled(handle.workflow, handle.id, reason)
        versioned = handle.contract.versions.get(status.version)
        schema = None if versioned is None else versioned.emits.get(handle.contract.complete_type)
        if schema is None or status.result is None:
            return status.result
        return msgspec.convert(status.result, schema)

    async def _signal(
        self, handle: WorkflowHandle, signal: Contract | str, data: Any, id: str | None
    ) -> None:
        self._check_running()
        subject = await self._live(handle, "signal")
        hosted = self._hosted.get(handle.workflow)
        event_id = derive_id(subject, "signal", id) if id is not None else None
        extra: dict[str, Any] = {} if event_id is None else {"id": event_id}
        if hosted is not None:
            event = hosted.signal_event(subject, signal, data, source=self.source)
            if event_id is not None:
                event = msgspec.structs.replace(event, id=event_id)
            await self._execute(hosted, event, handle)
        elif isinstance(signal, Contract):
            await self.broker.publish(
                signal.event(
                    data,
                    source=self.source,
                    subject=subject,
                    to=handle.workflow,
                    time=self.clock(),
                    **extra,
                )
            )
        else:
            await self.broker.publish(
                Event(
                    source=self.source,
                    type=signal,
                    subject=subject,
                    data=data,
                    to=handle.workflow,
                    time=self.clock(),
                    **extra,
                )
            )

    async def _cancel(self, handle: WorkflowHandle, reason: str) -> None:
        self._check_running()
        subject = await self._live(handle, "cancel")
        event = Event(
            source=self.source,
            type=CANCEL_TYPE,
            subject=subject,
            data={"reason": reason},
            time=self.clock(),
            to=handle.workflow,
        )
        hosted = self._hosted.get(handle.workflow)
        if hosted is not None:
            await self._execute(hosted, event, handle)
        else:
            await self.broker.publish(event)
