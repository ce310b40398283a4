"""The I/O under the engine: reading an instance's record and journal, and writing what
the engine decided with compare-and-set. Failures become ``TransactionViolation``s naming
the instance and the event, so a worker retries them. Used by ``Resumable`` and by the
test kit's simulated processes."""

from __future__ import annotations

from collections.abc import Mapping

from resumable.engine.cache import LiveCache
from resumable.engine.turn import Decision
from resumable.errors import ConflictError, TransactionViolation
from resumable.memory import Memory, Stored
from resumable.metrics import enabled, instruments
from resumable.record import Header, encode_header

__all__ = ["MemoryJournal", "apply_decision", "read_record", "write_record"]


async def read_record(
    memory: Memory, key: str, why: str, *, journal: bool = False
) -> Stored | None:
    """The record of ``key`` (with its journal if asked), read for event ``why``."""
    try:
        return await memory.read(key, journal=journal)
    except Exception as error:
        raise TransactionViolation(
            TransactionViolation.READ_FAILURE,
            f"could not read workflow {key!r} for event {why}: {error}",
        ) from error


class MemoryJournal:
    """The engine's read access to one instance's journal in memory. ``replayed`` counts
    the entries read whole (the engine reads a whole journal only to replay it), -1 if none."""

    __slots__ = ("key", "memory", "replayed")

    def __init__(self, memory: Memory, key: str) -> None:
        self.memory = memory
        self.key = key
        self.replayed = -1

    async def entry(self, event_id: str) -> bytes | None:
        try:
            return await self.memory.entry(self.key, event_id)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"could not read the journal of workflow {self.key!r} for event {event_id}: "
                f"{error}",
            ) from error

    async def entries(self, revision: int) -> list[bytes]:
        try:
            full = await self.memory.read(self.key, journal=True)
        except Exception as error:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"could not read the journal of workflow {self.key!r}: {error}",
            ) from error
        if full is None or full.journal is None or full.revision != revision:
            raise TransactionViolation(
                TransactionViolation.READ_FAILURE,
                f"workflow {self.key!r} changed while it was being read; retry the event",
            )
        self.replayed = len(full.journal)
        return full.journal


async def write_record(
    memory: Memory,
    key: str,
    revision: int,
    header: Header,
    append: list[tuple[str, bytes]],
    why: str,
    *,
    reset: bool = False,
    attributes: Mapping[str, str] | None = None,
) -> int:
    """Compare-and-set ``key``'s record at ``revision``; returns the new revision. A
    failure is a ``TransactionViolation`` naming the event ``why`` it was written for.
    With metrics on, the header's and the appended entries' sizes are recorded under
    ``attributes``."""
    encoded = encode_header(header)
    if attributes is not None and enabled():
        measure = instruments()
        measure.record_size.record(len(encoded), attributes)
        if append:
            measure.journal_bytes.add(sum(len(entry) for _, entry in append), attributes)
    try:
        return await memory.write(
            key,
            revision=revision,
            status=header.status,
            header=encoded,
            append=append,
            due=header.next_due(),
            reset=reset,
        )
    except ConflictError as error:
        raise TransactionViolation(
            TransactionViolation.WRITE_FAILURE,
            f"workflow {key!r} was changed by another writer while event {why} was "
            f"applied ({error}); the event was not applied, retry it",
        ) from error
    except Exception as error:
        raise TransactionViolation(
            TransactionViolation.WRITE_FAILURE,
            f"could not write workflow {key!r} for event {why}: {error}",
        ) from error


async def apply_decision(
    memory: Memory,
    cache: LiveCache,
    key: str,
    revision: int,
    decision: Decision,
    why: str,
    attributes: Mapping[str, str] | None = None,
) -> int:
    """Write what the engine decided (nothing if it wrote no header) and keep the live
    generator that matches the written record, or drop the stale one. Returns how many
    other generators the cache evicted to keep it."""
    header = decision.header
    if header is None:
        return 0
    written = await write_record(
        memory,
        key,
        revision,
        header,
        decision.append,
        why,
        reset=decision.reset,
        attributes=attributes,
    )
    if decision.live is None:
        cache.drop(key)
        return 0
    decision.live.revision = written
    return cache.put(key, decision.live)
