"""Typed workflows: docs/typing.md passes ``mypy --strict`` with the reply types known, and
the mistakes it promises mypy catches are caught; the annotation names are exported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec

import resumable
from resumable import Event, Reply, Request, Workflow

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

MISTAKES = """
from docs_typing import CardCharged, ChargeCard, PlaceOrder, payments
from resumable import Context, Event, Reply, Workflow, call, complete


async def wrong(ctx: Context[None], order: PlaceOrder) -> Workflow:
    yield call(payments, ChargeCard(order.order_id, "5"))  # error: str for int
    yield call(payments, ChargeCard(order.order_id))  # error: missing field
    reply: Reply = yield call(payments, ChargeCard(order.order_id, 5))
    print(reply.data.payment_id)  # error: not narrowed
    match reply.data:
        case CardCharged(payment_id=payment_id):
            cents: int = payment_id  # error: a str used as an int
            print(cents, reply.data.reason)  # error: no such field on CardCharged
    yield complete(None)


def service(event: Event[ChargeCard]) -> int:
    return event.data.amount  # error: misspelt field
"""


def _mypy(tmp_path: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "MYPYPATH": str(ROOT)},
    )


def test_the_typing_docs_pass_mypy_strict_and_its_mistakes_fail(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "typing.md").read_text()
    (tmp_path / "docs_typing.py").write_text("\n".join(m.group(1) for m in BLOCK.finditer(page)))
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    done = _mypy(tmp_path, "docs_typing.py", "mistakes.py")
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("docs_typing.py")], done.stdout
    found = {int(e.split(":")[1]) for e in errors if e.startswith("mistakes.py")}
    expected = {
        number for number, line in enumerate(MISTAKES.splitlines(), start=1) if "# error" in line
    }
    assert found == expected, done.stdout


def test_the_annotation_names_are_exported() -> None:
    for name in ("Workflow", "Request", "Reply", "Event", "Context", "Call", "Gather", "Race"):
        assert name in resumable.__all__, name
    assert Reply == Event[object]
    assert Workflow.__args__[0] == Request  # type: ignore[attr-defined]


def test_event_is_generic_in_its_data_and_still_decodes() -> None:
    class Number(msgspec.Struct):
        n: int

    typed: Event[Number] = Event(source="com.a.b", type="com.a.b", subject="s", data=Number(1))
    assert typed.data.n == 1
    raw = msgspec.json.encode(Event(source="com.a.b", type="com.a.b", subject="s", data={}))
    assert msgspec.json.decode(raw, type=Event).data == {}
