"""gRPC unary calls over our HTTP/2 connection (grpc/doc/PROTOCOL-HTTP2.md).

A call is a POST to `/<service>/<method>` with `content-type: application/grpc`, one
length-prefixed message in, one out, and `grpc-status` in the trailers. Errors are
"trailers-only" answers. `grpc-timeout` bounds the call (DEADLINE_EXCEEDED); a client that
resets the stream cancels it. Messages must be uncompressed (we announce `identity` only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from .http2 import ConnectionLimits, Http2ServerConnection, Stream, header_block

log = logging.getLogger("lockgate.gateway")

Metadata = dict[bytes, bytes]
"""A call's request headers by (lowercase) name, pseudo-headers included."""


class StatusCode(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class Abort(Exception):
    """Ends a call with `code` (never OK) and `detail` as its grpc-message."""

    def __init__(self, code: StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class UnaryMethod:
    """A method's message codecs and its handler: (request, metadata) -> response."""

    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    handler: Callable[[Any, Metadata], Awaitable[Any]]


_ANSWER_HEADERS: Final = header_block([(b":status", b"200"), (b"content-type", b"application/grpc")])
_OK_TRAILERS: Final = header_block([(b"grpc-status", b"0")])
_TIMEOUT_UNITS_S: Final = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def grpc_timeout_s(value: bytes) -> float | None:
    """`grpc-timeout` in seconds: 1 to 8 digits and a unit; None if it is not one."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or not unit:
        return None
    scale = _TIMEOUT_UNITS_S.get(unit[0])
    return None if scale is None else int(digits) * scale


def status_block(code: StatusCode, detail: str, *, with_answer_headers: bool) -> bytes:
    # grpc-message is percent-encoded UTF-8: every byte outside printable ASCII, and '%'.
    message = urllib.parse.quote(detail, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8")
    headers = [(b"grpc-status", str(int(code)).encode()), (b"grpc-message", message.encode("ascii"))]
    if code == StatusCode.UNIMPLEMENTED:
        headers.append((b"grpc-accept-encoding", b"identity"))
    if with_answer_headers:
        headers = [(b":status", b"200"), (b"content-type", b"application/grpc"), *headers]
    return header_block(headers)


class GrpcConnection(Http2ServerConnection):
    def __init__(
        self, methods: Mapping[bytes, UnaryMethod], limits: ConnectionLimits, *, refusal: str | None = None
    ) -> None:
        super().__init__(limits, refusal=refusal)
        self._methods = methods

    def request_received(self, stream: Stream) -> None:
        metadata = dict(stream.headers)
        timeout = metadata.get(b"grpc-timeout")
        timeout_s = None if timeout is None else grpc_timeout_s(timeout)
        refusal = self._refusal(stream, metadata)
        if refusal is None and timeout is not None and timeout_s is None:
            refusal = StatusCode.INTERNAL, "a malformed grpc-timeout"
        if refusal is not None:
            self._answer_status(stream, *refusal)
            return
        method = self._methods[metadata[b":path"]]
        stream.task = asyncio.get_running_loop().create_task(self._call(stream, method, metadata, timeout_s))

    def _refusal(self, stream: Stream, metadata: Metadata) -> tuple[StatusCode, str] | None:
        """Why the call cannot run, as grpc-core's server would say it; None if it can."""
        if stream.body_too_large:
            return StatusCode.RESOURCE_EXHAUSTED, f"a request message of more than {self.limits.body_bytes_max} bytes"
        if metadata.get(b":method") != b"POST" or not metadata.get(b"content-type", b"").startswith(
            b"application/grpc"
        ):
            return StatusCode.UNIMPLEMENTED, "not a gRPC request (POST with content-type application/grpc)"
        if metadata.get(b":path") not in self._methods:
            return StatusCode.UNIMPLEMENTED, f"unknown method {metadata.get(b':path', b'').decode('latin-1')}"
        body = stream.body
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            return StatusCode.INTERNAL, "a unary call carries exactly one length-prefixed message"
        if body[0] != 0:
            return StatusCode.UNIMPLEMENTED, "compressed messages are not accepted (grpc-accept-encoding: identity)"
        return None

    async def _call(self, stream: Stream, method: UnaryMethod, metadata: Metadata, timeout_s: float | None) -> None:
        try:
            try:
                request = method.decode(bytes(memoryview(stream.body)[5:]))
            except Exception as error:  # protobuf's DecodeError, and whatever a codec raises
                raise Abort(StatusCode.INTERNAL, f"the request message does not parse: {error}") from error
            try:
                async with asyncio.timeout(timeout_s) as deadline:
                    response = await method.handler(request, metadata)
            except TimeoutError:
                if not deadline.expired():
                    raise  # the handler's own, a failure like any other
                raise Abort(StatusCode.DEADLINE_EXCEEDED, "the call's grpc-timeout passed") from None
            message = method.encode(response)
        except Abort as abort:
            self._answer_status(stream, abort.code, abort.detail)
            return
        except Exception:
            log.exception("a gRPC handler failed")
            self._answer_status(stream, StatusCode.INTERNAL, "the server failed to answer")
            return
        self.respond(stream, _ANSWER_HEADERS, b"\x00" + len(message).to_bytes(4, "big") + message, _OK_TRAILERS)

    def _answer_status(self, stream: Stream, code: StatusCode, detail: str) -> None:
        self.respond(stream, status_block(code, detail, with_answer_headers=True), b"", None)


class GrpcServer:
    """Listens on one TCP port; every call runs as a task on the running event loop."""

    def __init__(self, methods: Mapping[str, UnaryMethod], limits: ConnectionLimits, *, connections_max: int) -> None:
        self._methods = {path.encode(): method for path, method in methods.items()}
        self._limits = limits
        self._connections_max = connections_max
        self._connections: set[GrpcConnection] = set()
        self._server: asyncio.Server | None = None

    def _connection(self) -> GrpcConnection:
        full = len(self._connections) >= self._connections_max
        refusal = f"the server holds its most connections ({self._connections_max})" if full else None
        connection = GrpcConnection(self._methods, self._limits, refusal=refusal)
        if full:
            return connection  # it takes no place: it closes itself a moment after its GOAWAY
        self._connections.add(connection)
        connection.closed.add_done_callback(lambda _: self._connections.discard(connection))
        return connection

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._connection, host, port)

    async def stop(self, grace_s: float) -> None:
        """Stop listening, let calls in flight finish for up to `grace_s`, then cut the rest."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.go_away()
        # First every call answered, then each client's close (a client closes once it has read
        # our GOAWAY and its answers), all within the grace; what is left is cut.
        connections = list(self._connections)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(connection.drained for connection in connections))
                await asyncio.gather(*(connection.closed for connection in connections))
        for connection in connections:
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
