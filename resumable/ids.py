"""Deterministic identifiers: the same inputs give the same id on every retry and replay.

Emitted events get ids derived from what caused them (the consumed event, the workflow's
step), so a retried or replayed step emits events with the same ids and consumers can
de-duplicate by id. What else stays identical is stated in ``resumable.testing.compare``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import Final

__all__ = ["derive_id", "lease_owner"]


def derive_id(*parts: object) -> str:
    """A UUID (version 4 layout) derived from ``parts``; stable across processes."""
    text = ""
    for part in parts:  # length-prefixed: unambiguous
        part = str(part)
        text += f"{len(part)}:{part}"
    h = _blake2b(text.encode(), digest_size=16).hexdigest()
    # The version nibble set to 4, the variant's two high bits to 10 (RFC 4122).
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_blake2b = hashlib.blake2b
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


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
