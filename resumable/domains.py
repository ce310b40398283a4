"""Arvo domains: which channel an emitted event travels on, and how symbolic ones resolve.

An event with ``domain=None`` is local: the broker publishes it. An event with a domain is
handed to whoever serves that domain (a person's inbox, another cluster), never published.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from resumable.errors import SetupError
from resumable.names import domain_match
from resumable.subject import SubjectError, parse_subject_shared

__all__ = [
    "FROM_CURRENT_SUBJECT",
    "FROM_EVENT_CONTRACT",
    "FROM_PARENT_SUBJECT",
    "FROM_SELF_CONTRACT",
    "FROM_TRIGGERING_EVENT",
    "IN_ORCHESTRATION",
    "LOCAL",
    "ORCHESTRATION_CONTEXT",
    "DomainContext",
    "DomainSpec",
    "check_domain_spec",
    "resolve_domain",
    "resolve_domains",
]

FROM_SELF_CONTRACT: Final = "domain.contract.self.inherit"
FROM_EVENT_CONTRACT: Final = "domain.contract.inherit"
FROM_TRIGGERING_EVENT: Final = "domain.event.inherit"
FROM_CURRENT_SUBJECT: Final = "domain.event.current.subject"
FROM_PARENT_SUBJECT: Final = "domain.parent.subject"
ORCHESTRATION_CONTEXT: Final = "domain.orchestration.context"
LOCAL: Final = None
IN_ORCHESTRATION: Final = (ORCHESTRATION_CONTEXT,)
"""The default domain of replies and reports: the orchestration's own (usually local)."""

DomainSpec = str | None | Sequence[str | None]
"""One domain item, or a non-empty list of them: one event is emitted per distinct domain."""


def _subject_domain(subject: str | None) -> str | None:
    if not subject:
        return None
    try:
        return parse_subject_shared(subject).domain
    except SubjectError:
        return None


@attrs.frozen
class DomainContext:
    """What symbolic domains resolve against, for one emitted event."""

    triggering_domain: str | None
    current_subject: str | None
    parent_subject: str | None = None
    self_contract_domain: str | None = None
    event_contract_domain: str | None = None


def resolve_domain(item: str | None, ctx: DomainContext) -> str | None:
    """Resolve one domain item to a concrete domain (or None), by Arvo's rules."""
    triggering_domain = ctx.triggering_domain
    current_subject = ctx.current_subject
    parent_subject = ctx.parent_subject
    if not item:
        return None
    if item == FROM_EVENT_CONTRACT:
        return ctx.event_contract_domain
    if item == FROM_SELF_CONTRACT:
        return ctx.self_contract_domain
    if item == FROM_TRIGGERING_EVENT:
        return triggering_domain
    if item == FROM_CURRENT_SUBJECT:
        return _subject_domain(current_subject)
    if item == FROM_PARENT_SUBJECT:
        return _subject_domain(parent_subject)
    if item == ORCHESTRATION_CONTEXT:
        current = _subject_domain(current_subject)
        if parent_subject is None:
            if triggering_domain is None or current == triggering_domain:
                return None
            return current
        parent = _subject_domain(parent_subject)
        return None if current == parent else parent
    return item


def check_domain_spec(spec: object, what: str) -> None:
    """Fail early, naming ``what``, if ``spec`` is not a domain item or a non-empty list."""
    if spec is None or spec is IN_ORCHESTRATION or (isinstance(spec, str) and domain_match(spec)):
        return
    items = list(spec) if isinstance(spec, list | tuple) else None
    if not items or not all(
        item is None or (isinstance(item, str) and domain_match(item)) for item in items
    ):
        raise SetupError(
            f"{what} must be a domain (lowercase letters, digits and dots; None for local) "
            f"or a non-empty list of them, got {spec!r}"
        )


def resolve_domains(spec: DomainSpec, ctx: DomainContext) -> list[str | None]:
    """Resolve a domain spec to distinct concrete domains, first occurrence first."""
    items: Sequence[str | None] = [spec] if spec is None or isinstance(spec, str) else spec
    if not items:
        raise ValueError("a domain list must not be empty; use [None] for a local event")
    out: list[str | None] = []
    for item in items:
        resolved = resolve_domain(item, ctx)
        if resolved not in out:
            out.append(resolved)
    return out
