"""Group commit: concurrent writers share one transaction and one commit.

Each write becomes an operation in a queue. One caller at a time (the leader) takes every
queued operation and hands them to the backend as one batch, which runs them in one
transaction, each inside its own savepoint: one that fails is rolled back alone and fails
only its caller. Every caller is released once the commit holding its operation is done
(so its write is durable), and the leader passes the role to the oldest queued caller.

A caller that finds no batch running leads at once, alone; the callers that come while its
batch runs make up the next one, so batches grow with the load and a lone writer never
waits. A caller cancelled while queued withdraws its operation; once a batch holds it, it
runs and commits regardless.

``SQLiteMemory`` and ``PostgresMemory`` build on this; what differs between them is only
how a batch runs (``_execute``): in a worker thread on sqlite3, on the event loop on asyncpg.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import anyio

__all__ = ["GroupCommit", "Op"]


class Op:
    """One queued operation: the key it writes, the work to run inside the batch's
    transaction (on the backend's connection), and how it ended."""

    __slots__ = ("error", "key", "lead", "resolved", "run", "taken", "value", "wake")

    def __init__(self, key: str, run: Any) -> None:
        self.key = key
        self.run = run
        self.wake = anyio.Event()  # set when resolved, or when this caller must lead
        self.lead = False  # this caller runs the next batch
        self.taken = False  # a batch holds this operation; it can no longer be withdrawn
        self.resolved = False
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any, error: BaseException | None) -> None:
        """Record the outcome. Touches no event, so a worker thread may call it."""
        self.value, self.error, self.resolved = value, error, True

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class GroupCommit(abc.ABC):
    """The queue and its leader; a backend supplies ``_execute`` and ``_check_open``."""

    def __init__(self) -> None:
        self.commits = 0
        """Transactions committed so far; shows group commit at work (tests, metrics)."""
        self._queue: list[Op] = []
        self._busy = False  # a leader is running a batch or about to
        self._idle: anyio.Event | None = None  # set when the last batch ends, for close()

    @abc.abstractmethod
    async def _execute(self, batch: list[Op]) -> None:
        """Run ``batch`` in one transaction, each operation in its own savepoint, and resolve
        every operation (``_settle`` or ``_fail``); the commit must be durable on return."""

    @abc.abstractmethod
    def _check_open(self) -> None:
        """Raise if the memory is closed: no new operation may be queued."""

    async def _submit(self, run: Any, *, key: str = "") -> Any:
        """Queue ``run`` for the next batch and return its result once that batch committed."""
        self._check_open()
        op = Op(key, run)
        self._queue.append(op)
        if not self._busy:
            self._busy = op.lead = True
        if not op.lead:
            try:
                await op.wake.wait()  # resolved, or made the next leader
            except BaseException:
                # Cancelled: withdraw the operation unless a batch already holds it.
                if not op.taken:
                    self._queue.remove(op)
                    if op.lead:
                        self._hand_over()
                raise
        if not op.resolved:
            await self._lead()
        return op.outcome()

    async def _lead(self) -> None:
        """Run every queued operation as one batch, release their callers, pass the lead on."""
        batch, self._queue = self._queue, []
        for op in batch:
            op.taken = True
        try:
            # Shielded: the batch's callers wait for it, so the leader must see it through.
            with anyio.CancelScope(shield=True):
                await self._execute(batch)
        finally:
            for op in batch:
                if not op.resolved:
                    op.resolve(None, RuntimeError(f"{self!r}: the batch was interrupted"))
                op.wake.set()
            self._hand_over()

    def _hand_over(self) -> None:
        """Make the oldest queued caller the next leader, or mark the memory idle."""
        if self._queue:
            self._queue[0].lead = True
            self._queue[0].wake.set()
            return
        self._busy = False
        if self._idle is not None:
            self._idle.set()
            self._idle = None

    async def _drain(self) -> None:
        """Wait until no batch runs or waits to run (``close`` lets queued writes finish)."""
        while self._busy:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def _settle(
        self, batch: Sequence[Op], outcomes: Sequence[tuple[Any, Exception | None]]
    ) -> None:
        """The batch committed: count the commit and give each operation its outcome."""
        self.commits += 1
        for op, (value, failure) in zip(batch, outcomes, strict=True):
            op.resolve(value, failure)

    @staticmethod
    def _fail(batch: Sequence[Op], error: BaseException) -> None:
        """The batch's transaction failed as a whole: every operation fails with ``error``."""
        for op in batch:
            op.resolve(None, error)
