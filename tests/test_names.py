"""resumable.names: each name shape defined once, and every module checking names by it."""

from __future__ import annotations

import msgspec
import pytest

from resumable import contracts, domains, events, names, subject
from resumable.contracts import Contract, ContractError, OrchestratorContract, parse_dataschema
from resumable.errors import SetupError
from resumable.events import Event, EventError
from resumable.subject import SubjectError, new_subject


class _In(msgspec.Struct):
    n: int


TYPES = {
    "com.a.b": True,
    "a1.b2.c3.d4": True,
    "com.a": False,
    "Com.a.b": False,
    "com..a.b": False,
    "com.a.b.": False,
    "com.a.b\n": False,
    "com.a-b.c": False,
}
DOMAINS = {"audit": True, "a.b.1": True, "": False, "Audit": False, "audit\n": False, "a b": False}
VERSIONS = {"1.0.0": True, "10.20.30": True, "1.0": False, "1.0.0\n": False, "١.٠.٠": False}


def _event_accepts(type_: str, domain: str | None = None) -> bool:
    try:
        Event(source="com.x.y", type=type_, subject="s", data={}, domain=domain)
    except EventError:
        return False
    return True


def _subject_accepts(
    name: str = "com.a.b", version: str = "1.0.0", domain: str | None = None
) -> bool:
    try:
        new_subject(orchestrator=name, initiator="com.x.y", version=version, domain=domain)
    except SubjectError:
        return False
    return True


def _contract_accepts(
    type_: str = "com.a.b", version: str = "1.0.0", domain: str | None = None
) -> bool:
    try:
        Contract(
            uri="#/c",
            type=type_,
            versions={version: {"accepts": _In, "emits": {}}},
            domain=domain,
        )
    except ContractError:
        return False
    return True


@pytest.mark.parametrize(("value", "valid"), TYPES.items())
def test_event_types_are_checked_alike_everywhere(value: str, valid: bool) -> None:
    assert (names.type_match(value) is not None) is valid
    assert (names.TYPE_PATTERN.match(value) is not None) is valid  # match agrees with fullmatch
    assert _event_accepts(value) is valid
    assert _contract_accepts(type_=value) is valid
    assert _subject_accepts(name=value) is valid


@pytest.mark.parametrize(("value", "valid"), DOMAINS.items())
def test_domains_are_checked_alike_everywhere(value: str, valid: bool) -> None:
    assert (names.domain_match(value) is not None) is valid
    assert (names.DOMAIN_PATTERN.match(value) is not None) is valid
    assert _event_accepts("com.a.b", domain=value) is valid or value == ""  # "" is no domain
    assert _contract_accepts(domain=value) is valid or value == ""
    assert _subject_accepts(domain=value) is valid or value == ""
    try:
        domains.check_domain_spec(value, "domain")
        checked = True
    except SetupError:
        checked = False
    assert checked is valid


@pytest.mark.parametrize(("value", "valid"), VERSIONS.items())
def test_versions_are_checked_alike_everywhere(value: str, valid: bool) -> None:
    assert (names.semver_match(value) is not None) is valid
    assert (names.SEMVER.match(value) is not None) is valid
    assert _contract_accepts(version=value) is valid
    assert _subject_accepts(version=value) is valid
    assert (parse_dataschema(f"#/c/{value}") is not None) is valid


def test_an_orchestrator_name_has_the_shape_of_a_domain() -> None:
    versions = {"1.0.0": {"init": _In, "complete": _In}}
    assert OrchestratorContract(uri="#/o", name="order.fulfil", versions=versions)
    with pytest.raises(ContractError):
        OrchestratorContract(uri="#/o", name="Order", versions=versions)


def test_the_old_names_are_the_shared_patterns() -> None:
    assert events.TYPE_PATTERN is names.TYPE_PATTERN
    assert events.DOMAIN_PATTERN is names.DOMAIN_PATTERN
    assert contracts.NAME_PATTERN is names.DOMAIN_PATTERN
    assert contracts.SEMVER is names.SEMVER
    assert contracts.WILDCARD_VERSION == subject.WILDCARD_VERSION == names.WILDCARD_VERSION
