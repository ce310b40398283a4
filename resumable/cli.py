"""The ``resumable`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import attrs
import msgspec

from resumable.errors import SetupError

__all__ = ["load_target", "main"]


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
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what to log on stderr (default WARNING; the health line is shown regardless)",
    )
    from resumable.ui.command import add_command as add_ui_command

    add_ui_command(commands, _MEMORY_HELP)
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
    if args.command == "ui":
        from resumable.ui.command import run as run_ui

        return run_ui(args)
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

    try:
        workflow = load_target(target, "WORKFLOW")
    except SetupError as error:
        print(f"resumable replay-check: {error}", file=sys.stderr)
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
    import inspect
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
            made = target if not factory else target(memory) if memory is not None else target()
            if inspect.isawaitable(made):
                made = await made
            handlers = [made] if isinstance(made, Handler) else list(made)
            tty = sys.stderr.isatty()

            def show(line: str, stats: WorkerStats) -> None:
                sys.stderr.write(f"\r\x1b[K{line}" if tty else f"resumable worker: {line}\n")
                sys.stderr.flush()

            worker = Worker(
                handlers,
                broker=broker,
                concurrency=args.concurrency,
                max_attempts=args.max_attempts,
                timer_interval=args.timer_interval,
                recover=not args.no_recover,
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
                print(
                    f"resumable worker: pid {os.getpid()} consuming {', '.join(worker.topics)} "
                    f"on {broker!r} (recovered {worker.stats.recovered} requests)",
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
        print(f"\nresumable worker: {how}; {worker.health_line()}", file=sys.stderr)
        return 1 if forced else 0
    finally:
        if memory is not None:
            with anyio.CancelScope(shield=True):
                await memory.close()


if __name__ == "__main__":
    sys.exit(main())
