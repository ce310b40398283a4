"""Deterministic identifiers: the same inputs give the same id on every retry and replay.

Emitted events get ids derived from what caused them (the consumed event, the workflow's
step), so a retried or replayed step emits events with the same ids and consumers can
de-duplicate by id. What else stays identical is stated in ``resumable.testing.compare``.
"""

from __future__ import annotations

import hashlib
import itertools
import os

__all__ = ["derive_id", "lease_owner"]


def derive_id(*parts: object) -> str:
    """A UUID (version 4 layout) derived from ``parts``; stable across processes."""
    text = "".join([f"{len(s)}:{s}" for s in map(str, parts)])  # length-prefixed: unambiguous
    raw = bytearray(hashlib.blake2b(text.encode(), digest_size=16).digest())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_owner_count = itertools.count()


def _new_owner_prefix() -> None:
    """Random bytes and the pid, once per process (a forked child makes its own)."""
    global _owner_prefix
    _owner_prefix = f"{os.urandom(6).hex()}-{os.getpid()}"


_owner_prefix = ""
_new_owner_prefix()
os.register_at_fork(after_in_child=_new_owner_prefix)


def lease_owner() -> str:
    """A token unique to one execution, for the lease it holds (cheaper than a UUID)."""
    return f"{_owner_prefix}-{next(_owner_count)}"
