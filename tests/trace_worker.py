"""The handlers of the trace test's worker processes: ``resumable worker trace_worker:handlers``.

The demo's order workflow on the memory the command was given, and the demo's services.
When ``TRACE_SPANS_DIR`` is set, this process traces with the OpenTelemetry SDK into a file
of its own there (``spans-<pid>.jsonl``, one finished span a line), set up at import so
the worker's own ``OTEL_*`` configuration finds a provider already set and keeps it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from resumable.demo import make_handlers, make_workflow
from resumable.memory import Memory

__all__ = ["FileSpanExporter", "handlers", "span_record"]


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain data: ids in hex, as the trace headers write them."""
    context = span.get_span_context()
    assert context is not None
    return {
        "pid": os.getpid(),
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [event.name for event in span.events],
    }


class FileSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._file.write(json.dumps(span_record(span), default=str) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


if "TRACE_SPANS_DIR" in os.environ:
    _provider = TracerProvider()
    _path = Path(os.environ["TRACE_SPANS_DIR"]) / f"spans-{os.getpid()}.jsonl"
    _provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(_path)))
    trace.set_tracer_provider(_provider)


def handlers(memory: Memory) -> list[Any]:
    """The order workflow on ``memory`` and the demo's services (a HANDLERS factory)."""
    return [make_workflow(memory), *make_handlers()]
