"""The engine's half of a workflow's ``Context``: where the workflow is and what its
deterministic helpers derive from. The engine writes it; ``Context`` only reads it."""

from __future__ import annotations

__all__ = ["Frame"]


class Frame:
    """The step a workflow runs in (``seq``, the event ``time``), the seed of its ids, and
    the ``ctx.patched`` answers recorded and made."""

    __slots__ = ("counter", "patches", "recorded_patches", "replaying", "seed", "seq", "time")

    def __init__(
        self, seed: str, *, replaying: bool = False, recorded_patches: dict[str, bool] | None = None
    ) -> None:
        self.seed = seed
        self.replaying = replaying
        self.recorded_patches: dict[str, bool] = recorded_patches or {}
        self.patches: dict[str, bool] = {}
        self.seq = 0
        self.time = ""
        self.counter = 0

    def enter(self, seq: int, time: str) -> None:
        """The workflow resumes at step ``seq`` with an event stamped ``time``."""
        self.seq = seq
        self.time = time
        self.counter = 0
