"""resumable.testing: test your own workflows, deterministically and with hypothesis.

``WorkflowEnv`` runs workflows and fake services one event at a time on virtual time;
``fake`` and ``script`` make services; ``simulate`` and ``check`` run a scenario under
schedules hypothesis chooses; ``resumable.testing.strategies`` generates events and
payloads. Needs the ``testing`` extra (``pip install 'resumable[testing]'``) for hypothesis.
"""

from resumable.testing.compare import PER_EXECUTION, differences, identity
from resumable.testing.env import Instance, ServiceCall, WorkflowEnv
from resumable.testing.host import CrashPoint
from resumable.testing.services import NEVER, Fail, ScriptExhausted, fake, script
from resumable.testing.simulate import (
    Crash,
    Deliver,
    Duplicate,
    Evict,
    Handover,
    Outcome,
    Scenario,
    Schedule,
    ScheduleFailed,
    SignalAt,
    SimulationReport,
    Start,
    acheck,
    check,
    run_once,
    run_schedule,
    schedules,
    simulate,
)

__all__ = [
    "NEVER",
    "PER_EXECUTION",
    "Crash",
    "CrashPoint",
    "Deliver",
    "Duplicate",
    "Evict",
    "Fail",
    "Handover",
    "Instance",
    "Outcome",
    "Scenario",
    "Schedule",
    "ScheduleFailed",
    "ScriptExhausted",
    "ServiceCall",
    "SignalAt",
    "SimulationReport",
    "Start",
    "WorkflowEnv",
    "acheck",
    "check",
    "differences",
    "fake",
    "identity",
    "run_once",
    "run_schedule",
    "schedules",
    "script",
    "simulate",
]
