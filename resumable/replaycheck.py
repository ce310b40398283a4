"""Replay every stored instance of a workflow against the current code, changing nothing.

Run it before deploying a change: ``resumable replay-check MODULE:WORKFLOW --memory URL``,
or from pytest::

    report = await replay_check(workflow, memory)
    assert report.ok, report

An active instance is incompatible when replaying its journal asks for other steps than
it recorded (the step diff says where) or gives another explicit state: the new code would
park it at its next event. Finished instances are never replayed again, so they are only
counted; parked ones are replayed to tell which the new code could ``unpark``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from resumable.driver import Resumable
from resumable.engine.replay import replay
from resumable.errors import NonDeterminismError
from resumable.memory import Memory
from resumable.record import ACTIVE, PARKED, decode_header

__all__ = ["Divergence", "Incompatible", "ReplayReport", "replay_check"]

Progress = Callable[[int, int], None]
"""Called with (instances replayed so far, instances to replay)."""


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
class Divergence:
    """Instances that diverge the same way (same version, step and diff): one line of the
    report however many instances share it."""

    version: str
    step: int | None
    recorded: str | None
    replayed: str | None
    message: str
    """The first instance's message (they differ only in the subject)."""
    subjects: list[str]

    def describe(self) -> str:
        where = f"step {self.step}: " if self.step is not None else ""
        if self.recorded is not None or self.replayed is not None:
            return f"v{self.version} {where}was `{self.recorded}`, now `{self.replayed}`"
        return f"v{self.version} {where}{self.message}"


def group(found: list[Incompatible]) -> list[Divergence]:
    """``found`` grouped by how they diverge, the largest group first."""
    groups: dict[tuple[object, ...], Divergence] = {}
    for item in found:
        key: tuple[object, ...] = (item.version, item.step, item.recorded, item.replayed)
        if item.recorded is None and item.replayed is None:
            key = (*key, item.message.replace(item.subject, ""))
        if key not in groups:
            groups[key] = Divergence(
                item.version, item.step, item.recorded, item.replayed, item.message, []
            )
        groups[key].subjects.append(item.subject)
    return sorted(groups.values(), key=lambda g: -len(g.subjects))


@attrs.frozen
class ReplayReport:
    """What ``replay_check`` found. ``incompatible``: active instances the current code
    would park; ``ok`` is True when there are none. ``parked``: parked instances that
    still diverge; ``unparkable``: parked ones that now replay (``unpark`` them after the
    deploy); ``finished``: instances that ended, not replayed."""

    checked: int
    incompatible: list[Incompatible]
    parked: list[Incompatible] = attrs.Factory(list)
    unparkable: list[str] = attrs.Factory(list)
    finished: int = 0

    @property
    def ok(self) -> bool:
        return not self.incompatible

    def __str__(self) -> str:
        lines = [
            f"replayed {self.checked} instance(s): {len(self.incompatible)} incompatible"
            f" (would park), {self.finished} finished (not replayed)"
        ]
        for divergence in group(self.incompatible):
            lines.append(_line(divergence))
        if self.parked:
            lines.append(f"{len(self.parked)} parked instance(s) still diverge:")
            lines.extend(_line(divergence) for divergence in group(self.parked))
        if self.unparkable:
            lines.append(
                f"{len(self.unparkable)} parked instance(s) replay with this code (unpark them):"
            )
            lines.extend(f"- {subject}" for subject in self.unparkable[:5])
            if len(self.unparkable) > 5:
                lines.append(f"  ... and {len(self.unparkable) - 5} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (``resumable replay-check --json`` prints it)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "finished": self.finished,
            "incompatible": [attrs.asdict(g) for g in group(self.incompatible)],
            "parked": [attrs.asdict(g) for g in group(self.parked)],
            "unparkable": list(self.unparkable),
        }


def _line(divergence: Divergence) -> str:
    subjects = divergence.subjects
    shown = subjects[0] if len(subjects) == 1 else f"{len(subjects)} instances, e.g. {subjects[0]}"
    return f"- {shown}: {divergence.describe()}"


async def replay_check(
    workflow: Resumable[object], memory: Memory | None = None, *, progress: Progress | None = None
) -> ReplayReport:
    """Replay every active and parked instance of ``workflow`` stored in ``memory``
    (default: the workflow's own) with the current code, from ``Memory.list``. Nothing is
    written and no service is called. ``progress(done, total)`` is called as it goes."""
    memory = memory if memory is not None else workflow.memory
    keys: list[str] = []
    finished = 0
    cursor: str | None = None
    while True:
        page = await memory.list(workflow=workflow.source, limit=1000, cursor=cursor)
        for listed in page.items:
            if listed.status in (ACTIVE, PARKED):
                keys.append(listed.key)
            else:
                finished += 1
        cursor = page.cursor
        if cursor is None:
            break
    checked = 0
    found: list[Incompatible] = []
    parked: list[Incompatible] = []
    unparkable: list[str] = []
    for done, key in enumerate(keys):
        if progress is not None:
            progress(done, len(keys))
        stored = await memory.read(key, journal=True)
        if stored is None or not stored.journal:
            continue
        header = decode_header(stored.header)
        checked += 1
        into = parked if header.status == PARKED else found
        if header.version not in workflow.functions:
            into.append(
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
            into.append(
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
            continue
        if header.status == PARKED:
            unparkable.append(key)
    if progress is not None:
        progress(len(keys), len(keys))
    return ReplayReport(checked, found, parked, unparkable, finished)
