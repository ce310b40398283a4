"""Time for workflows: ISO 8601 event times, epoch seconds for timers, and a virtual clock.

A workflow's clock is a callable returning the current time as an ISO 8601 UTC string (the
``time`` of the events it emits). Timers compare epoch seconds. ``VirtualClock`` moves
only when told, so tests of week-long timers take no time: ``LocalBroker`` advances it to
the next due timer whenever nothing else is left to do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from resumable.errors import SetupError

__all__ = ["VirtualClock", "to_epoch", "to_iso"]


def to_epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 time with an offset."""
    return datetime.fromisoformat(iso).timestamp()


def to_iso(epoch: float) -> str:
    """The ISO 8601 UTC time of ``epoch`` seconds to the nearest millisecond, as events
    carry it (rounded, not truncated: a due time to the millisecond reads back as itself)."""
    moment = datetime.fromtimestamp(round(epoch, 3), UTC)
    return moment.isoformat(timespec="milliseconds")


class VirtualClock:
    """A clock for tests that stands still until ``advance`` or ``set`` moves it.

    Pass it as ``Resumable(clock=...)`` and ``LocalBroker(clock=...)``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise SetupError(f"VirtualClock needs a timezone-aware start, got {start!r}")
        self._now = start.timestamp()

    def __call__(self) -> str:
        return to_iso(self._now)

    def __repr__(self) -> str:
        return f"VirtualClock({self()})"

    def time(self) -> float:
        """The current virtual time in seconds since the epoch."""
        return self._now

    def advance(self, seconds: float | timedelta) -> None:
        """Move time forward (never back)."""
        delta = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if delta < 0:
            raise ValueError(f"a VirtualClock only moves forward; got {seconds!r}")
        self._now += delta

    def set(self, moment: datetime | float) -> None:
        """Move time forward to ``moment`` (a datetime or epoch seconds); earlier is ignored."""
        epoch = moment.timestamp() if isinstance(moment, datetime) else float(moment)
        self._now = max(self._now, epoch)
