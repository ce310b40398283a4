"""The inspector in a real browser: ``resumable ui`` serves a SQLite file the demo filled,
and Debian's Chromium, headless and driven by Playwright, goes through the list, an
instance, a parked instance and a signal action, checking what is shown.

No browser is downloaded: Playwright is given the system Chromium's path
(``RESUMABLE_CHROMIUM``, default ``/usr/bin/chromium``). Without it, or without the
``playwright`` package, the tests skip with the reason, except under ``CI=true``, where
they fail. Screenshots of every page are kept in ``RESUMABLE_UI_SCREENSHOTS`` (default
``.artifacts/inspector/``); docs/img/ holds a copy for docs/inspector.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import inspector_app

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("RESUMABLE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("RESUMABLE_UI_SCREENSHOTS", ROOT / ".artifacts" / "inspector"))
AS_JSON = json.dumps(inspector_app.XSS)
"""The ``<script>`` text as the page's JSON shows it (quotes escaped), as text."""
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("the playwright package is not installed: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(
            f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver "
            "(or set RESUMABLE_CHROMIUM)"
        )
    return sync_api


class Server:
    """``resumable ui`` in a subprocess, and what it printed at start."""

    def __init__(self, db: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resumable",
                "ui",
                "--memory",
                f"sqlite:///{db}",
                "--app",
                "inspector_app:handlers",
                "--port",
                "0",
                "--actions",
                "--refresh",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "log in at" in line:
                break
        else:
            raise AssertionError("resumable ui exited early:\n" + "".join(self.lines))
        found = re.search(r"log in at (http://[^/]+)/login\?token=(\S+)", self.lines[-1])
        assert found is not None, self.lines
        self.base, self.token = found.group(1), found.group(2)

    def stop(self) -> str:
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return "".join(self.lines) + (out or "")


@pytest.fixture(scope="module")
def server(playwright_api: Any) -> Iterator[Server]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "inspector.db"
        # In a thread: Playwright's sync API may already run an event loop in this one.
        filler = threading.Thread(target=anyio.run, args=(inspector_app.fill, db, 60))
        filler.start()
        filler.join()
        assert db.exists()
        running = Server(db)
        try:
            yield running
        finally:
            output = running.stop()
        assert output.count(running.token) == 2, output  # printed once: the token, its URL


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(f"{server.base}/login?token={server.token}")
    try:
        yield opened
    finally:
        context.close()
    assert errors == []


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"inspector-{name}.png"), full_page=True)


def no_script_ran(page: Any) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_the_list(page: Any, playwright_api: Any) -> None:
    expect = playwright_api.expect
    assert page.url.endswith("/")  # logged in, sent on to the list
    expect(page.locator("header .badge.ok")).to_have_text("actions on")
    counts = page.locator("ul.counts")
    expect(counts).to_contain_text("all 65")
    expect(counts).to_contain_text("parked 1")
    ids = page.locator("a.id").all_inner_texts()
    assert ids[1:5] == ["exp-approved", "exp-signal", "exp-waiting", "exp-parked"]
    assert len(ids) == 50 and ids[-1] == "order-15"  # newest first, 50 to a page
    page.locator("details summary").first.click()  # the subject, on demand
    expect(page.locator("code.subject").first).to_be_visible()
    shot(page, "list")
    page.get_by_role("link", name="Older →").click()
    assert page.locator("a.id").all_inner_texts()[-1] == "order-0"
    page.goto(page.url.split("?")[0])
    page.get_by_label("Id").fill("exp-")
    page.get_by_role("button", name="Filter").click()
    assert sorted(page.locator("a.id").all_inner_texts()) == [
        "exp-approved",
        "exp-parked",
        "exp-signal",
        "exp-waiting",
    ]


def test_an_instance_with_script_in_its_state_and_signal(page: Any, playwright_api: Any) -> None:
    expect = playwright_api.expect
    page.get_by_role("link", name="exp-waiting", exact=True).click()
    expect(page.locator("h1")).to_contain_text("exp-waiting")
    expect(page.locator(".facts")).to_contain_text("wait_for com.expense.approve")
    expect(page.locator("pre.state")).to_contain_text(AS_JSON)  # shown as text
    no_script_ran(page)
    shot(page, "instance")
    page.go_back()
    page.get_by_role("link", name="exp-approved", exact=True).click()
    page.locator("table.timeline details summary").nth(1).click()  # the signal's payload
    expect(page.locator("table.timeline")).to_contain_text(AS_JSON)
    no_script_ran(page)
    page.get_by_role("link", name=re.compile(r"arvo\.orc\.expense\.payout")).click()
    expect(page.locator(".facts")).to_contain_text("parent instance")
    expect(page.locator("h1")).to_contain_text("done")
    shot(page, "child")


def test_a_parked_instance(page: Any, playwright_api: Any) -> None:
    expect = playwright_api.expect
    page.get_by_role("link", name="Parked", exact=True).click()
    page.get_by_role("link", name="exp-parked", exact=True).click()
    diverged = page.locator("table.diff tr.diverged td")
    expect(diverged.nth(1)).to_have_text("call com.payments.charge")
    expect(diverged.nth(2)).to_have_text("wait_for com.expense.approve")
    shot(page, "parked")
    page.get_by_role("button", name="Unpark…").click()
    page.get_by_role("button", name="Yes, do it").click()
    expect(page.locator(".flash.error")).to_contain_text("still parked")
    expect(page.locator("h1")).to_contain_text("parked")


def test_a_signal_action_with_confirmation(page: Any, playwright_api: Any) -> None:
    expect = playwright_api.expect
    page.get_by_role("link", name="exp-signal", exact=True).click()
    form = page.locator('form[data-signal="com.expense.approve"]')
    form.get_by_label("by").fill("<script>window.__xss = 3</script>")
    form.get_by_label("level").fill("2")
    form.get_by_label("urgent").check()
    shot(page, "signal-form")
    form.get_by_role("button", name=re.compile("Send")).click()
    expect(page.locator("h1")).to_have_text("Confirm")
    expect(page.locator(".confirm pre")).to_contain_text('"level": 2')
    shot(page, "signal-confirm")
    page.get_by_role("button", name="Yes, do it").click()
    expect(page.locator(".flash")).to_contain_text("Sent signal com.expense.approve")
    expect(page.locator("h1")).to_contain_text("done")  # it ran: approved, paid, done
    expect(page.locator("pre.state")).to_contain_text('"approved_by": "<script>window.__xss = 3')
    no_script_ran(page)
    shot(page, "signal-sent")


def test_a_page_refreshes_itself(page: Any, playwright_api: Any) -> None:
    """Another tab cancels the instance; the first one shows it without a reload."""
    expect = playwright_api.expect
    page.get_by_role("link", name="exp-waiting", exact=True).click()
    expect(page.locator(".facts .status")).to_have_text("active")
    other = page.context.new_page()
    other.goto(page.url)
    other.get_by_label("Reason").fill("customer withdrew it")
    other.get_by_role("button", name="Cancel instance…").click()
    other.get_by_role("button", name="Yes, do it").click()
    expect(other.locator(".flash")).to_contain_text("Asked instance 'exp-waiting' to cancel")
    expect(page.locator(".facts .status")).to_have_text("cancelled", timeout=10_000)


def test_dead_letters_page(page: Any, playwright_api: Any) -> None:
    expect = playwright_api.expect
    page.get_by_role("link", name="Dead letters").click()
    expect(page.locator("h1")).to_have_text("Dead letters")
    expect(page.locator("table.letters")).to_contain_text("No dead letters.")
    shot(page, "dead-letters")


def test_screenshots_are_kept() -> None:
    if not SHOTS.is_dir():
        pytest.skip("the browser tests did not run")
    names = {path.name for path in SHOTS.glob("inspector-*.png")}
    assert {"inspector-list.png", "inspector-instance.png", "inspector-parked.png"} <= names
    if os.environ.get("RESUMABLE_UI_DOCS_IMAGES") == "1":  # refresh the docs' copies
        for name in sorted(names):
            shutil.copy(SHOTS / name, ROOT / "docs" / "img" / name)
