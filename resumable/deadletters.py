"""``resumable dead-letters list|replay``: a topic's dead letters, and replaying them.

Listing shows every dead letter of a topic, the undecodable ones too (their size, and
their bytes in base64 with ``--json``). Replaying re-publishes a dead letter through
``Broker.replay_dead_letter``: delivered at once (not dropped by the duplicate window) and
removed from the dead letters. Messages that were never events cannot be replayed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from resumable.brokers import Broker, DeadLetter, DeadLetterNotFound, UndecodableDeadLetter
from resumable.events import to_dict

__all__ = ["add_command", "run"]

_BROKER_HELP = "nats://host:4222?stream=S, redis://host:6379/0?prefix=P (your workers' broker)"


def add_command(commands: Any) -> None:
    """Add ``dead-letters`` with its ``list`` and ``replay`` subcommands to ``commands``."""
    command = commands.add_parser(
        "dead-letters",
        help="list a topic's dead letters, or replay them",
        description=(
            "List the dead letters of a topic (events that failed for good, and messages "
            "that were never events), or replay some: each is published to its topic "
            "again, delivered at once, and removed from the dead letters."
        ),
    )
    verbs = command.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser(
        "list", help="every dead letter of a topic, oldest first", description="List them."
    )
    replay = verbs.add_parser(
        "replay",
        help="publish dead letters to their topic again",
        description=(
            "Publish the dead letters named by ID (or --all) to the topic again, delivered "
            "at once, and remove them from the dead letters. Messages that are not events "
            "cannot be replayed. Exits 1 if any named one could not be replayed."
        ),
    )
    for parser in (listing, replay):
        parser.add_argument("--broker", required=True, metavar="URL", help=_BROKER_HELP)
        parser.add_argument(
            "--topic", required=True, metavar="TOPIC", help="e.g. arvo.orc.order.fulfil"
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids, from `list`")
    replay.add_argument("--all", action="store_true", help="every dead letter that is an event")


def run(args: argparse.Namespace) -> int:
    """Run ``dead-letters list`` or ``dead-letters replay``; the exit status."""
    import anyio

    if args.verb == "replay" and bool(args.ids) == bool(args.all):
        print("resumable dead-letters replay: give dead letter IDs or --all", file=sys.stderr)
        return 2
    return anyio.run(_run, args)


async def _run(args: argparse.Namespace) -> int:
    from resumable.brokers import from_url

    command = f"resumable dead-letters {args.verb}"
    if args.broker.lower().startswith("local:"):
        print(
            f"{command}: local:// is an in-process broker, which no other process can read; "
            "give your workers' broker (nats://... or redis://...)",
            file=sys.stderr,
        )
        return 2
    try:
        broker = from_url(args.broker)
    except (ValueError, ImportError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    try:
        if args.verb == "list":
            return await _list(broker, args)
        return await _replay(broker, args)
    except (ValueError, ConnectionError, OSError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    finally:
        await broker.close()


def as_json(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as ``list --json`` prints it."""
    event = letter.event
    return {
        "id": letter.id,
        "topic": letter.topic,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "event": None if event is None else to_dict(event),
        "size": len(letter.raw),
        "raw": None if event is not None else base64.b64encode(letter.raw).decode("ascii"),
    }


async def _list(broker: Broker, args: argparse.Namespace) -> int:
    letters = await broker.dead_letters(args.topic)
    if args.json:
        out = {"topic": args.topic, "dead_letters": [as_json(d) for d in letters]}
        print(json.dumps(out, indent=2, ensure_ascii=False, default=str))
        return 0
    if not letters:
        print(f"no dead letters on {args.topic}", file=sys.stderr)
        return 0
    print(f"{'ID':<20} {'ATTEMPTS':>8}  {'EVENT':<50} REASON")
    for letter in letters:
        if letter.event is None:
            what = f"(not an event: {len(letter.raw):,} bytes)"
        else:
            what = f"{letter.event.type} {letter.event.id}"
        reason = letter.reason.replace("\n", " ")
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        print(f"{letter.id:<20} {letter.attempts:>8}  {what:<50} {reason}")
    return 0


async def _replay(broker: Broker, args: argparse.Namespace) -> int:
    skipped: list[dict[str, str]] = []
    if args.all:
        ids = []
        for letter in await broker.dead_letters(args.topic):
            if letter.event is None:
                skipped.append({"id": letter.id, "error": "not an event: cannot be replayed"})
            else:
                ids.append(letter.id)
    else:
        ids = list(args.ids)
    replayed: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    for dead_letter_id in ids:
        try:
            event = await broker.replay_dead_letter(args.topic, dead_letter_id)
        except (DeadLetterNotFound, UndecodableDeadLetter) as error:
            failed.append({"id": dead_letter_id, "error": str(error)})
            continue
        replayed.append({"id": dead_letter_id, "event_id": event.id, "type": event.type})
    if args.json:
        out = {"topic": args.topic, "replayed": replayed, "failed": failed, "skipped": skipped}
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for item in replayed:
            print(f"replayed {item['id']}: {item['type']} {item['event_id']}")
        for item in failed:
            print(f"not replayed {item['id']}: {item['error']}", file=sys.stderr)
        for item in skipped:
            print(f"skipped {item['id']}: {item['error']}", file=sys.stderr)
        print(
            f"{len(replayed)} replayed to {args.topic}, {len(failed)} failed, "
            f"{len(skipped)} skipped",
            file=sys.stderr,
        )
    return 1 if failed else 0
