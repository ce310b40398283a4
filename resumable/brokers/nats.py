"""A broker on NATS JetStream: durable topics, shared pull consumers, a dead-letter subject.

One stream holds every topic (``{prefix}.topic.<topic>``) and every dead letter
(``{prefix}.dead.<topic>``). Each topic is read through a durable pull consumer named after
``durable`` and the topic, so every process using the same names shares one queue (a work
queue); another ``durable`` name is another consumer group that gets every event too.

Publishing waits for JetStream's acknowledgement and sets ``Nats-Msg-Id`` to the event id,
so a re-publish of the same event within the stream's duplicate window (2 minutes by
default) is dropped by the server: publishing is effectively once, and retrying a publish
that failed in flight is always safe.

``max_deliver`` is unlimited (-1) by default: the Worker dead-letters an event that fails
``max_attempts`` times for a reason of its own, and retries for as long as they last the
deliveries that failed because a server was unavailable, which a delivery limit would
strand (JetStream stops delivering a message after ``max_deliver`` deliveries; it stays in
the stream, on no queue). Set a limit to bound a message that kills its worker every time;
the Worker then dead-letters on the last delivery whatever the failure.

Needs nats-py (``pip install 'resumable[nats]'``) and a server started with JetStream
(``nats-server -js``). Runs on asyncio.

(Over 500 lines: JetStream's stream and consumer set-up, redelivery, dead letters and
reconnection are one transport's state; the conformance suite holds it to the interface.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js import api
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"NatsBroker needs nats-py ({error}); install it with: pip install 'resumable[nats]'"
    ) from error

from resumable.brokers.base import Broker, DeadLetter, Delivery
from resumable.errors import SetupError, Unavailable
from resumable.events import Event, EventError, from_json, to_json
from resumable.uri import redact_url as _redact

__all__ = ["NatsBroker"]

log = logging.getLogger("resumable.broker.nats")

_REASON: Final = "Resumable-Reason"
_ATTEMPTS: Final = "Resumable-Attempts"
_TOPIC: Final = "Resumable-Topic"
_MSG_ID: Final = "Nats-Msg-Id"
_NAME: Final = re.compile(r"^[A-Za-z0-9_-]+\Z")
# A subject token: printable ASCII except the separator '.' and the wildcards '*' and '>'.
_TOKEN: Final = re.compile(r"^[!-)+\-/-=?-~]+\Z")
_START_HINT: Final = "start a server with JetStream enabled: nats-server -a 127.0.0.1 -p 4222 -js"


def _check_subject(value: str, what: str) -> None:
    """Raise ValueError unless ``value`` is a NATS subject of literal tokens (no wildcards)."""
    if not isinstance(value, str) or not value:
        raise SetupError(
            f"{what} must be a non-empty string of dot-separated words like "
            f"'com.payments.charge', got {value!r}"
        )
    for token in value.split("."):
        if not token:
            raise SetupError(
                f"{what} {value!r} is not a valid NATS subject: it has an empty token "
                "(a leading, trailing or doubled '.'); use dot-separated words like "
                "'com.payments.charge'"
            )
        if not _TOKEN.match(token):
            raise SetupError(
                f"{what} {value!r} is not a valid NATS subject: token {token!r} may only "
                "hold printable ASCII other than '*' and '>' (wildcards) and no spaces; "
                "use dot-separated words like 'com.payments.charge'"
            )


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SetupError(
            f"{what} {value!r} must be letters, digits, '-' and '_' only "
            "(JetStream names cannot hold '.', '*', '>', spaces or slashes)"
        )


def consumer_name(durable: str, topic: str) -> str:
    """The durable consumer of ``topic`` for the group ``durable``: readable, and unique per
    topic (a hash of the topic, since sanitising alone would map 'a.b' and 'a_b' together)."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", topic)[:64]
    digest = hashlib.blake2b(topic.encode(), digest_size=5).hexdigest()
    return f"{durable}_{readable}_{digest}"


@dataclass
class _Consumer:
    """A topic's pull subscription; fetches on one subscription must not overlap."""

    subscription: Any
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class _NatsDelivery(Delivery):
    """One JetStream message of one topic, settled through its reply subject."""

    def __init__(self, broker: NatsBroker, msg: Any, event: Event, topic: str) -> None:
        self.event = event
        self.topic = topic
        self.attempt = int(msg.metadata.num_delivered)
        self._broker = broker
        self._msg = msg

    def __repr__(self) -> str:
        return f"<NatsDelivery {self.event.id} on {self.topic!r}, attempt {self.attempt}>"

    @contextlib.contextmanager
    def _settling(self, how: str) -> Iterator[None]:
        """Mark the delivery settled; unmark it if settling failed, so it can be retried
        (or left to come back after ack_wait)."""
        self._mark_settled(how)
        try:
            yield
        except BaseException:
            self._settled = None
            raise

    async def ack(self) -> None:
        """Acknowledge and wait for JetStream to confirm, so it is not delivered again."""
        with self._settling("ack"), self._broker._outage("acking an event"):
            try:
                await self._msg.ack_sync(timeout=self._broker.request_timeout)
            except TimeoutError:
                raise Unavailable(
                    f"NATS did not confirm the ack of event {self.event.id} on "
                    f"{self.topic!r} within {self._broker.request_timeout}s; it may be "
                    "delivered again after ack_wait"
                ) from None

    async def nack(self, delay: float = 0.0) -> None:
        """Negative-ack with JetStream's redelivery delay."""
        if delay < 0:
            raise ValueError(f"nack delay must be 0 or more seconds, got {delay!r}")
        with self._settling("nack"), self._broker._outage("nacking an event"):
            await self._msg.nak(delay=delay or None)
            await self._broker._flush()

    async def extend(self) -> None:
        """Tell JetStream the message is in progress (``+WPI``): its ``ack_wait`` starts
        again. Ignored by the server once the message is acked or delivered again."""
        if self._settled is not None:
            return
        await self._msg.in_progress()
        await self._broker._flush()

    async def dead_letter(self, reason: str) -> None:
        """Publish the event to the topic's dead-letter subject, then terminate the message.

        In that order: a crash in between redelivers the message and the dead letter is
        written again, which the duplicate window drops.
        """
        with self._settling("dead_letter"), self._broker._outage("dead-lettering an event"):
            await self._broker._publish_dead(
                self.topic,
                to_json(self.event),
                reason,
                self.attempt,
                f"dead:{self.topic}:{self.event.id}",
            )
            await self._msg.term()
            await self._broker._flush()


class NatsBroker(Broker):
    """Topics on one JetStream stream, read through durable pull consumers (work queues).

    ``url`` is the server (or comma-separated servers); ``stream`` is created on first use
    if missing (file storage, subjects ``{subject_prefix}.topic.>`` and
    ``{subject_prefix}.dead.>``). Every topic's consumer is ``{durable}_<topic>_<hash>``
    with explicit acks, ``ack_wait`` seconds to settle a delivery and at most
    ``max_deliver`` deliveries (-1, the default: no limit). Connects lazily and reconnects
    for ever; ``close`` releases the connection.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str = "RESUMABLE",
        subject_prefix: str = "resumable",
        durable: str = "workers",
        ack_wait: float = 5.0,
        max_deliver: int = -1,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
    ) -> None:
        _check_name(stream, "stream")
        _check_subject(subject_prefix, "subject_prefix")
        _check_name(durable, "durable")
        if ack_wait <= 0:
            raise SetupError(f"ack_wait must be more than 0 seconds, got {ack_wait!r}")
        if max_deliver < 1 and max_deliver != -1:
            raise SetupError(f"max_deliver must be 1 or more (or -1: unlimited), got {max_deliver}")
        self.url = url
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.durable = durable
        self.ack_wait = float(ack_wait)
        self.max_deliver = max_deliver
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._nc: Any = None
        self._js: Any = None
        self._connecting = anyio.Lock()
        self._consumers: dict[str, _Consumer] = {}
        self._creating = anyio.Lock()
        self._waiting: set[anyio.CancelScope] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> NatsBroker:
        """A broker from ``nats://host:port?stream=S&prefix=P&durable=D`` (all optional;
        also ``ack_wait`` and ``max_deliver``)."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        allowed = {"stream", "prefix", "durable", "ack_wait", "max_deliver"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise SetupError(
                f"unknown NATS broker URL parameter(s) {unknown} in {_redact(url)!r}; "
                f"allowed: {sorted(allowed)}"
            )
        kwargs: dict[str, Any] = {}
        if "stream" in params:
            kwargs["stream"] = params["stream"]
        if "prefix" in params:
            kwargs["subject_prefix"] = params["prefix"]
        if "durable" in params:
            kwargs["durable"] = params["durable"]
        try:
            if "ack_wait" in params:
                kwargs["ack_wait"] = float(params["ack_wait"])
            if "max_deliver" in params:
                kwargs["max_deliver"] = int(params["max_deliver"])
        except ValueError as error:
            raise SetupError(f"bad number in NATS broker URL {_redact(url)!r}: {error}") from None
        server = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return cls(server, **kwargs)

    def __repr__(self) -> str:
        return (
            f"NatsBroker({_redact(self.url)!r}, stream={self.stream!r}, "
            f"subject_prefix={self.subject_prefix!r}, durable={self.durable!r})"
        )

    # -- subjects ------------------------------------------------------------------------

    def subject(self, topic: str) -> str:
        """The subject events addressed to ``topic`` are published on."""
        _check_subject(topic, "topic")
        return f"{self.subject_prefix}.topic.{topic}"

    def dead_subject(self, topic: str) -> str:
        """The subject ``topic``'s dead letters are published on."""
        _check_subject(topic, "topic")
        return f"{self.subject_prefix}.dead.{topic}"

    # -- Broker --------------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """Publish to the topic ``event.to`` and wait for JetStream to store it.

        ``Nats-Msg-Id`` is the event id: JetStream drops a re-publish of the same event
        within the stream's duplicate window, so retrying a failed publish is safe.
        """
        if not event.to:
            raise ValueError(f"event {event.id} has no 'to' topic; it cannot be routed")
        subject = self.subject(event.to)
        if "\r" in event.id or "\n" in event.id:
            raise ValueError(f"event id {event.id!r} holds a line break; NATS headers cannot")
        with self._outage(f"publishing event {event.id}"):
            js = await self._jetstream()
            try:
                ack = await js.publish(
                    subject,
                    to_json(event),
                    timeout=self.request_timeout,
                    stream=self.stream,
                    headers={_MSG_ID: event.id},
                )
            except TimeoutError:
                raise Unavailable(
                    f"JetStream did not acknowledge event {event.id} on {subject!r} within "
                    f"{self.request_timeout}s; it may or may not be stored. Publishing it again "
                    "is safe: the duplicate window drops a second copy",
                    server=f"NATS at {_redact(self.url)}",
                ) from None
            except nats.js.errors.NoStreamResponseError:
                raise Unavailable(
                    f"no JetStream stream answered for {subject!r}: JetStream is restarting, or "
                    f"stream {self.stream!r} was deleted or JetStream disabled (a new "
                    "NatsBroker creates the stream again)",
                    server=f"NATS at {_redact(self.url)}",
                ) from None
        if ack.duplicate:
            log.debug("event %s was published already; JetStream dropped the copy", event.id)

    async def receive(
        self, topic: str, *, max_messages: int = 16, timeout: float = 1.0
    ) -> list[Delivery]:
        """Fetch up to ``max_messages`` from ``topic``'s durable consumer, waiting up to
        ``timeout`` seconds; ``[]`` if the fetch timed out."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be 1 or more, got {max_messages}")
        self.subject(topic)
        msgs: list[Any] = []
        with anyio.CancelScope() as scope:  # cancelled by close(): return []
            self._waiting.add(scope)
            try:
                with self._outage(f"receiving from {topic!r}"):
                    msgs = await self._fetch(topic, max_messages, timeout)
            finally:
                self._waiting.discard(scope)
        deliveries: list[Delivery] = []
        for msg in msgs:
            try:
                event = from_json(msg.data)
            except EventError as error:
                await self._set_aside(msg, topic, error)
                continue
            deliveries.append(_NatsDelivery(self, msg, event, topic))
        return deliveries

    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        """Read ``topic``'s dead-letter subject from the start of the stream, oldest first."""
        subject = self.dead_subject(topic)
        js = await self._jetstream()
        letters: list[DeadLetter] = []
        sequence = 1
        while True:
            try:
                raw = await js.get_msg(self.stream, seq=sequence, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return letters
            sequence = raw.seq + 1
            headers = raw.headers or {}
            try:
                event = from_json(raw.data or b"")
            except EventError as error:
                log.warning(
                    "dead letter %d on %r is not an event (%s); skipped", raw.seq, subject, error
                )
                continue
            letters.append(
                DeadLetter(
                    event=event,
                    topic=headers.get(_TOPIC, topic),
                    reason=_decode_reason(headers.get(_REASON)),
                    attempts=int(headers.get(_ATTEMPTS, "0")),
                )
            )

    async def close(self) -> None:
        """Unsubscribe every consumer and drain the connection; unsettled deliveries are
        delivered again (to any consumer of the group) after ``ack_wait``."""
        self._closed = True
        for scope in self._waiting:
            scope.cancel()
        nc, self._nc, self._js = self._nc, None, None
        consumers = list(self._consumers.values())
        self._consumers.clear()
        if nc is None:
            return
        for consumer in consumers:
            try:
                await consumer.subscription.unsubscribe()
            except nats.errors.Error as error:
                log.debug("unsubscribing on close failed: %s", error)
        try:
            await nc.drain()
        except (nats.errors.Error, TimeoutError) as error:
            log.debug("draining the NATS connection failed (%s); closing it", error)
            await nc.close()

    # -- internals -----------------------------------------------------------------------

    async def _jetstream(self) -> Any:
        """The JetStream context, connecting and creating the stream on first use."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new NatsBroker")
        if self._js is not None:
            return self._js
        async with self._connecting:
            if self._js is None:
                nc = await self._connect()
                js = nc.jetstream(timeout=self.request_timeout)
                try:
                    await self._ensure_stream(js)
                except BaseException:
                    await nc.close()
                    raise
                self._nc, self._js = nc, js
        return self._js

    async def _connect(self) -> Any:
        nc = Client()
        connected = False
        failures: list[BaseException] = []

        async def on_error(error: Exception) -> None:
            if connected:
                log.warning("NATS connection to %s: %s", _redact(self.url), error)
            else:
                failures.append(error)

        servers = [s.strip() for s in self.url.split(",")] if "," in self.url else self.url
        try:
            with anyio.fail_after(self.connect_timeout):
                await nc.connect(
                    servers,
                    name="resumable",
                    error_cb=on_error,
                    connect_timeout=max(1, int(self.connect_timeout)),
                    max_reconnect_attempts=-1,  # a long-running worker waits out outages
                    drain_timeout=max(1, int(self.request_timeout)),
                )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            await nc.close()
            cause = failures[-1] if failures else error
            raise Unavailable(
                f"cannot connect to NATS at {_redact(self.url)} within {self.connect_timeout}s "
                f"({type(cause).__name__}: {cause}); check the URL, or {_START_HINT}",
                server=f"NATS at {_redact(self.url)}",
            ) from None
        connected = True
        return nc

    async def _ensure_stream(self, js: Any) -> None:
        """Create the stream if missing (idempotent), or check that it holds our subjects."""
        subjects = [f"{self.subject_prefix}.topic.>", f"{self.subject_prefix}.dead.>"]
        try:
            try:
                info = await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                config = api.StreamConfig(
                    name=self.stream,
                    subjects=subjects,
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                )
                try:
                    info = await js.add_stream(config)
                except nats.js.errors.BadRequestError as error:
                    if error.err_code == 10058:  # created meanwhile by another process
                        info = await js.stream_info(self.stream)
                    elif error.err_code == 10065:
                        raise ValueError(
                            f"cannot create stream {self.stream!r}: its subjects {subjects} "
                            "overlap another stream's; use that stream's name or another "
                            "subject_prefix"
                        ) from None
                    else:
                        raise
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise ConnectionError(
                f"the NATS server at {_redact(self.url)} has no JetStream; restart it with "
                "-js, e.g. nats-server -a 127.0.0.1 -p 4222 -js"
            ) from None
        except TimeoutError:
            raise ConnectionError(
                f"JetStream at {_redact(self.url)} did not answer within "
                f"{self.request_timeout}s; is JetStream enabled? {_START_HINT}"
            ) from None
        missing = set(subjects) - set(info.config.subjects or [])
        if missing:
            raise ValueError(
                f"stream {self.stream!r} exists without the subjects {sorted(missing)} "
                f"(it has {info.config.subjects}); use another stream name or subject_prefix"
            )

    async def _consumer(self, topic: str) -> _Consumer:
        """The topic's durable pull consumer, created (or updated to our settings) once."""
        consumer = self._consumers.get(topic)
        if consumer is not None:
            return consumer
        js = await self._jetstream()
        async with self._creating:
            consumer = self._consumers.get(topic)
            if consumer is None:
                name = consumer_name(self.durable, topic)
                config = api.ConsumerConfig(
                    name=name,
                    durable_name=name,
                    filter_subject=self.subject(topic),
                    deliver_policy=api.DeliverPolicy.ALL,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_deliver=self.max_deliver,
                )
                try:  # create, or update: the server answers alike for the same config
                    await js.add_consumer(self.stream, config)
                except nats.js.errors.BadRequestError as error:
                    raise ValueError(
                        f"JetStream refused the consumer {name!r} of {topic!r} on stream "
                        f"{self.stream!r}: {error.description}; delete it (nats consumer rm "
                        f"{self.stream} {name}) or use another durable name"
                    ) from None
                subscription = await js.pull_subscribe_bind(durable=name, stream=self.stream)
                consumer = _Consumer(subscription)
                self._consumers[topic] = consumer
        return consumer

    async def _fetch(self, topic: str, max_messages: int, timeout: float) -> list[Any]:
        """One fetch from the topic's consumer; if the consumer was deleted or changed
        under us, create it again and fetch once more."""
        try:
            return await self._fetch_once(topic, max_messages, timeout)
        except nats.js.errors.ServiceUnavailableError:
            raise  # JetStream is restarting: an outage, not a broken consumer
        except nats.js.errors.APIError as error:
            log.warning("the consumer of %r failed (%s); creating it again", topic, error)
            await self._forget(topic)
        try:
            return await self._fetch_once(topic, max_messages, timeout)
        except nats.js.errors.APIError as error:
            await self._forget(topic)
            raise RuntimeError(
                f"fetching from the JetStream consumer of {topic!r} on stream "
                f"{self.stream!r} failed twice: {error}"
            ) from error

    async def _fetch_once(self, topic: str, max_messages: int, timeout: float) -> list[Any]:
        consumer = await self._consumer(topic)
        try:
            async with consumer.lock:  # overlapping fetches on one inbox steal replies
                msgs: list[Any] = await consumer.subscription.fetch(
                    max_messages, timeout=max(timeout, 0.01)
                )
        except TimeoutError:
            return []
        return msgs

    async def _forget(self, topic: str) -> None:
        consumer = self._consumers.pop(topic, None)
        if consumer is not None:
            try:
                await consumer.subscription.unsubscribe()
            except nats.errors.Error as error:
                log.debug("unsubscribing from %r failed: %s", topic, error)

    async def _publish_dead(
        self, topic: str, payload: bytes, reason: str, attempts: int, msg_id: str
    ) -> None:
        js = await self._jetstream()
        headers = {
            _TOPIC: topic,
            _REASON: json.dumps(reason),  # ASCII on one line: a header value cannot break
            _ATTEMPTS: str(attempts),
            _MSG_ID: msg_id.replace("\r", " ").replace("\n", " "),
        }
        try:
            await js.publish(
                self.dead_subject(topic),
                payload,
                timeout=self.request_timeout,
                stream=self.stream,
                headers=headers,
            )
        except TimeoutError:
            raise TimeoutError(
                f"JetStream did not acknowledge a dead letter on {self.dead_subject(topic)!r} "
                f"within {self.request_timeout}s; the message stays unsettled and is "
                "delivered again after ack_wait"
            ) from None

    async def _set_aside(self, msg: Any, topic: str, error: EventError) -> None:
        """A message that is not an event cannot be handled: keep its bytes on the
        dead-letter subject for inspection and stop delivering it."""
        sequence = msg.metadata.sequence.stream
        log.error(
            "message %d on %r is not an event (%s); moved to %r",
            sequence,
            topic,
            error,
            self.dead_subject(topic),
        )
        await self._publish_dead(
            topic,
            msg.data,
            f"not an event: {error}",
            int(msg.metadata.num_delivered),
            f"dead:{self.stream}:{sequence}",
        )
        await msg.term()

    @contextlib.contextmanager
    def _outage(self, doing: str) -> Iterator[None]:
        """Turn the errors of a server that is down, restarting or cut off into
        ``Unavailable`` (the client reconnects by itself); others pass unchanged."""
        try:
            yield
        except Unavailable:
            raise
        except _OUTAGES as error:
            raise Unavailable(
                f"NATS at {_redact(self.url)} is unavailable while {doing} "
                f"({type(error).__name__}: {error or 'no detail'}); the client reconnects, "
                "retry once it is back",
                server=f"NATS at {_redact(self.url)}",
            ) from error

    async def _flush(self) -> None:
        """Wait until the server has read everything sent (fire-and-forget acks)."""
        if self._nc is not None:
            await self._nc.flush(timeout=max(1, int(self.request_timeout)))


_OUTAGES: Final = (
    OSError,  # refused, reset; TimeoutError and nats.errors.TimeoutError too
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,  # JetStream not up yet after a restart
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
"""The errors of a NATS server that cannot be reached now (see ``NatsBroker._outage``)."""


def _decode_reason(value: str | None) -> str:
    if value is None:
        return ""
    try:
        reason = json.loads(value)
    except ValueError:
        return value
    return reason if isinstance(reason, str) else value
