"""resumable.domains against Arvo's resolveEventDomain: how each symbolic domain resolves."""

from __future__ import annotations

import pytest

from resumable.domains import (
    FROM_CURRENT_SUBJECT,
    FROM_EVENT_CONTRACT,
    FROM_PARENT_SUBJECT,
    FROM_SELF_CONTRACT,
    FROM_TRIGGERING_EVENT,
    LOCAL,
    ORCHESTRATION_CONTEXT,
    DomainContext,
    resolve_domain,
    resolve_domains,
)
from resumable.subject import new_subject


def subject(domain: str | None) -> str:
    return new_subject(
        orchestrator="arvo.orc.test.flow",
        version="1.0.0",
        initiator="com.test.caller",
        domain=domain,
        execution_id=f"exec-{domain}",
    )


def ctx(
    *,
    trig: str | None = None,
    cur: str | None = None,
    par: str | bool | None = False,
    self_domain: str | None = None,
    event_domain: str | None = None,
) -> DomainContext:
    """A context whose subjects carry the given domains; ``par=False`` means no parent."""
    return DomainContext(
        triggering_domain=trig,
        current_subject=subject(cur),
        parent_subject=None if par is False else subject(par),  # type: ignore[arg-type]
        self_contract_domain=self_domain,
        event_contract_domain=event_domain,
    )


def test_symbol_values() -> None:
    assert FROM_SELF_CONTRACT == "domain.contract.self.inherit"
    assert FROM_EVENT_CONTRACT == "domain.contract.inherit"
    assert FROM_TRIGGERING_EVENT == "domain.event.inherit"
    assert FROM_CURRENT_SUBJECT == "domain.event.current.subject"
    assert FROM_PARENT_SUBJECT == "domain.parent.subject"
    assert ORCHESTRATION_CONTEXT == "domain.orchestration.context"
    assert LOCAL is None


@pytest.mark.parametrize("item", [None, ""])
def test_falsy_is_local(item: str | None) -> None:
    assert resolve_domain(item, ctx(trig="a", cur="b", par="c", self_domain="d")) is None


def test_from_event_contract() -> None:
    assert resolve_domain(FROM_EVENT_CONTRACT, ctx(event_domain="svc.dom", self_domain="x")) == (
        "svc.dom"
    )
    assert resolve_domain(FROM_EVENT_CONTRACT, ctx(self_domain="x")) is None


def test_from_self_contract() -> None:
    assert resolve_domain(FROM_SELF_CONTRACT, ctx(self_domain="self.dom", event_domain="x")) == (
        "self.dom"
    )
    assert resolve_domain(FROM_SELF_CONTRACT, ctx(event_domain="x")) is None


def test_from_triggering_event() -> None:
    assert resolve_domain(FROM_TRIGGERING_EVENT, ctx(trig="ev.dom", cur="x")) == "ev.dom"
    assert resolve_domain(FROM_TRIGGERING_EVENT, ctx(cur="x")) is None


def test_from_current_subject() -> None:
    assert resolve_domain(FROM_CURRENT_SUBJECT, ctx(cur="cur.dom", trig="x")) == "cur.dom"
    assert resolve_domain(FROM_CURRENT_SUBJECT, ctx(cur=None, trig="x")) is None


def test_from_parent_subject() -> None:
    assert resolve_domain(FROM_PARENT_SUBJECT, ctx(par="par.dom", cur="x")) == "par.dom"
    assert resolve_domain(FROM_PARENT_SUBJECT, ctx(par=None, cur="x")) is None
    assert resolve_domain(FROM_PARENT_SUBJECT, ctx(cur="x")) is None  # no parent at all


@pytest.mark.parametrize("bad", ["not-a-subject", "plain subject", "eJxLTEpOSU1JBQAKxALV"])
def test_unparseable_subjects_resolve_to_none(bad: str) -> None:
    context = DomainContext(triggering_domain="t", current_subject=bad, parent_subject=bad)
    assert resolve_domain(FROM_CURRENT_SUBJECT, context) is None
    assert resolve_domain(FROM_PARENT_SUBJECT, context) is None


def test_missing_current_subject() -> None:
    context = DomainContext(triggering_domain="t", current_subject=None)
    assert resolve_domain(FROM_CURRENT_SUBJECT, context) is None
    # cur None, trig 't' -> cur (None)
    assert resolve_domain(ORCHESTRATION_CONTEXT, context) is None


@pytest.mark.parametrize(
    ("trig", "cur", "expected"),
    [
        (None, None, None),  # trig None -> None
        (None, "cur.dom", None),  # trig None -> None, even when the subject has a domain
        ("same.dom", "same.dom", None),  # cur == trig -> None
        ("human.review", "cur.dom", "cur.dom"),  # else cur
        ("human.review", None, None),  # else cur (which is None)
    ],
)
def test_orchestration_context_without_parent(
    trig: str | None, cur: str | None, expected: str | None
) -> None:
    assert resolve_domain(ORCHESTRATION_CONTEXT, ctx(trig=trig, cur=cur)) == expected


@pytest.mark.parametrize(
    ("trig", "cur", "par", "expected"),
    [
        (None, None, None, None),  # cur == par -> None
        ("x.y", "dom.a", "dom.a", None),  # cur == par -> None
        (None, "dom.a", "dom.b", "dom.b"),  # else par
        ("dom.a", "dom.a", "dom.b", "dom.b"),  # trig is irrelevant with a parent
        (None, "dom.a", None, None),  # else par (which is None)
        ("t.t", None, "dom.b", "dom.b"),
    ],
)
def test_orchestration_context_with_parent(
    trig: str | None, cur: str | None, par: str | None, expected: str | None
) -> None:
    assert resolve_domain(ORCHESTRATION_CONTEXT, ctx(trig=trig, cur=cur, par=par)) == expected


@pytest.mark.parametrize("concrete", ["human.review", "a", "eu1.cluster", "not.a.symbol.x"])
def test_concrete_domain_passes_through(concrete: str) -> None:
    assert resolve_domain(concrete, ctx(trig="t", cur="c", par="p", self_domain="s")) == concrete


def test_resolve_domains_single_items() -> None:
    context = ctx(trig="ev.dom")
    assert resolve_domains(None, context) == [None]
    assert resolve_domains("human.review", context) == ["human.review"]
    assert resolve_domains(FROM_TRIGGERING_EVENT, context) == ["ev.dom"]


def test_resolve_domains_dedupes_after_resolution_in_first_occurrence_order() -> None:
    context = ctx(trig="ev.dom", cur="cur.dom", self_domain="ev.dom")
    spec = [
        "z.last",
        FROM_TRIGGERING_EVENT,
        None,
        "ev.dom",
        FROM_SELF_CONTRACT,
        ORCHESTRATION_CONTEXT,  # trig != cur -> cur.dom
        FROM_CURRENT_SUBJECT,
        None,
        "z.last",
    ]
    assert resolve_domains(spec, context) == ["z.last", "ev.dom", None, "cur.dom"]


def test_resolve_domains_tuple_and_duplicates() -> None:
    assert resolve_domains(("a.b", "a.b", None), ctx()) == ["a.b", None]
    assert resolve_domains([None, None], ctx()) == [None]


@pytest.mark.parametrize("empty", [[], ()])
def test_resolve_domains_empty_list(empty: list[str | None]) -> None:
    with pytest.raises(ValueError) as info:
        resolve_domains(empty, ctx())
    assert "must not be empty" in str(info.value)
    assert "[None]" in str(info.value)


def test_context_defaults() -> None:
    context = DomainContext(triggering_domain="t", current_subject=None)
    assert context.parent_subject is None
    assert context.self_contract_domain is None
    assert context.event_contract_domain is None


@pytest.mark.parametrize("spec", [[], (), [1], "ok", None, ["a.b", None]])
def test_check_domain_spec(spec: object) -> None:
    from resumable.domains import check_domain_spec

    if spec in ([], (), [1]):
        with pytest.raises(ValueError, match="non-empty list"):
            check_domain_spec(spec, "thing")
    else:
        check_domain_spec(spec, "thing")


def test_empty_domain_lists_fail_at_definition() -> None:
    from resumable import EventHandler, Resumable, call, complete

    from orders import SERVICES, fulfil, orders, payments

    async def fn(event):  # pragma: no cover - never called
        return None

    with pytest.raises(ValueError, match="system_error_domain"):
        EventHandler(payments, versions={"1.0.0": fn}, system_error_domain=[])
    with pytest.raises(ValueError, match="complete_domain"):
        Resumable(orders, versions={"1.0.0": fulfil}, services=SERVICES, complete_domain=[])
    with pytest.raises(ValueError, match="call"):
        call(payments, {}, domain=[])
    with pytest.raises(ValueError, match="complete"):
        complete({}, domain=[])
