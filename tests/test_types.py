"""resumable.types: the shared protocols, and the old names that still reach them."""

from __future__ import annotations

from resumable import brokers, handler, types, worker, workflow
from resumable.demo import make_handlers, make_workflow
from resumable.memory import InMemoryMemory


def test_a_workflow_is_a_timed_recoverable_handler_and_a_service_only_a_handler() -> None:
    flow = make_workflow(InMemoryMemory())
    service = make_handlers()[0]
    assert isinstance(flow, types.Handler)
    assert isinstance(flow, types.Timed) and isinstance(flow, types.Recoverable)
    assert isinstance(service, types.Handler)
    assert not isinstance(service, types.Timed) and not isinstance(service, types.Recoverable)
    assert not isinstance(object(), types.Handler)


def test_the_old_names_are_the_shared_ones() -> None:
    assert brokers.Handler is types.Handler
    assert worker.Timed is types.Timed and worker.Recoverable is types.Recoverable
    assert workflow.WorkflowFunction is types.WorkflowFunction
    assert handler.HandlerFunction is types.HandlerFunction
    assert handler.HandlerResult is types.HandlerResult
