"""Opening the commit connection is bounded: a store that accepts the connection but never
answers its handshake (SELECT of a db index, AUTH) is given up after the timeout, and the
half-open connection carries no commit.

Before, the handshake waited with no bound, ahead of the commit's own reply timer: after a
store stall every later commit's callers waited as long as the store was away, with no 503.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from lockgate_server.storage.embedded import EmbeddedValkey, free_port
from lockgate_server.storage.resp import RespConnection, pack

CONNECT_TIMEOUT_S = 0.3


async def _silent_store(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # takes every command and answers none, until the client leaves
    writer.close()


async def test_a_handshake_the_store_never_answers_times_out_and_is_dropped() -> None:
    port = free_port()
    server = await asyncio.start_server(_silent_store, "127.0.0.1", port)
    try:
        connection = RespConnection(f"redis://127.0.0.1:{port}/1", connect_timeout_s=CONNECT_TIMEOUT_S)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.connect(), timeout=5)
        assert time.monotonic() - started < 2
        with pytest.raises(ConnectionError):  # not left half-open, where a commit would go to db 0
            connection.send(pack("PING"))
    finally:
        server.close()
        await server.wait_closed()


async def test_a_paused_store_then_back_is_reconnected(valkey: EmbeddedValkey) -> None:
    connection = RespConnection(f"{valkey.url.rsplit('/', 1)[0]}/1", connect_timeout_s=CONNECT_TIMEOUT_S)
    valkey.pause()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.connect(), timeout=5)
    finally:
        valkey.resume()
    assert await connection.call(pack("SET", "k", "on-db-1")) == b"OK"
    connection.close()
    base = valkey.url.rsplit("/", 1)[0]
    with redis.Redis.from_url(f"{base}/1") as db1, redis.Redis.from_url(f"{base}/0") as db0:
        assert db1.get("k") == b"on-db-1" and db0.get("k") is None  # the reconnect selected db 1
