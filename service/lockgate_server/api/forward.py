"""A standby answers by forwarding: each request goes, as it came, to the node that owns the shards.

So every node of a deployment answers every request, and a load balancer (or a Kubernetes
Service) may send to any of them. The owner authenticates the request again with the
caller's own key; the standby adds nothing a caller could not send, except the header that
stops a forwarded request from being forwarded again (two standbys during a takeover).

Whole requests are relayed, not single ops batched per peer as DESIGN.md describes for
partitioned ownership: while one node owns every shard, a standby's traffic all goes to the
same peer, and relaying keeps each route's answer (status, RateLimit headers) exactly as the
owner gives it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from .. import limits
from ..engine.node import Engine
from ..errors import LockgateError, OutcomeUnknown, RequestError, Unavailable
from ..gateway.asgi import read_body
from ..settings import Settings
from . import problems
from .dispatch import MSGPACK, Receive, Scope, Send, send_problem, wait_disconnect
from .metrics import Metrics

FORWARDED_BY = b"lockgate-forwarded-by"
"""Set on a relayed request (so it is never relayed twice) and on the answer the caller gets."""

# Headers about one connection, not the request: never relayed (RFC 9110 section 7.6.1),
# and the length is set anew. Expect too: this node's server already answered it to the
# caller and read the whole body, and the owner's `100 Continue` would only be one more head
# to read before its answer.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"host", b"content-length", b"expect"}
)  # fmt: skip
# Written on every answer by this node's own HTTP server: the owner's would make it two.
_SET_BY_OUR_SERVER = frozenset({b"date"})
# Answers that end at their head whatever length they declare (RFC 9112 section 6.3).
_BODILESS_STATUSES = frozenset({204, 304})
_CLIENT_IP_HEADERS = (b"x-forwarded-for", b"x-real-ip")


class LocalAnswer(Protocol):
    """Routes that have an answer of their own when the active node gives none in time: the
    gateway's decisions, whose domain's failure_mode decides, as when the store is away."""

    def relay_timeout_s(self, scope: Scope, body: bytes) -> float: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class Forwarder:
    """Relays a standby's requests to the owner, over a small keep-alive pool per owner."""

    def __init__(self, settings: Settings, engine: Callable[[], Engine | None], metrics: Metrics) -> None:
        self._settings = settings
        self._engine = engine
        self._answered = metrics.relayed.labels("answered")  # whatever the active node's status
        self._failed = metrics.relayed.labels("failed")  # the active node could not be asked, or did not answer
        self._slots = asyncio.Semaphore(settings.forward_connections_max)
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._owner: tuple[str | None, float] = (None, 0.0)  # the owner's URL, and until when we trust it

    @property
    def standing_by(self) -> bool:
        engine = self._engine()
        return engine is not None and engine.standing_by

    @staticmethod
    def relayed_before(scope: Scope) -> bool:
        return any(name == FORWARDED_BY for name, _ in scope["headers"])

    async def refuse_relayed(self, scope: Scope, send: Send) -> None:
        """A request relayed to this standby: never relayed again (no loops while the owner
        moves), and never decided here either. Anyone can send the header, and a gateway check
        decided on a standby falls back to its domain's failure_mode: `allow` would let a
        client that adds the header past every limit."""
        refusal = Unavailable("this node is a standby and does not serve relayed requests; retry at the active node")
        await send_problem(send, problems.problem_for(refusal), _wants_msgpack(scope["headers"]))

    async def owner_url(self) -> str | None:
        """The URL of the node serving the shards, if a live one announced it (briefly cached)."""
        url, fresh_until = self._owner
        if time.monotonic() < fresh_until:
            return url
        engine = self._engine()
        url = await engine.owner_url() if engine is not None else None
        self._owner = (url, time.monotonic() + limits.FORWARD_OWNER_CACHE_MS / 1000)
        for gone in [known for known in self._idle if known != url]:  # a former owner's
            for _, writer in self._idle.pop(gone):
                writer.close()
        return url

    async def _active_url(self) -> str:
        url = await self.owner_url()
        if url is None:
            raise Unavailable("this node is a standby and no live node owns the shards right now; retry")
        return url

    async def __call__(self, scope: Scope, receive: Receive, send: Send, local: LocalAnswer | None = None) -> None:
        headers = scope["headers"]
        wants_msgpack = _wants_msgpack(headers)
        body = b""
        try:
            body = await read_body(receive, dict(headers), self._settings.max_body_bytes)
            url = await self._active_url()
            timeout_s = local.relay_timeout_s(scope, body) if local is not None else self._longest_answer_s()
            relay = asyncio.ensure_future(self._exchange(url, scope, body, timeout_s))
            left = asyncio.ensure_future(wait_disconnect(receive))
            try:
                await asyncio.wait({relay, left}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                left.cancel()
                if not relay.done():
                    # The caller left: dropping our connection tells the owner, which ends a
                    # blocking acquire there as it would for the caller.
                    relay.cancel()
            if not relay.done() or relay.cancelled():
                return
            status, answer_headers, answer = relay.result()
        except LockgateError as error:
            self._failed.inc()
            if local is not None and not isinstance(error, RequestError):
                await local(scope, _replayed(body, receive), send)
            else:
                await send_problem(send, problems.problem_for(error), wants_msgpack)
            return
        self._answered.inc()
        answer_headers.append((FORWARDED_BY, self._node_id().encode()))
        if not any(name == b"content-length" for name, _ in answer_headers):  # kept only where no body follows
            answer_headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": answer_headers})
        await send({"type": "http.response.body", "body": answer})

    def _longest_answer_s(self) -> float:
        """The longest blocking acquire the owner holds open, then its commit."""
        return (self._settings.max_wait_ms + self._settings.commit_timeout_ms) / 1000 + limits.FORWARD_SLACK_S

    def _node_id(self) -> str:
        engine = self._engine()
        return engine.node_id if engine is not None else ""

    async def relay(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes, timeout_s: float
    ) -> tuple[int, bytes]:
        """One request to the active node for a caller that is not HTTP (the gRPC service):
        its status and body; LockgateError when it cannot be asked or did not answer in time."""
        scope = {"method": method, "path": path, "query_string": b"", "headers": headers}
        try:
            status, _, answer = await self._exchange(await self._active_url(), scope, body, timeout_s)
        except LockgateError:
            self._failed.inc()
            raise
        self._answered.inc()
        return status, answer

    async def owner_ready(self) -> str | None:
        """The owner's URL if it answers that it serves the shards now: a relay would be answered."""
        probe = {"method": "GET", "path": "/readyz", "query_string": b"active=1", "headers": []}
        try:
            url = await self.owner_url()
            if url is None:
                return None
            status, _, _ = await self._exchange(url, probe, b"", self._settings.forward_connect_timeout_ms / 1000)
        except LockgateError:
            return None
        return url if status == 200 else None

    async def _exchange(
        self, url: str, scope: Scope, body: bytes, timeout_s: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request to the owner; the owner's status, headers (hop-by-hop ones left out) and body."""
        parts = urlsplit(url)
        connect_timeout_s = self._settings.forward_connect_timeout_ms / 1000
        try:
            async with asyncio.timeout(connect_timeout_s):
                await self._slots.acquire()
        except TimeoutError as error:
            limit = self._settings.forward_connections_max
            raise Unavailable(f"this standby's {limit} connections to the active node are all busy") from error
        try:
            connection = await self._connection(url, parts.hostname or "127.0.0.1", parts.port or 80)
            reader, writer = connection
            sent = False
            try:
                async with asyncio.timeout(timeout_s):
                    writer.write(self._request_head(scope, parts.netloc, len(body)) + body)
                    sent = True
                    status, answer_headers, answer, keep_alive = await _read_answer(reader, method=scope["method"])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as error:
                writer.close()
                self._owner = (None, 0.0)  # look the owner up again: it may have changed
                if sent:
                    raise OutcomeUnknown(
                        f"the active node did not answer the relayed request ({error!r}); "
                        "retry with the same request_id"
                    ) from error
                raise Unavailable(f"this node is a standby and cannot reach the active node: {error!r}") from error
            except BaseException:
                writer.close()  # cancelled mid-request: the connection's state is unknown
                raise
            if keep_alive:
                self._idle.setdefault(url, []).append(connection)
            else:
                writer.close()
        finally:
            self._slots.release()
        return status, answer_headers, answer

    async def _connection(self, url: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        idle = self._idle.get(url)
        while idle:
            reader, writer = idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        try:
            async with asyncio.timeout(self._settings.forward_connect_timeout_ms / 1000):
                return await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as error:
            self._owner = (None, 0.0)
            raise Unavailable(f"this node is a standby and cannot reach the active node at {url}: {error!r}") from error

    def _request_head(self, scope: Scope, netloc: str, length: int) -> bytes:
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        lines = [b"%s %s HTTP/1.1" % (scope["method"].encode(), target), b"host: " + netloc.encode()]
        lines += [name + b": " + value for name, value in scope["headers"] if name not in _HOP_BY_HOP]
        lines.append(b"content-length: %d" % length)
        lines.append(FORWARDED_BY + b": " + self._node_id().encode())
        client = scope.get("client")
        if client and not any(name in _CLIENT_IP_HEADERS for name, _ in scope["headers"]):
            # Gateway keys may be built from the caller's address: keep it the caller's, not ours.
            lines.append(b"x-real-ip: " + str(client[0]).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def close(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()


def _wants_msgpack(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"accept" and MSGPACK in value for name, value in headers)


def _replayed(body: bytes, receive: Receive) -> Receive:
    """`receive` for a handler that runs after the body was read: the body first, then the rest."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


async def _read_answer(
    reader: asyncio.StreamReader, *, method: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """The owner's final answer to a `method` request: status, headers (those about the
    connection, or that our server writes itself, left out), body, and whether the
    connection may carry another request."""
    status = 0
    while status < 200:
        # Interim answers (RFC 9110 section 15.2) may come first; each ends at its head. Never
        # a 101: Upgrade is not relayed.
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        try:
            status = int(status_line.split(b" ", 2)[1])
        except IndexError:
            raise ValueError(f"not an HTTP status line: {status_line[:80]!r}") from None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked, keep_alive = False, True
    for line in header_lines:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
        elif name == b"connection":
            keep_alive = value.lower() != b"close"
        if name not in _HOP_BY_HOP and name not in _SET_BY_OUR_SERVER:
            headers.append((name, value))
    if method == "HEAD" or status in _BODILESS_STATUSES:
        if length is not None:
            # Not this answer's framing but the length a GET's body (or a 200's) would have:
            # relayed as the owner gave it.
            headers.append((b"content-length", b"%d" % length))
        return status, headers, b"", keep_alive
    if length is not None:
        return status, headers, await reader.readexactly(length), keep_alive
    if chunked:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, b"".join(chunks), keep_alive
            chunks.append(chunk[:-2])
    return status, headers, await reader.read(), False
