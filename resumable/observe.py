"""What one workflow step tells the metrics and its span: counts of steps, cache hits,
replays and violations, and the span's status (a failed or parked instance is an error
of the step that ended it; a retried lease denial is not)."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.trace import Span

from resumable.engine.turn import Decision
from resumable.errors import NonDeterminismError, TransactionViolation, ViolationError
from resumable.metrics import instruments
from resumable.record import ACTIVE, PARKED
from resumable.telemetry import mark_error

__all__ = ["count_cache", "count_replay", "count_violation", "observe_step"]

Attributes = Mapping[str, str]


def count_cache(attributes: Attributes, *, hit: bool) -> None:
    measure = instruments()
    (measure.cache_hits if hit else measure.cache_misses).add(1, attributes)


def count_replay(attributes: Attributes, entries: int) -> None:
    """A generator rebuilt by replaying ``entries`` journal entries."""
    measure = instruments()
    measure.replays.add(1, attributes)
    measure.replayed_steps.add(entries, attributes)


def count_violation(attributes: Attributes, error: ViolationError) -> None:
    """A violation raised to the caller, by kind: its Arvo type, and for a transaction
    violation its cause (``OrchestratorTransaction.LOCK_UNACQUIRED``)."""
    kind = error.type
    if isinstance(error, TransactionViolation):
        kind = f"{kind}.{error.cause}"
    instruments().violations.add(1, {**attributes, "resumable.violation.kind": kind})


def observe_step(
    span: Span, attributes: Attributes, error_type: str, before: str | None, decision: Decision
) -> None:
    """Count a written step, and tell its span how the instance fared: a system error
    emitted (the workflow failed) or the instance parked is an error of the span."""
    measure = instruments()
    header = decision.header
    assert header is not None
    measure.steps.add(1, attributes)
    failed = None
    for emitted in decision.emitted:
        if emitted.type == error_type and isinstance(emitted.data, dict):
            failed = emitted.data
    if failed is not None:
        name = str(failed.get("errorName", "Error"))
        measure.system_errors.add(1, {**attributes, "error.type": name})
        mark_error(
            span, name, str(failed.get("errorMessage", "")), failed.get("errorStack") or None
        )
        span.set_attribute("arvo.handler.execution.status", "failure")
    else:
        span.set_attribute("arvo.handler.execution.status", "normal")
    status = header.status
    if status == before:
        return
    if status == PARKED and header.parked is not None:
        measure.parked.add(1, attributes)
        mark_error(span, NonDeterminismError.__name__, header.parked.message)
        span.set_attribute("resumable.instance.status", status)
    elif status != ACTIVE:
        measure.finished.add(1, {**attributes, "resumable.status": status})
        span.set_attribute("resumable.instance.status", status)
