"""The benchmark harness runs, at tiny sizes. Nothing here times anything: no figure is
asserted, only that every workload, baseline and target is produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import dbos_w10
from benchmarks.common import median, p99, sizes_for
from benchmarks.report import build_report, format_report
from benchmarks.run_one import JOB_ORDER

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_reports_every_workload_and_target(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(out.read_text())
    assert {row["job"] for row in report["rows"]} == set(JOB_ORDER)
    assert not report["meta"]["failures"]
    for row in report["rows"]:
        if row["impl"] == "dbos":
            assert row["status"] == "skipped in --smoke"
        else:
            assert row["n"] > 0 and row["median_us"] > 0, row
    assert len(report["targets"]) == 11
    for target in report["targets"]:
        if "DBOS" in target["name"]:
            assert target["result"] == "dbos: skipped in --smoke"
        else:
            assert target["measured"] is not None and target["result"] in {"met", "missed"}
    assert "target" in completed.stdout and "W10 resumable sqlite direct" in completed.stdout
    assert "w10-sqlite-direct done" in completed.stderr  # progress goes to stderr


def test_a_job_runs_in_its_own_process_and_prints_json() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_one", "w10-sqlite-direct", "--mode", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    (row,) = json.loads(completed.stdout)["rows"]
    assert row["key"] == "W10/resumable/sqlite/direct/x1"
    assert row["samples"] and row["rss_mib"] > 0 and row["file_bytes"] > 0


def test_without_dbos_the_rows_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dbos", None)  # import dbos raises ImportError
    (row,) = dbos_w10.run("dbos-concurrent", sizes_for("smoke"), tmp_path)
    assert row["status"] == "not installed: pip install -e '.[bench]'"
    assert row["concurrency"] == sizes_for("smoke").concurrency
    report = build_report([row], sizes_for("smoke"), {})
    dbos_target = next(t for t in report["targets"] if "DBOS" in t["name"])
    assert dbos_target["result"] == "dbos: not installed: pip install -e '.[bench]'"
    assert "not installed" in format_report(report)


def test_statistics() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert p99([float(i) for i in range(1, 201)]) == 198.0
    assert p99([5.0, 1.0]) == 5.0
