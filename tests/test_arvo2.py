"""Arvo 2.x compatibility: subjects without ``execution.domain`` and replies without
``parentid``, on hand-built headers and end to end through the driver."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import msgspec
import pytest

from resumable import ExecutionViolation, OrchestratorContract, Resumable, call, complete, gather
from resumable.engine.transitions import find_slot
from resumable.events import Event
from resumable.memory import InMemoryMemory
from resumable.record import Header, Slot
from resumable.subject import encode_subject, parse_subject, subject_from_parent

from harness import Number, service

pytestmark = pytest.mark.anyio


def _arvo2_subject(meta: dict[str, str] | None = None) -> str:
    """A subject as arvo-core 2.x writes it: its execution has no ``domain`` key."""
    content = {
        "orchestrator": {"name": "arvo.orc.twice", "version": "1.0.0"},
        "execution": {"id": "e-1", "initiator": "com.shop.web"},
        "meta": {"redirectto": "com.shop.web"} if meta is None else meta,
    }
    raw = json.dumps(content, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode()


def test_a_subject_without_domain_parses_with_domain_none_and_re_encodes_unchanged() -> None:
    value = _arvo2_subject()
    parsed = parse_subject(value)
    assert parsed.domain is None and parsed.domain_key is False
    assert parsed.execution_id == "e-1" and parsed.redirectto == "com.shop.web"
    assert encode_subject(parsed) == value


def test_a_subject_with_a_null_domain_keeps_its_key() -> None:
    content = {
        "orchestrator": {"name": "arvo.orc.twice", "version": "1.0.0"},
        "execution": {"id": "e-1", "initiator": "com.shop.web", "domain": None},
        "meta": {},
    }
    value = base64.b64encode(
        zlib.compress(json.dumps(content, separators=(",", ":")).encode(), 6)
    ).decode()
    parsed = parse_subject(value)
    assert parsed.domain is None and parsed.domain_key is True
    assert encode_subject(parsed) == value


def test_a_child_of_an_arvo2_parent_gets_a_subject_with_a_domain_key() -> None:
    child = subject_from_parent(
        orchestrator="arvo.orc.child", version="1.0.0", parent=_arvo2_subject()
    )
    content = json.loads(zlib.decompress(base64.b64decode(child)))
    assert content["execution"]["domain"] is None
    assert content["execution"]["initiator"] == "arvo.orc.twice"


# ------------------------------------------------------------------------------------------
# matching a reply without parentid, on hand-built headers


def _reply(type_: str, parentid: str | None = None) -> Event:
    return Event(
        source="com.test.echo",
        type=type_,
        subject="s",
        data={"n": 1},
        parentid=parentid,
        id="reply-1",
    )


def _header(*slots: Slot) -> Header:
    return Header(
        status="active",
        version="1.0.0",
        seq=1,
        init_event_id="init",
        parent_subject=None,
        state=None,
        waiting=list(slots),
        mode="gather" if len(slots) > 1 else "call",
    )


ECHO, OTHER = "#/contracts/echo", "#/contracts/other"


def test_a_reply_without_parentid_fills_the_one_open_call_its_type_answers() -> None:
    header = _header(
        Slot(service=OTHER, requests=["r-0"]),
        Slot(service=ECHO, requests=["r-1"]),
    )
    assert find_slot(header, _reply("evt.test.echo.done"), [ECHO]) == 1
    assert find_slot(header, _reply("evt.test.echo.done"), []) is None


def test_a_filled_slot_or_a_timer_is_not_matched_by_type() -> None:
    header = _header(
        Slot(service=ECHO, requests=["r-0"], reply="earlier"),
        Slot(kind="timer", service=ECHO, due=5.0),
    )
    assert find_slot(header, _reply("evt.test.echo.done"), [ECHO]) is None


def test_a_reply_with_parentid_is_still_matched_by_its_request_id_only() -> None:
    header = _header(Slot(service=ECHO, requests=["r-0"]), Slot(service=ECHO, requests=["r-1"]))
    assert find_slot(header, _reply("evt.test.echo.done", "r-1"), [ECHO]) == 1
    assert find_slot(header, _reply("evt.test.echo.done", "r-9"), [ECHO]) is None


def test_a_reply_without_parentid_that_two_open_calls_accept_is_a_violation() -> None:
    header = _header(Slot(service=ECHO, requests=["r-0"]), Slot(service=ECHO, requests=["r-1"]))
    with pytest.raises(ExecutionViolation) as caught:
        find_slot(header, _reply("evt.test.echo.done"), [ECHO])
    message = str(caught.value)
    assert "reply reply-1 (evt.test.echo.done) has no parentid" in message
    assert f"2 open calls may be answered by that type ({ECHO}, {ECHO})" in message
    assert "exactly one open call accepts its type" in message


# ------------------------------------------------------------------------------------------
# end to end: a workflow driven by replies without parentid


echo = service("echo")
double = service("double")
twice = OrchestratorContract(
    uri="#/contracts/twice",
    name="twice",
    versions={"1.0.0": {"init": Number, "complete": Number}},
)


async def _twice(ctx: Any, data: Number) -> Any:
    reply = yield call(echo, Number(data.n))
    a, b = yield gather(call(echo, Number(reply.data.n)), call(double, Number(reply.data.n)))
    yield complete(Number(a.data.n + b.data.n))


def _answer(request: Event, type_: str, n: int) -> Event:
    """A reply as an arvo-core 2.x service sends it: same subject, no parentid."""
    return Event(
        source=request.type,
        type=type_,
        subject=request.subject,
        data={"n": n},
        dataschema=request.dataschema,
        to=request.redirectto or request.source,
    )


async def test_replies_without_parentid_drive_a_workflow_started_on_an_arvo2_subject() -> None:
    workflow = Resumable(twice, versions={"1.0.0": _twice}, services=[echo, double])
    subject = _arvo2_subject()
    init = Event(
        source="com.shop.web",
        type=twice.type,
        subject=subject,
        data={"n": 1, "parentSubject$$": None},
        dataschema="#/contracts/twice/1.0.0",
    )
    (first,) = await workflow.execute(init)
    assert first.subject == subject
    pair = await workflow.execute(_answer(first, "evt.test.echo.done", 2))
    by_type = {e.type: e for e in pair}
    assert set(by_type) == {"com.test.echo", "com.test.double"}
    doubled = _answer(by_type["com.test.double"], "evt.test.double.done", 4)
    assert await workflow.execute(doubled) == []
    (done,) = await workflow.execute(_answer(by_type["com.test.echo"], "evt.test.echo.done", 3))
    assert done.type == "arvo.orc.twice.done" and done.data == {"n": 7}
    assert done.subject == subject and done.to == "com.shop.web"


async def test_an_unmatched_reply_without_parentid_says_it_was_matched_by_type() -> None:
    memory = InMemoryMemory()
    workflow = Resumable(twice, versions={"1.0.0": _twice}, services=[echo, double], memory=memory)
    init = twice.init_event(Number(1), source="com.shop.web")
    (first,) = await workflow.execute(init)
    stray = msgspec.structs.replace(
        _answer(first, "evt.test.double.done", 2), dataschema="#/contracts/double/1.0.0"
    )
    with pytest.raises(ExecutionViolation) as caught:
        await workflow.execute(stray)
    assert "it has no parentid, so it is matched by its type" in str(caught.value)
    assert "it waits for call com.test.echo" in str(caught.value)


async def test_an_ambiguous_reply_without_parentid_is_a_violation_end_to_end() -> None:
    async def both(ctx: Any, data: Number) -> Any:
        a, b = yield gather(call(echo, Number(1)), call(echo, Number(2)))
        yield complete(Number(a.data.n + b.data.n))

    workflow = Resumable(twice, versions={"1.0.0": both}, services=[echo])
    first, _ = await workflow.execute(twice.init_event(Number(1), source="com.shop.web"))
    with pytest.raises(ExecutionViolation, match="2 open calls may be answered"):
        await workflow.execute(_answer(first, "evt.test.echo.done", 2))
    fine = msgspec.structs.replace(_answer(first, "evt.test.echo.done", 2), parentid=first.id)
    assert await workflow.execute(fine) == []
