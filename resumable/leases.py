"""The leases a workflow's steps hold: taken before a step, renewed while it runs (the
heartbeat), released after it, and given back later if an outage kept them.

A step holds its instance's lease (``Memory.lock``, with a time to live ``lock_ttl``) from
before it reads the record until after it writes. ``Leases.renew`` (called by a worker's
heartbeat) renews the leases held for a third of ``lock_ttl``, so a long step keeps its
instance while a dead or stalled process's leases expire within ``lock_ttl``. A lease
found lost is logged and counted; the step's write is then refused by the compare-and-set
if another execution wrote the instance meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping

import anyio

from resumable.errors import ConflictError, TransactionViolation, is_unavailable
from resumable.ids import lease_owner
from resumable.memory import Memory
from resumable.metrics import instruments
from resumable.subject import instance_name

__all__ = ["Lease", "Leases", "OrphanLeases"]

log = logging.getLogger("resumable")

_REMEMBERED = 10_000
"""How many orphaned leases a process keeps to give back (the oldest are left to expire)."""


class Lease:
    """A lease this process holds on one instance while a step runs: ``renewed`` is when
    it was taken or last renewed (monotonic seconds)."""

    __slots__ = ("key", "lost", "owner", "renewed", "renewing")

    def __init__(self, key: str, owner: str, renewed: float) -> None:
        self.key = key
        self.owner = owner
        self.renewed = renewed
        self.lost = False
        self.renewing: anyio.Event | None = None


class OrphanLeases:
    """Leases this process took and could not release (the memory was unavailable, the
    connection broke), or whose taking failed midway, so they may be held. Each execution
    has its own owner token, so nobody else can release them; left alone they block their
    instances until they expire (``lock_ttl``). ``release`` gives them back once the memory
    answers (an unlock only removes a lease its owner still holds, so a late one is
    harmless): the driver calls it before taking a lease. Bounded: the oldest are left to
    expire."""

    def __init__(self, limit: int = _REMEMBERED) -> None:
        self._held: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._limit = limit

    @property
    def pending(self) -> bool:
        """True while some are held to give back."""
        return bool(self._held)

    def add(self, key: str, owner: str) -> None:
        self._held[(key, owner)] = None
        while len(self._held) > self._limit:
            self._held.popitem(last=False)

    async def release(self, memory: Memory) -> None:
        """Release what can be released; stop at the first sign the outage goes on."""
        for key, owner in list(self._held):
            try:
                await memory.unlock(key, owner)
            except Exception as error:
                if is_unavailable(error):
                    return
                log.debug("releasing the orphaned lease on %s failed: %s", key, error)
            self._held.pop((key, owner), None)


class Leases:
    """The leases one workflow's steps hold in this process, by owner token."""

    def __init__(self, attributes: Mapping[str, str]) -> None:
        self.held: dict[str, Lease] = {}
        self.orphans = OrphanLeases()
        self._attributes = attributes

    async def take(self, memory: Memory, key: str, why: str, ttl: float) -> Lease:
        """Take ``key``'s lease for a new execution (for event ``why``), and note it so
        ``renew`` keeps it while the step runs. Raises ``TransactionViolation``."""
        owner = lease_owner()
        if self.orphans.pending:  # leases an outage kept us from releasing: give them back
            await self.orphans.release(memory)
        try:
            locked = await memory.lock(key, owner, ttl)
        except Exception as error:
            self.orphans.add(key, owner)  # it may have been taken before the call broke
            raise TransactionViolation(
                TransactionViolation.LOCK_FAILURE,
                f"could not lock workflow {key!r} for event {why}: {error}",
            ) from error
        if not locked:
            instruments().lease_denied.add(1, self._attributes)
            raise TransactionViolation(
                TransactionViolation.LOCK_UNACQUIRED,
                f"workflow {key!r} is locked by another execution; retry event {why} "
                f"later (leases expire {ttl}s after their last renewal)",
            )
        lease = self.held[owner] = Lease(key, owner, time.monotonic())
        return lease

    async def release(self, memory: Memory, lease: Lease) -> None:
        """Give ``lease`` back; if the memory cannot be reached, keep it to give back later
        (or it expires)."""
        self.held.pop(lease.owner, None)  # no renewal starts after this
        if lease.renewing is not None:  # one in flight would take the lease again after
            await lease.renewing.wait()
        try:
            await memory.unlock(lease.key, lease.owner)
        except Exception as error:  # released later, or it expires on its own
            self.orphans.add(lease.key, lease.owner)
            outage = is_unavailable(error)
            log.warning(
                "could not unlock workflow %s (%s); it is released once the memory answers, "
                "or expires",
                instance_name(lease.key),
                error if outage else type(error).__name__,
                exc_info=not outage,
            )

    async def renew(self, memory: Memory, ttl: float) -> int:
        """Renew the leases held for a third of ``ttl`` since they were taken (or last
        renewed); returns how many. A lease found lost is logged, counted and left."""
        if not self.held:
            return 0
        now = time.monotonic()
        threshold = ttl / 3
        due = [
            lease
            for lease in self.held.values()
            if not lease.lost and lease.renewing is None and now - lease.renewed >= threshold
        ]
        renewed = 0
        for lease in due:
            renewed += await self._renew(memory, lease, now, ttl)
        return renewed

    async def _renew(self, memory: Memory, lease: Lease, now: float, ttl: float) -> bool:
        if now - lease.renewed >= ttl:
            self._lost(
                lease,
                f"it expired {now - lease.renewed - ttl:.1f}s before it could be "
                "renewed (was this process stalled, or its event loop blocked?)",
            )
            return False
        lease.renewing = anyio.Event()
        try:
            held = await memory.lock(lease.key, lease.owner, ttl)
        except Exception as error:
            log.warning(
                "could not renew the lease on workflow %s (%s); trying again at the next heartbeat",
                instance_name(lease.key),
                error,
            )
            return False
        finally:
            lease.renewing.set()
            lease.renewing = None
        if not held:
            self._lost(lease, "another execution took it after it expired")
            return False
        lease.renewed = now
        return True

    def _lost(self, lease: Lease, why: str) -> None:
        lease.lost = True
        instruments().lease_lost.add(1, self._attributes)
        log.warning(
            "the lease on workflow %s was lost while its step ran: %s. Another worker may "
            "take the instance over; if it writes first, this step's write is refused by "
            "the compare-and-set and the event is retried",
            instance_name(lease.key),
            why,
        )

    def refused(self, lease: Lease, event_id: str, error: TransactionViolation, ttl: float) -> None:
        """Log a write refused by the compare-and-set after the step outlived its lease:
        the stale step's outcome is dropped; the event is retried from the new record."""
        if not isinstance(error.__cause__, ConflictError):
            return
        held = time.monotonic() - lease.renewed
        if lease.lost or held > ttl:
            log.warning(
                "workflow %s: the step for event %s outlived its lease (last renewed %.1fs "
                "ago, lock_ttl %gs) and another execution wrote the instance meanwhile: the "
                "compare-and-set refused this step's write, so none of it was kept",
                instance_name(lease.key),
                event_id,
                held,
                ttl,
            )
