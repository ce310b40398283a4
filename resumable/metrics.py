"""Metrics through the OpenTelemetry metrics API: every instrument resumable records.

The instruments come from the global ``MeterProvider`` (``opentelemetry.metrics``), or the
one given to ``use``. Without an SDK they are the API's proxies, whose ``add``/``record``
cost a few tens of nanoseconds, so the driver and the worker call them unconditionally;
only work that would cost more (reading a clock, parsing an event's time) is guarded by
``enabled()``. docs/observability.md lists every name with its unit and attributes.
"""

from __future__ import annotations

import os
from typing import Final

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.metrics import _internal as _otel_metrics_state

__all__ = ["SOURCE", "TOPIC", "Instruments", "enabled", "instruments", "use"]

SOURCE: Final = "resumable.source"
"""The attribute naming the handler or workflow (its topic, ``arvo.orc.order.fulfil``)."""
TOPIC: Final = "messaging.destination.name"
"""The attribute naming the topic a worker consumes (the OTel messaging convention)."""

_STEP_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_LAG_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


class Instruments:
    """The instruments, made from one meter. Names are under ``resumable.``; units follow
    UCUM as OpenTelemetry asks (``s``, ``By``, ``{step}``)."""

    def __init__(self, provider: MeterProvider | None = None) -> None:
        from resumable import __version__

        meter = (provider or otel_metrics.get_meter_provider()).get_meter("resumable", __version__)
        counter, histogram = meter.create_counter, meter.create_histogram
        # The workflow driver, attribute resumable.source.
        self.steps: Counter = counter(
            "resumable.steps", "{step}", "Events applied to a workflow instance that wrote a step"
        )
        self.step_duration: Histogram = histogram(
            "resumable.step.duration",
            "s",
            "Time to apply one event to a workflow instance: lease, read, decide, write",
            explicit_bucket_boundaries_advisory=_STEP_BUCKETS,
        )
        self.replays: Counter = counter(
            "resumable.replays", "{replay}", "Generators rebuilt by replaying a journal"
        )
        self.replayed_steps: Counter = counter(
            "resumable.replay.steps", "{step}", "Journal entries fed to generators by replays"
        )
        self.cache_hits: Counter = counter(
            "resumable.cache.hits", "{step}", "Steps that found their live generator in the cache"
        )
        self.cache_misses: Counter = counter(
            "resumable.cache.misses", "{step}", "Steps on an instance with no live generator cached"
        )
        self.cache_evictions: Counter = counter(
            "resumable.cache.evictions", "{generator}", "Live generators the full cache dropped"
        )
        self.lease_denied: Counter = counter(
            "resumable.lease.denied", "{lease}", "Leases refused: another execution held them"
        )
        self.lease_lost: Counter = counter(
            "resumable.lease.lost",
            "{lease}",
            "Leases found lost by the heartbeat while their step ran (expired or taken over)",
        )
        self.record_size: Histogram = histogram(
            "resumable.record.size", "By", "Size of each record header written"
        )
        self.journal_bytes: Counter = counter(
            "resumable.journal.appended", "By", "Bytes of journal entries appended"
        )
        self.violations: Counter = counter(
            "resumable.violations",
            "{violation}",
            "Events refused with a violation; attribute resumable.violation.kind",
        )
        self.system_errors: Counter = counter(
            "resumable.system_errors",
            "{error}",
            "System error events emitted (a handler raised, a workflow failed); error.type",
        )
        self.parked: Counter = counter(
            "resumable.parked", "{instance}", "Instances parked: their history no longer matches"
        )
        self.finished: Counter = counter(
            "resumable.instances.finished",
            "{instance}",
            "Instances that ended; attribute resumable.status (done, failed, cancelled)",
        )
        # The worker, attribute messaging.destination.name (the topic).
        self.received: Counter = counter(
            "resumable.worker.received", "{delivery}", "Deliveries taken from the broker"
        )
        self.acked: Counter = counter(
            "resumable.worker.acked", "{delivery}", "Deliveries acked after publishing"
        )
        self.nacked: Counter = counter(
            "resumable.worker.nacked", "{delivery}", "Deliveries nacked for a later retry"
        )
        self.unavailable: Counter = counter(
            "resumable.worker.unavailable",
            "{delivery}",
            "Deliveries nacked because a server was unavailable: retried, never dead-lettered",
        )
        self.dead_lettered: Counter = counter(
            "resumable.worker.dead_lettered", "{delivery}", "Deliveries dead-lettered"
        )
        self.published: Counter = counter(
            "resumable.worker.published", "{event}", "Emitted events published to the broker"
        )
        self.timers_fired: Counter = counter(
            "resumable.worker.timers_fired", "{event}", "Timer events published for due records"
        )
        self.in_flight: UpDownCounter = meter.create_up_down_counter(
            "resumable.worker.in_flight", "{delivery}", "Deliveries being executed now"
        )
        self.lease_wait: Histogram = histogram(
            "resumable.worker.lease.wait",
            "s",
            "Backoff before a delivery whose lease was taken is tried again",
            explicit_bucket_boundaries_advisory=_LAG_BUCKETS,
        )
        self.delivery_lag: Histogram = histogram(
            "resumable.worker.delivery.lag",
            "s",
            "From an event's time to its delivery to a worker",
            explicit_bucket_boundaries_advisory=_LAG_BUCKETS,
        )


_PROVIDER_FROM_ENVIRONMENT: Final = "OTEL_PYTHON_METER_PROVIDER" in os.environ
"""The API loads a provider named there on first use, which then records."""
_instruments: Instruments | None = None
_given = False


def instruments() -> Instruments:
    """The instruments in use (made from the global meter provider on first use)."""
    global _instruments
    if _instruments is None:
        _instruments = Instruments()
    return _instruments


def use(provider: MeterProvider | None) -> None:
    """Record into ``provider`` instead of the global meter provider (None: back to the
    global one). For tests and apps that keep their providers to themselves."""
    global _instruments, _given
    _instruments = Instruments(provider)
    _given = provider is not None


def enabled() -> bool:
    """True once something may read the metrics: a provider given to ``use``, or a global
    one set. Guards the work that costs more than recording into a no-op instrument."""
    if _given:
        return True
    # The API's own record of a set provider: reading it costs ~30 ns, where
    # get_meter_provider() consults the environment on every call.
    return _otel_metrics_state._METER_PROVIDER is not None or _PROVIDER_FROM_ENVIRONMENT
