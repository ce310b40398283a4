"""Serving the inspector: open memory and broker from URLs, load the application's handlers,
bind the socket, print the address (and the login URL with the token, once), run uvicorn."""

from __future__ import annotations

import inspect
import secrets
import socket
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs
import uvicorn

from resumable.brokers import Broker, Handler, LocalBroker
from resumable.brokers import from_url as broker_from_url
from resumable.driver import Resumable
from resumable.memory import Memory
from resumable.memory import from_url as memory_from_url
from resumable.ui.actions import Actions
from resumable.ui.app import LOOPBACK_HOSTS, create_app
from resumable.ui.security import Guard

__all__ = ["Options", "serve"]


@attrs.frozen
class Options:
    """What ``resumable ui`` was asked for."""

    memory: str
    broker: str | None = None
    app: str | None = None
    topics: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 8780
    actions: bool = False
    refresh: float = 5.0


async def _handlers(target: str, memory: Memory) -> list[Handler]:
    """The handlers ``MODULE:HANDLERS`` names: a list, one handler, or a callable taking
    the memory (and maybe awaitable), as ``resumable worker`` takes them."""
    from resumable.cli import load_target

    made: Any = load_target(target, "HANDLERS")
    if callable(made) and not isinstance(made, Handler):
        made = made(memory)
        if inspect.isawaitable(made):
            made = await made
    return [made] if isinstance(made, Handler) else list(made)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def serve(options: Options, out: TextIO = sys.stdout) -> None:
    """Run the inspector until cancelled (Ctrl-C)."""
    memory = memory_from_url(options.memory)
    broker: Broker | None = None
    try:
        handlers = [] if options.app is None else await _handlers(options.app, memory)
        workflows = [h for h in handlers if isinstance(h, Resumable)]
        if options.broker is not None:
            broker = broker_from_url(options.broker)
        elif handlers:
            broker = LocalBroker(handlers)  # actions run the application here, in process
        topics = list(dict.fromkeys([*options.topics, *(h.source for h in handlers)]))
        token = secrets.token_urlsafe(24) if options.actions else None
        loopback = options.host in LOOPBACK_HOSTS
        app = create_app(
            memory,
            Actions(memory, broker, workflows),
            guard=Guard(token),
            topics=topics,
            refresh=options.refresh,
            allowed_hosts=LOOPBACK_HOSTS if loopback else ["*"],
        )
        sock = _bind(options.host, options.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{port}"
        out.write(f"resumable ui: serving {options.memory} on {base}/\n")
        if token is None:
            out.write("resumable ui: read-only (start with --actions to signal, cancel, unpark)\n")
        else:
            out.write(
                f"resumable ui: actions need this token, shown once: {token}\n"
                f"resumable ui: log in at {base}/login?token={token}\n"
            )
        if not loopback:
            out.write(
                f"resumable ui: listening on {options.host}, not loopback: anyone who reaches "
                "this port can read every instance\n"
            )
        out.flush()
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        if broker is not None:
            await broker.close()
        await memory.close()
