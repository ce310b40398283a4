"""The engine alone: ``decide`` fed hand-built headers and journals, no ``Memory``, and the
pure wait state machine on hand-built headers (as an executor is tested on histories)."""

from __future__ import annotations

from typing import Any

import pytest

from resumable import call, complete, gather, race, sleep
from resumable.engine.definition import Definition
from resumable.engine.instance import Stored, decide
from resumable.engine.transitions import (
    CALL,
    TIMEOUT,
    Due,
    Wake,
    abandon,
    due_action,
    find_slot,
    ms,
    schedule_retry,
)
from resumable.engine.turn import Decision
from resumable.events import Event
from resumable.record import (
    ACTIVE,
    DONE,
    PARKED,
    Entry,
    Header,
    RetrySpec,
    Slot,
    decode_entry,
    decode_header,
    encode_entry,
    encode_header,
    wire,
)
from resumable.subject import parse_subject

from harness import FIXED_TIME, SHOP, Number, echo_contract, echo_handler
from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio

NOW = 1_767_225_600.0  # FIXED_TIME in epoch seconds


class DictJournal:
    """A journal held in a dict: what ``decide`` reads instead of a memory."""

    def __init__(self, entries: list[tuple[str, bytes]], revision: int) -> None:
        self._by_id = dict(entries)
        self._revision = revision

    async def entry(self, event_id: str) -> bytes | None:
        return self._by_id.get(event_id)

    async def entries(self, revision: int) -> list[bytes]:
        assert revision == self._revision
        return list(self._by_id.values())


async def echo_once(ctx, order):
    reply = yield call(echo_contract, Number(order.amount_cents))
    yield complete(OrderResult(f"got {reply.data.n}"))


def definition(fn: Any = echo_once) -> Definition[Any]:
    return Definition.build(orders, {"1.0.0": fn}, services=[echo_contract])


def init_event() -> Event:
    return orders.init_event(PlaceOrder("o", 41), source=SHOP, id="init-1", time=FIXED_TIME)


def request_for(init: Event) -> Event:
    return echo_contract.event(
        Number(41),
        source=orders.type,
        subject=init.subject,
        id="request-1",
        parentid=init.id,
        time=FIXED_TIME,
        to=echo_contract.type,
        redirectto=orders.type,
    )


def waiting_on(init: Event, request: Event) -> tuple[Header, list[tuple[str, bytes]]]:
    """The record of an instance that started and waits for one echo reply, by hand."""
    header = Header(
        status=ACTIVE,
        version="1.0.0",
        seq=1,
        init_event_id=init.id,
        parent_subject=None,
        state=None,
        waiting=[Slot(service=echo_contract.uri, requests=[request.id], sent_by=init.id)],
        mode="call",
        waits_for="call com.test.echo",
    )
    entry = Entry(
        event=wire(init),
        produced=[request],
        resumed=[],
        how="start",
        yielded="call com.test.echo",
    )
    return header, [(init.id, encode_entry(entry))]


async def run(
    defn: Definition[Any], event: Event, header: Header | None, journal: list[tuple[str, bytes]]
) -> Decision:
    stored = None if header is None else Stored(len(journal), encode_header(header), None)
    typed = defn.validate(event, parse_subject(event.subject))
    return await decide(
        defn,
        event,
        typed,
        parse_subject(event.subject),
        stored,
        DictJournal(journal, len(journal)),
        time=FIXED_TIME,
        now=NOW,
        headers=(None, None, None),
    )


async def test_a_start_decides_the_first_request_and_the_record() -> None:
    init = init_event()
    decision = await run(definition(), init, None, [])
    assert decision.header is not None and decision.header.status == ACTIVE
    assert decision.header.seq == 1 and decision.header.waits_for == "call com.test.echo"
    (request,) = decision.emitted
    assert request.type == echo_contract.type and request.data == {"n": 41}
    (entry_id, raw) = decision.append[0]
    assert entry_id == init.id and decode_entry(raw).how == "start"
    assert decision.live is not None  # the live generator to keep


async def test_a_reply_replays_the_hand_built_journal_and_completes() -> None:
    init = init_event()
    request = request_for(init)
    header, journal = waiting_on(init, request)
    (reply,) = await echo_handler().execute(request)
    decision = await run(definition(), reply, header, journal)
    assert decision.header is not None and decision.header.status == DONE
    (done,) = decision.emitted
    assert done.type == orders.complete_type and done.data["status"] == "got 42"
    assert decode_entry(decision.append[0][1]).how == "call"
    assert decision.live is None  # a finished instance keeps no generator


async def test_a_redelivered_reply_is_answered_from_the_journal_and_writes_nothing() -> None:
    init = init_event()
    request = request_for(init)
    header, journal = waiting_on(init, request)
    (reply,) = await echo_handler().execute(request)
    header.waiting[0].reply = reply.id
    header.status = DONE
    journal.append((reply.id, encode_entry(Entry(event=wire(reply), produced=[init]))))
    decision = await run(definition(), reply, header, journal)
    assert decision.header is None and decision.emitted == [init]


async def test_a_journal_that_no_longer_matches_the_code_parks_the_instance() -> None:
    async def changed(ctx, order):
        yield gather(call(echo_contract, Number(1)), call(echo_contract, Number(2)))
        yield complete(OrderResult("never"))

    init = init_event()
    request = request_for(init)
    header, journal = waiting_on(init, request)
    (reply,) = await echo_handler().execute(request)
    decision = await run(definition(changed), reply, header, journal)
    assert decision.header is not None and decision.header.status == PARKED
    assert decision.header.parked is not None and decision.header.parked.step == 0
    assert decision.append == [] and decision.emitted == []
    assert [e.id for e in decision.header.parked_events] == [reply.id]


async def test_a_timer_with_nothing_due_writes_nothing() -> None:
    async def sleeper(ctx, order):
        yield sleep(60)
        yield complete(OrderResult("slept"))

    defn = definition(sleeper)
    start = await run(defn, init_event(), None, [])
    assert start.header is not None
    timer = Event(
        id="timer-1",
        source=orders.type,
        type="resumable.workflow.timer",
        subject=init_event().subject,
        data={"now": NOW + 30},
        time=FIXED_TIME,
        to=orders.type,
    )
    decision = await run(defn, timer, start.header, start.append)
    assert decision.header is None and decision.emitted == []


# ----------------------------------------------------------------------------------
# the pure state machine


def header_with(*slots: Slot, deadline: float | None = None, mode: str = "call") -> Header:
    return Header(
        status=ACTIVE,
        version="1.0.0",
        seq=1,
        init_event_id="i",
        parent_subject=None,
        state=None,
        waiting=list(slots),
        mode=mode,  # type: ignore[arg-type]
        deadline=deadline,
    )


def test_the_instances_deadline_comes_before_anything_else_due() -> None:
    header = header_with(Slot(kind="timer", due=NOW - 5), deadline=NOW - 1, mode="race")
    header.workflow_deadline = NOW
    assert due_action(header, NOW) == Due("workflow")
    header.workflow_deadline = None
    assert due_action(header, NOW) == Due("timer", 0)  # the timer fell due first
    header.waiting[0].due = NOW - 0.5
    assert due_action(header, NOW) == Due("wait")  # now the deadline did
    assert due_action(header, NOW - 2) is None


def test_a_retry_is_due_only_when_nothing_else_is() -> None:
    header = header_with(Slot(requests=["r"], due=NOW))
    assert due_action(header, NOW) == Due("retry")
    assert due_action(header, NOW, retries=False) is None


def test_schedule_retry_follows_the_policy_and_keeps_due_times_to_the_millisecond() -> None:
    slot = Slot(
        requests=["r"],
        retry=RetrySpec(
            attempts=3, initial=0.05, factor=2.0, max_interval=60.0, non_retryable=("Fatal",)
        ),
    )
    assert schedule_retry(slot, None, NOW) is None  # not an error reply
    assert schedule_retry(slot, "Fatal", NOW) is None  # non-retryable
    assert schedule_retry(slot, "Boom", NOW + 0.3) == 0.05
    assert slot.due == ms(NOW + 0.35) == round(NOW + 0.35, 3)
    slot.attempt = 3
    assert schedule_retry(slot, "Boom", NOW) is None  # attempts spent


def test_abandon_ignores_open_requests_and_names_the_children_to_cancel() -> None:
    header = header_with(
        Slot(requests=["a"], reply="got-a"),
        Slot(requests=["b1", "b2"], children=["child-b"]),
        Slot(kind="timer", due=NOW),
        mode="race",
    )
    assert abandon(header, keep=2) == ["child-b"]
    assert header.ignored == ["b1", "b2"]
    assert (
        find_slot(header, Event(source="x.y.z", type="x.y.z", subject="s", data={}, parentid="b1"))
        == 1
    )


def test_wakes_are_journaled_as_text_and_read_back() -> None:
    for wake in (CALL, TIMEOUT, Wake("race", 3)):
        assert Wake.parse(wake.encode()) == wake
    assert Wake("race", 1).encode() == "race:1"
    assert Wake.parse("") is None and Wake.parse("retired") is None


def test_a_decision_header_round_trips() -> None:
    header = header_with(Slot(requests=["r"], children=["c"]))
    assert decode_header(encode_header(header)) == header


def test_race_and_sleep_describe_what_replay_compares() -> None:
    assert race(call(echo_contract, Number(1)), sleep(1)).describe() == (
        "race(call com.test.echo, sleep)"
    )
