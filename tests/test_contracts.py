"""resumable.contracts against Arvo's createArvoContract and createArvoOrchestratorContract:
naming, versions, dataschemas and the rules checked when a contract is defined."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from resumable.contracts import (
    PARENT_SUBJECT_KEY,
    WILDCARD_VERSION,
    Contract,
    ContractError,
    ErrorData,
    OrchestratorContract,
    VersionedContract,
    parse_dataschema,
)
from resumable.events import ARVO_CONTENT_TYPE, Event, from_json, to_json
from resumable.subject import new_subject, parse_subject


class In1(msgspec.Struct):
    name: str


class In2(msgspec.Struct):
    name: str
    age: int = 0


class Out(msgspec.Struct):
    greeting: str
    count: int


class Other(msgspec.Struct):
    flag: bool


URI = "#/contracts/complexContract"


def make_contract(**overrides: Any) -> Contract:
    kwargs: dict[str, Any] = {
        "uri": URI,
        "type": "com.complex.contract",
        "versions": {
            "0.0.1": {"accepts": In1, "emits": {"evt.complex.contract.done": Out}},
            "1.10.0": {
                "accepts": In2,
                "emits": {"evt.complex.contract.done": Out, "evt.complex.contract.other": Other},
            },
            "1.2.0": {"accepts": In2, "emits": {"evt.complex.contract.done": Out}},
        },
    }
    kwargs.update(overrides)
    return Contract(**kwargs)


class Init(msgspec.Struct):
    order_id: str
    amount: int


class Done(msgspec.Struct):
    status: str


def make_orchestrator(**overrides: Any) -> OrchestratorContract:
    kwargs: dict[str, Any] = {
        "uri": "#/orchestrators/order",
        "name": "order.fulfil",
        "versions": {
            "1.0.0": {"init": Init, "complete": Done},
            "2.0.0": {"init": Init, "complete": Done},
        },
    }
    kwargs.update(overrides)
    return OrchestratorContract(**kwargs)


def contract_error(**overrides: Any) -> str:
    with pytest.raises(ContractError) as info:
        make_contract(**overrides)
    return str(info.value)


# --- naming ---------------------------------------------------------------------------------


def test_basic_fields() -> None:
    contract = make_contract(description="d", metadata={"team": "x"}, domain="analytics.eu")
    assert contract.uri == URI
    assert contract.type == "com.complex.contract"
    assert contract.description == "d"
    assert dict(contract.metadata) == {"team": "x"}
    assert contract.domain == "analytics.eu"
    assert contract.version("latest").domain == "analytics.eu"


def test_defaults() -> None:
    contract = make_contract()
    assert contract.description is None
    assert dict(contract.metadata) == {}
    assert contract.domain is None


def test_metadata_is_read_only() -> None:
    contract = make_contract(metadata={"a": 1})
    with pytest.raises(TypeError):
        contract.metadata["b"] = 2  # type: ignore[index]


def test_system_error_naming() -> None:
    contract = make_contract()
    assert contract.system_error_type == "sys.com.complex.contract.error"
    versioned = contract.version("0.0.1")
    assert versioned.system_error_type == "sys.com.complex.contract.error"
    assert versioned.dataschema == "#/contracts/complexContract/0.0.1"
    assert versioned.system_error_dataschema == "#/contracts/complexContract/0.0.0"
    assert WILDCARD_VERSION == "0.0.0"


def test_versioned_fields() -> None:
    versioned = make_contract().version("1.10.0")
    assert isinstance(versioned, VersionedContract)
    assert versioned.uri == URI
    assert versioned.type == "com.complex.contract"
    assert versioned.version == "1.10.0"
    assert versioned.accepts is In2
    assert dict(versioned.emits) == {
        "evt.complex.contract.done": Out,
        "evt.complex.contract.other": Other,
    }
    assert versioned.dataschema == f"{URI}/1.10.0"
    assert versioned.is_orchestrator is False


def test_schema_for() -> None:
    versioned = make_contract().version("1.10.0")
    assert versioned.schema_for("com.complex.contract") is In2
    assert versioned.schema_for("sys.com.complex.contract.error") is ErrorData
    assert versioned.schema_for("evt.complex.contract.other") is Other
    assert versioned.schema_for("evt.unknown.type") is None


def test_validate_accepts_and_emit() -> None:
    versioned = make_contract().version("1.2.0")
    typed, wire = versioned.validate_accepts({"name": "a"})
    assert typed == In2("a", 0)
    assert wire == {"name": "a"}
    typed, wire = versioned.validate_accepts(In2("b", 3))
    assert typed == In2("b", 3)
    assert wire == {"name": "b", "age": 3}
    with pytest.raises(msgspec.ValidationError, match=r"\$\.name"):
        versioned.validate_accepts({"name": 1})
    typed, wire = versioned.validate_emit("evt.complex.contract.done", Out("hi", 1))
    assert wire == {"greeting": "hi", "count": 1}
    typed, wire = versioned.validate_emit(
        "sys.com.complex.contract.error", {"errorName": "E", "errorMessage": "m"}
    )
    assert typed == ErrorData("E", "m", None)
    with pytest.raises(KeyError):
        versioned.validate_emit("evt.complex.contract.other", {"flag": True})


def test_versions_are_sorted_numerically() -> None:
    contract = make_contract()
    assert list(contract.versions) == ["0.0.1", "1.2.0", "1.10.0"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [("latest", "1.10.0"), ("any", "1.10.0"), ("oldest", "0.0.1"), ("1.2.0", "1.2.0")],
)
def test_version_selection(selector: str, expected: str) -> None:
    contract = make_contract()
    assert contract.version(selector).version == expected
    assert contract.version(selector) is contract.versions[expected]


def test_version_default_is_latest() -> None:
    contract = make_contract()
    assert contract.version() is contract.latest
    assert contract.latest.version == "1.10.0"


@pytest.mark.parametrize("version", ["9.9.9", "0.0.0", "1.2", "newest"])
def test_unknown_version(version: str) -> None:
    with pytest.raises(KeyError) as info:
        make_contract().version(version)
    message = str(info.value)
    assert URI in message
    assert f"no version {version!r}" in message
    assert "0.0.1, 1.2.0, 1.10.0" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("#/contracts/x/1.0.0", ("#/contracts/x", "1.0.0")),
        ("a/b/c/10.2.3", ("a/b/c", "10.2.3")),
        ("#/contracts/x", None),
        ("#/contracts/x/1.0", None),
        ("#/contracts/x/latest", None),
        ("/1.0.0", None),
        ("1.0.0", None),
        ("#/c/1.0.0\n", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_dataschema(value: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_dataschema(value) == expected


# --- definition errors -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0-beta", "latest", "1.0.0\n", ""])
def test_bad_semver(version: str) -> None:
    message = contract_error(versions={version: {"accepts": In1, "emits": {}}})
    assert repr(version) in message
    assert "is not a semantic version" in message


def test_wildcard_version_reserved() -> None:
    message = contract_error(versions={"0.0.0": {"accepts": In1, "emits": {}}})
    assert "'0.0.0' is reserved" in message
    assert URI in message


def test_no_versions() -> None:
    message = contract_error(versions={})
    assert "at least one version" in message
    assert URI in message


def test_reserved_prefix_in_type() -> None:
    message = contract_error(type="arvo.orc.thing")
    assert "'arvo.orc.thing'" in message
    assert "must not start with 'arvo.orc'" in message
    assert "reserved" in message


def test_reserved_prefix_in_emits() -> None:
    message = contract_error(
        versions={"1.0.0": {"accepts": In1, "emits": {"arvo.orc.sneaky.done": Out}}}
    )
    assert "emitted type 'arvo.orc.sneaky.done'" in message
    assert "must not start with 'arvo.orc'" in message


@pytest.mark.parametrize("type_", ["com.test", "Com.test.x", "com.test-x.y", "", "com.a.b\n"])
def test_bad_type_pattern(type_: str) -> None:
    message = contract_error(type=type_)
    assert f"accepted type {type_!r}" in message
    assert "three or more dot-separated segments" in message


def test_bad_emit_type_pattern() -> None:
    message = contract_error(versions={"1.0.0": {"accepts": In1, "emits": {"evt.bad": Out}}})
    assert "emitted type 'evt.bad'" in message
    assert "three or more" in message


@pytest.mark.parametrize("schema", [dict, {"name": str}, In1("x"), "In1", None])
def test_accepts_must_be_struct(schema: Any) -> None:
    message = contract_error(versions={"1.0.0": {"accepts": schema, "emits": {}}})
    assert "version 1.0.0" in message
    assert "accepts must be a msgspec.Struct class" in message


def test_emit_schema_must_be_struct() -> None:
    message = contract_error(versions={"1.0.0": {"accepts": In1, "emits": {"evt.a.b": {"x": int}}}})
    assert "emits['evt.a.b'] must be a msgspec.Struct class" in message


@pytest.mark.parametrize(
    "spec",
    [
        {"accept": In1, "emits": {}},
        {"emits": {}},
        {"accepts": In1, "emits": {}, "extra": 1},
        {"init": In1, "complete": Out},
    ],
)
def test_wrong_version_keys(spec: dict[str, Any]) -> None:
    message = contract_error(versions={"1.0.0": spec})
    assert "expected keys 'accepts' and 'emits'" in message
    assert str(sorted(spec)) in message


def test_emits_may_be_empty_or_absent() -> None:
    assert dict(make_contract(versions={"1.0.0": {"accepts": In1, "emits": {}}}).latest.emits) == {}
    assert dict(make_contract(versions={"1.0.0": {"accepts": In1}}).latest.emits) == {}


@pytest.mark.parametrize("uri", ["", "has space", "bad%zz"])
def test_bad_uri(uri: str) -> None:
    message = contract_error(uri=uri)
    assert "must be a non-empty valid URI reference" in message
    assert repr(uri) in message


@pytest.mark.parametrize("domain", ["Upper", "a-b", "", "a b"])
def test_bad_domain(domain: str) -> None:
    message = contract_error(domain=domain)
    assert f"domain {domain!r}" in message
    assert "lowercase letters, digits and dots" in message


def test_contract_error_is_value_error() -> None:
    assert issubclass(ContractError, ValueError)


# --- json schema ----------------------------------------------------------------------------


def test_json_schema() -> None:
    schema = make_contract().json_schema()
    assert schema["uri"] == URI
    assert schema["type"] == "com.complex.contract"
    assert [v["version"] for v in schema["versions"]] == ["0.0.1", "1.2.0", "1.10.0"]
    latest = schema["versions"][-1]
    assert latest["accepts"]["type"] == "com.complex.contract"
    in2 = latest["accepts"]["schema"]["$defs"]["In2"]
    assert in2["properties"]["name"]["type"] == "string"
    assert in2["properties"]["age"]["type"] == "integer"
    assert in2["required"] == ["name"]
    emits = {e["type"]: e["schema"] for e in latest["emits"]}
    assert set(emits) == {"evt.complex.contract.done", "evt.complex.contract.other"}
    assert emits["evt.complex.contract.done"]["$defs"]["Out"]["properties"]["count"]["type"] == (
        "integer"
    )
    assert (
        emits["evt.complex.contract.other"]["$defs"]["Other"]["properties"]["flag"]["type"]
        == "boolean"
    )
    error = latest["systemError"]
    assert error["type"] == "sys.com.complex.contract.error"
    props = error["schema"]["$defs"]["ErrorData"]["properties"]
    assert props["errorName"]["type"] == "string"
    assert props["errorMessage"]["type"] == "string"
    assert "errorStack" in props


def test_json_schema_is_json_serialisable() -> None:
    msgspec.json.encode(make_orchestrator().json_schema())


# --- ErrorData -------------------------------------------------------------------------------


def test_error_data_of_raised_error() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        data = ErrorData.of(error)
    assert data.errorName == "RuntimeError"
    assert data.errorMessage == "boom"
    assert data.errorStack is not None
    assert "RuntimeError: boom" in data.errorStack
    assert msgspec.to_builtins(data) == {
        "errorName": "RuntimeError",
        "errorMessage": "boom",
        "errorStack": data.errorStack,
    }


def test_error_data_of_unraised_error() -> None:
    assert ErrorData.of(ValueError("x")) == ErrorData("ValueError", "x", None)


# --- Contract.event --------------------------------------------------------------------------


def test_contract_event() -> None:
    contract = make_contract()
    event = contract.event(In1("a"), source="com.caller.x", subject="subj", version="0.0.1")
    assert event.type == "com.complex.contract"
    assert event.dataschema == f"{URI}/0.0.1"
    assert event.data == {"name": "a"}
    assert event.datacontenttype == ARVO_CONTENT_TYPE
    assert event.to == "com.complex.contract"
    with pytest.raises(msgspec.ValidationError):
        contract.event({"name": 5}, source="com.caller.x", subject="subj")


# --- orchestrator contracts ------------------------------------------------------------------


def test_orchestrator_naming() -> None:
    contract = make_orchestrator()
    assert contract.name == "order.fulfil"
    assert contract.type == "arvo.orc.order.fulfil"
    assert contract.init_type == "arvo.orc.order.fulfil"
    assert contract.complete_type == "arvo.orc.order.fulfil.done"
    assert contract.system_error_type == "sys.arvo.orc.order.fulfil.error"
    versioned = contract.version("1.0.0")
    assert versioned.accepts is Init
    assert dict(versioned.emits) == {"arvo.orc.order.fulfil.done": Done}
    assert versioned.dataschema == "#/orchestrators/order/1.0.0"
    assert versioned.system_error_dataschema == "#/orchestrators/order/0.0.0"
    assert versioned.is_orchestrator is True


def test_orchestrator_metadata() -> None:
    contract = make_orchestrator(metadata={"team": "ops"})
    assert dict(contract.metadata) == {
        "team": "ops",
        "contractType": "ArvoOrchestratorContract",
        "rootType": "order.fulfil",
        "completeEventType": "arvo.orc.order.fulfil.done",
        "initEventType": "arvo.orc.order.fulfil",
    }


@pytest.mark.parametrize("name", ["Order", "order-fulfil", "order fulfil", "", "a_b", "ok\n"])
def test_bad_orchestrator_name(name: str) -> None:
    with pytest.raises(ContractError) as info:
        make_orchestrator(name=name)
    assert f"orchestrator name {name!r}" in str(info.value)
    assert "only lowercase letters, digits and dots" in str(info.value)


def test_orchestrator_single_segment_name_fails_type_rule() -> None:
    # 'arvo.orc.x' has three segments and is valid; a dotted-empty name is not.
    assert make_orchestrator(name="x").type == "arvo.orc.x"
    with pytest.raises(ContractError, match="three or more"):
        make_orchestrator(name="a..b")


@pytest.mark.parametrize(
    "spec",
    [
        {"accepts": Init, "emits": {}},
        {"init": Init},
        {"init": Init, "complete": Done, "extra": Done},
    ],
)
def test_orchestrator_wrong_version_keys(spec: dict[str, Any]) -> None:
    with pytest.raises(ContractError) as info:
        make_orchestrator(versions={"1.0.0": spec})
    assert "expected keys 'init' and 'complete'" in str(info.value)
    assert str(sorted(spec)) in str(info.value)


def test_orchestrator_schemas_must_be_structs() -> None:
    with pytest.raises(ContractError, match=r"init must be a msgspec\.Struct class"):
        make_orchestrator(versions={"1.0.0": {"init": dict, "complete": Done}})
    with pytest.raises(ContractError, match=r"complete must be a msgspec\.Struct class"):
        make_orchestrator(versions={"1.0.0": {"init": Init, "complete": None}})


def test_orchestrator_version_rules() -> None:
    with pytest.raises(ContractError, match="reserved"):
        make_orchestrator(versions={"0.0.0": {"init": Init, "complete": Done}})
    with pytest.raises(ContractError, match="at least one version"):
        make_orchestrator(versions={})


# --- init events ----------------------------------------------------------------------------


def test_init_event() -> None:
    contract = make_orchestrator()
    event = contract.init_event(Init("o1", 5), source="com.shop.web", version="1.0.0")
    assert isinstance(event, Event)
    assert event.type == "arvo.orc.order.fulfil"
    assert event.to == "arvo.orc.order.fulfil"
    assert event.source == "com.shop.web"
    assert event.dataschema == "#/orchestrators/order/1.0.0"
    assert event.datacontenttype == ARVO_CONTENT_TYPE
    assert event.data == {"order_id": "o1", "amount": 5, PARENT_SUBJECT_KEY: None}
    assert PARENT_SUBJECT_KEY == "parentSubject$$"
    assert event.redirectto is None
    assert event.domain is None
    subject = parse_subject(event.subject)
    assert subject.name == "arvo.orc.order.fulfil"
    assert subject.version == "1.0.0"
    assert subject.initiator == "com.shop.web"
    assert subject.domain is None
    assert subject.meta == {}
    assert uuid.UUID(subject.execution_id).version == 4
    assert from_json(to_json(event)) == event


def test_init_event_accepts_dict_data_and_latest_version() -> None:
    event = make_orchestrator().init_event({"order_id": "o1", "amount": 2}, source="com.shop.web")
    assert event.dataschema == "#/orchestrators/order/2.0.0"
    assert parse_subject(event.subject).version == "2.0.0"
    assert event.data == {"order_id": "o1", "amount": 2, "parentSubject$$": None}


def test_init_event_new_subject_each_time() -> None:
    contract = make_orchestrator()
    first = contract.init_event(Init("o", 1), source="com.shop.web")
    second = contract.init_event(Init("o", 1), source="com.shop.web")
    assert parse_subject(first.subject).execution_id != parse_subject(second.subject).execution_id


def test_init_event_redirectto() -> None:
    event = make_orchestrator().init_event(
        Init("o1", 5), source="com.shop.web", redirectto="com.shop.results"
    )
    assert event.redirectto == "com.shop.results"
    subject = parse_subject(event.subject)
    assert subject.meta == {"redirectto": "com.shop.results"}
    assert subject.redirectto == "com.shop.results"
    assert subject.initiator == "com.shop.web"


def test_init_event_execution_id() -> None:
    contract = make_orchestrator()
    first = contract.init_event(Init("o1", 5), source="com.shop.web", execution_id="order-o1")
    second = contract.init_event(Init("o1", 5), source="com.shop.web", execution_id="order-o1")
    assert parse_subject(first.subject).execution_id == "order-o1"
    assert first.subject == second.subject


def test_init_event_domain() -> None:
    event = make_orchestrator().init_event(
        Init("o1", 5), source="com.shop.web", domain="human.review"
    )
    assert event.domain == "human.review"
    assert parse_subject(event.subject).domain == "human.review"


def test_init_event_explicit_subject() -> None:
    subject = new_subject(
        orchestrator="arvo.orc.order.fulfil", version="1.0.0", initiator="com.x.y"
    )
    event = make_orchestrator().init_event(Init("o1", 5), source="com.shop.web", subject=subject)
    assert event.subject == subject


def test_init_event_options_passthrough() -> None:
    event = make_orchestrator().init_event(
        Init("o1", 5),
        source="com.shop.web",
        id="fixed-id",
        accesscontrol="user:1",
        executionunits=3,
    )
    assert event.id == "fixed-id"
    assert event.accesscontrol == "user:1"
    assert event.executionunits == 3


def test_init_event_with_parent_subject() -> None:
    parent_contract = OrchestratorContract(
        uri="#/orchestrators/parent",
        name="parent.flow",
        versions={"1.0.0": {"init": Init, "complete": Done}},
    )
    parent = parent_contract.init_event(
        Init("p", 1), source="com.shop.web", domain="eu.one", execution_id="parent-1"
    )
    child = make_orchestrator().init_event(
        Init("c", 2),
        source="arvo.orc.parent.flow",
        parent_subject=parent.subject,
        execution_id="child-1",
    )
    assert child.data[PARENT_SUBJECT_KEY] == parent.subject
    subject = parse_subject(child.subject)
    assert subject.name == "arvo.orc.order.fulfil"
    assert subject.version == "2.0.0"
    assert subject.execution_id == "child-1"
    assert subject.initiator == "arvo.orc.parent.flow"  # the parent's orchestrator name
    assert subject.domain == "eu.one"  # inherited from the parent
    # With no redirectto, the completion goes to the parent's initiator.
    assert subject.meta == {"redirectto": "com.shop.web"}


def test_init_event_with_parent_subject_and_redirectto() -> None:
    parent = make_orchestrator().init_event(Init("p", 1), source="com.shop.web")
    child = make_orchestrator().init_event(
        Init("c", 2),
        source="arvo.orc.order.fulfil",
        parent_subject=parent.subject,
        redirectto="com.elsewhere.x",
    )
    assert parse_subject(child.subject).meta == {"redirectto": "com.elsewhere.x"}
    assert child.redirectto == "com.elsewhere.x"


@pytest.mark.parametrize(
    "data",
    [
        {"order_id": 1, "amount": 5},
        {"order_id": "o1"},
        {"order_id": "o1", "amount": "five"},
        [1, 2],
    ],
)
def test_init_event_invalid_data(data: Any) -> None:
    with pytest.raises(msgspec.ValidationError):
        make_orchestrator().init_event(data, source="com.shop.web")


def test_init_event_unknown_version() -> None:
    with pytest.raises(KeyError, match=r"no version '3\.0\.0'"):
        make_orchestrator().init_event(Init("o", 1), source="com.shop.web", version="3.0.0")
