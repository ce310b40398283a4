"""Deterministic identifiers: the same inputs give the same id on every retry and replay.

Emitted events get ids derived from what caused them (the consumed event, the workflow's
step), so a retried or replayed step emits byte-identical events and consumers can
de-duplicate by id.
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["derive_id"]


def derive_id(*parts: object) -> str:
    """A UUID (version 4 layout) derived from ``parts``; stable across processes."""
    text = "".join(f"{len(s)}:{s}" for s in map(str, parts))  # length-prefixed: unambiguous
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))
