"""``resumable ui`` as a command: read-only without --actions (no token printed, actions
refused), arguments checked, and the ``ui`` command listed in the help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def test_without_actions_it_prints_no_token_and_refuses_every_action(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    command = [sys.executable, "-m", "resumable", "ui", "--memory", f"sqlite:///{db}"]
    process = subprocess.Popen(
        [*command, "--port", "0"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        second = process.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", first)
        assert found is not None, first + second
        assert "read-only" in second and "token" not in first + second
        base = found.group(1)
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "No instances" in page.text
        assert "read-only" in page.text
        refused = httpx.post(f"{base}/act/cancel", data={"subject": "x", "confirmed": "yes"})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert httpx.get(f"{base}/login", params={"token": "x" * 32}).status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_bad_arguments_exit_2_saying_what_is_wrong(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "resumable", "ui", *args],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    memory = f"sqlite:///{tmp_path / 'x.db'}"
    wrong_app = run("--memory", memory, "--app", "no_such_module:handlers", "--port", "0")
    assert wrong_app.returncode == 2 and "no module 'no_such_module'" in wrong_app.stderr
    wrong_memory = run("--memory", "nosuch://x", "--port", "0")
    assert wrong_memory.returncode == 2 and "unknown scheme" in wrong_memory.stderr
    wrong_port = run("--memory", memory, "--port", "70000")
    assert wrong_port.returncode == 2 and "--port" in wrong_port.stderr


def test_the_help_lists_the_ui_command() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "resumable", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "ui" in helped.stdout and "web page" in helped.stdout
