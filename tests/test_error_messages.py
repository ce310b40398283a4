"""Errors say what was wrong, where, and what to do: each message asserted."""

from __future__ import annotations

import re
from typing import Any

import attrs
import msgspec
import pytest

from resumable import (
    ConfigViolation,
    Contract,
    ContractViolation,
    Emit,
    EventHandler,
    OrchestratorContract,
    Resumable,
    SetupError,
    call,
    complete,
)
from resumable.errors import PayloadError, UnknownVersionError
from resumable.events import Event

from harness import Number, service

pytestmark = pytest.mark.anyio


class Loan(msgspec.Struct):
    loan_id: str
    amount: int


loans = OrchestratorContract(
    uri="#/contracts/loans",
    name="loan.approve",
    versions={"1.0.0": {"init": Loan, "complete": Number}},
)
echo = service("echo")


# ------------------------------------------------------------------------------------------
# payloads name contract, version and field


def test_a_bad_init_payload_names_contract_version_and_field() -> None:
    with pytest.raises(PayloadError) as caught:
        loans.init_event({"amount": 5}, source="com.shop.web")
    error = caught.value
    assert str(error) == (
        "arvo.orc.loan.approve payload for contract '#/contracts/loans' version 1.0.0 "
        "(Loan): field 'loan_id': Object missing required field `loan_id`. Build it as "
        "Loan(...) with the fields the contract declares"
    )
    assert (error.uri, error.version, error.field) == ("#/contracts/loans", "1.0.0", "loan_id")
    assert isinstance(error, msgspec.ValidationError)  # what callers caught before


class Line(msgspec.Struct):
    sku: str


class Order(msgspec.Struct):
    lines: list[Line]


def test_a_wrong_field_type_names_the_nested_path() -> None:
    orders = Contract(
        uri="#/contracts/orders",
        type="com.shop.order",
        versions={"2.1.0": {"accepts": Order, "emits": {}}},
    )
    with pytest.raises(PayloadError) as caught:
        orders.event({"lines": [{"sku": 5}]}, source="com.shop.web", subject="s")
    assert caught.value.field == "lines[0].sku"
    assert "contract '#/contracts/orders' version 2.1.0 (Order): field 'lines[0].sku'" in str(
        caught.value
    )


async def test_a_bad_call_payload_in_a_workflow_names_contract_version_and_field() -> None:
    async def flow(ctx: Any, data: Loan) -> Any:
        yield call(echo, {"n": "many"})
        yield complete(Number(1))

    workflow = Resumable(loans, versions={"1.0.0": flow}, services=[echo])
    with pytest.raises(ContractViolation) as caught:
        await workflow.execute(loans.init_event(Loan("l-1", 5), source="com.shop.web"))
    assert "for contract '#/contracts/echo' version 1.0.0 (Number): field 'n'" in str(caught.value)


async def test_a_bad_completion_names_contract_version_and_field() -> None:
    async def flow(ctx: Any, data: Loan) -> Any:
        yield complete({"n": "x"})

    workflow = Resumable(loans, versions={"1.0.0": flow})
    with pytest.raises(ContractViolation) as caught:
        await workflow.execute(loans.init_event(Loan("l-1", 5), source="com.shop.web"))
    assert (
        "arvo.orc.loan.approve.done payload for contract '#/contracts/loans' version 1.0.0 "
        "(Number): field 'n': Expected `int`, got `str`"
    ) in str(caught.value)


# ------------------------------------------------------------------------------------------
# one exception type for an unknown version


def test_an_unknown_version_is_one_type_wherever_it_is_asked_for() -> None:
    with pytest.raises(
        UnknownVersionError, match=re.escape("has no version '9.9.9'; it has 1.0.0")
    ):
        loans.version("9.9.9")
    with pytest.raises(UnknownVersionError, match=re.escape("has no version '9.9.9'")):
        loans.init_event(Loan("l", 1), source="com.shop.web", version="9.9.9")
    with pytest.raises(UnknownVersionError, match="Add the version to the contract"):
        Resumable(loans, versions={"9.9.9": _never})
    with pytest.raises(UnknownVersionError, match=re.escape("has no version(s) 9.9.9")):
        EventHandler(echo, versions={"1.0.0": _echo, "9.9.9": _echo})
    error = UnknownVersionError("x has no version '1'", "1", ["2"])
    assert isinstance(error, ConfigViolation) and isinstance(error, SetupError)
    assert isinstance(error, KeyError) and isinstance(error, ValueError)
    assert (error.version, error.known) == ("1", ["2"])


async def test_an_event_for_an_unknown_version_raises_the_same_type() -> None:
    two = OrchestratorContract(
        uri=loans.uri,
        name=loans.name,
        versions={
            "1.0.0": {"init": Loan, "complete": Number},
            "2.0.0": {"init": Loan, "complete": Number},
        },
    )
    workflow = Resumable(two, versions={"1.0.0": _never})
    init = two.init_event(Loan("l", 1), source="com.shop.web", version="2.0.0")
    with pytest.raises(UnknownVersionError, match=re.escape("no function for version 2.0.0")):
        await workflow.execute(init)
    handler = EventHandler(echo, versions={"1.0.0": _echo})
    request = echo.event(Number(1), source="com.shop.web", subject="s")
    odd = msgspec.structs.replace(request, dataschema="#/contracts/echo/3.0.0")
    with pytest.raises(UnknownVersionError, match=re.escape("asks for contract version 3.0.0")):
        await handler.execute(odd)


async def _never(ctx: Any, data: Any) -> Any:
    yield complete(Number(0))


async def _echo(event: Event[Number]) -> Emit:
    return Emit("evt.test.echo.done", Number(event.data.n))


# ------------------------------------------------------------------------------------------
# explicit state


@attrs.define
class Score:
    score: Any = 0
    history: list[Any] = attrs.Factory(list)


async def test_unstorable_state_fails_the_workflow_naming_field_and_type() -> None:
    async def flow(ctx: Any, data: Loan) -> Any:
        ctx.state.score = object()
        yield call(echo, Number(1))
        yield complete(Number(1))

    workflow = Resumable(loans, versions={"1.0.0": flow}, services=[echo], state=Score)
    init = loans.init_event(Loan("l-1", 5), source="com.shop.web")
    (error,) = await workflow.execute(init)  # the workflow's own error, not a retried write
    assert error.type == "sys.arvo.orc.loan.approve.error"
    assert error.data["errorName"] == "StateError"
    assert error.data["errorMessage"].startswith(
        "workflow '#/contracts/loans': explicit state field 'score' holds a value of type "
        "object, which cannot be stored"
    )
    assert (await workflow.status(init.subject)).status == "failed"


async def test_unstorable_state_deep_in_a_list_is_named_by_its_path() -> None:
    async def flow(ctx: Any, data: Loan) -> Any:
        ctx.state.history.append({"ok": 1})
        ctx.state.history.append({"when": 1j})
        yield complete(Number(1))

    workflow = Resumable(loans, versions={"1.0.0": flow}, state=Score)
    (error,) = await workflow.execute(loans.init_event(Loan("l-1", 5), source="com.shop.web"))
    message = error.data["errorMessage"]
    assert "state field 'history[1].when' holds a value of type complex" in message


async def test_ctx_state_without_state_says_to_pass_state() -> None:
    async def flow(ctx: Any, data: Loan) -> Any:
        ctx.state.score = 1
        yield complete(Number(1))

    workflow = Resumable(loans, versions={"1.0.0": flow})
    (error,) = await workflow.execute(loans.init_event(Loan("l-1", 5), source="com.shop.web"))
    assert error.data["errorName"] == "SetupError"
    assert error.data["errorMessage"].startswith(
        "ctx.state is used, but this workflow has no explicit state: define an attrs class "
        "and pass it as Resumable(..., state=MyState)"
    )


# ------------------------------------------------------------------------------------------
# tracebacks are opt-in


async def test_system_errors_carry_no_traceback_unless_asked() -> None:
    async def fails(ctx: Any, data: Loan) -> Any:
        raise RuntimeError("no funds")
        yield complete(Number(1))

    init = loans.init_event(Loan("l-1", 5), source="com.shop.web")
    (quiet,) = await Resumable(loans, versions={"1.0.0": fails}).execute(init)
    assert quiet.data == {
        "errorName": "RuntimeError",
        "errorMessage": "no funds",
        "errorStack": None,
    }
    loud = Resumable(loans, versions={"1.0.0": fails}, error_stack=True)
    (error,) = await loud.execute(init)
    assert "RuntimeError: no funds" in error.data["errorStack"]

    async def broken(event: Event[Number]) -> Emit:
        raise RuntimeError("down")

    request = echo.event(Number(1), source="com.shop.web", subject="s")
    (quiet,) = await EventHandler(echo, versions={"1.0.0": broken}).execute(request)
    assert quiet.data["errorStack"] is None and quiet.data["errorMessage"] == "down"
    handler = EventHandler(echo, versions={"1.0.0": broken}, error_stack=True)
    (loud_error,) = await handler.execute(request)
    assert "RuntimeError: down" in loud_error.data["errorStack"]
