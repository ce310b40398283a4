"""The ``resumable`` command.

(Over 500 lines: one parser whose subcommands share loading, output (--json) and
messages; each subcommand's work lives in its own module.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import attrs
import msgspec

from resumable.errors import SetupError

__all__ = ["load_target", "main"]


def _parser() -> argparse.ArgumentParser:
    from resumable import __version__

    parser = argparse.ArgumentParser(
        prog="resumable", description="Durable workflows as plain async Python generators."
    )
    parser.add_argument("--version", action="version", version=f"resumable {__version__}")
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
    demo.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (the progress goes to stderr)",
    )
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
    list_ = commands.add_parser(
        "list",
        help="list instances, newest first, by workflow and status",
        description=(
            "List stored workflow instances, newest first, from the memory's index: "
            "subject, workflow, status, when created and last updated. Reads memory only."
        ),
    )
    list_.add_argument("--memory", required=True, metavar="URL", help=_MEMORY_HELP)
    list_.add_argument(
        "--workflow", metavar="NAME", help="only this workflow (e.g. arvo.orc.order.fulfil)"
    )
    list_.add_argument(
        "--status",
        choices=["active", "done", "failed", "cancelled", "parked"],
        help="only instances with this status",
    )
    list_.add_argument(
        "--limit", type=int, default=50, metavar="N", help="show at most N (default 50)"
    )
    list_.add_argument(
        "--cursor", metavar="CURSOR", help="go on from where an earlier listing stopped"
    )
    list_.add_argument("--json", action="store_true", help="print JSON instead of text")
    check = commands.add_parser(
        "replay-check",
        help="replay every stored instance against the current code",
        description=(
            "Replay every active and parked instance of a workflow with the code as it is "
            "now, and report those whose history no longer matches, grouped by their step "
            "diff. Exits 1 only if an active instance would be parked. Finished instances "
            "are counted, not replayed. Nothing is written and no service is called."
        ),
    )
    check.add_argument(
        "target",
        metavar="MODULE:WORKFLOW",
        help=(
            "a Resumable, a list of handlers, or a callable returning either, called with "
            "the memory of --memory (what `resumable worker` accepts); e.g. myapp.orders:workflow"
        ),
    )
    check.add_argument("--memory", required=True, metavar="URL", help=_MEMORY_HELP)
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    worker = commands.add_parser(
        "worker",
        help="run handlers and workflows on a broker, until SIGTERM",
        description=(
            "Consume each handler's topic from the broker, run it, publish what it emits and "
            "then ack; fire the workflows' timers; on start, re-publish their outboxes. Run "
            "as many of these processes as you like on the same broker and memory. SIGTERM "
            "or SIGINT stops taking work, lets what is in flight finish, and exits 0 (a "
            "second signal exits at once)."
        ),
    )
    worker.add_argument(
        "target",
        metavar="MODULE:HANDLERS",
        help=(
            "a handler or a list of them, or a callable returning that, called with the "
            "memory of --memory (or with nothing, without --memory); e.g. myapp.orders:handlers"
        ),
    )
    worker.add_argument(
        "--broker", required=True, metavar="URL", help="nats://host:4222, redis://host:6379/0"
    )
    worker.add_argument(
        "--memory",
        metavar="URL",
        help=f"{_MEMORY_HELP}; passed to HANDLERS, which must then be a callable",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="N",
        help="most executions at once in this process (default 16)",
    )
    worker.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="dead-letter an event that fails on its Nth delivery (default 5)",
    )
    worker.add_argument(
        "--timer-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how often to look for due timers (default 0.5)",
    )
    worker.add_argument(
        "--no-recover",
        action="store_true",
        help="do not re-publish the workflows' outboxes on start",
    )
    worker.add_argument(
        "--recover-interval",
        type=_seconds_or_off,
        default=30.0,
        metavar="SECONDS",
        help=(
            "re-publish the outboxes of instances idle this long, swept this often "
            "(default 30; 0: only on start)"
        ),
    )
    worker.add_argument(
        "--unavailable-backoff",
        type=_backoff,
        default=(0.5, 2.0, 30.0),
        metavar="INITIAL,FACTOR,MAX",
        help=(
            "seconds between retries of a delivery that met an outage, and between probes "
            "while paused: the first wait, its growth and the longest (default 0.5,2,30)"
        ),
    )
    worker.add_argument(
        "--json",
        action="store_true",
        help="write the start, health and stop lines as JSON objects, one a line",
    )
    worker.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what to log on stderr (default WARNING; the health line is shown regardless)",
    )
    from resumable.deadletters import add_command as add_dead_letters_command
    from resumable.ui.command import add_command as add_ui_command

    add_dead_letters_command(commands)

    add_ui_command(commands, _MEMORY_HELP)
    return parser


_MEMORY_HELP = "sqlite:///path.db, postgresql://..., redis://..."


def _seconds_or_off(text: str) -> float:
    """A number of seconds, 0 or more (0: off)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"expected seconds, 0 (only on start) or more, got {text!r}"
        )
    return seconds


def _backoff(text: str) -> tuple[float, float, float]:
    """``INITIAL,FACTOR,MAX`` as three numbers; argparse reports a mistake as bad usage."""
    try:
        initial, factor, longest = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers INITIAL,FACTOR,MAX (e.g. 0.5,2,30), got {text!r}"
        ) from None
    return initial, factor, longest


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

        if args.json:
            return _demo_json(args)
        return demo_module.main(args.db, args.orders, args.crash_after, args.fresh)
    if args.command == "inspect":
        return anyio.run(_inspect, args.subject, args.memory, args.json)
    if args.command == "list":
        if args.limit < 1:
            print("resumable list: --limit must be at least 1", file=sys.stderr)
            return 2
        return anyio.run(_list, args)
    if args.command == "replay-check":
        return anyio.run(_replay_check, args.target, args.memory, args.json)
    if args.command == "worker":
        counts = (("--concurrency", args.concurrency), ("--max-attempts", args.max_attempts))
        for name, value in counts:
            if value < 1:
                print(f"resumable worker: {name} must be at least 1", file=sys.stderr)
                return 2
        if not args.timer_interval > 0:
            print("resumable worker: --timer-interval must be more than 0", file=sys.stderr)
            return 2
        return anyio.run(_worker, args)
    if args.command == "dead-letters":
        from resumable.deadletters import run as run_dead_letters

        return run_dead_letters(args)
    if args.command == "ui":
        from resumable.ui.command import run as run_ui

        return run_ui(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _demo_json(args: argparse.Namespace) -> int:
    """``resumable demo --json``: the progress on stderr, the summary as JSON on stdout."""
    from resumable.demo import runner

    summary: dict[str, int] = {}

    def run(make: Any) -> dict[str, int]:
        summary.update(anyio.run(make))
        return summary

    code = runner.main(args.db, args.orders, args.crash_after, args.fresh, sys.stderr, run)
    print(json.dumps({"ok": code == 0, **summary}, indent=2))
    return code


def _sqlite_path(url: str) -> str | None:
    """The file a ``sqlite://`` URL names, or None for another scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        return None
    return rest[1:] if rest.startswith("/") else rest


def _open_memory(url: str, command: str, *, existing: bool = False) -> Any:
    """The memory ``url`` names, or None after saying why not. ``existing``: for a command
    that only reads, refuse a SQLite file that does not exist rather than create one."""
    from resumable.memory import from_url

    path = _sqlite_path(url)
    if existing and path and not os.path.exists(path):
        print(
            f"resumable {command}: there is no database at {os.path.abspath(path)} (from "
            f"{url}); check the path. A command that only reads never creates one.",
            file=sys.stderr,
        )
        return None
    try:
        return from_url(url)
    except (ValueError, ImportError) as error:
        print(f"resumable {command}: {error}", file=sys.stderr)
        return None


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


async def _list(args: argparse.Namespace) -> int:
    """``resumable list``: pages of ``Memory.list`` until ``--limit`` instances."""
    from resumable.memory import Listed

    memory = _open_memory(args.memory, "list", existing=True)
    if memory is None:
        return 2
    items: list[Listed] = []
    cursor: str | None = args.cursor
    try:
        while len(items) < args.limit:
            page = await memory.list(
                workflow=args.workflow,
                status=args.status,
                limit=min(1000, args.limit - len(items)),
                cursor=cursor,
            )
            items.extend(page.items)
            cursor = page.cursor
            if cursor is None:
                break
    except ValueError as error:
        print(f"resumable list: {error}", file=sys.stderr)
        return 2
    finally:
        await memory.close()
    if args.json:
        listed = [
            {
                "id": _user_id(item.key),
                "subject": item.key,
                "workflow": item.workflow,
                "status": item.status,
                "created": _iso(item.created),
                "updated": _iso(item.updated),
            }
            for item in items
        ]
        print(json.dumps({"instances": listed, "cursor": cursor}, indent=2))
        return 0
    if not items:
        print("no instances", file=sys.stderr)
        return 0
    print(f"{'CREATED':<29} {'UPDATED':<29} {'STATUS':<9} {'WORKFLOW':<30} {'ID':<20} SUBJECT")
    for item in items:
        print(
            f"{_iso(item.created):<29} {_iso(item.updated):<29} {item.status:<9} "
            f"{item.workflow or '-':<30} {_user_id(item.key) or '-':<20} {item.key}"
        )
    if cursor is not None:
        print(f"more: --cursor {cursor}", file=sys.stderr)
    return 0


def _user_id(key: str) -> str | None:
    """The instance's own id (the subject's execution id: the id given to
    ``Runtime.start``), or None for a key that is no subject."""
    from resumable.subject import SubjectError, parse_subject_shared

    try:
        return parse_subject_shared(key).execution_id
    except SubjectError:
        return None


async def _inspect(subject: str, url: str, as_json: bool) -> int:
    from resumable.queries import read_status

    memory = _open_memory(url, "inspect", existing=True)
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


async def _replay_check(target: str, url: str, as_json: bool) -> int:
    from resumable.driver import Resumable
    from resumable.replaycheck import replay_check

    try:
        loaded = load_target(target, "WORKFLOW")
    except SetupError as error:
        print(f"resumable replay-check: {error}", file=sys.stderr)
        return 2
    memory = _open_memory(url, "replay-check", existing=True)
    if memory is None:
        return 2
    try:
        try:
            made = await _build(loaded, memory)
        except (TypeError, ValueError) as error:
            print(f"resumable replay-check: {target}: {error}", file=sys.stderr)
            return 2
        items = made if isinstance(made, list | tuple) else [made]
        workflows = [item for item in items if isinstance(item, Resumable)]
        if not workflows:
            print(
                f"resumable replay-check: {target} is {type(made).__name__}, not a Resumable "
                "(or handlers, or a callable making them, among which a Resumable)",
                file=sys.stderr,
            )
            return 2
        reports = []
        for workflow in workflows:
            progress = _Progress(f"replay-check {workflow.source}")
            reports.append((workflow, await replay_check(workflow, memory, progress=progress)))
            progress.done()
    finally:
        await memory.close()
    if as_json:
        out = [{"workflow": w.source, **report.as_dict()} for w, report in reports]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    else:
        for workflow, report in reports:
            if len(reports) > 1:
                print(f"{workflow.source}:")
            print(report)
    return 0 if all(report.ok for _, report in reports) else 1


class _Progress:
    """Progress of a long run on stderr: one line rewritten in place (``\\r``) on a
    terminal; elsewhere a plain line every 10 seconds, and none for a short run."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.tty = sys.stderr.isatty()
        self.started = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 10.0) or now - self.started < 1.0:
            return
        self.last = now
        line = f"resumable {self.what}: {done}/{total}"
        sys.stderr.write(f"\r\x1b[K{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def _build(target: Any, memory: Any) -> Any:
    """What a target makes: itself, or what calling it (with ``memory`` if given) returns
    (awaited if that is awaitable). A handler is never called: it is the thing itself."""
    import inspect

    from resumable.brokers import Handler

    if not callable(target) or isinstance(target, Handler):
        return target
    made = target(memory) if memory is not None else target()
    if inspect.isawaitable(made):
        made = await made
    return made


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``error`` itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def load_target(target: str, what: str) -> Any:
    """The object ``MODULE:ATTR`` names (``ATTR`` may be dotted: ``app.flows:orders.flow``).

    The current directory is on the import path, as ``python -m`` has it, so a module
    next to where the command runs is found however the command was started. Raises
    ``SetupError`` saying what is wrong; ``what`` names ``ATTR`` in it (``WORKFLOW``, ...).
    Any other exception raised while importing the module is the module's own, and
    propagates with its traceback.
    """
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise SetupError(
            f"expected MODULE:{what} (e.g. myapp.orders:{what.lower()}), got {target!r}"
        )
    _import_from_current_directory()
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as error:
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        if missing is not None and (module_name + ".").startswith(missing + "."):
            raise SetupError(
                f"cannot load {target}: there is no module {missing!r} in the current "
                f"directory ({os.getcwd()}) or on the import path (PYTHONPATH)"
            ) from None
        raise SetupError(
            f"cannot load {target}: importing {module_name!r} failed: {error}"
        ) from None
    owner = module_name
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise SetupError(f"cannot load {target}: {owner!r} has no attribute {part!r}") from None
        owner = f"{owner}.{part}"
    return value


def _import_from_current_directory() -> None:
    """Put the current directory first on the import path, unless it is there already."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path):
        sys.path.insert(0, here)


async def _worker(args: argparse.Namespace) -> int:
    """Build the handlers, run a Worker until SIGTERM/SIGINT, drain, and exit 0."""
    import logging
    import signal

    from resumable.brokers import Handler
    from resumable.brokers import from_url as broker_from_url
    from resumable.worker import Worker, WorkerStats

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        target = load_target(args.target, "HANDLERS")
    except SetupError as error:
        print(f"resumable worker: {error}", file=sys.stderr)
        return 2
    from resumable.otelsdk import configure_from_environment

    telemetry = configure_from_environment()  # after the app's import: its providers win

    def say(what: str, **fields: Any) -> None:
        """One JSON object a line on stderr (``--json``)."""
        print(json.dumps({"worker": what, **fields}), file=sys.stderr, flush=True)

    memory = None
    factory = callable(target) and not isinstance(target, Handler)
    if args.memory is not None:
        if not factory:
            print(
                f"resumable worker: {args.target} is not a callable, so --memory is not used; "
                "name a function taking the memory, or leave --memory out",
                file=sys.stderr,
            )
            return 2
        memory = _open_memory(args.memory, "worker")
        if memory is None:
            return 2
    try:
        try:
            broker = broker_from_url(args.broker)
        except (ValueError, ImportError) as error:
            print(f"resumable worker: {error}", file=sys.stderr)
            return 2
        try:
            made = await _build(target, memory)
            handlers = [made] if isinstance(made, Handler) else list(made)
            tty = sys.stderr.isatty() and not args.json

            def show(line: str, stats: WorkerStats) -> None:
                if args.json:
                    say("health", **stats.as_dict())
                    return
                sys.stderr.write(f"\r\x1b[K{line}" if tty else f"resumable worker: {line}\n")
                sys.stderr.flush()

            worker = Worker(
                handlers,
                broker=broker,
                concurrency=args.concurrency,
                max_attempts=args.max_attempts,
                timer_interval=args.timer_interval,
                recover=not args.no_recover,
                recover_interval=args.recover_interval or None,
                unavailable_backoff=args.unavailable_backoff,
                on_health=show,
            )
        except (TypeError, ValueError) as error:
            hint = " (does it take a memory? give --memory URL)" if factory and not memory else ""
            print(f"resumable worker: {args.target}: {error}{hint}", file=sys.stderr)
            await broker.close()
            return 2
        forced: list[int] = []
        try:
            async with anyio.create_task_group() as group:

                async def on_signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        task_status.started()
                        async for number in signals:
                            if worker.stopping:  # a second signal: stop waiting for the drain
                                forced.append(number)
                                group.cancel_scope.cancel()
                                return
                            print(
                                f"\nresumable worker: {signal.Signals(number).name}: draining",
                                file=sys.stderr,
                                flush=True,
                            )
                            worker.stop()

                async def work(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    await worker.run(task_status=task_status)
                    group.cancel_scope.cancel()

                await group.start(on_signals)
                await group.start(work)
                if args.json:
                    say(
                        "started",
                        pid=os.getpid(),
                        topics=worker.topics,
                        broker=repr(broker),
                        recovered=worker.stats.recovered,
                        telemetry=telemetry,
                    )
                else:
                    print(
                        f"resumable worker: pid {os.getpid()} consuming "
                        f"{', '.join(worker.topics)} on {broker!r} (recovered "
                        f"{worker.stats.recovered} requests)"
                        + (f"; OpenTelemetry: {telemetry}" if telemetry else ""),
                        file=sys.stderr,
                        flush=True,
                    )
        except Exception as error:
            for leaf in _leaves(error):
                print(f"resumable worker: {type(leaf).__name__}: {leaf}", file=sys.stderr)
            return 1
        finally:
            with anyio.CancelScope(shield=True):
                await broker.close()
        how = "stopped without draining" if forced else "stopped"
        if args.json:
            say(how.replace(" ", "_"), **worker.stats.as_dict())
        else:
            print(f"\nresumable worker: {how}; {worker.health_line()}", file=sys.stderr)
        return 1 if forced else 0
    finally:
        if memory is not None:
            with anyio.CancelScope(shield=True):
                await memory.close()


if __name__ == "__main__":
    sys.exit(main())
