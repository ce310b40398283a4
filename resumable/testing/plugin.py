"""The pytest plugin of ``resumable.testing`` (registered as the ``resumable`` entry point):
fixtures for a workflow test environment and its virtual clock."""

from __future__ import annotations

import pytest

from resumable.clock import VirtualClock
from resumable.testing.env import WorkflowEnv

__all__ = ["virtual_clock", "workflow_env"]


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """A ``VirtualClock`` at 2026-01-01T00:00:00Z that moves only when told."""
    return VirtualClock()


@pytest.fixture
def workflow_env(virtual_clock: VirtualClock) -> WorkflowEnv:
    """An empty ``WorkflowEnv`` on ``virtual_clock``: ``workflow_env.add(workflow, *services)``."""
    return WorkflowEnv(clock=virtual_clock)
