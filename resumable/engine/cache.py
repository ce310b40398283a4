"""Live generators kept between steps, so a warm instance resumes without replaying."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs

from resumable.engine.frame import Frame
from resumable.errors import SetupError
from resumable.events import Event
from resumable.record import Header
from resumable.workflow import Context

__all__ = ["Live", "LiveCache"]


@attrs.define(slots=True)
class Live:
    """A suspended generator, valid for one revision of its record. ``header`` is that
    revision's header, the same object the next step changes: one header per revision."""

    gen: Any
    ctx: Context[Any]
    frame: Frame
    header: Header
    revision: int
    replies: dict[int, Event] = attrs.Factory(dict)
    """Replies already in for the current wait, by slot, decoded."""


class LiveCache:
    """A bounded LRU of live generators by subject. Dropping one runs no workflow code: the
    generators are stepped with hooks that never finalize them."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise SetupError(f"cache_size must be >= 0, got {size}")
        self.size = size
        self._items: OrderedDict[str, Live] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, revision: int) -> Live | None:
        """The live generator of ``key`` if it is current at ``revision``."""
        live = self._items.get(key)
        if live is None or live.revision != revision:
            return None
        self._items.move_to_end(key)
        return live

    def put(self, key: str, live: Live) -> int:
        """Keep ``live`` as the generator of ``key``; returns how many generators were
        evicted to make room (the least recently used), for metrics."""
        if self.size == 0:
            return 0
        self._items[key] = live
        self._items.move_to_end(key)
        evicted = 0
        while len(self._items) > self.size:
            self._items.popitem(last=False)
            evicted += 1
        return evicted

    def drop(self, key: str | None = None) -> None:
        """Forget one instance's generator, or all of them."""
        if key is None:
            self._items.clear()
        else:
            self._items.pop(key, None)
