"""Interop with TypeScript Arvo as published: node runs arvo-core from the npm registry.

Arvo-made init events, subjects and service replies drive a resumable workflow to its
completion, and every event and subject resumable emits passes arvo-core's own validation.
arvo-core is installed once into ``build/arvo-core-<version>/`` (gitignored) and reused;
without node or npm the tests are skipped with the reason, except under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from resumable import ContractViolation, OrchestratorContract, Resumable, call, complete, gather
from resumable.events import Event, from_dict, to_dict
from resumable.subject import encode_subject, new_subject, parse_subject, subject_from_parent

from harness import Number, service

pytestmark = pytest.mark.anyio

ARVO_CORE_VERSION = "2.2.13"
"""The newest arvo-core on the npm registry; docs/arvo.md names it as tested."""

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve().parent / "arvo" / "peer.js"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """arvo-core's node_modules, installed from the npm registry on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed to run arvo-core (apt-get install nodejs npm)")
    prefix = ROOT / "build" / f"arvo-core-{ARVO_CORE_VERSION}"
    modules = prefix / "node_modules"
    installed = modules / "arvo-core" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == ARVO_CORE_VERSION:
        return modules
    prefix.mkdir(parents=True, exist_ok=True)
    options = ["--no-audit", "--no-fund", "--no-save", "--loglevel=error"]
    done = subprocess.run(
        [npm, "install", "--prefix", str(prefix), *options, f"arvo-core@{ARVO_CORE_VERSION}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or not installed.exists():
        _unavailable(f"npm install arvo-core@{ARVO_CORE_VERSION} failed: {done.stderr[-2000:]}")
    return modules


def _peer(modules: Path, command: str, payload: Any = None) -> Any:
    done = subprocess.run(
        ["node", str(PEER), command],
        input=json.dumps({} if payload is None else payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 0, f"node peer.js {command} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def _validated(modules: Path, events: list[Event]) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = _peer(modules, "validate", [to_dict(e) for e in events])
    failed = [v for v in verdicts if not v["ok"]]
    assert not failed, f"arvo-core rejected: {failed}"
    return verdicts


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
    if a.data.n < 0:
        raise ValueError("negative")
    yield complete(Number(a.data.n + b.data.n))


def _workflow() -> Resumable[None]:
    return Resumable(twice, versions={"1.0.0": _twice}, services=[echo, double])


async def _drive(modules: Path, workflow: Resumable[None], init: Event) -> list[Event]:
    """Run the workflow to its end, every request answered by the Arvo peer; all events
    emitted, in order."""
    emitted: list[Event] = []
    pending = await workflow.execute(init)
    while pending:
        emitted.extend(pending)
        requests = [e for e in pending if e.type in ("com.test.echo", "com.test.double")]
        pending = []
        for request in requests:
            reply = from_dict(_peer(modules, "serve", to_dict(request)))
            assert reply.parentid is None  # as arvo-core 2.x services send them
            pending.extend(await workflow.execute(reply))
    return emitted


async def test_an_arvo_made_init_and_arvo_replies_drive_a_workflow_to_completion(
    node_modules: Path,
) -> None:
    init = from_dict(_peer(node_modules, "init", {"n": 1, "redirectto": "com.shop.api"}))
    subject = parse_subject(init.subject)
    assert subject.domain is None and not subject.domain_key  # an arvo-core 2.x subject
    emitted = await _drive(node_modules, _workflow(), init)
    done = emitted[-1]
    # 1 -> echo 2 -> (echo 3, double 4) -> 7
    assert done.type == "arvo.orc.twice.done" and done.data == {"n": 7}
    assert done.subject == init.subject and done.to == "com.shop.api"
    assert done.parentid == init.id
    verdicts = _validated(node_modules, emitted)
    assert all(v["subject"]["execution"]["id"] == subject.execution_id for v in verdicts)


async def test_resumable_made_events_pass_arvo_core_validation(node_modules: Path) -> None:
    init = twice.init_event(Number(5), source="com.shop.web", domain="analytics")
    failing = twice.init_event(Number(-3), source="com.shop.web")
    emitted = await _drive(node_modules, _workflow(), init)
    emitted += await _drive(node_modules, _workflow(), failing)
    types = [e.type for e in emitted]
    assert "arvo.orc.twice.done" in types and "sys.arvo.orc.twice.error" in types
    verdicts = _validated(node_modules, [init, failing, *emitted])
    assert verdicts[0]["subject"]["execution"]["domain"] == "analytics"


async def test_an_invalid_event_is_rejected_by_arvo_core(node_modules: Path) -> None:
    """The validation side can fail: a payload that breaks the contract is caught."""
    init = twice.init_event(Number(5), source="com.shop.web")
    bad = to_dict(init) | {"data": {"n": "five", "parentSubject$$": None}}
    (verdict,) = _peer(node_modules, "validate", [bad])
    assert not verdict["ok"] and "n" in verdict["error"]
    with pytest.raises(ContractViolation, match="does not match Number"):
        await _workflow().execute(from_dict(bad))


def test_arvo_made_subjects_parse_and_re_encode_byte_for_byte(node_modules: Path) -> None:
    made = _peer(node_modules, "subjects")
    for item in made:
        parsed = parse_subject(item["subject"])
        content = item["content"]
        assert parsed.name == content["orchestrator"]["name"]
        assert parsed.execution_id == content["execution"]["id"]
        assert parsed.initiator == content["execution"]["initiator"]
        assert parsed.meta == content["meta"] and parsed.domain is None
        assert encode_subject(parsed) == item["subject"]
    child = parse_subject(made[1]["subject"])
    assert child.initiator == "arvo.orc.twice" and child.meta["note"] == "from arvo"


def test_resumable_made_subjects_parse_in_arvo_core(node_modules: Path) -> None:
    root = new_subject(
        orchestrator="arvo.orc.twice",
        version="1.0.0",
        initiator="com.shop.web",
        domain="eu1.billing",
        meta={"redirectto": "com.shop.api"},
    )
    child = subject_from_parent(orchestrator="arvo.orc.child", version="2.0.0", parent=root)
    events = [
        Event(
            source="com.shop.web",
            type="com.test.echo",
            subject=s,
            data={"n": 1},
            dataschema="#/contracts/echo/1.0.0",
        )
        for s in (root, child)
    ]
    verdicts = _validated(node_modules, events)
    assert verdicts[0]["subject"]["orchestrator"] == {"name": "arvo.orc.twice", "version": "1.0.0"}
    assert verdicts[1]["subject"]["execution"]["initiator"] == "arvo.orc.twice"
    assert verdicts[1]["subject"]["meta"] == {"redirectto": "com.shop.api"}
