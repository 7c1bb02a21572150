"""The background renewer never dies silently: whatever a renewal attempt raises is a failed
attempt, retried until the lease's bound, and then the lease is lost the documented way
(`lease.lost`, `on_lost`, and with `cancel_on_loss` the guarded block is cancelled).

Before, a garbled status line answered to a renewal raised IndexError in the async client,
which ended the renewal task: the lease stayed `lost=False` and nobody was told.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from lockgate import AsyncClient, Client, Lease, LeaseLost
from raw_http import RawServer, ok

TTL_S = 0.6
GRANT = ok({"lease_id": "L1", "token": 1, "ttl_ms": int(TTL_S * 1000), "permits": 1, "lsn": 1})
GARBLED = b"HTTP/1.1\r\n\r\n"  # a broken proxy's status line, answered to every renewal


async def test_async_a_garbled_answer_to_renewals_loses_the_lease_the_documented_way() -> None:
    with RawServer([GRANT] + [GARBLED] * 50) as server:
        async with AsyncClient(server.url) as lg:
            lost: list[Lease] = []
            context = lg.lock("job", ttl=TTL_S, on_lost=lost.append)
            lease = await context.acquire()
            renewer = context._renewer
            assert renewer is not None
            await asyncio.wait_for(asyncio.shield(renewer), timeout=3 * TTL_S)
            assert renewer.exception() is None
            assert lease.lost and lost == [lease]
    assert len(server.heads) > 2  # renewed more than once before giving up


async def test_async_cancel_on_loss_fires_after_garbled_renewals() -> None:
    with RawServer([GRANT] + [GARBLED] * 50) as server:
        async with AsyncClient(server.url) as lg:
            with pytest.raises(LeaseLost):
                async with lg.lock("job", ttl=TTL_S, cancel_on_loss=True):
                    await asyncio.sleep(5 * TTL_S)
                    pytest.fail("the guarded block was not cancelled")


async def test_async_an_unexpected_exception_in_a_renewal_is_one_failed_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RawServer([GRANT]) as server:
        async with AsyncClient(server.url) as lg:
            lost: list[Lease] = []
            context = lg.lock("job", ttl=TTL_S, on_lost=lost.append)
            lease = await context.acquire()
            attempts = 0

            async def broken(*args: Any, **kwargs: Any) -> Any:
                nonlocal attempts
                attempts += 1
                raise RuntimeError("a bug")

            lg.run = broken  # type: ignore[method-assign]
            renewer = context._renewer
            assert renewer is not None
            with caplog.at_level(logging.WARNING, logger="lockgate"):
                await asyncio.wait_for(asyncio.shield(renewer), timeout=3 * TTL_S)
            assert renewer.exception() is None
            assert lease.lost and lost == [lease]
            assert attempts > 1  # retried until the bound, not given up at the first
            assert "RuntimeError" in caplog.text
            del lg.run  # closing releases the lost lease for real (to a 500)


def test_sync_an_unexpected_exception_in_a_renewal_is_one_failed_attempt() -> None:
    with RawServer([GRANT]) as server, Client(server.url) as lg:
        lost = threading.Event()
        context = lg.lock("job", ttl=TTL_S, on_lost=lambda lease: lost.set())
        lease = context.acquire()
        attempts = 0

        def broken(*args: Any, **kwargs: Any) -> Any:
            nonlocal attempts
            attempts += 1
            raise RuntimeError("a bug")

        lg.run = broken  # type: ignore[method-assign]
        assert lost.wait(3 * TTL_S)
        assert lease.lost and attempts > 1
        renewer = context._renewer
        assert renewer is not None
        renewer.join(1.0)
        assert not renewer.is_alive()
        del lg.run  # the release goes out for real (to a 500)
        started = time.monotonic()
        context.release()  # a lost lease: released briefly, never raising
        assert time.monotonic() - started < 2.0
