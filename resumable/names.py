"""The shapes of Arvo's names, defined once: event types, domains, semantic versions.

Events, contracts, domains and the subject codec all check names against these. Each
pattern is anchored with ``^`` and ``\\Z`` (never ``$``: Python's ``$`` also matches before
a trailing newline, JavaScript's does not), so ``match`` and ``fullmatch`` agree; digits
are ``[0-9]``, not ``\\d``, which in Python also matches other scripts' digits. The bound
``fullmatch`` functions are for hot paths such as the subject codec.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DOMAIN_PATTERN",
    "SEMVER",
    "TYPE_PATTERN",
    "WILDCARD_VERSION",
    "domain_match",
    "semver_match",
    "type_match",
]

TYPE_PATTERN: Final = re.compile(r"^[a-z0-9]+(?:\.[a-z0-9]+)+\.[a-z0-9]+\Z")
"""An event type (and a subject's orchestrator name and initiator): three or more
dot-separated segments of lowercase letters and digits, e.g. ``com.payments.charge``."""

DOMAIN_PATTERN: Final = re.compile(r"^[a-z0-9.]+\Z")
"""A domain, and an orchestrator's name: lowercase letters, digits and dots."""

SEMVER: Final = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\Z")
"""A contract or orchestrator version: ``major.minor.patch`` in ASCII digits."""

WILDCARD_VERSION: Final = "0.0.0"
"""The version of system error dataschemas and of subjects made without one."""

type_match: Final = TYPE_PATTERN.fullmatch
domain_match: Final = DOMAIN_PATTERN.fullmatch
semver_match: Final = SEMVER.fullmatch
