"""Traces across three ``resumable worker`` processes on Redis: each order is one trace,
and its span tree follows its event chain.

Three workers (``tests/trace_worker.py``) each write their finished spans to a file of
their own. The test publishes twelve demo orders, each init event carrying a trace of the
"shop" (a traceparent naming a span of its own), collects the reports, stops the workers
and reads every span back. For every order: all its spans are in the shop's trace; each
execution span (``Resumable<...>``, ``Handler<...>``) is the child of the ``process
<topic>`` span of the delivery of the event it consumed, and that delivery span is the
child of the execution span that emitted the event (the one that consumed the event's
``parentid``), or of the shop's span for the init event; publishes are ``send <topic>``
spans under the delivery that made them. Only the failed order (out of stock) has ERROR
spans: the service that raised, and the workflow step that ended it after the refund.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from resumable.brokers import from_url as broker_from_url
from resumable.demo import demo_order, init_for, orders

from servers import require_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 12
WORKERS = 3
SHOP = "com.shop.web"


def start_worker(
    broker_url: str, memory_url: str, spans: Path, log: Path
) -> subprocess.Popen[bytes]:
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "TRACE_SPANS_DIR": str(spans),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "resumable", "worker", "trace_worker:handlers",
                "--broker", broker_url, "--memory", memory_url, "--concurrency", "4",
                "--log-level", "ERROR",
            ],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )  # fmt: skip


async def test_each_order_is_one_trace_whose_tree_follows_its_event_chain(tmp_path: Path) -> None:
    redis_url = require_redis()
    prefix = f"traces-{uuid.uuid4().hex[:10]}"
    broker_url = f"{redis_url}?prefix={prefix}-b&ack_wait=5"
    memory_url = f"{redis_url}?prefix={prefix}-m&allow_volatile=1"
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
    workers = [start_worker(broker_url, memory_url, spans_dir, log) for log in logs]
    broker = broker_from_url(broker_url)
    shop_spans: dict[str, str] = {}  # trace id -> the shop's span id
    try:
        with anyio.fail_after(30):
            while not all(b" consuming " in log.read_bytes() for log in logs):
                assert all(w.poll() is None for w in workers), [log.read_text() for log in logs]
                await anyio.sleep(0.05)
        subjects = {}
        for index in range(ORDERS):
            trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
            shop_spans[trace_id] = span_id
            init = msgspec.structs.replace(
                init_for(index), traceparent=f"00-{trace_id}-{span_id}-01"
            )
            subjects[init.subject] = (index, trace_id)
            await broker.publish(init)
        reports: dict[str, Any] = {}
        with anyio.fail_after(60):
            while len(reports) < ORDERS:
                for delivery in await broker.receive(SHOP, max_messages=50, timeout=0.5):
                    reports[delivery.event.subject] = delivery.event
                    await delivery.ack()
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
        await broker.close()
        await _cleanup(redis_url, prefix)
    assert [w.returncode for w in workers] == [0] * WORKERS, [log.read_text() for log in logs]

    spans = [
        json.loads(line)
        for path in spans_dir.glob("spans-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    assert set(by_trace) == set(shop_spans), "a span outside the orders' traces"
    assert len({span["pid"] for span in spans}) >= 2, "the orders ran in one process only"
    for subject, (index, trace_id) in subjects.items():
        check_tree(by_trace[trace_id], shop_spans[trace_id])
        report = reports[subject]
        assert report.traceparent.split("-")[1] == trace_id
        trace = by_trace[trace_id]
        errors = sorted(s["name"].split("<")[0] for s in trace if s["status"] == "ERROR")
        if demo_order(index).sku == "out-of-stock":
            assert errors == ["Handler", "Resumable"], errors
        else:
            assert errors == [], errors


def check_tree(spans: list[dict[str, Any]], shop: str) -> None:
    """The spans of one order form the tree its event chain makes (see the module)."""
    by_id = {span["span_id"]: span for span in spans}
    for span in spans:
        assert span["parent_id"] == shop or span["parent_id"] in by_id, span
    executions = [s for s in spans if s["name"].startswith(("Resumable<", "Handler<"))]
    assert len(executions) >= 3  # at least: the init, the charge, its reply
    for execution in executions:
        attributes = execution["attributes"]
        delivery = by_id[execution["parent_id"]]
        assert delivery["name"].startswith("process ") and delivery["kind"] == "CONSUMER"
        assert (
            delivery["attributes"]["messaging.message.id"]
            == attributes["consumable.0.cloudevents.event_id"]
        )
        cause = attributes["consumable.0.cloudevents.arvo.event_parentid"]
        if cause == "N/A":  # the init event: the shop sent it
            assert delivery["parent_id"] == shop
        else:
            emitter = by_id[delivery["parent_id"]]
            assert emitter["attributes"]["consumable.0.cloudevents.event_id"] == cause
    sends = [s for s in spans if s["name"].startswith("send ")]
    assert sends and all(by_id[s["parent_id"]]["name"].startswith("process ") for s in sends)
    assert all(s["attributes"]["messaging.system"] == "redis" for s in sends)
    roots = [s for s in spans if s["parent_id"] == shop]
    assert len(roots) == 1 and roots[0]["attributes"]["messaging.destination.name"] == orders.type


async def _cleanup(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}-*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
