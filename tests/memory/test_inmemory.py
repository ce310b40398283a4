"""InMemoryMemory runs the shared conformance suite."""

from __future__ import annotations

import pytest

from resumable.memory import InMemoryMemory, Memory

from .conformance import FakeClock, MemoryConformance


class TestInMemoryMemory(MemoryConformance):
    @pytest.fixture
    def memory(self, clock: FakeClock) -> Memory:
        return InMemoryMemory(clock=clock)
