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
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))
