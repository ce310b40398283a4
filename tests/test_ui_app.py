"""The inspector's pages and actions over HTTP (Starlette in process, httpx), on a SQLite
file the demo filled: what each page shows, escaping, the token, CSRF and confirmation."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from resumable.brokers import LocalBroker
from resumable.driver import Resumable
from resumable.memory import SQLiteMemory
from resumable.ui import Actions, Guard, create_app

import inspector_app
from inspector_app import XSS, expense_subject

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789"
BASE = "http://127.0.0.1:8780"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo-filled file for the module; each test works on its own copy."""
    path = tmp_path_factory.mktemp("ui") / "ui.db"
    anyio.run(lambda: inspector_app.fill(path, orders=12))
    return path


class Site:
    """The app on a copy of the filled file, a client, and what the actions publish."""

    def __init__(self, path: Path, token: str | None, app_code: bool, page_size: int) -> None:
        self.memory = SQLiteMemory(path)
        handlers = inspector_app.handlers(self.memory) if app_code else []
        self.broker = LocalBroker(handlers, record=True) if app_code else None
        workflows = [h for h in handlers if isinstance(h, Resumable)]
        self.app = create_app(
            self.memory,
            Actions(self.memory, self.broker, workflows),
            guard=Guard(token),
            topics=["arvo.orc.expense.approve"],
            page_size=page_size,
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE, follow_redirects=True
        )

    async def login(self) -> None:
        response = await self.client.get("/login", params={"token": TOKEN})
        assert response.status_code == 200 and "actions on" in response.text

    async def page(self, subject: str) -> str:
        response = await self.client.get("/instance", params={"subject": subject})
        assert response.status_code == 200
        return response.text

    async def csrf(self, subject: str) -> str:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', await self.page(subject))
        assert found is not None
        return found.group(1)

    async def status(self, subject: str) -> str:
        stored = await self.memory.read(subject)
        assert stored is not None
        return stored.status


@pytest.fixture
async def site_factory(filled: Path, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Site] = []

    def make(*, token: str | None = TOKEN, app_code: bool = True, page_size: int = 50) -> Site:
        copy = tmp_path / f"copy{len(made)}.db"
        shutil.copy(filled, copy)
        site = Site(copy, token, app_code, page_size)
        made.append(site)
        return site

    yield make
    for site in made:
        await site.client.aclose()
        await site.memory.close()


def text_of(html: str) -> str:
    """The page's text, tags removed and entities decoded (what a reader sees)."""
    return unescape(re.sub(r"<[^>]+>", " ", html))


# ------------------------------------------------------------------------------------------
# pages


async def test_the_list_shows_counts_newest_first_with_user_ids(site_factory: Any) -> None:
    site = site_factory()
    html = (await site.client.get("/")).text
    text = " ".join(text_of(html).split())
    assert "all 17" in text and "active 2" in text and "parked 1" in text
    ids = re.findall(r'class="id" href="[^"]+">([^<]+)<', html)
    # the payout child started last; the user's ids, not subjects, name the instances
    assert ids[1:6] == ["exp-approved", "exp-signal", "exp-waiting", "exp-parked", "order-11"]
    assert ids[-1] == "order-0" and len(ids) == 17
    assert html.count('<code class="subject">') == len(ids)  # subjects on demand


async def test_the_list_filters_by_workflow_status_and_id(site_factory: Any) -> None:
    site = site_factory()
    html = (await site.client.get("/", params={"status": "parked"})).text
    assert re.findall(r'class="id" href="[^"]+">([^<]+)<', html) == ["exp-parked"]
    html = (await site.client.get("/", params={"workflow": "arvo.orc.expense.approve"})).text
    ids = re.findall(r'class="id" href="[^"]+">([^<]+)<', html)
    assert sorted(ids) == ["exp-approved", "exp-parked", "exp-signal", "exp-waiting"]
    assert "all 4" in " ".join(text_of(html).split())
    html = (await site.client.get("/", params={"id": "order-1"})).text
    assert re.findall(r'class="id" href="[^"]+">([^<]+)<', html) == [
        "order-11",
        "order-10",
        "order-1",
    ]
    assert "searched 17 instances" in " ".join(text_of(html).split())
    # a whole subject goes straight to its instance
    response = await site.client.get("/", params={"id": expense_subject("exp-signal")})
    assert response.url.path == "/instance" and "exp-signal" in response.text


async def test_the_list_pages_with_a_cursor(site_factory: Any) -> None:
    site = site_factory(page_size=5)
    seen: list[str] = []
    url: str | None = "/?status=done"
    pages = 0
    while url is not None:
        html = (await site.client.get(url)).text
        seen += re.findall(r'class="id" href="[^"]+">([^<]+)<', html)
        found = re.search(r'rel="next" href="([^"]+)"', html)
        url = unescape(found.group(1)) if found else None
        pages += 1
    done = (await site.memory.count())["done"]
    assert len(seen) == len(set(seen)) == done and pages == -(-done // 5)


async def test_the_bad_filter_is_a_400_that_says_why(site_factory: Any) -> None:
    site = site_factory()
    response = await site.client.get("/", params={"status": "sleeping"})
    assert response.status_code == 400 and "status must be one of" in response.text
    response = await site.client.get("/", params={"cursor": "nonsense"})
    assert response.status_code == 400 and "cursor" in response.text


async def test_an_instance_shows_state_waits_history_and_children(site_factory: Any) -> None:
    site = site_factory()
    text = " ".join(text_of(await site.page(expense_subject("exp-approved"))).split())
    assert "Version 1.0.0" in text and "Status done" in text
    assert '"approved_by": "dora"' in text  # the state as JSON
    assert "expense.payout" in text  # its child, linked
    assert "com.expense.approve" in text and "signal" in text  # woken by the signal
    assert "call arvo.orc.expense.payout" in text  # what it yielded next
    waiting = " ".join(text_of(await site.page(expense_subject("exp-waiting"))).split())
    assert "Waits for wait_for com.expense.approve" in waiting
    child = re.search(
        r'href="(/instance\?subject=[^"]+)">arvo\.orc\.expense\.payout',
        await site.page(expense_subject("exp-approved")),
    )
    assert child is not None
    child_page = (await site.client.get(unescape(child.group(1)))).text
    assert "parent instance" in child_page and "arvo.orc.expense.payout" in child_page


async def test_a_parked_instance_shows_recorded_and_replayed_side_by_side(
    site_factory: Any,
) -> None:
    site = site_factory()
    html = await site.page(expense_subject("exp-parked"))
    row = re.search(r'<tr class="diverged">(.*?)</tr>', html, re.DOTALL)
    assert row is not None
    cells = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]
    assert cells == ["0", "call com.payments.charge", "wait_for com.expense.approve"]
    assert "Kept while parked" in html and "com.expense.approve" in html


async def test_an_unknown_instance_is_a_404(site_factory: Any) -> None:
    site = site_factory()
    response = await site.client.get("/instance", params={"subject": "<b>nope</b>"})
    assert response.status_code == 404 and "&lt;b&gt;nope&lt;/b&gt;" in response.text


async def test_every_value_is_escaped(site_factory: Any) -> None:
    """State and a signal's payload hold ``<script>``: the page shows it as text."""
    site = site_factory()
    for name in ("exp-waiting", "exp-approved"):
        html = await site.page(expense_subject(name))
        assert "<script>window" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    response = await site.client.get("/")
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-frame-options"] == "DENY"


async def test_only_loopback_host_names_are_served(site_factory: Any) -> None:
    site = site_factory()
    response = await site.client.get("/", headers={"host": "attacker.example"})
    assert response.status_code == 400


async def test_the_live_part_of_a_page_comes_alone_for_the_refresh(site_factory: Any) -> None:
    site = site_factory()
    response = await site.client.get("/", headers={"x-live": "1"})
    assert "<html" not in response.text and 'class="counts"' in response.text


async def test_dead_letters_show_reason_event_and_attempts(site_factory: Any) -> None:
    site = site_factory()
    assert site.broker is not None
    html = (await site.client.get("/dead-letters")).text
    assert "No dead letters." in html
    event = inspector_app.expenses.init_event(
        inspector_app.Expense("exp-dead", 1), source="com.shop.web", execution_id="x"
    )
    bad = event.__class__(
        source="com.shop.web",
        type=event.type,
        subject=event.subject,
        to=event.to,
        data={"expense_id": XSS},
    )
    await site.broker.publish(bad)  # without its dataschema: refused, dead-lettered
    html = (await site.client.get("/dead-letters")).text
    assert bad.id in html and "has dataschema None" in unescape(html)
    assert "<script>window" not in html and "&lt;script&gt;window" in html


# ------------------------------------------------------------------------------------------
# security


async def test_without_a_token_it_is_read_only(site_factory: Any) -> None:
    site = site_factory(token=None)
    html = await site.page(expense_subject("exp-signal"))
    assert "read-only" in html and "/act/" not in html
    subject = expense_subject("exp-signal")
    for path in ("/act/signal", "/act/cancel", "/act/unpark", "/act/republish"):
        data = {"subject": subject, "reason": "r", "confirmed": "yes", "csrf": "x"}
        response = await site.client.post(path, data=data)
        assert response.status_code == 403 and "read-only" in response.text
    assert (await site.client.get("/login", params={"token": TOKEN})).status_code == 403
    assert await site.status(subject) == "active"


async def test_a_wrong_token_logs_nobody_in(site_factory: Any) -> None:
    site = site_factory()
    response = await site.client.get("/login", params={"token": "not-the-token-at-all"})
    assert response.status_code == 403 and "not this inspector's token" in response.text
    assert "resumable_ui_session" not in site.client.cookies
    html = await site.page(expense_subject("exp-signal"))
    assert "/act/signal" not in html and "Log in" in html


async def test_actions_need_the_session_and_its_csrf_value(site_factory: Any) -> None:
    site = site_factory()
    subject = expense_subject("exp-signal")
    form = {"subject": subject, "reason": "r", "confirmed": "yes", "nonce": "n"}
    response = await site.client.post("/act/cancel", data={**form, "csrf": "x"})
    assert response.status_code == 403 and "not logged in" in response.text
    await site.login()
    response = await site.client.post("/act/cancel", data=form)
    assert response.status_code == 403 and "CSRF" in response.text
    response = await site.client.post("/act/cancel", data={**form, "csrf": "0" * 64})
    assert response.status_code == 403 and "CSRF" in response.text
    csrf = await site.csrf(subject)
    response = await site.client.post(
        "/act/cancel", data={**form, "csrf": csrf}, headers={"origin": "http://evil.example"}
    )
    assert response.status_code == 403 and "cross-origin" in response.text
    assert await site.status(subject) == "active"
    response = await site.client.post("/act/cancel", data={**form, "csrf": csrf})
    assert response.status_code == 200 and "Asked instance" in response.text
    assert await site.status(subject) == "cancelled"


async def test_a_signal_is_confirmed_then_sent_and_validated_first(site_factory: Any) -> None:
    site = site_factory()
    await site.login()
    subject = expense_subject("exp-signal")
    csrf = await site.csrf(subject)
    form = {
        "csrf": csrf,
        "subject": subject,
        "id": "exp-signal",
        "signal": "com.expense.approve",
        "nonce": "n1",
        "field.by": "erin",
        "field.level": "two",
        "field.note": "",
    }
    response = await site.client.post("/act/signal", data=form)
    assert "level must be a whole number" in response.text
    assert await site.status(subject) == "active"  # nothing was sent
    form["field.level"] = "3"
    response = await site.client.post("/act/signal", data=form)
    assert "Confirm" in response.text and '"level": 3' in unescape(response.text)
    assert await site.status(subject) == "active"  # not before confirming
    response = await site.client.post("/act/signal", data={**form, "confirmed": "yes"})
    assert "Sent signal com.expense.approve" in response.text
    assert await site.status(subject) == "done"
    state = unescape(await site.page(subject))
    assert '"approved_by": "erin"' in state
    assert site.broker is not None
    sent = [e for e in site.broker.events if e.type == "com.expense.approve"]
    assert [e.data for e in sent] == [{"by": "erin", "level": 3, "note": None, "urgent": False}]


async def test_unpark_that_still_diverges_says_so_and_stays_parked(site_factory: Any) -> None:
    site = site_factory()
    await site.login()
    subject = expense_subject("exp-parked")
    form = {"csrf": await site.csrf(subject), "subject": subject, "id": "exp-parked"}
    assert "Unpark instance" in (await site.client.post("/act/unpark", data=form)).text
    response = await site.client.post("/act/unpark", data={**form, "confirmed": "yes"})
    assert "still parked: the code still diverges" in response.text
    assert await site.status(subject) == "parked"


async def test_republish_sends_a_dead_letter_again(site_factory: Any) -> None:
    site = site_factory()
    assert site.broker is not None
    await site.login()
    bad = inspector_app.expenses.init_event(
        inspector_app.Expense("exp-dead", 1), source="com.shop.web", execution_id="dead"
    )
    bad = bad.__class__(
        source=bad.source, type=bad.type, subject=bad.subject, to=bad.to, data={"amount_cents": 1}
    )
    await site.broker.publish(bad)
    html = (await site.client.get("/dead-letters")).text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert csrf is not None
    form = {"csrf": csrf.group(1), "topic": bad.to, "event_id": bad.id, "confirmed": "yes"}
    # Replayed at once: a broker-level id of its own, past the duplicate window.
    before = len(site.broker.events)
    response = await site.client.post("/act/republish", data=form)
    assert f"Re-published event {bad.id}" in response.text
    assert [e.id for e in site.broker.events[before:]] == [bad.id]
    response = await site.client.post("/act/republish", data={**form, "event_id": "nope"})
    assert "has no dead letter with event id 'nope'" in unescape(response.text)


async def test_actions_without_the_apps_code_say_what_to_give(site_factory: Any) -> None:
    site = site_factory(app_code=False)
    await site.login()
    subject = expense_subject("exp-signal")
    html = await site.page(subject)
    assert "No signal forms" in html
    form = {"csrf": await site.csrf(subject), "subject": subject, "reason": "r", "nonce": "n"}
    response = await site.client.post("/act/cancel", data={**form, "confirmed": "yes"})
    assert "start the inspector with --broker" in response.text
    assert await site.status(subject) == "active"
