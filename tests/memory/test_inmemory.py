"""InMemoryMemory runs the shared conformance suite."""

from __future__ import annotations

import time

import pytest

from resumable.memory import InMemoryMemory, Memory

from .conformance import FakeClock, MemoryConformance, subject


class TestInMemoryMemory(MemoryConformance):
    @pytest.fixture
    def memory(self, clock: FakeClock) -> Memory:
        return InMemoryMemory(clock=clock)


@pytest.mark.anyio
async def test_records_are_stamped_with_the_wall_clock_by_default() -> None:
    memory = InMemoryMemory()
    before = time.time()
    await memory.write("k", revision=0, status="active", header=b"")
    (listed,) = (await memory.list()).items
    assert before <= listed.created == listed.updated <= time.time()


class _CountingByListing(InMemoryMemory):
    """An in-memory memory that counts with ``Memory.count``'s default: paging ``list``."""

    async def count(self, *, workflow: str | None = None) -> dict[str, int]:
        return await Memory.count(self, workflow=workflow)


@pytest.mark.anyio
async def test_the_default_count_pages_through_more_than_one_page() -> None:
    """``Memory.count``'s default, which a third-party backend inherits, reads every page."""
    memory = _CountingByListing()
    for index in range(2500):
        await memory.write(
            f"k{index}", revision=0, status=("active", "done")[index % 2], header=b""
        )
    await memory.write(subject("x", "arvo.orc.refund"), revision=0, status="parked", header=b"")
    assert await memory.count() == {"active": 1250, "done": 1250, "parked": 1}
    assert await memory.count(workflow="arvo.orc.refund") == {"parked": 1}
