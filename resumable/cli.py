"""The ``resumable`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    return parser


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
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
