"""``resumable inspect`` and ``replay-check`` on a real SQLite file; every command's MODULE:ATTR."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from resumable.brokers import LocalBroker
from resumable.cli import main
from resumable.demo import PlaceOrder, make_handlers, make_workflow, orders
from resumable.memory import SQLiteMemory

WORKFLOW_MODULE = """
from resumable import Resumable, call, complete
from resumable.demo import SERVICES, OrderState, fulfil, orders, shipping, PrintLabel
from resumable.memory import InMemoryMemory

workflow = Resumable(orders, versions={"1.0.0": fulfil}, services=SERVICES, state=OrderState)


async def changed(ctx, order):
    yield call(shipping, PrintLabel(order.order_id))
    yield complete({"status": "x"})

broken = Resumable(orders, versions={"1.0.0": changed}, services=SERVICES)
not_a_workflow = 42
"""


def _orders_db(tmp_path: Path) -> tuple[str, str]:
    path = str(tmp_path / "orders.db")

    async def run() -> str:
        memory = SQLiteMemory(path)
        broker = LocalBroker([*make_handlers(), make_workflow(memory)])
        init = orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web")
        await broker.resolve(init)
        await broker.resolve(
            orders.init_event(PlaceOrder("o-2", 10, "out-of-stock"), source="com.shop.web")
        )
        # Two instances left waiting for their charge: the ones replay-check replays.
        workflow = make_workflow(memory)
        for order in ("o-3", "o-4"):
            await workflow.execute(orders.init_event(PlaceOrder(order, 10), source="com.shop.web"))
        await memory.close()
        return init.subject

    return path, anyio.run(run)


def test_inspect_prints_status_state_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, subject = _orders_db(tmp_path)
    assert main(["inspect", subject, "--memory", f"sqlite:///{path}"]) == 0
    out = capsys.readouterr().out
    assert "status       done" in out
    assert '"payment_id": "pay-o-1"' in out
    assert "arvo.orc.order.fulfil (start): call com.payments.charge" in out
    assert "evt.shipping.label.success (gather): complete" in out
    assert main(["inspect", subject, "--memory", f"sqlite:///{path}", "--json"]) == 0
    assert '"status": "done"' in capsys.readouterr().out


def test_inspect_of_an_unknown_subject_or_bad_url_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _orders_db(tmp_path)
    assert main(["inspect", "nope", "--memory", f"sqlite:///{path}"]) == 1
    assert "no instance 'nope'" in capsys.readouterr().err
    assert main(["inspect", "nope", "--memory", "ftp://x"]) == 2
    assert "unknown scheme" in capsys.readouterr().err


def test_replay_check_passes_and_reports_incompatible_instances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _orders_db(tmp_path)
    (tmp_path / "cli_workflows.py").write_text(WORKFLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{path}"
    assert main(["replay-check", "cli_workflows:workflow", "--memory", url]) == 0
    assert "replayed 2 instance(s): 0 incompatible" in capsys.readouterr().out
    assert main(["replay-check", "cli_workflows:broken", "--memory", url]) == 1
    out = capsys.readouterr().out
    assert "2 incompatible" in out
    assert "step 0: was `call com.payments.charge`, now `call com.shipping.label`" in out
    assert main(["replay-check", "cli_workflows:not_a_workflow", "--memory", url]) == 2
    assert main(["replay-check", "cli_workflows", "--memory", url]) == 2
    sys.modules.pop("cli_workflows", None)


# ---------------------------------------------------------------------------------------------
# MODULE:ATTR, loaded one way by every command


@pytest.fixture
def no_current_directory_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The import path as the installed ``resumable`` script has it: without the current
    directory (``python -m pytest`` put it there). Restored after the test."""
    here = str(Path.cwd())
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", here)])


COMMANDS = {
    "replay-check": ["--memory", "memory://"],
    "worker": ["--broker", "local://"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_a_module_it_cannot_find(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "no_such_module_here:thing", *COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    assert f"resumable {command}: cannot load no_such_module_here:thing: there is no " in err
    assert "module 'no_such_module_here' in the current directory" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_an_attribute_it_cannot_find(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "resumable.demo:nothing.here", *COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    assert (
        f"resumable {command}: cannot load resumable.demo:nothing.here: 'resumable.demo' has "
        "no attribute 'nothing'" in err
    )
    assert main([command, "resumable.demo", *COMMANDS[command]]) == 2
    assert "expected MODULE:" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_module_that_fails_to_import_says_so(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_current_directory_on_path: None,
) -> None:
    (tmp_path / "needs_a_missing_dependency.py").write_text("import no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert main([command, "needs_a_missing_dependency:x", *COMMANDS[command]]) == 2
    finally:
        sys.modules.pop("needs_a_missing_dependency", None)
    err = capsys.readouterr().err
    assert "importing 'needs_a_missing_dependency' failed: No module named" in err
    assert "no_such_dependency" in err


def test_a_module_in_the_current_directory_is_found(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_current_directory_on_path: None,
) -> None:
    path, _ = _orders_db(tmp_path)
    here = tmp_path / "project"
    here.mkdir()
    (here / "flows_in_the_current_directory.py").write_text(WORKFLOW_MODULE)
    monkeypatch.chdir(here)
    try:
        target = "flows_in_the_current_directory:workflow"
        assert main(["replay-check", target, "--memory", f"sqlite:///{path}"]) == 0
    finally:
        sys.modules.pop("flows_in_the_current_directory", None)
    assert "replayed 2 instance(s): 0 incompatible" in capsys.readouterr().out
