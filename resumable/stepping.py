"""Moved to ``resumable.engine.generator``; kept so old imports work."""

from resumable.engine.generator import WorkflowAwaitError

__all__ = ["WorkflowAwaitError"]
