"""``python -m benchmarks``: run every workload and its baselines, print the table and targets.

Each job runs in its own process (``python -m benchmarks.run_one``), one after another (never
two at once: they would time each other), in an order that puts each baseline next to
what is measured against it. With ``--rounds N`` the whole list runs N times and the samples
of the rounds are pooled, so slow drift on a shared machine hits baselines and workloads
alike. Progress goes to stderr, the table to stdout, the same as JSON to ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Sizes, sizes_dict, sizes_for
from benchmarks.report import build_report, format_report, label
from benchmarks.run_one import JOB_ORDER, run_job

ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT = 900.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of resumable: every figure is a ratio to a baseline measured "
        "in the same run. See docs/benchmarks.md.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a run under a minute")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes, in one process, no DBOS: a check"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")
    parser.add_argument(
        "--rounds", type=int, help="times to run the job list (default: 3, 1 with --quick)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="run only jobs whose name contains TEXT (repeatable); see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the jobs and exit")
    parser.add_argument("--no-dbos", action="store_true", help="skip the DBOS jobs")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run jobs in this process (no per-job RSS; the default with --smoke)",
    )
    parser.add_argument(
        "--dir", type=Path, help="where to put the database files (default: the temp dir)"
    )
    return parser.parse_args(argv)


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _run_subprocess(job: str, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_one", job, "--mode", sizes.mode, "--tmp", str(tmp)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=None,  # the job's progress lines go straight to our stderr
        text=True,
        timeout=JOB_TIMEOUT,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"job {job} exited with status {completed.returncode}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _summary(rows: list[Row]) -> str:
    parts = []
    for item in rows:
        if item.get("status"):
            parts.append(f"{label(item)}: {item['status']}")
        elif item["samples"]:
            ordered = sorted(item["samples"])
            middle = ordered[len(ordered) // 2]
            if "processes" in item.get("extra", {}):  # throughput rows: steps/s says more
                parts.append(f"{label(item)}: {1e6 / middle:,.0f} steps/s")
            else:
                parts.append(f"{label(item)}: {middle:,.1f} µs/step")
    return "; ".join(parts)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        print("\n".join(JOB_ORDER))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = sizes_for(mode)
    rounds = args.rounds or (3 if mode == "full" else 1)
    in_process = args.in_process or args.smoke
    jobs = [j for j in JOB_ORDER if not args.only or any(text in j for text in args.only)]
    skipped: list[Row] = []
    if args.no_dbos or args.smoke:
        reason = "skipped in --smoke" if args.smoke else "skipped (--no-dbos)"
        for job in (j for j in jobs if j.startswith("dbos-")):
            conc = 1 if job == "dbos-seq" else sizes.concurrency
            skipped.append({**_skipped_row(conc, reason), "job": job})
        jobs = [j for j in jobs if not j.startswith("dbos-")]
    if not jobs:
        _say(f"no job matches {args.only}; jobs: {', '.join(JOB_ORDER)}")
        return 2
    _say(
        f"resumable benchmarks: {mode} mode, {len(jobs)} jobs x {rounds} round(s), "
        f"{'in process' if in_process else 'one process per job'}"
    )
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    results: list[Row] = list(skipped)
    failures: list[str] = []
    total = len(jobs) * rounds
    done = 0
    for round_ in range(1, rounds + 1):
        for job in jobs:
            done += 1
            prefix = f"[{done:>{len(str(total))}}/{total}]"
            if rounds > 1:
                prefix += f" round {round_}/{rounds}"
            _say(f"{prefix} {job} ...")
            job_started = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory(prefix=f"bench-{job}-", dir=args.dir) as tmp:
                    if in_process:
                        result = run_job(job, sizes, Path(tmp))
                    else:
                        result = _run_subprocess(job, sizes, Path(tmp))
            except Exception as error:
                failures.append(f"{job}: {error}")
                _say(f"{prefix} {job} FAILED: {error}")
                continue
            rows: list[Row] = result["rows"]
            for item in rows:
                item["round"] = round_
            results.extend(rows)
            elapsed = time.perf_counter() - job_started
            _say(f"{prefix} {job} done in {elapsed:.1f} s: {_summary(rows)}")
    meta = {
        "mode": mode,
        "rounds": rounds,
        "in_process": in_process,
        "started": started_at,
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "revision": _git_revision(),
        "sizes": sizes_dict(sizes),
        "failures": failures,
    }
    report = build_report(results, sizes, meta)
    text = format_report(report)
    print(
        f"resumable benchmarks ({mode}, {rounds} round(s), {meta['seconds']} s, "
        f"Python {meta['python']}, {meta['cpus']} CPUs, revision {meta['revision']})"
    )
    print("µs/step and p99: median and 99th percentile of the samples (see docs/benchmarks.md);")
    print("ratio: µs/step ÷ the baseline's, measured in this same run.")
    print()
    print(text)
    if failures:
        print()
        print("failed jobs:")
        for failure in failures:
            print(f"  {failure}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        _say(f"wrote {args.json}")
    return 1 if failures else 0


def _skipped_row(concurrency: int, reason: str) -> Row:
    from benchmarks.common import W10_STEPS, row

    item = row("W10", "dbos", "sqlite", "-", concurrency, W10_STEPS, [])
    item["status"] = reason
    return item


if __name__ == "__main__":
    raise SystemExit(main())
