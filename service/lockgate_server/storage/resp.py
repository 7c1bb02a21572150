"""A bare RESP connection for the commit path.

A commit is one EVALSHA with a few hundred arguments, sent once per tick. Profiling showed
redis-py's command packing and encoding at ~15% of the node's CPU, all of it inside the
commit cycle every caller waits on; packing the bytes ourselves and parsing replies with
hiredis (redis-py's own accelerator) removes most of that. Only what commits need:
connect (AUTH, SELECT), send one command, read one reply.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url


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


class RespConnection:
    def __init__(self, url: str) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def _connect(self) -> None:
        options = self._options
        self._reader, self._writer = await asyncio.open_connection(
            options.get("host", "127.0.0.1"), int(options.get("port", 6379))
        )
        self._parser = hiredis.Reader()
        password = options.get("password")
        if password:
            username = options.get("username")
            await self._call(pack("AUTH", username, password) if username else pack("AUTH", password))
        if int(options.get("db", 0)):
            await self._call(pack("SELECT", int(options["db"])))

    async def call(self, packed: bytes) -> Any:
        if self._writer is None:
            await self._connect()
        try:
            return await self._call(packed)
        except BaseException:
            self.close()  # a half-read reply leaves the stream unusable
            raise

    async def _call(self, packed: bytes) -> Any:
        assert self._reader is not None and self._writer is not None
        self._writer.write(packed)
        while True:
            reply = self._parser.gets()
            if reply is not False:
                break
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("the store closed the connection")
            self._parser.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise RespError(str(reply))
        return reply

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
