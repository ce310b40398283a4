"""``ctx.log``: a logger for workflow code that writes each line once, not again on replay.

A workflow's code runs again whenever its generator is rebuilt from the journal (after a
restart, or once its live generator left the cache); a plain ``logging`` call would then
repeat every line of every step before. ``WorkflowLogger`` writes only while the step
runs live, and puts the instance's subject, workflow, version and step on each record.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from resumable.engine.frame import Frame

__all__ = ["LOGGER_NAME", "WorkflowLogger"]

LOGGER_NAME: Final = "resumable.workflow"
"""The logger ``ctx.log`` writes to (configure its level and handlers as any other)."""

_logger = logging.getLogger(LOGGER_NAME)


class WorkflowLogger:
    """Logs for one workflow instance, silent while it replays. Each record carries
    ``workflow_subject``, ``workflow_name``, ``workflow_version`` and ``workflow_step``
    (use them in a format: ``%(workflow_subject)s``). A step whose write fails is run
    again, live, and logs again: a line is written once per step taken."""

    __slots__ = ("_extra", "_frame", "_subject", "_version")

    def __init__(self, frame: Frame, subject: str, version: str) -> None:
        self._frame = frame
        self._subject = subject
        self._version = version
        self._extra: dict[str, Any] | None = None

    def _fields(self) -> dict[str, Any]:
        extra = self._extra
        if extra is None:
            from resumable.subject import SubjectError, parse_subject

            try:
                name: str | None = parse_subject(self._subject).name
            except SubjectError:
                name = None
            extra = self._extra = {
                "workflow_subject": self._subject,
                "workflow_name": name,
                "workflow_version": self._version,
                "workflow_step": 0,
            }
        extra["workflow_step"] = self._frame.seq
        return extra

    def log(self, level: int, message: str, *args: Any, exc_info: Any = None) -> None:
        """Log ``message % args`` at ``level``, unless the workflow is replaying."""
        if self._frame.replaying or not _logger.isEnabledFor(level):
            return
        _logger.log(level, message, *args, exc_info=exc_info, extra=dict(self._fields()))

    def debug(self, message: str, *args: Any) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args: Any) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: Any) -> None:
        self.log(logging.ERROR, message, *args)

    def exception(self, message: str, *args: Any) -> None:
        """Log at ERROR with the exception being handled."""
        self.log(logging.ERROR, message, *args, exc_info=True)
