"""Run an ASGI app on the HTTP/1.1 server until SIGINT or SIGTERM: lifespan, listen, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from . import limits
from .http1 import App, HttpLimits, HttpServer

log = logging.getLogger("lockgate.http")


def http_limits(body_bytes_max: int) -> HttpLimits:
    return HttpLimits(
        header_bytes_max=limits.HTTP_HEADER_BYTES_MAX,
        body_bytes_max=body_bytes_max,
        read_timeout_s=limits.HTTP_READ_TIMEOUT_MS / 1000,
        idle_timeout_s=limits.HTTP_IDLE_TIMEOUT_MS / 1000,
        connections_max=limits.HTTP_CONNECTIONS_MAX,
    )


class Lifespan:
    """The ASGI lifespan protocol, from the server's side."""

    def __init__(self, app: App) -> None:
        self._app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._started, self._stopped = loop.create_future(), loop.create_future()
        self._task = loop.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started

    async def shutdown(self) -> None:
        assert self._stopped is not None and self._task is not None
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped
        await self._task

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self._app(scope, self._inbox.get, self._send)
        except BaseException as error:
            for waiter in (self._started, self._stopped):
                if waiter is not None and not waiter.done():
                    waiter.set_exception(RuntimeError(f"the app's lifespan failed: {error!r}"))
            if not isinstance(error, Exception):
                raise

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._started is not None and self._stopped is not None
        kind = message["type"]
        waiter = self._started if kind.startswith("lifespan.startup") else self._stopped
        if kind.endswith(".failed"):
            waiter.set_exception(RuntimeError(f"{kind}: {message.get('message', '')}"))
        elif not waiter.done():
            waiter.set_result(None)


async def serve(
    app: App,
    host: str,
    port: int,
    *,
    body_bytes_max: int,
    problem_base: str = "about:blank",
    before_stop: Callable[[], None] | None = None,
) -> None:
    """Start the app, serve until SIGINT or SIGTERM, then stop gracefully.

    before_stop runs first: what the app must end at once so that the requests still open
    can end (SIGINT from a terminal's Ctrl-C and SIGTERM alike).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    lifespan = Lifespan(app)
    await lifespan.startup()
    server = HttpServer(app, http_limits(body_bytes_max), lifespan.state, problem_base=problem_base)
    try:
        await server.start(host, port, backlog=limits.HTTP_BACKLOG)
        log.info("serving HTTP on %s:%d", host, server.port)
        await stop.wait()
        if before_stop is not None:
            before_stop()
        log.info("stopping: answering the requests in flight")
    finally:
        await server.stop(limits.HTTP_STOP_GRACE_S)
        await lifespan.shutdown()
