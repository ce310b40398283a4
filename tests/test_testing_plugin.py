"""The pytest plugin of resumable.testing: its entry point, and its fixtures in a real run."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEST = """
import anyio
from resumable.demo import PlaceOrder, make_handlers, make_workflow, orders
from resumable.memory import InMemoryMemory


def test_fixtures(workflow_env, virtual_clock):
    assert workflow_env.clock is virtual_clock
    workflow_env.add(make_workflow(InMemoryMemory()), *make_handlers())

    async def run():
        order = await workflow_env.start(orders, PlaceOrder("o-1", 4200), id="o-1")
        await workflow_env.settle()
        return await workflow_env.result(order)

    assert anyio.run(run).status == "shipped"
    virtual_clock.advance(60)
    assert virtual_clock() == "2026-01-01T00:01:00.000+00:00"
"""


def test_the_plugin_is_a_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"resumable": "resumable.testing.plugin"}
    assert project["optional-dependencies"]["testing"] == ["hypothesis>=6.100"]


def test_its_fixtures_give_an_environment_on_a_virtual_clock(tmp_path: Path) -> None:
    (tmp_path / "test_uses_fixtures.py").write_text(TEST)
    plugin = [] if "pytest11" in _entry_points() else ["-p", "resumable.testing.plugin"]
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout


def _entry_points() -> str:
    from importlib.metadata import entry_points

    return " ".join(ep.group for ep in entry_points(group="pytest11") if ep.name == "resumable")
