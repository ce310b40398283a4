"""The operator's CLI: --version, list, --json everywhere, replay-check on what worker
accepts, read-only commands that never create a database, progress lines, and the
OpenTelemetry SDK a worker configures from OTEL_* variables."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import resumable
import resumable.cli
from resumable.brokers import LocalBroker
from resumable.cli import main
from resumable.demo import PlaceOrder, make_handlers, make_workflow, orders
from resumable.demo.runner import _Progress as DemoProgress
from resumable.memory import SQLiteMemory

ROOT = Path(__file__).resolve().parent.parent

FACTORY_MODULE = """
from resumable import Resumable, call, complete
from resumable.demo import SERVICES, PrintLabel, make_handlers, make_workflow, orders, shipping


def handlers(memory):
    return [*make_handlers(), make_workflow(memory)]


async def changed(ctx, order):
    yield call(shipping, PrintLabel(order.order_id))
    yield complete({"status": "x"})


async def broken(memory):
    return [*make_handlers(), make_workflow(memory, fn=changed)]
"""


def orders_db(tmp_path: Path, *, active: int = 2, parked: int = 0) -> str:
    """A SQLite file with two finished orders, ``active`` waiting for their charge and
    ``parked`` parked ones; returns its URL."""
    path = tmp_path / "orders.db"

    async def run() -> None:
        memory = SQLiteMemory(str(path))
        broker = LocalBroker([*make_handlers(), make_workflow(memory)])
        await broker.resolve(orders.init_event(PlaceOrder("o-1", 4200), source="com.shop.web"))
        await broker.resolve(
            orders.init_event(PlaceOrder("o-2", 10, "out-of-stock"), source="com.shop.web")
        )
        workflow = make_workflow(memory)
        for index in range(active + parked):
            init = orders.init_event(PlaceOrder(f"w-{index}", 10), source="com.shop.web")
            (charge,) = await workflow.execute(init)
            if index >= active:
                (reply,) = await make_handlers()[0].execute(charge)
                await changed_workflow(memory).execute(reply)
        await memory.close()

    anyio.run(run)
    return f"sqlite:///{path}"


async def _changed(ctx: Any, order: Any) -> Any:
    from resumable import call, complete
    from resumable.demo import PrintLabel, shipping

    yield call(shipping, PrintLabel(order.order_id))
    yield complete({"status": "x"})


def changed_workflow(memory: Any) -> Any:
    return make_workflow(memory, fn=_changed, cache_size=0)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"resumable {resumable.__version__}"


def test_list_shows_instances_newest_first_with_filters_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = orders_db(tmp_path, active=3)
    assert main(["list", "--memory", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CREATED", "UPDATED", "STATUS", "WORKFLOW", "ID", "SUBJECT"]
    assert len(lines) == 1 + 5
    assert [line.split()[2] for line in lines[1:]] == [
        "active", "active", "active", "failed", "done"
    ]  # fmt: skip
    assert main(["list", "--memory", url, "--status", "active", "--limit", "2", "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [i["status"] for i in page["instances"]] == ["active", "active"]
    assert set(page["instances"][0]) == {
        "id",
        "subject",
        "workflow",
        "status",
        "created",
        "updated",
    }
    assert all(i["id"] for i in page["instances"])  # the subject's execution id
    assert page["instances"][0]["workflow"] == orders.type
    assert page["cursor"] is not None
    rest = ["list", "--memory", url, "--status", "active", "--cursor", page["cursor"], "--json"]
    assert main(rest) == 0
    (last,) = json.loads(capsys.readouterr().out)["instances"]
    assert last["subject"] not in {i["subject"] for i in page["instances"]}
    assert main(["list", "--memory", url, "--workflow", "arvo.orc.nothing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"instances": [], "cursor": None}
    assert main(["list", "--memory", url, "--workflow", orders.type, "--status", "done"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["list", "--memory", url, "--limit", "0"]) == 2


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "some-subject"],
        ["list"],
        ["replay-check", "resumable.demo:make_handlers"],
    ],
)
def test_read_only_commands_refuse_a_database_that_does_not_exist(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.db"
    assert main([*command, "--memory", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert f"there is no database at {missing}" in err
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_replay_check_takes_a_factory_groups_divergences_and_lists_finished_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = orders_db(tmp_path, active=3, parked=1)
    (tmp_path / "cli_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["replay-check", "cli_factories:handlers", "--memory", url]) == 0
        out = capsys.readouterr().out
        assert "replayed 4 instance(s): 0 incompatible (would park), 2 finished" in out
        # Parked by the changed code, it replays with the code it started on.
        assert "1 parked instance(s) replay with this code (unpark them):" in out
        assert main(["replay-check", "cli_factories:broken", "--memory", url]) == 1
        out = capsys.readouterr().out
        assert "3 incompatible (would park), 2 finished (not replayed)" in out
        # Three instances diverge the same way: one line for them.
        assert (
            "- 3 instances, e.g. " in out
            and ": v1.0.0 step 0: was `call com.payments.charge`, now `call com.shipping.label`"
            in out
        )
        assert "1 parked instance(s) still diverge:" in out
        assert main(["replay-check", "cli_factories:broken", "--memory", url, "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
    finally:
        sys.modules.pop("cli_factories", None)
    assert report["ok"] is False and report["workflow"] == orders.type
    assert (report["checked"], report["finished"]) == (4, 2)
    (group,) = report["incompatible"]
    assert (group["step"], group["recorded"], group["replayed"]) == (
        0,
        "call com.payments.charge",
        "call com.shipping.label",
    )
    assert len(group["subjects"]) == 3
    assert [len(g["subjects"]) for g in report["parked"]] == [1]
    assert report["unparkable"] == []


def test_replay_check_exits_0_when_only_parked_or_finished_instances_diverge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = orders_db(tmp_path, active=0, parked=2)
    (tmp_path / "cli_factories_2.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["replay-check", "cli_factories_2:broken", "--memory", url]) == 0
    finally:
        sys.modules.pop("cli_factories_2", None)
    out = capsys.readouterr().out
    assert "2 parked instance(s) still diverge:" in out
    assert "- 2 instances, e.g. " in out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("tty", [True, False])
def test_replay_check_progress_uses_carriage_returns_only_on_a_terminal(
    tty: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(err, "isatty", lambda: tty)
    monkeypatch.setattr(sys, "stderr", err)
    clock = Clock()
    monkeypatch.setattr(resumable.cli.time, "monotonic", clock)
    progress = resumable.cli._Progress("replay-check x")
    progress(0, 100)  # too early: a short run shows nothing
    for done in range(1, 101):
        clock.now += 0.5
        progress(done, 100)
    progress.done()
    text = err.getvalue()
    assert "resumable replay-check x: " in text
    if tty:
        assert text.count("\r") > 10 and text.endswith("\n")
    else:
        assert "\r" not in text
        assert 3 <= len(text.splitlines()) <= 6  # every 10 s of 50 s


@pytest.mark.parametrize("tty", [True, False])
def test_demo_progress_uses_carriage_returns_only_on_a_terminal(
    tty: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(out, "isatty", lambda: tty)
    progress = DemoProgress(10, out)
    for done in range(10):
        progress.show(done, done)
    progress.show(10, 10, force=True)
    text = out.getvalue()
    assert ("\r" in text) is tty
    assert text.rstrip().endswith("10/10 orders finished" + text.rstrip().split("finished")[-1])


def test_demo_json_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--orders", "20", "--db", str(tmp_path / "d.db"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["ok"] is True and summary["done"] == 20
    assert "resumable demo: 20 orders" in captured.err


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("redis://127.0.0.1:6379/0", "resumable.brokers"),
        ("redis://127.0.0.1:6379/0", "resumable.memory"),
        ("nats://127.0.0.1:4222", "resumable.brokers"),
        ("postgresql://127.0.0.1/test", "resumable.memory"),
    ],
)
def test_a_missing_client_gives_the_install_hint(
    url: str, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, extra = {"redis": ("redis", "redis"), "nats": ("nats", "nats")}.get(
        url.split(":")[0], ("asyncpg", "postgres")
    )
    monkeypatch.setitem(sys.modules, client, None)
    backend = {"redis": "redis", "nats": "nats", "postgresql": "postgres"}[url.split(":")[0]]
    monkeypatch.delitem(sys.modules, f"{what}.{backend}", raising=False)
    module = __import__(what, fromlist=["from_url"])
    with pytest.raises(ImportError, match=rf"pip install 'resumable\[{extra}\]'"):
        module.from_url(url)


def test_without_the_sdk_a_worker_configures_nothing() -> None:
    # In a process of its own: configuring would set this process's global providers.
    code = (
        "import sys; sys.modules['opentelemetry.sdk'] = None\n"
        "from resumable.otelsdk import configure_from_environment\n"
        "from opentelemetry import trace\n"
        "print(configure_from_environment(), type(trace.get_tracer_provider()).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_TRACES_EXPORTER": "console"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "ProxyTracerProvider"]


def test_a_worker_configures_the_sdk_from_otel_variables_and_prints_json_lines(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_SERVICE_NAME": "orders-worker",
    }
    command = [sys.executable, "-m", "resumable", "worker", "resumable.demo:make_handlers"]
    process = subprocess.Popen(
        [*command, "--broker", "local://", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        started = json.loads(process.stderr.readline())
        assert started["worker"] == "started"
        assert started["telemetry"] == (
            "traces to ConsoleSpanExporter; metrics to ConsoleMetricExporter"
        )
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    stopped = json.loads(err.strip().splitlines()[-1])
    assert stopped["worker"] == "stopped" and stopped["received"] == 0
    # The console metric exporter wrote the worker's instruments, under the service name.
    assert '"orders-worker"' in out
    assert "resumable.worker.in_flight" in out
