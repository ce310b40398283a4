"""Exponential backoff, the one formula behind ``Retry``, persisted retries and the worker."""

from __future__ import annotations

import random

__all__ = ["backoff_delay", "jittered"]


def backoff_delay(attempt: int, initial: float, factor: float, longest: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based):
    ``initial * factor ** (attempt - 1)``, at most ``longest``.

    An attempt below 1 counts as the first. A power too large for a float is ``longest``,
    not an ``OverflowError``, so any attempt count is safe to pass.
    """
    if initial == 0:
        return 0.0
    try:
        value = initial * factor ** max(attempt - 1, 0)
    except OverflowError:
        return float(longest)
    return float(min(value, longest))


def jittered(delay: float) -> float:
    """``delay`` scaled by a random factor in [0.5, 1): processes that failed together (a
    database went down under all of them) do not all come back at the same instant."""
    return delay * (0.5 + random.random() / 2)
