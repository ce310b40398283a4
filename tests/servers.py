"""The real servers the integration tests talk to, and what to do when one is missing.

Each ``require_*`` returns the server's URL if it answers on loopback. If it does not, the
test is skipped with the reason, except under ``CI=true``, where a missing server fails
the test: CI must never pass by skipping what it was meant to check.

The URLs can be overridden with ``RESUMABLE_TEST_POSTGRES``, ``RESUMABLE_TEST_REDIS`` and
``RESUMABLE_TEST_NATS``.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get(
    "RESUMABLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RESUMABLE_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("RESUMABLE_TEST_NATS", "nats://127.0.0.1:4222")

_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    "NATS": "nats-server -a 127.0.0.1 -p 4222 -js &",
}


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1.0):
            return True
    except OSError:
        return False


def _require(name: str, url: str) -> str:
    if _answers(url):
        return url
    reason = f"{name} is not running at {url}; start it with: {_START[name]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> str:
    return _require("PostgreSQL", POSTGRES_URL)


def require_redis() -> str:
    return _require("Redis", REDIS_URL)


def require_nats() -> str:
    return _require("NATS", NATS_URL)
