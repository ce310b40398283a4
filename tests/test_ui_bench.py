"""The inspector's list benchmark runs (tiny sizes; nothing is timed here): it fills the
memory, reaches the third page by cursor, and reports every row with its ratio."""

from __future__ import annotations

import anyio
import pytest

from benchmarks import inspector_list

from servers import POSTGRES_URL, require_postgres


def test_the_benchmark_reports_every_page_on_sqlite() -> None:
    rows = anyio.run(inspector_list.main, 400, 2, False)
    assert [(r["backend"], r["what"]) for r in rows] == [
        ("sqlite", "bare SELECT of the page"),
        ("sqlite", "bare counts per status"),
        ("sqlite", "list page"),
        ("sqlite", "list page, parked"),
        ("sqlite", "list page 3"),
    ]
    assert all(r["ratio"] is not None and r["ratio"] > 0 for r in rows)
    assert "list page 3" in inspector_list.format_rows(rows, 400)


def test_the_benchmark_runs_on_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    require_postgres()
    monkeypatch.setattr(inspector_list, "POSTGRES", POSTGRES_URL)
    rows = anyio.run(inspector_list.postgres_rows, 300, 2)
    assert [r["what"] for r in rows][-1] == "list page 3"
