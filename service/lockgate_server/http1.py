"""A lean HTTP/1.1 server for an ASGI app, on the running event loop (httptools parses).

Why not granian: its I/O runs on a Rust thread that hands every request to the Python loop
and takes every answer back, GIL and wake-up included. On this 2-core machine that thread
used most of a core of its own, and each hop added latency to every request's chain (the
contended lock hands off at the pace of that chain). Serving on the loop itself, the same
app answered 45-70% more requests per second with less CPU (loadtests/, `make bench-http`).

What it does: keep-alive, pipelining (answers in order), `Connection: close`, HTTP/1.0,
`Expect: 100-continue`, chunked request bodies (decoded by the parser), HEAD. Each request
body is buffered whole before the app runs (bounded by `body_bytes_max`); after it,
`receive()` waits for the client to hang up and then says `http.disconnect`, which is how a
waiting acquire learns its caller left. Answers are buffered and sent with Content-Length.
Bounds: header bytes, body bytes, a deadline for a request's head, an idle keep-alive
timeout, open connections, and write backpressure (no next request while the client is not
reading its answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger("lockgate.http")

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 413: b"Content Too Large", 422: b"Unprocessable Content",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_bytes_max: int
    body_bytes_max: int
    read_timeout_s: float  # from a request's first byte to its last
    idle_timeout_s: float  # a keep-alive connection with nothing in flight
    connections_max: int


class _Clock:
    """The Date header, formatted once a second rather than per answer."""

    second = 0
    header = b""

    @classmethod
    def date_header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.header = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.header


class _Request:
    __slots__ = ("body", "keep_alive", "scope")

    def __init__(self, scope: Scope, body: bytes, keep_alive: bool) -> None:
        self.scope = scope
        self.body = body
        self.keep_alive = keep_alive


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time, answers in order."""

    def __init__(self, app: App, limits: HttpLimits, state: dict[str, Any], server: HttpServer) -> None:
        self._app = app
        self._limits = limits
        self._state = state
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        self._queue: deque[_Request] = deque()
        self._running = False
        self._closing = False  # no request after the one in flight
        self._deaf = False  # what the client sends is no longer read (a refusal is queued)
        self._writable = asyncio.Event()
        self._writable.set()
        self.disconnected: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_message = False

    # --- transport events -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self._client = _address(transport.get_extra_info("peername"))
        self._local = _address(transport.get_extra_info("sockname"))
        self._server.connections.add(self)
        self._arm(self._limits.idle_timeout_s, b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._disarm()
        self._closing = True
        self._writable.set()
        if not self.disconnected.done():
            self.disconnected.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._deaf:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            refusal = error.__context__
            if not isinstance(refusal, _Refused):
                raise
            self._refuse(refusal.status, refusal.detail)
        except httptools.HttpParserUpgrade as upgrade:
            # Only HTTP/1.1 here. RFC 9110 lets a server ignore Upgrade: the request was
            # parsed and is answered as it is; what follows is HTTP/1.1 again.
            self._parser = httptools.HttpRequestParser(self)
            offset = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else len(data)
            if offset < len(data):
                self.data_received(data[offset:])
        except httptools.HttpParserError as error:
            self._refuse(400, f"malformed HTTP/1.1 request: {error}")

    # --- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        if not self._running:
            self._arm(self._limits.read_timeout_s, b"the request did not arrive in time")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        declared = _content_length(self._headers)
        if declared is not None and declared > self._limits.body_bytes_max:
            raise _Refused(413, f"the body may have at most {self._limits.body_bytes_max} bytes")
        if self._transport is not None and (b"expect", b"100-continue") in self._headers:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self._body_bytes += len(chunk)
        if self._body_bytes > self._limits.body_bytes_max:
            raise _Refused(413, f"the body may have at most {self._limits.body_bytes_max} bytes")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self._in_message = False
        if not self._running:
            self._disarm()
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self._parser.get_http_version(),
            "method": self._parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": unquote(path) if "%" in path else path,
            "raw_path": url.path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self._headers,
            "client": self._client,
            "server": self._local,
            "state": dict(self._state),
        }
        request = _Request(scope, b"".join(self._body), self._parser.should_keep_alive())
        if self._running:
            self._queue.append(request)
            if self._transport is not None and len(self._queue) > 1:
                # Pipelined past what one answer takes: wait for the answers to catch up.
                self._transport.pause_reading()
            return
        self._running = True
        self._task = self._loop.create_task(self._serve(request))

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.header_bytes_max:
            raise _Refused(431, f"the request head may have at most {self._limits.header_bytes_max} bytes")

    # --- running requests -------------------------------------------------------------------------
    async def _serve(self, request: _Request) -> None:
        while True:
            keep_alive = await self._run(request) and request.keep_alive and not self._closing
            if not keep_alive:
                self._close_after_writing()
                return
            if not self._writable.is_set():
                await self._writable.wait()
            if not self._queue:
                break
            request = self._queue.popleft()
            if self._transport is not None and len(self._queue) <= 1:
                self._transport.resume_reading()
        self._running = False
        if self._transport is not None:
            self._transport.resume_reading()
        if not self._in_message:
            self._arm(self._limits.idle_timeout_s, b"")
        else:
            self._arm(self._limits.read_timeout_s, b"the request did not arrive in time")

    async def _run(self, request: _Request) -> bool:
        """Run the app for one request; False if the connection cannot carry another."""
        if request.scope["type"] == _REFUSAL:
            self._write(self._server.problem(request.scope["status"], request.scope["detail"]))
            return False
        exchange = _Exchange(self, request)
        try:
            await self._app(request.scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("unhandled error serving %s %s", request.scope["method"], request.scope["path"])
            if not exchange.started:
                self._write(self._server.problem(500, "the server failed to answer"))
            return False
        if not exchange.finished:
            if exchange.started or self.disconnected.done():
                return False  # an answer cut short, or nobody left to answer
            log.error("no answer to %s %s", request.scope["method"], request.scope["path"])
            self._write(self._server.problem(500, "the server failed to answer"))
            return False
        return not exchange.closes

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # --- closing ----------------------------------------------------------------------------------
    def _refuse(self, status: int, detail: str) -> None:
        """A request we will not serve: answer it, then close (what follows it cannot be trusted)."""
        if self._running:
            # Answers go out in order: the ones before it first, then the refusal closes.
            self._deaf = True
            if self._transport is not None:
                self._transport.pause_reading()
            self._queue.append(_Request(_refusal_scope(status, detail), b"", False))
            return
        self._write(self._server.problem(status, detail))
        self._close_after_writing()

    def _close_after_writing(self) -> None:
        self._closing = True
        self._disarm()
        if self._transport is not None:
            self._transport.close()  # sends what is buffered first

    def go_idle_or_close(self) -> None:
        """Stopping: close now if idle; a connection with a request in flight closes after it."""
        if not self._running:
            self._close_after_writing()
            return
        self._queue.clear()
        self._closing = True
        if self._transport is not None:
            self._transport.pause_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def busy(self) -> bool:
        return self._running

    def _arm(self, seconds: float, reason: bytes) -> None:
        self._disarm()
        self._timer = self._loop.call_later(seconds, self._timed_out, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, reason: bytes) -> None:
        self._timer = None
        if self._running:
            return
        if reason:
            self._write(self._server.problem(408, reason.decode()))
        self._close_after_writing()


class _Exchange:
    """One request's ASGI receive and send."""

    __slots__ = (
        "_body_sent", "_chunks", "_connection", "_head", "_length_given", "_request", "closes", "finished", "started"
    )  # fmt: skip

    def __init__(self, connection: HttpConnection, request: _Request) -> None:
        self._connection = connection
        self._request = request
        self._body_sent = False
        self._head: bytes = b""
        self._chunks: list[bytes] = []
        self._length_given = False
        self.started = False
        self.finished = False
        self.closes = not request.keep_alive

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._request.body, "more_body": False}
        # The body is all there; what is left to learn is whether the client hangs up.
        await asyncio.shield(self._connection.disconnected)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the answer was already started")
            self.started = True
            self._head = self._head_of(message["status"], message.get("headers", ()))
        elif kind == "http.response.body":
            if not self.started or self.finished:
                raise RuntimeError("an answer body outside a started answer")
            body = message.get("body", b"")
            if body:
                self._chunks.append(body)
            if not message.get("more_body", False):
                self.finished = True
                self._flush()

    def _head_of(self, status: int, headers: Any) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")), _Clock.date_header()]
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                self._length_given = True
            elif lowered == b"connection" and value.lower() == b"close":
                self.closes = True
            elif lowered == b"transfer-encoding":
                continue  # we always send a Content-Length
            lines.append(b"%s: %s\r\n" % (name, value))
        if not any(name.lower() == b"connection" for name, _ in headers):
            if self.closes:
                lines.append(b"connection: close\r\n")
            elif self._request.scope["http_version"] == "1.0":
                lines.append(b"connection: keep-alive\r\n")  # an HTTP/1.0 client that asked for it
        return b"".join(lines)

    def _flush(self) -> None:
        body = b"".join(self._chunks)
        head = self._head
        if not self._length_given:
            head += b"content-length: %d\r\n" % len(body)
        if self._request.scope["method"] == "HEAD":
            body = b""
        self._connection._write(head + b"\r\n" + body)


class HttpServer:
    """Listens on one TCP port and serves `app` on the running loop."""

    def __init__(
        self, app: App, limits: HttpLimits, state: dict[str, Any] | None = None, *, problem_base: str = "about:blank"
    ) -> None:
        self._app = app
        self._limits = limits
        self._state = state if state is not None else {}
        self._problem_base = problem_base
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None

    def problem(self, status: int, detail: str) -> bytes:
        """The answer, closing the connection, to a request the server refuses on its own."""
        return _plain_answer(status, detail, close=True, problem_base=self._problem_base)

    def _connection(self) -> asyncio.Protocol:
        if len(self.connections) >= self._limits.connections_max:
            most = self._limits.connections_max
            return _Refusal(self.problem(503, f"the server holds its most connections ({most})"))
        return HttpConnection(self._app, self._limits, self._state, self)

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._connection, host, port, backlog=backlog)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self, grace_s: float) -> None:
        """Stop listening; idle connections close now, busy ones after their answer or the grace."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_idle_or_close()
        deadline = time.monotonic() + grace_s
        while any(connection.busy for connection in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


class _Refusal(asyncio.Protocol):
    """A connection past the limit: one answer, then closed, holding no place."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self._answer)
        transport.close()


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_REFUSAL = "lockgate.refusal"


def _refusal_scope(status: int, detail: str) -> Scope:
    """Stands in the queue for a request refused while an earlier one is still being answered."""
    return {"type": _REFUSAL, "status": status, "detail": detail}


_PROBLEM_SLUGS = {400: "malformed", 408: "request-timeout", 413: "too-large", 431: "headers-too-large", 500: "internal",
                  503: "unavailable"}  # fmt: skip


def _plain_answer(status: int, detail: str, *, close: bool, problem_base: str) -> bytes:
    """An RFC 9457 problem written by the server itself: the app never saw this request."""
    reason = _REASONS.get(status, b"")
    kind = "about:blank" if problem_base == "about:blank" else problem_base + _PROBLEM_SLUGS.get(status, "error")
    body = json.dumps({"type": kind, "title": reason.decode(), "status": status, "detail": detail}).encode()
    head = b"HTTP/1.1 %d %s\r\n%scontent-type: application/problem+json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        _Clock.date_header(),
        len(body),
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
