"""The Starlette example (``examples/loans.py``) through httpx against the ASGI app, and the
docs page that shows it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import httpx
import pytest

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def load_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    monkeypatch.setenv("RESUMABLE_DB", str(tmp_path / "loans.db"))
    spec = importlib.util.spec_from_file_location("loans_example", ROOT / "examples" / "loans.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_page_shows_the_examples_app() -> None:
    source = (ROOT / "examples" / "loans.py").read_text()
    start = source.index("# --- the app (docs/embedding.md shows this part) ---\n")
    end = source.index("# --- end of the app ---")
    app = source[start:end].split("\n", 1)[1].strip()
    assert app in (ROOT / "docs" / "embedding.md").read_text()


async def test_the_example_app_starts_queries_signals_and_cancels_by_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = load_example(monkeypatch, tmp_path)
    app = example.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            loan = {"applicant": "ada", "amount": 5000}
            assert (await http.post("/loans/l-1", json=loan)).json() == {
                "id": "l-1",
                "status": "active",
            }
            assert (await http.get("/loans/l-1/result?wait=0.1")).status_code == 202
            signalled = await http.post("/loans/l-1/approve", json={"officer": "grace"})
            assert signalled.status_code == 202
            again = await http.post("/loans/l-1/approve", json={"officer": "grace"})
            assert again.status_code in (202, 409)  # taken once, or the loan ended already
            result = (await http.get("/loans/l-1/result?wait=5")).json()
            assert result == {
                "id": "l-1",
                "decision": {"outcome": "approved", "officer": "grace", "score": 450},
            }
            declined = await http.post("/loans/l-2", json={"applicant": "x", "amount": 1})
            assert declined.status_code == 201
            assert (await http.get("/loans/l-2/result?wait=5")).json()["decision"] == {
                "outcome": "declined",
                "officer": None,
                "score": 350,
            }
            assert (await http.post("/loans/l-2/approve", json={"officer": "a"})).status_code == 409
            assert (await http.post("/loans/nope/cancel")).status_code == 404
            assert (
                await http.post("/loans/nope/approve", json={"officer": "a"})
            ).status_code == 404
    # A restart of the app: the loans are still there.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/loans/l-1")).json()["status"] == "done"
