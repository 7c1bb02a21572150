"""Pooled keep-alive connections the server closed are not failures of the call.

A server closes idle keep-alive connections after its timeout, and a restart closes them
all. A client that takes such a connection from its pool must notice (at checkout, or when
the request gets no byte of an answer on a reused connection) and send again at once on a
fresh connection: with the same request_id, without spending an attempt, and without moving
off a healthy node. Each test allows one attempt and gives a dead second node, so a spent
attempt or a move to the next node fails the call.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from faulty_proxy import FaultyProxy, request_ids
from lockgate import AsyncClient, Client, RetryPolicy

if TYPE_CHECKING:
    from conftest import ServerFactory, ServerProcess

ONE_ATTEMPT = RetryPolicy(attempts=1)
IDLE_TIMEOUT_S = 0.3
POOL = 16


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A bound port nobody listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{probe.getsockname()[1]}"


async def test_async_connections_closed_while_idle_are_replaced(
    server: ServerProcess, namespace: str, dead_url: str
) -> None:
    async with (
        FaultyProxy(server.port, idle_timeout_s=IDLE_TIMEOUT_S) as proxy,
        AsyncClient([proxy.url, dead_url], namespace=namespace, retry=ONE_ATTEMPT, batching=False) as lg,
    ):
        counter = lg.counter("n")
        assert sorted(await asyncio.gather(*(counter.add(1) for _ in range(POOL)))) == list(range(1, POOL + 1))
        pooled = proxy.connections
        assert pooled > 1
        await asyncio.sleep(IDLE_TIMEOUT_S * 2)  # the "server" has closed every pooled connection
        assert await counter.get() == POOL
        assert await counter.add(1) == POOL + 1  # still on the first node
        assert proxy.connections == pooled + 1  # one fresh connection, reused for the add


def test_sync_connections_closed_while_idle_are_replaced(server: ServerProcess, namespace: str, dead_url: str) -> None:
    async def scenario() -> None:
        async with FaultyProxy(server.port, idle_timeout_s=IDLE_TIMEOUT_S) as proxy:
            with Client([proxy.url, dead_url], namespace=namespace, retry=ONE_ATTEMPT) as lg:
                counter = lg.counter("n")
                with ThreadPoolExecutor(4) as pool:
                    await asyncio.gather(*(asyncio.wrap_future(pool.submit(counter.add, 1)) for _ in range(POOL)))
                assert proxy.connections >= 1
                await asyncio.sleep(IDLE_TIMEOUT_S * 2)
                assert await asyncio.to_thread(counter.get) == POOL
                assert await asyncio.to_thread(counter.add, 1) == POOL + 1

    asyncio.run(scenario())


async def test_async_reused_connection_closed_under_the_request_is_sent_again(
    server: ServerProcess, namespace: str, dead_url: str
) -> None:
    """The close races the request: nothing to see at checkout, no byte of an answer comes."""
    async with (
        FaultyProxy(server.port, refuse_reused=1) as proxy,
        AsyncClient([proxy.url, dead_url], namespace=namespace, retry=ONE_ATTEMPT) as lg,
    ):
        assert await lg.counter("n").add(1) == 1
        assert await lg.counter("n").add(2) == 3
        adds = proxy.requests_to("/add")
        assert [seen.fate for seen in adds] == ["forwarded", "refused", "forwarded"]
        assert len(request_ids(adds[1:])) == 1  # sent again with the same request_id
        assert await lg.counter("n").add(1) == 4  # and the client stayed on the first node


def test_sync_reused_connection_closed_under_the_request_is_sent_again(
    server: ServerProcess, namespace: str, dead_url: str
) -> None:
    async def scenario() -> None:
        async with FaultyProxy(server.port, refuse_reused=1) as proxy:
            with Client([proxy.url, dead_url], namespace=namespace, retry=ONE_ATTEMPT) as lg:
                assert await asyncio.to_thread(lg.counter("n").add, 1) == 1
                assert await asyncio.to_thread(lg.counter("n").add, 2) == 3
                adds = proxy.requests_to("/add")
                assert [seen.fate for seen in adds] == ["forwarded", "refused", "forwarded"]
                assert len(request_ids(adds[1:])) == 1
                assert await asyncio.to_thread(lg.counter("n").add, 1) == 4

    asyncio.run(scenario())


async def test_a_full_pool_survives_a_server_restart(start_server: ServerFactory, dead_url: str) -> None:
    """The reviewer's repro: a full pool, then every connection closed by a restart."""
    server = start_server()
    async with AsyncClient([server.url, dead_url], namespace="restart", retry=ONE_ATTEMPT, batching=False) as lg:
        counter = lg.counter("n")
        await asyncio.gather(*(counter.add(1) for _ in range(32)))
        await asyncio.to_thread(server.restart)
        assert await counter.get() == 32
    with Client([server.url, dead_url], namespace="restart", retry=ONE_ATTEMPT) as sync_lg:
        assert sync_lg.counter("n").add(1) == 33
        await asyncio.to_thread(server.restart)
        assert await asyncio.to_thread(sync_lg.counter("n").get) == 33
