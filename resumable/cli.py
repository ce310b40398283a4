"""The ``resumable`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import msgspec

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resumable", description="Durable workflows as plain async Python generators."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the order-fulfilment demo on SQLite",
        description=(
            "Run many orders through the order-fulfilment workflow (charge, then reserve "
            "stock and print a label in parallel, refund on failure), durably on SQLite. "
            "Run it again on the same file after --crash-after to watch it resume."
        ),
    )
    demo.add_argument(
        "--orders",
        type=int,
        default=1000,
        metavar="N",
        help="how many orders to run (default 1000)",
    )
    demo.add_argument(
        "--db",
        default="resumable-demo.db",
        metavar="PATH",
        help="the SQLite file (default ./resumable-demo.db)",
    )
    demo.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help="exit the process abruptly after N workflow steps",
    )
    demo.add_argument("--fresh", action="store_true", help="delete the file first and start over")
    inspect_ = commands.add_parser(
        "inspect",
        help="print one instance's status and history, from memory alone",
        description=(
            "Print the stored status, explicit state, what it waits for, its compensation "
            "stack and every step of one workflow instance. Reads memory only: no workflow "
            "code or worker is needed."
        ),
    )
    inspect_.add_argument("subject", help="the instance's subject")
    inspect_.add_argument("--memory", required=True, metavar="URL", help=_MEMORY_HELP)
    inspect_.add_argument("--json", action="store_true", help="print JSON instead of text")
    check = commands.add_parser(
        "replay-check",
        help="replay every stored instance against the current code",
        description=(
            "Replay every stored instance of a workflow with the code as it is now, and "
            "report each one whose history no longer matches, with the step diff. Exits 1 "
            "if any is incompatible. Nothing is written and no service is called."
        ),
    )
    check.add_argument("target", metavar="MODULE:WORKFLOW", help="e.g. myapp.orders:workflow")
    check.add_argument("--memory", required=True, metavar="URL", help=_MEMORY_HELP)
    return parser


_MEMORY_HELP = "sqlite:///path.db, postgresql://..., redis://..."


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.orders < 1:
            print("resumable demo: --orders must be at least 1", file=sys.stderr)
            return 2
        if args.crash_after is not None and args.crash_after < 1:
            print("resumable demo: --crash-after must be at least 1", file=sys.stderr)
            return 2
        from resumable import demo as demo_module

        return demo_module.main(args.db, args.orders, args.crash_after, args.fresh)
    if args.command == "inspect":
        return anyio.run(_inspect, args.subject, args.memory, args.json)
    if args.command == "replay-check":
        return anyio.run(_replay_check, args.target, args.memory)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _open_memory(url: str, command: str) -> Any:
    from resumable.memory import from_url

    try:
        return from_url(url)
    except (ValueError, ImportError) as error:
        print(f"resumable {command}: {error}", file=sys.stderr)
        return None


async def _inspect(subject: str, url: str, as_json: bool) -> int:
    from resumable.queries import read_status

    memory = _open_memory(url, "inspect")
    if memory is None:
        return 2
    try:
        status = await read_status(memory, subject, history=True)
    finally:
        await memory.close()
    if status is None:
        print(f"resumable inspect: no instance {subject!r} in {url}", file=sys.stderr)
        return 1
    if as_json:
        plain = msgspec.to_builtins(attrs.asdict(status, recurse=True))
        print(json.dumps(plain, indent=2, default=str))
        return 0
    print(f"subject      {status.subject}")
    print(
        f"status       {status.status}  (version {status.version}, {status.steps} steps"
        f"{f', generation {status.generation}' if status.generation else ''})"
    )
    print(f"waits for    {status.waits_for or '-'}")
    if status.due is not None:
        print(f"due          {status.due.isoformat()}")
    if status.compensations:
        print(f"compensate   {', '.join(status.compensations)}")
    print(f"state        {json.dumps(status.state, default=str)}")
    if status.result is not None:
        print(f"result       {json.dumps(status.result, default=str)}")
    if status.error is not None:
        print(f"error        {status.error.errorName}: {status.error.errorMessage}")
    if status.parked is not None:
        print(f"parked       {status.parked.message}")
    print("history")
    for step in status.history or []:
        woke = step.woke or "stored"
        inline = f" [{'; '.join(step.inline)}]" if step.inline else ""
        sent = f" -> {', '.join(step.produced)}" if step.produced else ""
        print(
            f"  {step.seq:>4}  {step.time or '':<29} {step.event_type} ({woke}){inline}: "
            f"{step.yielded or '-'}{sent}"
        )
    return 0


async def _replay_check(target: str, url: str) -> int:
    from resumable.driver import Resumable
    from resumable.replaycheck import replay_check

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        print(f"resumable replay-check: expected MODULE:WORKFLOW, got {target!r}", file=sys.stderr)
        return 2
    try:
        workflow = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        print(f"resumable replay-check: cannot load {target}: {error}", file=sys.stderr)
        return 2
    if not isinstance(workflow, Resumable):
        print(
            f"resumable replay-check: {target} is {type(workflow).__name__}, not a Resumable",
            file=sys.stderr,
        )
        return 2
    memory = _open_memory(url, "replay-check")
    if memory is None:
        return 2
    try:
        report = await replay_check(workflow, memory)
    finally:
        await memory.close()
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
