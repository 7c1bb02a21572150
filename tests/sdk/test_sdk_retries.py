"""Retries: a lost answer is retried with the same request_id and yields the original result.

A small HTTP/1.1 proxy sits between the client and the server. It forwards every request;
for the ones a test picks it throws the server's answer away and hangs up (the client sees
a dropped connection), or replaces it with a 503. The server has done the work, so a retry
that is not deduplicated would show up as a second lease, a second permit or a double add.

Also: errors that are not retryable (409, 422, 403...) are raised after exactly one request,
retryable ones are retried at most `attempts` times, and a kill -9 + restart of the server
is ridden out by retries and renewal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from faulty_proxy import FaultyProxy, request_ids
from lockgate import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    LockHeld,
    NotOwner,
    OutcomeUnknown,
    RetryPolicy,
)
from lockgate import _core as core

if TYPE_CHECKING:
    from conftest import ServerFactory, ServerProcess

FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)


def _acquire(method: str, path: str) -> bool:
    return path.endswith("/acquire")


# --- a dropped answer, retried --------------------------------------------------------------------
@pytest.mark.parametrize("wait", [0, 2], ids=["no-wait", "waiting"])
async def test_async_retry_after_dropped_acquire_returns_the_original_lease(
    server: ServerProcess, namespace: str, wait: float
) -> None:
    async with (
        FaultyProxy(server.port, drop=_acquire) as proxy,
        AsyncClient(proxy.url, namespace=namespace, retry=FAST_RETRY) as lg,
        AsyncClient(server.url, namespace=namespace) as direct,
    ):
        context = lg.lock("job", ttl=10, wait=wait, auto_renew=False)
        lease = await context.acquire()

        acquires = proxy.requests_to("/acquire")
        assert [seen.fate for seen in acquires] == ["dropped", "forwarded"]
        assert len(request_ids(acquires)) == 1  # the retry carried the same request_id
        assert lg.requests_sent == 2

        status = await direct.lock_status("job")
        assert status.held and status.token == lease.token
        with pytest.raises(LockHeld):
            async with direct.lock("job", ttl=5, wait=0):
                pytest.fail("a second client got a held lock")
        await lg.renew(lease)  # the server knows our lease_id: it is the lease it granted
        assert await lg.release(lease) is True
        assert not (await direct.lock_status("job")).held  # no orphaned lease from the first attempt
        async with direct.lock("job", ttl=5, wait=0) as next_lease:
            assert next_lease.token > lease.token


def test_sync_retry_after_dropped_acquire_returns_the_original_lease(server: ServerProcess, namespace: str) -> None:
    async def scenario() -> None:
        async with FaultyProxy(server.port, drop=_acquire) as proxy:
            with Client(proxy.url, namespace=namespace, retry=FAST_RETRY) as lg:
                context = lg.lock("job", ttl=10, wait=2, auto_renew=False)
                lease = await asyncio.to_thread(context.acquire)
                acquires = proxy.requests_to("/acquire")
                assert [seen.fate for seen in acquires] == ["dropped", "forwarded"]
                assert len(request_ids(acquires)) == 1
                assert lg.requests_sent == 2
                with Client(server.url, namespace=namespace) as direct:
                    status = direct.lock_status("job")
                    assert status.held and status.token == lease.token
                    with pytest.raises(LockHeld), direct.lock("job", ttl=5, wait=0):
                        pytest.fail("a second client got a held lock")
                    assert await asyncio.to_thread(lg.release, lease) is True
                    assert not direct.lock_status("job").held

    asyncio.run(scenario())


@pytest.mark.parametrize("upstream_hold_s", [0.2, 1.5], ids=["server-notices-first", "retry-joins-the-wait"])
async def test_waiting_acquire_hung_up_mid_wait_is_retried_into_one_lease(
    server: ServerProcess, namespace: str, upstream_hold_s: float
) -> None:
    """The connection of a waiting acquire dies while it is in line; the holder releases at 1 s.

    Either the server notices first (the waiter leaves the line, the retry queues again) or the
    retry arrives first and waits on the same remembered place in line. Both must end with
    exactly one lease, held by the retrying client.
    """
    async with (
        FaultyProxy(server.port, hang_up=_acquire, upstream_hold_s=upstream_hold_s) as proxy,
        AsyncClient(proxy.url, namespace=namespace, retry=FAST_RETRY) as lg,
        AsyncClient(server.url, namespace=namespace) as direct,
    ):
        holder = direct.lock("job", ttl=10, wait=0)
        first = await holder.acquire()
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, lambda: asyncio.ensure_future(holder.release()))
        lease = await lg.lock("job", ttl=10, wait=5, auto_renew=False).acquire()
        assert lease.token > first.token
        acquires = proxy.requests_to("/acquire")
        assert acquires[0].fate == "hung-up"
        assert len(request_ids(acquires)) == 1
        await asyncio.sleep(max(0.0, upstream_hold_s - 1.0) + 0.3)  # the stale connection is gone by now
        status = await direct.lock_status("job")
        assert status.held and status.token == lease.token and status.waiters == 0
        with pytest.raises(LockHeld):
            async with direct.lock("job", ttl=5, wait=0):
                pytest.fail("a second client got a held lock")
        assert await lg.release(lease) is True
        assert not (await direct.lock_status("job")).held


async def test_retry_after_dropped_semaphore_acquire_takes_one_permit(server: ServerProcess, namespace: str) -> None:
    """With a semaphore a duplicate grant would be silent: count the permits in use."""
    async with (
        FaultyProxy(server.port, drop=_acquire) as proxy,
        AsyncClient(proxy.url, namespace=namespace, retry=FAST_RETRY) as lg,
        AsyncClient(server.url, namespace=namespace) as direct,
    ):
        async with lg.semaphore("pool", limit=3, ttl=10, wait=0) as lease:
            assert [seen.fate for seen in proxy.requests_to("/acquire")] == ["dropped", "forwarded"]
            status = await direct.lock_status("pool", kind="semaphore")
            assert status.permits_used == 1
            assert status.token == lease.token
        assert (await direct.lock_status("pool", kind="semaphore")).permits_used == 0


async def test_retry_after_dropped_counter_add_adds_once(server: ServerProcess, namespace: str) -> None:
    async with (
        FaultyProxy(server.port, drop=lambda method, path: path.endswith("/add")) as proxy,
        AsyncClient(proxy.url, namespace=namespace, retry=FAST_RETRY) as lg,
    ):
        assert await lg.counter("n").add(7) == 7
        adds = proxy.requests_to("/add")
        assert [seen.fate for seen in adds] == ["dropped", "forwarded"]
        assert len(request_ids(adds)) == 1
        assert await lg.counter("n").get() == 7


async def test_outcome_unknown_is_retried_with_the_same_request_id(server: ServerProcess, namespace: str) -> None:
    """A 503 outcome-unknown after the write happened: the retry gets the first answer."""
    async with (
        FaultyProxy(server.port, replace=lambda method, path: path.endswith("/add"), times=2) as proxy,
        AsyncClient(proxy.url, namespace=namespace, retry=FAST_RETRY) as lg,
    ):
        assert await lg.counter("n").add(5) == 5
        adds = proxy.requests_to("/add")
        assert [seen.fate for seen in adds] == ["replaced", "replaced", "forwarded"]
        assert len(request_ids(adds)) == 1
        assert lg.requests_sent == 3
        assert await lg.counter("n").get() == 5


async def test_retryable_errors_stop_after_the_configured_attempts(server: ServerProcess, namespace: str) -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
    always = lambda method, path: True  # noqa: E731
    async with (
        FaultyProxy(server.port, replace=always, times=100) as proxy,
        AsyncClient(proxy.url, namespace=namespace, retry=policy) as lg,
    ):
        with pytest.raises(OutcomeUnknown) as failed:
            await lg.counter("n").add(1)
        assert failed.value.status == 503
        assert lg.requests_sent == 3
        assert len(request_ids(proxy.requests_to("/add"))) == 1
    with Client(server.url, namespace=namespace) as direct:
        assert direct.counter("n").get() == 1  # three deliveries of one request: one add
    async with FaultyProxy(server.port, replace=always, times=100) as proxy:
        with Client(proxy.url, namespace=namespace, retry=policy) as sync_client:
            with pytest.raises(OutcomeUnknown):
                await asyncio.to_thread(sync_client.counter("n").add, 1)
            assert sync_client.requests_sent == 3


# --- what is never retried -----------------------------------------------------------------------------
def test_sync_non_retryable_errors_are_raised_after_one_request(base_url: str, namespace: str) -> None:
    with (
        Client(base_url, namespace=namespace) as holder,
        Client(base_url, namespace=namespace) as lg,
        holder.lock("job", ttl=5),
    ):
        checks: list[tuple[type[Exception], Callable[[], object]]] = [
            (LockHeld, lambda: lg.lock("job", ttl=5, wait=0).acquire()),
            (LockHeld, lambda: lg.lock("job", ttl=5, wait=0.2).acquire()),  # waited, then refused
            (Conflict, lambda: lg.counter("n").add(5, maximum=1)),
            (NotOwner, lambda: lg.run(core.release_call(_lease(namespace)))),
            (InvalidRequest, lambda: lg.rate_limit("k", limit=0, per=1)),
        ]
        for error_type, call in checks:
            before = lg.requests_sent
            with pytest.raises(error_type):
                call()
            assert lg.requests_sent - before == 1, error_type


async def test_async_non_retryable_errors_are_raised_after_one_request(base_url: str, namespace: str) -> None:
    async with (
        AsyncClient(base_url, namespace=namespace) as holder,
        AsyncClient(base_url, namespace=namespace) as lg,
        holder.lock("job", ttl=5),
    ):
        checks = [
            (LockHeld, lambda: lg.lock("job", ttl=5, wait=0).acquire()),
            (LockHeld, lambda: lg.lock("job", ttl=5, wait=0.2).acquire()),
            (Conflict, lambda: lg.counter("n").add(5, maximum=1)),
            (NotOwner, lambda: lg.run(core.release_call(_lease(namespace)))),
            (InvalidRequest, lambda: lg.rate_limit("k", limit=0, per=1)),
        ]
        for error_type, call in checks:
            before = lg.requests_sent
            with pytest.raises(error_type):
                await call()
            assert lg.requests_sent - before == 1, error_type


def _lease(namespace: str) -> core.Lease:
    return core.Lease(namespace=namespace, kind="lock", name="job", lease_id="0" * 32, token=1, ttl=5.0)


# --- a crashed server ------------------------------------------------------------------------------------
async def test_kill_9_and_restart_is_ridden_out(start_server: ServerFactory) -> None:
    """Renewal retries through a kill -9 + restart; the lease, its token and counters survive."""
    server = start_server()
    patient = RetryPolicy(attempts=40, base_delay=0.05, max_delay=0.25)
    async with AsyncClient(server.url, namespace="crash", retry=patient) as lg:
        assert await lg.counter("n").add(3) == 3
        async with lg.lock("job", ttl=4) as lease:
            await asyncio.to_thread(server.restart)
            assert await lg.counter("n").add(1) == 4  # its pooled connections died with the server: replaced
            status = await lg.lock_status("job")
            assert status.held and status.token == lease.token
            await asyncio.sleep(2.0)  # past half the ttl: renewals reach the restarted server
            assert not lease.lost
            status = await lg.lock_status("job")
            assert status.held and status.token == lease.token
        assert not lease.lost
        assert not (await lg.lock_status("job")).held
