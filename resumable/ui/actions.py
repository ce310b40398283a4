"""What the inspector does to instances when asked: signal, cancel, unpark, re-publish.

Every action turns into events delivered the way the application delivers them: published
to ``broker`` (the workers' broker, or a ``LocalBroker`` hosting the application's handlers
in this process). Event ids derive from the form's nonce, so a confirmation submitted twice
is one event (the broker's duplicate window and the journal drop the copy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from resumable.brokers import Broker
from resumable.contracts import Contract
from resumable.driver import CANCEL_TYPE, Resumable
from resumable.errors import NonDeterminismError, ResumableError
from resumable.events import Event, now_iso
from resumable.ids import derive_id
from resumable.memory import Memory
from resumable.record import ACTIVE, PARKED
from resumable.subject import SubjectError, parse_subject_shared
from resumable.ui.forms import SignalForm, form_for

__all__ = ["SOURCE", "ActionError", "Actions"]

SOURCE = "com.resumable.ui"
"""The source of the events the inspector sends."""


class ActionError(ResumableError):
    """An action that could not be done, and why (shown to the person who asked)."""


class Actions:
    """The actions, over ``memory``, delivering through ``broker``; ``workflows`` (the
    application's, by topic) give signal contracts and the code an unpark replays."""

    def __init__(
        self, memory: Memory, broker: Broker | None, workflows: Iterable[Resumable[Any]] = ()
    ) -> None:
        self.memory = memory
        self.broker = broker
        self.workflows = {workflow.source: workflow for workflow in workflows}

    def signal_forms(self, subject: str) -> list[SignalForm]:
        """A form per signal the instance's workflow lists (none without its code)."""
        workflow = self._workflow_or_none(subject)
        if workflow is None:
            return []
        return [form_for(t, c) for t, c in workflow.definition.signals.items()]

    def signal_contract(self, subject: str, type_: str) -> tuple[SignalForm, Contract | None]:
        workflow = self._workflow(subject, "send it a signal")
        signals = workflow.definition.signals
        if type_ not in signals:
            raise ActionError(
                f"workflow {workflow.source} has no signal {type_!r}; it lists "
                f"{', '.join(signals) or 'none'}"
            )
        return form_for(type_, signals[type_]), signals[type_]

    async def signal(self, subject: str, type_: str, data: Any, nonce: str) -> str:
        """Send signal ``type_`` with ``data`` (already checked) to ``subject``."""
        await self._expect(subject, (ACTIVE, PARKED), "signal")
        workflow = self._workflow(subject, "send it a signal")
        broker = self._broker("send a signal")
        try:
            event = workflow.signal_event(subject, type_, data, source=SOURCE)
        except ResumableError as error:
            raise ActionError(f"the signal was not sent: {error}") from None
        event = msgspec.structs.replace(event, id=derive_id(subject, "ui-signal", nonce))
        await broker.publish(event)
        return f"Sent signal {type_} (event {event.id}) to instance {_id(subject)}."

    async def cancel(self, subject: str, reason: str, nonce: str) -> str:
        """Cancel ``subject`` with ``reason``: its compensations run, then it reports."""
        await self._expect(subject, (ACTIVE, PARKED), "cancel")
        broker = self._broker("cancel an instance")
        workflow = self._workflow_or_none(subject)
        event_id = derive_id(subject, "ui-cancel", nonce)
        if workflow is not None:
            made = workflow.cancel_event(subject, reason, source=SOURCE)
            event = msgspec.structs.replace(made, id=event_id)
        else:
            event = Event(
                id=event_id,
                source=SOURCE,
                type=CANCEL_TYPE,
                subject=subject,
                data={"reason": reason},
                time=now_iso(),
                to=_workflow_name(subject),
            )
        await broker.publish(event)
        return f"Asked instance {_id(subject)} to cancel (event {event.id}, reason {reason!r})."

    async def unpark(self, subject: str) -> str:
        """Replay a parked instance against the application's code; if it matches now, it
        is active again and the events kept while parked are applied."""
        await self._expect(subject, (PARKED,), "unpark")
        workflow = self._workflow(subject, "unpark it (unparking replays its code)")
        broker = self._broker("unpark an instance")
        try:
            produced = await workflow.unpark(subject)
        except NonDeterminismError as error:
            raise ActionError(f"still parked: the code still diverges. {error}") from None
        for event in produced:
            await broker.publish(event)
        return (
            f"Unparked instance {_id(subject)}: its history matches the code again; "
            f"{len(produced)} event(s) it emitted were published."
        )

    async def republish(self, topic: str, event_id: str) -> str:
        """Replay dead letter ``event_id`` of ``topic`` (its event id, or its dead-letter
        id): delivered at once, and no longer a dead letter."""
        broker = self._broker("re-publish a dead letter")
        for letter in await broker.dead_letters(topic):
            if letter.event is not None and event_id in (letter.event.id, letter.id):
                event = await broker.replay_dead_letter(topic, letter.id)
                return (
                    f"Re-published event {event.id} ({event.type}) to {topic}: it is "
                    "delivered now, and no longer a dead letter."
                )
        raise ActionError(f"topic {topic!r} has no dead letter with event id {event_id!r}")

    # ---------------------------------------------------------------------------------

    def _workflow_or_none(self, subject: str) -> Resumable[Any] | None:
        try:
            return self.workflows.get(_workflow_name(subject))
        except ActionError:
            return None

    def _workflow(self, subject: str, to: str) -> Resumable[Any]:
        workflow = self._workflow_or_none(subject)
        if workflow is None:
            raise ActionError(
                f"the inspector does not have workflow {_workflow_name(subject)}'s code, needed "
                f"to {to}: start it with --app MODULE:HANDLERS naming your handlers"
            )
        return workflow

    def _broker(self, to: str) -> Broker:
        if self.broker is None:
            raise ActionError(
                f"nothing delivers events, needed to {to}: start the inspector with --broker "
                "URL (your workers' broker) or --app MODULE:HANDLERS (run them in process)"
            )
        return self.broker

    async def _expect(self, subject: str, statuses: tuple[str, ...], verb: str) -> None:
        stored = await self.memory.read(subject)
        if stored is None:
            raise ActionError(f"there is no instance {subject!r} to {verb}")
        if stored.status not in statuses:
            raise ActionError(
                f"cannot {verb} instance {_id(subject)}: it is {stored.status}, not "
                f"{' or '.join(statuses)}"
            )


def _workflow_name(subject: str) -> str:
    try:
        return parse_subject_shared(subject).name
    except SubjectError as error:
        raise ActionError(f"{subject!r} is not a workflow instance's subject: {error}") from None


def _id(subject: str) -> str:
    try:
        return repr(parse_subject_shared(subject).execution_id)
    except SubjectError:
        return repr(subject)
