"""`resumable demo`: runs the orders, and after an abrupt exit finishes them exactly once."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from resumable import demo
from resumable.cli import main as cli_main


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resumable.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_crash_then_rerun_completes_every_order_exactly_once(tmp_path: Path) -> None:
    db = str(tmp_path / "demo.db")
    crashed = _demo("--orders", "300", "--db", db, "--crash-after", "200")
    assert crashed.returncode == 3, crashed.stderr
    assert "simulated crash after 200 steps" in crashed.stdout
    assert "completed" not in crashed.stdout

    with sqlite3.connect(db) as conn:
        started = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        journal_before = conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
    assert 0 < started < 300

    rerun = _demo("--orders", "300", "--db", db)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"found {started} orders from an earlier run" in rerun.stdout
    assert "completed 300 of 300 orders" in rerun.stdout
    assert "every order completed exactly once" in rerun.stdout

    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM records GROUP BY status"))
        per_effect = conn.execute(
            "SELECT kind, order_id, COUNT(*) FROM demo_effects GROUP BY kind, order_id "
            "HAVING COUNT(*) > 1"
        ).fetchall()
        journal_after = conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
        duplicate_steps = conn.execute(
            "SELECT key, event_id, COUNT(*) FROM journal GROUP BY key, event_id HAVING COUNT(*) > 1"
        ).fetchall()
    assert statuses == {"done": 285, "failed": 15}  # 1 in 20 out of stock: refunded
    assert per_effect == []  # every effect happened once per order
    assert duplicate_steps == []  # no consumed event was stepped twice
    assert journal_after > journal_before

    again = _demo("--orders", "300", "--db", db)
    assert again.returncode == 0
    assert "found 300 orders from an earlier run (0 unfinished)" in again.stdout
    assert "this run: 0 workflow steps" in again.stdout


def test_demo_outcomes_in_process(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = anyio.run(lambda: demo.run(tmp_path / "d.db", count=40, out=out))
    assert summary["done"] == 40
    assert summary["declined"] == 4  # orders 3, 13, 23, 33
    assert summary["compensated"] == 2  # orders 7 and 27 are out of stock
    assert summary["shipped"] == 34
    assert summary["completions"] == 40
    assert "steps/s" in out.getvalue()


def test_fresh_starts_over(tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    out = io.StringIO()
    assert demo.main(db, 5, None, False, out=out) == 0
    out = io.StringIO()
    assert demo.main(db, 5, None, True, out=out) == 0
    assert "earlier run" not in out.getvalue()


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--orders", "0"], "--orders must be at least 1"),
        (["demo", "--crash-after", "0"], "--crash-after must be at least 1"),
    ],
)
def test_cli_rejects_bad_numbers(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([])
    assert exit_info.value.code == 2
