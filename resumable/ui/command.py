"""The ``resumable ui`` command: its arguments, and starting the server (on the ``ui``
extra, imported only when the command runs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_command", "run"]

_INSTALL = "the inspector needs the ui extra: pip install 'resumable[ui]'"


def add_command(commands: Any, memory_help: str) -> None:
    """Add ``ui`` to the ``resumable`` command's subparsers."""
    ui = commands.add_parser(
        "ui",
        help="serve a local web page to see, search and act on workflow instances",
        description=(
            "Serve the inspector: instances with counts and filters, each instance's state, "
            "waits and history, parked instances side by side, dead letters. Read-only "
            "unless started with --actions, which prints a token once; listens on loopback "
            "unless --host says otherwise."
        ),
    )
    ui.add_argument("--memory", required=True, metavar="URL", help=memory_help)
    ui.add_argument(
        "--broker",
        metavar="URL",
        help="your workers' broker: actions publish to it, dead letters are read from it",
    )
    ui.add_argument(
        "--app",
        metavar="MODULE:HANDLERS",
        help=(
            "your handlers (as for resumable worker): gives signal forms and unpark; without "
            "--broker, actions run them in this process"
        ),
    )
    ui.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="TOPIC",
        help="a topic whose dead letters to show (repeatable; --app adds its handlers')",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    ui.add_argument("--port", type=int, default=8780, help="port (default 8780; 0 picks one)")
    ui.add_argument(
        "--actions",
        action="store_true",
        help="allow signal, cancel, unpark and re-publish, with a token printed once",
    )
    ui.add_argument(
        "--refresh",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often pages update themselves (default 5; 0 never)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 2 for bad arguments or a missing extra."""
    try:
        import anyio

        from resumable.ui.server import Options, serve
    except ImportError as error:
        print(f"resumable ui: {_INSTALL} ({error})", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535 or args.refresh < 0:
        print("resumable ui: --port must be 0 to 65535 and --refresh 0 or more", file=sys.stderr)
        return 2
    options = Options(
        memory=args.memory,
        broker=args.broker,
        app=args.app,
        topics=tuple(args.topic),
        host=args.host,
        port=args.port,
        actions=args.actions,
        refresh=args.refresh,
    )
    try:
        anyio.run(serve, options)
    except KeyboardInterrupt:
        return 0
    except (ValueError, ImportError, OSError) as error:
        print(f"resumable ui: {error}", file=sys.stderr)
        return 2
    return 0
