"""Replay every stored instance of a workflow against the current code, changing nothing.

Run it before deploying a change: ``resumable replay-check MODULE:WORKFLOW --memory URL``,
or from pytest::

    report = await replay_check(workflow, memory)
    assert report.ok, report

An instance is incompatible when replaying its journal asks for other steps than it
recorded (the step diff says where) or gives another explicit state. Those are the
instances the new code would park.
"""

from __future__ import annotations

import attrs

from resumable.driver import Resumable
from resumable.engine.replay import replay
from resumable.errors import NonDeterminismError
from resumable.memory import Memory
from resumable.queries import subjects
from resumable.record import decode_header

__all__ = ["Incompatible", "ReplayReport", "replay_check"]


@attrs.frozen
class Incompatible:
    """One instance the current code cannot replay, and where it diverges."""

    subject: str
    status: str
    version: str
    step: int | None
    recorded: str | None
    replayed: str | None
    message: str


@attrs.frozen
class ReplayReport:
    """What ``replay_check`` found: how many instances it replayed, which failed."""

    checked: int
    incompatible: list[Incompatible]

    @property
    def ok(self) -> bool:
        return not self.incompatible

    def __str__(self) -> str:
        lines = [f"replayed {self.checked} instance(s): {len(self.incompatible)} incompatible"]
        for item in self.incompatible:
            where = f"step {item.step}: " if item.step is not None else ""
            lines.append(f"- {item.subject} ({item.status}, v{item.version}): {where}")
            if item.recorded is not None or item.replayed is not None:
                lines[-1] += f"was `{item.recorded}`, now `{item.replayed}`"
            else:
                lines[-1] += item.message
        return "\n".join(lines)


async def replay_check(workflow: Resumable[object], memory: Memory | None = None) -> ReplayReport:
    """Replay every instance of ``workflow`` stored in ``memory`` (default: the workflow's
    own) with the current code. Nothing is written and no service is called."""
    memory = memory if memory is not None else workflow.memory
    checked = 0
    found: list[Incompatible] = []
    for key in reversed(await subjects(memory, workflow.source)):  # oldest first
        stored = await memory.read(key, journal=True)
        if stored is None or not stored.journal:
            continue
        header = decode_header(stored.header)
        checked += 1
        fn = workflow.functions.get(header.version)
        if fn is None:
            found.append(
                Incompatible(
                    key,
                    header.status,
                    header.version,
                    None,
                    None,
                    None,
                    f"no function for version {header.version}; keep it in versions=",
                )
            )
            continue
        try:
            replay(workflow.definition, key, header, stored.journal, stored.revision)
        except NonDeterminismError as error:
            found.append(
                Incompatible(
                    key,
                    header.status,
                    header.version,
                    error.step,
                    error.recorded,
                    error.replayed,
                    str(error),
                )
            )
    return ReplayReport(checked, found)
