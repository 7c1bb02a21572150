"""Closing a client ends the leases it still renews.

Before, `Client.close()` / `AsyncClient.aclose()` closed only the pooled connections: the
renewal thread (or task) reopened one at its next renewal and kept the lease alive for as
long as the process lived, so nobody else could take the lock. Now closing releases those
leases, and a lease the client cannot release (the server is away) is left to its TTL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

from lockgate import AsyncClient, Client

if TYPE_CHECKING:
    from conftest import ServerFactory

TTL_S = 1.0


def _renewers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "lockgate-renew"]


def test_sync_close_releases_the_leases_it_renews(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as other:
        lg = Client(base_url, namespace=namespace)
        lock = lg.lock("job", ttl=TTL_S)
        permits = lg.semaphore("pool", limit=2, ttl=TTL_S)
        lease, permit = lock.acquire(), permits.acquire()
        lg.close()
        assert lease.released and permit.released and not lease.lost
        assert _renewers() == []
        assert not other.lock_status("job").held
        assert other.lock_status("pool", kind="semaphore").permits_used == 0
        time.sleep(2 * TTL_S)  # a renewer still running would have taken the lock back by now
        with other.lock("job", ttl=5, wait=0) as taken:
            assert taken.token > lease.token


async def test_async_close_releases_the_leases_it_renews(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as other:
        lg = AsyncClient(base_url, namespace=namespace)
        lock = lg.lock("job", ttl=TTL_S)
        lease = await lock.acquire()
        await lg.aclose()
        assert lease.released and not lease.lost
        assert not (await other.lock_status("job")).held
        await asyncio.sleep(2 * TTL_S)
        async with other.lock("job", ttl=5, wait=0) as taken:
            assert taken.token > lease.token
        await lock.release()  # leaving the context afterwards is quiet: nothing left to release


def test_sync_close_with_the_server_gone_is_brief_and_leaves_the_lease_to_its_ttl(
    start_server: ServerFactory, namespace: str
) -> None:
    server = start_server()
    lg = Client(server.url, namespace=namespace)
    lease = lg.lock("job", ttl=TTL_S).acquire()
    server.stop()
    started = time.monotonic()
    lg.close()  # does not raise, and does not wait out the retries of a normal release
    assert _renewers() == []
    assert not lease.released
    assert time.monotonic() - started < 5  # a normal release would retry for about 13 s
