"""InMemoryMemory runs the shared conformance suite."""

from __future__ import annotations

import time

import pytest

from resumable.memory import InMemoryMemory, Memory

from .conformance import FakeClock, MemoryConformance


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
