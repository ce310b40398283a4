"""Merge the jobs' rows over rounds, pair each row with its baseline, check the targets, and
format the table (text) and the report (JSON)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Row, Sizes, count_label, median, p99
from benchmarks.run_one import JOB_ORDER

__all__ = ["Target", "build_report", "format_report", "label", "merge", "targets_for"]

_order = {job: index for index, job in enumerate(JOB_ORDER)}


def merge(results: Iterable[Row]) -> list[Row]:
    """One row per key: samples of every round concatenated, peak RSS the largest, bytes the
    median over rounds; the order is that of first appearance."""
    merged: dict[str, Row] = {}
    for item in results:
        key = item["key"]
        round_ = item.get("round", 1)
        if key not in merged:
            merged[key] = {
                **item,
                "samples": list(item["samples"]),
                "_record": [item.get("record_bytes")],
                "_file": [item.get("file_bytes")],
                "_rounds": {round_: list(item["samples"])},
                "rounds": 1,
            }
            continue
        into = merged[key]
        into["samples"].extend(item["samples"])
        into["_rounds"].setdefault(round_, []).extend(item["samples"])
        into["_record"].append(item.get("record_bytes"))
        into["_file"].append(item.get("file_bytes"))
        into["rss_mib"] = max(into.get("rss_mib") or 0.0, item.get("rss_mib") or 0.0)
        into["rounds"] += 1
        if item.get("status"):
            into["status"] = item["status"]
        for name, value in item.get("extra", {}).items():
            old = into["extra"].get(name)
            if isinstance(old, list) and isinstance(value, list):
                into["extra"][name] = old + value
            else:
                into["extra"][name] = value
    rows = list(merged.values())
    rows.sort(key=lambda item: _order.get(item.get("job", ""), len(_order)))
    for item in rows:
        records = [b for b in item.pop("_record") if b is not None]
        files = [b for b in item.pop("_file") if b is not None]
        item["record_bytes"] = median(records) if records else None
        item["file_bytes"] = median(files) if files else None
        per_round = item.pop("_rounds")
        item["round_medians_us"] = {
            str(round_): median(samples) for round_, samples in sorted(per_round.items()) if samples
        }
        item.pop("round", None)
    return rows


def _stats(item: Row) -> None:
    samples: list[float] = item["samples"]
    item["n"] = len(samples)
    if samples:
        item["median_us"] = median(samples)
        item["p99_us"] = p99(samples)
        item["steps_per_s"] = 1e6 / item["median_us"] if item["median_us"] > 0 else None
    else:
        item["median_us"] = item["p99_us"] = item["steps_per_s"] = None


def baseline_key(item: Row, sizes: Sizes) -> str | None:
    """The key of the row ``item`` is measured against (its "matching baseline")."""
    impl, memory, conc = item["impl"], item["memory"], item["concurrency"]
    floor_events = "W10/floor-mem-events/mem/-/x1"
    floor_sqlite = "W10/floor-sqlite/sqlite/-/x1"
    floor_group = f"W10/floor-sqlite-group/sqlite/-/x{sizes.concurrency}"
    floor_for = floor_events if memory == "mem" else floor_sqlite
    workload = item["workload"]
    part = item.get("extra", {}).get("part")
    if "processes" in item.get("extra", {}):
        return _distributed_baseline(item, sizes)
    if workload == "E2E":  # the client path against the raw Worker path, same callers
        return None if item["path"] == "worker" else f"E2E/resumable/sqlite/worker/x{conc}"
    if impl == "floor-mem":
        return None
    if impl == "floor-mem-events":
        return "W10/floor-mem/mem/-/x1"
    if impl == "floor-sqlite":
        return floor_events
    if impl == "floor-sqlite-group":
        return floor_sqlite
    if impl == "floor-replay":
        return None
    if impl == "dbos":
        return floor_sqlite if conc == 1 else floor_group
    if workload == "W10":
        if memory == "sqlite" and conc > 1:
            return floor_group
        return floor_for
    if workload.startswith("F"):
        return f"{count_label('S', sizes.fan)}/resumable/{memory}/{item['path']}/x1"
    if workload.startswith("L"):
        if part == "last":
            return f"{workload}/resumable/{memory}/first"
        return floor_for
    if workload.startswith("R"):
        return f"{workload}/floor-replay/{memory}/-/x1"
    return floor_for  # S100


def _distributed_baseline(item: Row, sizes: Sizes) -> str:
    """The distributed rows are measured against the SQLite embedded run; that one against
    the embedded W10 on SQLite driven directly, ``concurrency`` at once (no Worker)."""
    from benchmarks.distributed import EMBEDDED, row_key

    embedded = row_key(EMBEDDED, sizes.dist_workflows, 1)
    if item["key"] == embedded:
        return f"W10/resumable/sqlite/direct/x{sizes.concurrency}"
    return embedded


@dataclass(frozen=True)
class Target:
    """A target from the issue: ``subject`` against ``baseline`` within ``limit``.

    ``kind`` is ``time`` (median µs/step ratio ≤ limit), ``rate`` (steps/s ratio ≥ limit)
    or ``bytes`` (stored bytes per step ratio ≤ limit). A ``limit`` of None only reports
    the ratio (result ``no limit``): the distributed rows against the embedded run.
    """

    name: str
    subject: str
    baseline: str
    limit: float | None
    kind: str = "time"


def distributed_targets(sizes: Sizes) -> list[Target]:
    """Steps/s of each distributed row ÷ the SQLite embedded run's, for each process count."""
    from benchmarks.distributed import EMBEDDED, PAIRS, row_key

    embedded = row_key(EMBEDDED, sizes.dist_workflows, 1)
    return [
        Target(
            f"W10 on {pair.title}, {n} worker process{'es' if n > 1 else ''}: "
            "steps/s ÷ SQLite embedded's",
            row_key(pair, sizes.dist_workflows, n),
            embedded,
            None,
            "rate",
        )
        for pair in PAIRS.values()
        for n in sizes.dist_processes
    ]


def targets_for(sizes: Sizes) -> list[Target]:
    conc = sizes.concurrency
    long_mem = count_label("L", sizes.long_steps_mem)
    long_sqlite = count_label("L", sizes.long_steps_sqlite)
    resume = count_label("R", sizes.resume_steps)
    fan = count_label("F", sizes.fan)
    seq = count_label("S", sizes.fan)
    window = f"{min(sizes.window, sizes.long_steps_mem // 4):,}"
    window_sqlite = f"{min(sizes.window, sizes.long_steps_sqlite // 4):,}"
    return [
        Target(
            "W10 in memory, direct execute ÷ floor-mem-events",
            "W10/resumable/mem/direct/x1",
            "W10/floor-mem-events/mem/-/x1",
            3.0,
        ),
        Target(
            "W10 on SQLite, one at a time ÷ floor-sqlite (commit per step)",
            "W10/resumable/sqlite/direct/x1",
            "W10/floor-sqlite/sqlite/-/x1",
            1.3,
        ),
        Target(
            f"W10 on SQLite, {conc} at once ÷ floor-sqlite group commit",
            f"W10/resumable/sqlite/direct/x{conc}",
            f"W10/floor-sqlite-group/sqlite/-/x{conc}",
            3.0,
        ),
        Target(
            f"W10 on SQLite, {conc} at once: steps/s ÷ DBOS's",
            f"W10/resumable/sqlite/direct/x{conc}",
            f"W10/dbos/sqlite/-/x{conc}",
            50.0,
            "rate",
        ),
        Target(
            f"{long_mem} warm in memory: last {window} steps ÷ first {window}",
            f"{long_mem}/resumable/mem/last",
            f"{long_mem}/resumable/mem/first",
            1.2,
        ),
        Target(
            f"{long_sqlite} warm on SQLite: last {window_sqlite} steps ÷ first {window_sqlite}",
            f"{long_sqlite}/resumable/sqlite/last",
            f"{long_sqlite}/resumable/sqlite/first",
            1.2,
        ),
        Target(
            f"{long_mem} stored bytes per step: last {window} ÷ first {window}",
            f"{long_mem}/resumable/mem/last",
            f"{long_mem}/resumable/mem/first",
            1.2,
            "bytes",
        ),
        Target(
            f"{resume} cold resume in memory ÷ floor replay",
            f"{resume}/resumable/mem/direct/x1",
            f"{resume}/floor-replay/mem/-/x1",
            3.0,
        ),
        Target(
            f"{resume} cold resume on SQLite ÷ floor replay",
            f"{resume}/resumable/sqlite/direct/x1",
            f"{resume}/floor-replay/sqlite/-/x1",
            3.0,
        ),
        Target(
            f"{fan} in memory: one fan-out ÷ {seq} sequential steps",
            f"{fan}/resumable/mem/direct/x1",
            f"{seq}/resumable/mem/direct/x1",
            2.0,
        ),
        Target(
            f"{fan} on SQLite: one fan-out ÷ {seq} sequential steps",
            f"{fan}/resumable/sqlite/direct/x1",
            f"{seq}/resumable/sqlite/direct/x1",
            2.0,
        ),
        *(
            Target(
                f"E2E start-to-result on SQLite, {n} caller{'s' if n > 1 else ''}: "
                "Runtime handles ÷ raw Worker",
                f"E2E/resumable/sqlite/client/x{n}",
                f"E2E/resumable/sqlite/worker/x{n}",
                1.5,
            )
            for n in (1, 50)
        ),
        *distributed_targets(sizes),
    ]


def _check(target: Target, rows: dict[str, Row]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": target.name,
        "subject": target.subject,
        "baseline": target.baseline,
        "kind": target.kind,
        "limit": target.limit,
        "op": None if target.limit is None else ">=" if target.kind == "rate" else "<=",
        "measured": None,
        "per_round": [],
        "result": None,
    }
    subject, baseline = rows.get(target.subject), rows.get(target.baseline)
    pair = ((target.subject, subject), (target.baseline, baseline))
    for _, item in pair:
        if item is not None and item.get("status"):
            out["result"] = f"{item['impl']}: {item['status']}"
            return out
    for key, item in pair:
        if item is None:
            out["result"] = f"not run: {key}"
            return out
    assert subject is not None and baseline is not None
    if target.kind == "bytes":
        top, bottom = subject.get("record_bytes"), baseline.get("record_bytes")
    elif target.kind == "rate":
        top, bottom = subject.get("steps_per_s"), baseline.get("steps_per_s")
    else:
        top, bottom = subject.get("median_us"), baseline.get("median_us")
    if not top or not bottom:
        out["result"] = "no samples"
        return out
    measured = top / bottom
    out["measured"] = measured
    if target.kind != "bytes":
        mine, theirs = subject["round_medians_us"], baseline["round_medians_us"]
        shared = [r for r in mine if r in theirs and mine[r] > 0 and theirs[r] > 0]
        out["per_round"] = [
            theirs[r] / mine[r] if target.kind == "rate" else mine[r] / theirs[r] for r in shared
        ]
    if target.limit is None:
        out["result"] = "no limit"
        return out
    met = measured >= target.limit if target.kind == "rate" else measured <= target.limit
    out["result"] = "met" if met else "missed"
    return out


def build_report(results: Iterable[Row], sizes: Sizes, meta: dict[str, Any]) -> dict[str, Any]:
    """Rows with statistics, baseline and ratio; targets checked; ``meta`` passed through."""
    rows = merge(results)
    by_key = {item["key"]: item for item in rows}
    for item in rows:
        _stats(item)
    for item in rows:
        key = baseline_key(item, sizes)
        base = by_key.get(key) if key else None
        item["baseline"] = key if base is not None else None
        item["ratio"] = (
            item["median_us"] / base["median_us"]
            if base is not None and item["median_us"] and base["median_us"]
            else None
        )
    targets = [_check(target, by_key) for target in targets_for(sizes)]
    for item in rows:
        item["samples_kept"] = len(item["samples"])
        del item["samples"]
    return {"meta": meta, "rows": rows, "targets": targets}


# --- text -----------------------------------------------------------------------------------


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def label(item: Row) -> str:
    """A short name: workload, implementation, memory, path, concurrency (and for the
    distributed rows, the worker processes)."""
    extra = item.get("extra", {})
    part = extra.get("part")
    words = [item["workload"] + (f" {part}" if part else ""), item["impl"], item["memory"]]
    if item["path"] != "-":
        words.append(item["path"])
    if item["concurrency"] > 1:
        words.append(f"x{item['concurrency']}")
    processes = extra.get("processes")
    if processes is not None:
        words.append(f"{processes} proc{'s' if processes > 1 else ''}")
    return " ".join(words)


def _table(headers: list[str], lines: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _limit(target: dict[str, Any]) -> str:
    if target["limit"] is None:
        return "-"
    return f"{'≥' if target['op'] == '>=' else '≤'} {target['limit']:g}"


def format_report(report: dict[str, Any]) -> str:
    rows: list[Row] = report["rows"]
    by_key = {item["key"]: item for item in rows}
    headers = [
        "workload / implementation / memory / path / concurrency",
        "steps",
        "n",
        "µs/step",
        "p99",
        "steps/s",
        "ratio",
        "baseline",
        "RSS MiB",
        "rec B/step",
        "file B/step",
    ]
    lines: list[list[str]] = []
    notes: list[str] = []
    for item in rows:
        base = by_key.get(item["baseline"]) if item.get("baseline") else None
        status = item.get("status")
        if status:
            notes.append(f"{label(item)}: {status}")
        lines.append(
            [
                label(item),
                f"{item['steps']:,}",
                str(item["n"]),
                _us(item["median_us"]) if not status else "n/a",
                _us(item["p99_us"]),
                _num(item["steps_per_s"]),
                _ratio(item["ratio"]),
                label(base) if base is not None else "-",
                _num(item.get("rss_mib"), 1),
                _bytes(item.get("record_bytes")),
                _bytes(item.get("file_bytes")),
            ]
        )
    out = _table(headers, lines, right={1, 2, 3, 4, 5, 6, 8, 9, 10})
    if notes:
        out.append("")
        out.extend(notes)
    out.append("")
    target_lines = [
        [
            t["name"],
            _limit(t),
            _ratio(t["measured"]),
            " ".join(_ratio(r) for r in t["per_round"]) if len(t["per_round"]) > 1 else "-",
            t["result"] or "-",
        ]
        for t in report["targets"]
    ]
    headers = ["target", "limit", "measured", "each round", "result"]
    out.extend(_table(headers, target_lines, right={1, 2}))
    return "\n".join(out)
