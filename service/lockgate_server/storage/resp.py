"""A bare, pipelined RESP connection for the commit path.

A commit is one EVALSHA with a few hundred arguments. Profiling showed redis-py's command
packing and encoding at ~15% of the node's CPU, all of it inside the commit cycle every
caller waits on; packing the bytes ourselves and parsing replies with hiredis (redis-py's
own accelerator) removes most of that. Commits are pipelined: the next one is written
before the previous reply arrives, and replies come back in the order sent, so each
`send` gets a future that the connection's protocol resolves in order. Any failure closes the connection
and fails every outstanding future: after that nobody can tell which replies belong to
whom, so every outstanding outcome is unknown.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url


class RespError(Exception):
    """An error reply from the server (e.g. NOSCRIPT)."""


def pack(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def bulk(data: bytes) -> bytes:
    """One RESP bulk string; the commit path joins these itself instead of calling `pack`."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def int_bulk(value: int) -> bytes:
    return bulk(b"%d" % value)


def tls_context(options: dict[str, Any]) -> ssl.SSLContext | None:
    """For a rediss:// URL, the TLS settings redis-py reads from the same URL (so both of the
    node's connections to the store agree): ssl_ca_certs, ssl_certfile/ssl_keyfile for client
    certificates, ssl_cert_reqs (required by default; none turns verification off) and
    ssl_check_hostname (on unless verification is off)."""
    if options.get("connection_class") is not SSLConnection:
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_OPTIONAL if requirement == "optional" else ssl.CERT_REQUIRED
        check = str(options.get("ssl_check_hostname", "true")).lower()
        context.check_hostname = check not in ("false", "0", "no")
    return context


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Replies(asyncio.Protocol):
    """One connection's replies, matched in order to the futures of what was sent on it.

    Parsed as the bytes arrive, in the transport's callback: a reader task on a StreamReader
    woke one loop turn later for every reply, and every commit's callers waited for that turn.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._parser = hiredis.Reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                future = self.waiting.popleft()
                if future.done():
                    continue  # its caller stopped waiting
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(RespError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as failure:
            self.fail_all(ConnectionError(f"commit connection failed: {failure!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc!r}" if exc is not None else ""
        self.fail_all(ConnectionError(f"the store closed the connection{reason}"))

    def fail_all(self, error: BaseException) -> None:
        """Every reply still awaited fails; nobody can tell any more which reply is whose."""
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class RespConnection:
    def __init__(self, url: str, *, connect_timeout_s: float) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._connect_timeout_s = connect_timeout_s
        self._replies: _Replies | None = None
        self._connecting: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        if self._open_replies() is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    def _open_replies(self) -> _Replies | None:
        replies = self._replies
        if replies is not None and (replies.transport is None or replies.transport.is_closing()):
            self._replies = replies = None  # the store closed it: the next commit reconnects
        return replies

    async def _open(self) -> None:
        """Bounded: commits wait on it before their own reply timer starts, and a store that
        stops answering mid-handshake would hold them (and every commit after) for good."""
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._handshake()
        except BaseException:
            self.close()  # not yet authenticated or on its database: it must carry no commit
            raise

    async def _handshake(self) -> None:
        options = self._options
        loop = asyncio.get_running_loop()
        if "path" in options:  # unix://, as redis-py's own connections (claims, renewals) take it
            _, self._replies = await loop.create_unix_connection(_Replies, options["path"])
        else:
            _, self._replies = await loop.create_connection(
                _Replies, options.get("host", "127.0.0.1"), int(options.get("port", 6379)), ssl=tls_context(options)
            )
        password = options.get("password")
        if password:
            username = options.get("username")
            await self.send(pack("AUTH", username, password) if username else pack("AUTH", password))
        if int(options.get("db", 0)):
            await self.send(pack("SELECT", int(options["db"])))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one command now; the future gets its reply (or the connection's failure)."""
        replies = self._open_replies()
        if replies is None or replies.transport is None:
            raise ConnectionError("not connected")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting (a stopped node) must not leave an unretrieved error.
        future.add_done_callback(_retrieve)
        replies.waiting.append(future)
        replies.transport.write(packed)
        return future

    async def call(self, packed: bytes) -> Any:
        await self.connect()
        return await self.send(packed)

    def close(self) -> None:
        """Drop the connection; every reply still awaited fails (its outcome is unknown)."""
        replies, self._replies = self._replies, None
        if replies is not None:
            replies.fail_all(ConnectionError("the commit connection was closed"))
