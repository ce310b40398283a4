"""Configure the OpenTelemetry SDK from the standard ``OTEL_*`` variables, for workers.

``resumable worker`` calls ``configure_from_environment()`` once the app is loaded:
with the SDK installed (``pip install 'resumable[otel]'``) it sets the global tracer and
meter providers, exporting through the exporters ``OTEL_TRACES_EXPORTER`` and
``OTEL_METRICS_EXPORTER`` name (default ``otlp``, which reads
``OTEL_EXPORTER_OTLP_ENDPOINT`` and the rest itself); the resource comes from
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the sampler from
``OTEL_TRACES_SAMPLER``, the propagators from ``OTEL_PROPAGATORS`` (read by the API).
Nothing is configured without the SDK, with ``OTEL_SDK_DISABLED=true``, when no variable
names an exporter or an OTLP endpoint (``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``,
``OTEL_EXPORTER_OTLP_*``), or when the app set its own providers.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import metrics, trace

__all__ = ["configure_from_environment"]

log = logging.getLogger("resumable.otel")


def _exporters(variable: str, group: str) -> tuple[list[Any], list[str]]:
    """The exporter classes named in ``variable`` (comma-separated entry-point names in
    ``group``; default ``otlp``), and the problems met finding them."""
    names = [n.strip() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    found: list[Any] = []
    problems: list[str] = []
    for name in names:
        if name == "none":
            continue
        points = list(entry_points(group=group, name=name))
        if not points:
            hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
            problems.append(f"{variable}={name}: no such exporter installed{hint}")
            continue
        found.append(points[0].load())
    return found, problems


def _asked() -> bool:
    """True when the environment names an exporter or where to export: without that, an
    installed SDK (a test suite's, say) must not make every worker export to localhost."""
    return any(
        name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER")
        or name.startswith("OTEL_EXPORTER_OTLP_")
        for name in os.environ
    )


def configure_from_environment() -> str | None:
    """Set the global tracer and meter providers from ``OTEL_*``; returns what was set up,
    for the worker's start line, or None if nothing was (and why is logged)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or not _asked():
        return None
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.debug("the OpenTelemetry SDK is not installed: no exporter is configured")
        return None
    resource = Resource.create()
    done: list[str] = []
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        exporters, problems = _exporters("OTEL_TRACES_EXPORTER", "opentelemetry_traces_exporter")
        for problem in problems:
            log.warning("OpenTelemetry: %s; no traces are exported there", problem)
        if exporters:
            tracer_provider = TracerProvider(resource=resource)
            for exporter in exporters:
                tracer_provider.add_span_processor(BatchSpanProcessor(exporter()))
            trace.set_tracer_provider(tracer_provider)
            done.append("traces to " + ", ".join(e.__name__ for e in exporters))
    if not _meter_provider_set():
        exporters, problems = _exporters("OTEL_METRICS_EXPORTER", "opentelemetry_metrics_exporter")
        for problem in problems:
            log.warning("OpenTelemetry: %s; no metrics are exported there", problem)
        if exporters:
            readers = [PeriodicExportingMetricReader(exporter()) for exporter in exporters]
            metrics.set_meter_provider(MeterProvider(metric_readers=readers, resource=resource))
            done.append("metrics to " + ", ".join(e.__name__ for e in exporters))
    return "; ".join(done) or None


def _meter_provider_set() -> bool:
    from resumable.metrics import enabled

    return enabled()
