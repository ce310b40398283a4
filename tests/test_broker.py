"""The local broker: FIFO, topics, one subscriber per topic, resolve, domains, recovery."""

from __future__ import annotations

import msgspec
import pytest

from resumable import Event
from resumable.brokers import Broker, Handler, LocalBroker
from resumable.memory import InMemoryMemory

from harness import order_workflow
from orders import HANDLERS, PlaceOrder, orders

pytestmark = pytest.mark.anyio


def _event(to: str, n: int, source: str = "com.test.source") -> Event:
    return Event(source=source, type="com.test.thing", subject="s", data={"n": n}, to=to)


class Recorder:
    """A handler that records what it gets and forwards to ``then`` (if any)."""

    def __init__(self, source: str, log: list[str], then: list[str] | None = None) -> None:
        self.source = source
        self.log = log
        self.then = then or []

    async def execute(self, event: Event) -> list[Event]:
        self.log.append(f"{self.source}:{event.data['n']}")
        return [_event(to, event.data["n"] * 10 + i, self.source) for i, to in enumerate(self.then)]


async def test_delivery_is_fifo_breadth_first() -> None:
    log: list[str] = []
    broker = LocalBroker(
        [
            Recorder("com.a.a", log, then=["com.b.b", "com.c.c"]),
            Recorder("com.b.b", log, then=["com.c.c"]),
            Recorder("com.c.c", log),
        ]
    )
    await broker.publish(_event("com.a.a", 1))
    # FIFO: a's two outputs before b's output (Arvo's LIFO would go depth first)
    assert log == ["com.a.a:1", "com.b.b:10", "com.c.c:11", "com.c.c:100"]
    assert [e.to for e in broker.events] == [
        "com.a.a",
        "com.b.b",
        "com.c.c",
        "com.c.c",
    ]


async def test_one_subscriber_per_topic() -> None:
    broker = LocalBroker([Recorder("com.a.a", [])])
    with pytest.raises(ValueError, match="already has a subscriber"):
        broker.subscribe("com.a.a", Recorder("com.a.a", []))
    with pytest.raises(ValueError, match="already has a subscriber"):
        LocalBroker([Recorder("com.a.a", []), Recorder("com.a.a", [])])


async def test_unsubscribe_frees_the_topic() -> None:
    log: list[str] = []
    broker = LocalBroker()
    unsubscribe = broker.subscribe("com.a.a", Recorder("com.a.a", log))
    unsubscribe()
    assert broker.topics == []
    broker.subscribe("com.a.a", Recorder("com.a.a", log))
    await broker.publish(_event("com.a.a", 1))
    assert log == ["com.a.a:1"]


async def test_handler_errors_go_to_on_error() -> None:
    seen: list[tuple[str, str]] = []

    class Failing:
        source = "com.fail.fail"

        async def execute(self, event: Event) -> list[Event]:
            raise RuntimeError("handler broke")

    async def on_error(error: BaseException, event: Event) -> None:
        seen.append((type(error).__name__, event.to or ""))

    broker = LocalBroker([Failing()], on_error=on_error)
    await broker.publish(_event("com.nobody.here", 1))
    await broker.publish(_event("com.fail.fail", 2))
    assert seen == [("RuntimeError", "com.fail.fail")]
    assert [type(e).__name__ for e, _ in broker.errors] == ["RuntimeError"]


async def test_default_on_error_logs_and_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    class Failing:
        source = "com.fail.fail"

        async def execute(self, event: Event) -> list[Event]:
            raise RuntimeError("handler broke")

    log: list[str] = []
    broker = LocalBroker([Failing(), Recorder("com.a.a", log)])
    await broker.publish(_event("com.fail.fail", 1))
    await broker.publish(_event("com.a.a", 2))
    assert log == ["com.a.a:2"]
    assert "failed: handler broke" in caplog.text


async def test_unsubscribed_topics_queue_for_receive() -> None:
    """No subscriber: the event waits on the topic's transport queue, outputs of handlers
    too, and subscribed topics still run in process."""
    log: list[str] = []
    broker = LocalBroker([Recorder("com.a.a", log, then=["com.remote.worker", "com.b.b"])])
    await broker.publish(_event("com.remote.worker", 1))
    await broker.publish(_event("com.a.a", 2))
    assert log == ["com.a.a:2"]
    assert broker.errors == []
    deliveries = await broker.receive("com.remote.worker", timeout=0)
    assert [d.event.data["n"] for d in deliveries] == [1, 20]
    assert [d.event.data["n"] for d in await broker.receive("com.b.b", timeout=0)] == [21]
    assert await broker.receive("com.a.a", timeout=0) == []  # ran in process
    for delivery in deliveries:
        await delivery.ack()
    assert await broker.receive("com.remote.worker", timeout=0) == []


async def test_a_subscriber_added_later_does_not_take_queued_events() -> None:
    log: list[str] = []
    broker = LocalBroker()
    await broker.publish(_event("com.a.a", 1))
    broker.subscribe("com.a.a", Recorder("com.a.a", log))
    await broker.publish(_event("com.a.a", 2))
    assert log == ["com.a.a:2"]
    (queued,) = await broker.receive("com.a.a", timeout=0)
    assert queued.event.data == {"n": 1}


async def test_resolve_returns_the_last_event_to_the_initiator() -> None:
    class Echo:
        source = "com.echo.echo"

        async def execute(self, event: Event) -> list[Event]:
            return [
                Event(
                    source=self.source, type="evt.echo.one", subject="s", data={}, to=event.source
                ),
                Event(
                    source=self.source, type="evt.echo.two", subject="s", data={}, to=event.source
                ),
            ]

    broker = LocalBroker([Echo()])
    result = await broker.resolve(_event("com.echo.echo", 1, source="com.caller.app"))
    assert result is not None and result.type == "evt.echo.two"
    assert "com.caller.app" not in broker.topics  # the collector is gone afterwards
    # nobody runs com.nobody.here in process: the request waits on its queue, no reply
    assert await broker.resolve(_event("com.nobody.here", 1, source="com.caller.app")) is None
    (waiting,) = await broker.receive("com.nobody.here", timeout=0)
    assert waiting.event.source == "com.caller.app"


async def test_resolve_rejects_a_handler_as_initiator() -> None:
    broker = LocalBroker([Recorder("com.a.a", [])])
    with pytest.raises(ValueError, match="outside initiator"):
        await broker.resolve(_event("com.a.a", 1, source="com.a.a"))


async def test_publish_needs_a_topic() -> None:
    broker = LocalBroker()
    event = _event("com.a.a", 1)
    msgspec.structs.force_setattr(event, "to", "")  # events validate 'to'; force a bad one
    with pytest.raises(ValueError, match="no 'to' topic"):
        await broker.publish(event)


async def test_domained_events_go_to_on_domain_not_the_queue() -> None:
    handed: list[tuple[str | None, bool]] = []

    class Emitter:
        source = "com.emit.emit"

        async def execute(self, event: Event) -> list[Event]:
            return [
                Event(
                    source=self.source,
                    type="evt.x.y",
                    subject="s",
                    data={},
                    to="com.a.a",
                    domain="external",
                ),
                Event(source=self.source, type="evt.x.y", subject="s", data={"n": 5}, to="com.a.a"),
            ]

    async def on_domain(event: Event, broker: Broker) -> None:
        handed.append((event.domain, isinstance(broker, LocalBroker)))

    log: list[str] = []
    broker = LocalBroker([Emitter(), Recorder("com.a.a", log)], on_domain=on_domain)
    await broker.publish(_event("com.emit.emit", 1))
    assert handed == [("external", True)]
    assert log == ["com.a.a:5"]
    assert [e.domain for e in broker.domain_events] == ["external"]
    assert all(e.domain is None for e in broker.events)


async def test_handlers_satisfy_the_handler_protocol() -> None:
    workflow = order_workflow(InMemoryMemory())
    assert isinstance(workflow, Handler)
    assert all(isinstance(h, Handler) for h in HANDLERS)


async def test_recover_resends_unanswered_requests_from_memory() -> None:
    """A crash after the workflow stored its step but before its events went out."""
    memory = InMemoryMemory()
    crashed = order_workflow(memory)
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    (charge_request,) = await crashed.execute(init)  # stored; the request is then lost
    del crashed

    done: list[Event] = []

    class Shop:
        source = "com.shop.web"

        async def execute(self, event: Event) -> list[Event]:
            done.append(event)
            return []

    restarted = order_workflow(memory)
    broker = LocalBroker([*HANDLERS, restarted, Shop()])
    with pytest.deprecated_call(match="Runtime"):  # deprecated, and still works
        assert await broker.recover() == 1
    assert broker.events[0] == charge_request
    assert [e.data["status"] for e in done] == ["shipped"]
    with pytest.deprecated_call(match="Runtime"):
        assert await broker.recover() == 0


async def test_recover_after_a_lost_reply_mid_gather() -> None:
    memory = InMemoryMemory()
    workflow = order_workflow(memory)
    init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
    (charge,) = await workflow.execute(init)
    (charged,) = await HANDLERS[0].execute(charge)
    reserve, label = await workflow.execute(charged)
    (reserved,) = await HANDLERS[2].execute(reserve)
    assert await workflow.execute(reserved) == []  # half the gather is in; then a crash
    broker = LocalBroker([*HANDLERS, order_workflow(memory)])
    with pytest.deprecated_call(match="Runtime"):
        assert await broker.recover() == 1  # only the label request is unanswered
    assert broker.events[0] == label
    status = await order_workflow(memory).status(init.subject)
    assert status is not None and status.status == "done"


async def test_a_long_in_memory_chain_lets_other_tasks_run() -> None:
    """Handlers that never suspend must not starve the event loop while the broker drains."""
    import anyio

    class Counter:
        source = "com.count.down"

        async def execute(self, event: Event) -> list[Event]:
            n = event.data["n"]
            return [] if n == 0 else [_event("com.count.down", n - 1)]

    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await anyio.sleep(0)

    broker = LocalBroker([Counter()])
    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        await anyio.sleep(0)
        before = len(ticks)
        await broker.publish(_event("com.count.down", 1000))
        during = len(ticks) - before
        group.cancel_scope.cancel()
    assert len(broker.events) == 1001
    assert during >= 10  # the ticker ran while 1,001 events were delivered
