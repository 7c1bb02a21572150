"""A lean HTTP/1.1 server for an ASGI app, on the running event loop (httptools parses).

Why not granian: its I/O runs on a Rust thread that hands every request to the Python loop
and takes every answer back, GIL and wake-up included. On this 2-core machine that thread
used most of a core of its own, and each hop added latency to every request's chain (the
contended lock hands off at the pace of that chain). Serving on the loop itself, the same
app answered 45-70% more requests per second with less CPU (loadtests/, `make bench-http`).

What it does: keep-alive, pipelining (answers in order), `Connection: close`, HTTP/1.0,
`Expect: 100-continue`, chunked request bodies (decoded by the parser; trailer fields are
read and dropped, RFC 9110 6.5.1), HEAD. Each request body is buffered whole before the app
runs (bounded by `body_bytes_max`); after it, `receive()` waits for the client to hang up and
then says `http.disconnect`, which is how a waiting acquire learns its caller left. Answers are
buffered and sent with Content-Length (none, and no body, on 204 and 304).
Bounds: head bytes (counted as they are fed, since httptools reports a header line only once it
ends), body bytes, a deadline for a request's head, an idle keep-alive timeout, a write timeout
for clients that stop reading, open connections, and backpressure: at most
HTTP_PIPELINE_DEPTH parsed requests wait behind the one being answered, and then neither
parsing nor reading goes on until the answers catch up. After a refusal the connection
lingers (HTTP_LINGER_MS) so the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
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

from .limits import HTTP_LINGER_MS, HTTP_PARSE_SLICE_BYTES, HTTP_PIPELINE_DEPTH, HTTP_WRITE_TIMEOUT_MS

log = logging.getLogger("lockgate.http")

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 304: b"Not Modified", 400: b"Bad Request",
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
    write_timeout_s: float = HTTP_WRITE_TIMEOUT_MS / 1000  # answers waiting for a client that does not read


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FIELDS_READ_HERE = frozenset((b"host", b"content-length", b"expect"))


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
        self._refused = False  # closing after a refusal: linger (see _close_after_writing)
        self._writable = asyncio.Event()
        self._writable.set()
        self.disconnected: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._unparsed: memoryview | None = None  # read but not parsed yet: the queue was full
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0  # of the request line and the header lines httptools has reported
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_message = False
        self._header_count = 0  # fields past it are trailer fields: dropped
        self._version = "1.1"
        self._host_count = 0
        self._declared_length: bytes | None = None
        self._expects_continue = False
        self._continue_owed = False  # a 100 Continue held back until the answers ahead of it are out
        # A head line is reported only once it ends, so bytes fed while the parser sits inside a
        # head (or a trailer section) are counted too: a slice fed wholly inside one, with no
        # head opened or closed on the way (same epoch), counts all its bytes. A lower bound on
        # the head's size, so it never refuses a head within the limit.
        self._head_open = False
        self._head_epoch = 0
        self._head_fed_bytes = 0

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
        if self._unparsed is not None:
            # Reading was paused, yet the transport had this in hand already: keep it in order.
            data = bytes(self._unparsed) + data
            self._unparsed = None
        elif len(data) <= HTTP_PARSE_SLICE_BYTES and not self._head_open:
            # Nearly every read: one request or a few, from a request's first byte. Nothing to
            # slice, and no head open before it whose bytes _feed would count.
            try:
                self._parser.feed_data(data)
            except Exception as error:
                offset = self._parse_failed(error, len(data))
                if offset < len(data) and not (self._closing or self._deaf):
                    self._feed(memoryview(data)[offset:])
            return
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse what was read, a slice at a time, until all of it is parsed or the queue is full.

        True if the queue filled first and the rest was kept back.

        httptools parses all it is given, and pausing the transport does not stop it, so a read
        full of pipelined requests is handed over in slices; what is left when the queue fills
        is kept and fed when it drains.
        """
        size = len(data)
        start = 0
        while start < size:
            piece = memoryview(data)[start : start + HTTP_PARSE_SLICE_BYTES]  # a view, not a copy
            head_was_open, head_epoch = self._head_open, self._head_epoch
            try:
                self._parser.feed_data(piece)
                start += len(piece)
            except Exception as error:
                start += self._parse_failed(error, len(piece))
            if self._closing or self._deaf:
                return False
            if self._head_open and head_was_open and head_epoch == self._head_epoch:
                self._head_fed_bytes += len(piece)
                if self._head_fed_bytes > self._limits.header_bytes_max:
                    self._refuse(431, self._head_limit_detail())
                    return False
            if len(self._queue) >= HTTP_PIPELINE_DEPTH and start < size:
                self._unparsed = memoryview(data)[start:]
                return True
        return False

    def _parse_failed(self, error: Exception, size: int) -> int:
        """What the parser raised, on a piece of `size` bytes: how far parsing got (all of it
        after a refusal, which closes the connection or makes it deaf)."""
        if isinstance(error, httptools.HttpParserUpgrade):
            # Only HTTP/1.1 here. RFC 9110 lets a server ignore Upgrade: the request was parsed
            # and is answered as it is; what follows is HTTP/1.1 again (fed on by the caller's
            # loop, not a recursion: one read may hold thousands of them).
            self._parser = httptools.HttpRequestParser(self)
            offset = error.args[0] if error.args else None
            return offset if isinstance(offset, int) else size
        if isinstance(error, httptools.HttpParserCallbackError):
            refusal = error.__context__
            if isinstance(refusal, _Refused):
                self._refuse(refusal.status, refusal.detail)
            else:
                # Our bug, not the client's: answer it rather than let the transport die with
                # the answers queued ahead of it.
                log.error("failed to read a request", exc_info=refusal)
                self._refuse(500, "the server failed to read the request")
        elif isinstance(error, httptools.HttpParserError):
            self._refuse(400, f"malformed HTTP/1.1 request: {error}")
        else:
            raise error
        return size

    def _read_on(self) -> None:
        """The queue has room again: parse what was kept back, then read more if all of it fit."""
        if self._unparsed is not None:
            kept, self._unparsed = self._unparsed, None
            if self._closing or self._deaf:
                return
            if self._feed(kept):
                return
        if self._transport is not None:
            self._transport.resume_reading()

    # --- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._host_count = 0
        self._declared_length = None
        self._expects_continue = False
        self._head_open = True
        self._head_epoch += 1
        self._head_fed_bytes = 0
        if not self._running:
            self._arm(self._limits.read_timeout_s, b"the request did not arrive in time")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        name = name.lower()
        if name in _FIELDS_READ_HERE:  # one set lookup for most fields (this runs per field)
            if name == b"host":
                self._host_count += 1
            elif name == b"content-length":
                if self._declared_length is None:
                    self._declared_length = value
            else:
                self._expects_continue = value.strip().lower() == b"100-continue"  # RFC 9110 10.1.1
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._header_count = len(self._headers)
        version = self._version = self._parser.get_http_version()
        if self._host_count > 1 or (self._host_count == 0 and version != "1.0"):
            raise _Refused(400, "an HTTP/1.1 request needs exactly one Host header (RFC 9112 3.2)")
        if self._declared_length is not None:
            try:
                declared = int(self._declared_length)
            except ValueError:
                declared = 0  # the parser refuses a malformed length itself
            if declared > self._limits.body_bytes_max:
                raise _Refused(413, f"the body may have at most {self._limits.body_bytes_max} bytes")
        if self._expects_continue and version != "1.0":  # RFC 9110 10.1.1: never to an HTTP/1.0 client
            if self._running:
                self._continue_owed = True  # it would land ahead of an answer still owed: later
            else:
                self._write(_CONTINUE)

    def on_chunk_header(self) -> None:
        # After the last (empty) chunk come the trailer fields: a head of sorts, counted the same way.
        self._head_open = True
        self._head_epoch += 1

    def on_chunk_complete(self) -> None:
        self._head_open = False

    def on_body(self, chunk: bytes) -> None:
        self._head_open = False  # a chunk with data: what followed its size line was no trailer
        self._body_bytes += len(chunk)
        if self._body_bytes > self._limits.body_bytes_max:
            raise _Refused(413, f"the body may have at most {self._limits.body_bytes_max} bytes")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._continue_owed = False
        if not self._running:
            self._disarm()
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "the request target is not a path or a URL (CONNECT is not served)") from None
        raw_path = url.path or b"/"  # absolute-form with no path means "/" (RFC 9112 3.2.2)
        if len(self._headers) > self._header_count:
            # Trailer fields: never merged into the headers (RFC 9110 6.5.1), where they could
            # stand in for Authorization or Content-Type. They counted against the head limit.
            del self._headers[self._header_count :]
        path = raw_path.decode("latin-1")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self._version,
            "method": self._parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
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
            if self._transport is not None and len(self._queue) >= HTTP_PIPELINE_DEPTH:
                # Pipelined past what one answer takes: wait for the answers to catch up
                # (_feed stops parsing too).
                self._transport.pause_reading()
            return
        self._running = True
        self._task = self._loop.create_task(self._serve(request))

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.header_bytes_max:
            raise _Refused(431, self._head_limit_detail())

    def _head_limit_detail(self) -> str:
        return f"the request head (or its trailers) may have at most {self._limits.header_bytes_max} bytes"

    # --- running requests -------------------------------------------------------------------------
    async def _serve(self, request: _Request) -> None:
        try:
            while True:
                keep_alive = await self._run(request) and request.keep_alive and not self._closing
                if not keep_alive:
                    self._close_after_writing()
                    return
                if not self._writable.is_set() and not await self._client_reads():
                    return
                if not self._queue:
                    break
                request = self._queue.popleft()
                if len(self._queue) < HTTP_PIPELINE_DEPTH:
                    self._read_on()
        except Exception:
            log.exception("failed serving a connection")
            self._running = False
            self._close_after_writing()
            return
        except BaseException:
            # Cancelled (the loop shutting down): close rather than leave a connection nobody serves.
            self._running = False
            self._close_after_writing()
            raise
        self._running = False
        if not self._in_message:
            self._arm(self._limits.idle_timeout_s, b"")
        else:
            self._arm(self._limits.read_timeout_s, b"the request did not arrive in time")
            if self._continue_owed:
                self._continue_owed = False
                self._write(_CONTINUE)  # nothing is ahead of it any more
        self._read_on()

    async def _client_reads(self) -> bool:
        """Wait for the client to take its answers; if it does not in time, cut it off (False)."""
        try:
            async with asyncio.timeout(self._limits.write_timeout_s):
                await self._writable.wait()
        except TimeoutError:
            self._running = False
            self._closing = True
            self.abort()
            return False
        return True

    async def _run(self, request: _Request) -> bool:
        """Run the app for one request; False if the connection cannot carry another."""
        if request.scope["type"] == _REFUSAL:
            self._write(self._server.problem(request.scope["status"], request.scope["detail"]))
            return False
        exchange = _Exchange(self, request)
        try:
            await self._app(request.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task itself is being cancelled: the loop is shutting down
            # The app let a cancellation of something it awaited escape: an error like any other.
            log.exception("the app raised CancelledError serving %s %s", request.scope["method"], request.scope["path"])
            return self._failed(exchange)
        except Exception:
            log.exception("unhandled error serving %s %s", request.scope["method"], request.scope["path"])
            return self._failed(exchange)
        if not exchange.finished:
            if self.disconnected.done():
                return False  # nobody left to answer
            log.error("no answer to %s %s", request.scope["method"], request.scope["path"])
            return self._failed(exchange)
        return not exchange.closes

    def _failed(self, exchange: _Exchange) -> bool:
        """The app failed: a 500 if none of its answer was written (answers go out whole, once finished)."""
        if not exchange.finished:
            self._write(self._server.problem(500, "the server failed to answer"))
        return False

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # --- closing ----------------------------------------------------------------------------------
    def _refuse(self, status: int, detail: str) -> None:
        """A request we will not serve: answer it, then close (what follows it cannot be trusted)."""
        self._refused = True
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
        self._unparsed = None
        self._disarm()
        if self._transport is not None and self._refused and self._transport.can_write_eof():
            # The client may still be sending what was refused (a body past the limit). Closed
            # with its bytes unread, the kernel answers them with a reset, which can destroy the
            # refusal before the client reads it: send the answer and FIN, drop what still comes
            # (data_received ignores it while closing), close when the client does or at the limit.
            self._transport.write_eof()
            self._transport.resume_reading()
            self._timer = self._loop.call_later(HTTP_LINGER_MS / 1000, self.abort)
        elif self._transport is not None:
            self._transport.close()  # sends what is buffered first
            if self._transport.get_write_buffer_size():
                # ...which a client that does not read would put off for ever.
                self._timer = self._loop.call_later(self._limits.write_timeout_s, self.abort)

    def go_idle_or_close(self) -> None:
        """Stopping: close now if idle; a connection with a request in flight closes after it."""
        if not self._running:
            self._close_after_writing()
            return
        self._queue.clear()
        self._unparsed = None
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
        "_bodiless", "_body_sent", "_chunks", "_connection", "_head", "_length_given", "_request", "closes", "finished",
        "started",
    )  # fmt: skip

    def __init__(self, connection: HttpConnection, request: _Request) -> None:
        self._connection = connection
        self._request = request
        self._body_sent = False
        self._head: bytes = b""
        self._chunks: list[bytes] = []
        self._length_given = False
        self._bodiless = False
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
        if status < 200:
            # It would read as an interim answer, and the next answer as this one's.
            raise RuntimeError("an interim (1xx) status cannot be the answer")
        # RFC 9112 6.3: a 204 or 304 ends at its head, whatever it declares; a body would be read
        # as the next answer. A 304 may carry the length the full answer would have; a 204 never.
        self._bodiless = status == 204 or status == 304
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")), _Clock.date_header()]
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                if status == 204:
                    continue  # RFC 9110 8.6
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
        if self._bodiless:
            self._connection._write(self._head + b"\r\n")
            return
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


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
