"""The embedded runtime under load: 1,000 starts from 50 concurrent tasks, and a long run
whose memory stays flat (no event history, bounded caches)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import anyio
import pytest

from resumable import Resumable, Runtime, complete
from resumable.demo import make_handlers, make_workflow

from orders import OrderResult, PlaceOrder, orders

pytestmark = pytest.mark.anyio


async def test_a_thousand_starts_from_fifty_tasks_all_succeed_and_all_results_arrive(
    tmp_path: Path,
) -> None:

    workflow = make_workflow(None)
    results: dict[str, OrderResult] = {}
    async with Runtime([*make_handlers(), workflow], memory=f"sqlite:///{tmp_path / 'a.db'}") as rt:

        async def caller(task: int) -> None:
            for n in range(20):
                order_id = f"t{task}-{n}"
                handle = await rt.start(orders, PlaceOrder(order_id, 10), id=order_id)
                assert (await handle.status()).status in ("active", "done")
                results[order_id] = await handle.result(timeout=60)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for task in range(50):
                    group.start_soon(caller, task)
        listed = 0
        page = await rt.list(orders, status="done", limit=500)
        while True:
            listed += len(page.items)
            if page.cursor is None:
                break
            page = await rt.list(orders, status="done", limit=500, cursor=page.cursor)
    assert len(results) == 1000 and listed == 1000
    assert {r.status for r in results.values()} == {"shipped"}
    print(f"concurrency: 1,000 starts from 50 tasks, {len(results)} results")


def _objects() -> int:
    gc.collect()
    return len(gc.get_objects())


async def test_memory_is_flat_between_workflow_1000_and_10000(tmp_path: Path) -> None:
    async def quick(ctx: Any, order: PlaceOrder) -> Any:
        yield complete(OrderResult("ok"))

    workflow = Resumable(orders, versions={"1.0.0": quick})
    counts: dict[int, int] = {}
    async with Runtime([workflow], memory=f"sqlite:///{tmp_path / 'm.db'}") as rt:

        async def batch(start: int, size: int) -> None:
            async def one(n: int) -> None:
                handle = await rt.start(orders, PlaceOrder(f"o-{n}", 1), id=f"o-{n}")
                await handle.result(timeout=60)

            async with anyio.create_task_group() as group:
                for n in range(start, start + size):
                    group.start_soon(one, n)

        done = 0
        with anyio.fail_after(240):
            while done < 10_000:
                await batch(done, 100)
                done += 100
                if done in (1_000, 10_000):
                    counts[done] = _objects()
    growth = counts[10_000] / counts[1_000] - 1
    print(f"memory: {counts[1_000]:,} objects at 1,000 workflows, {counts[10_000]:,} at 10,000")
    assert growth < 0.10, f"objects grew {growth:.1%} from workflow 1,000 to 10,000"
