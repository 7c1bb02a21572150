"""Locks, semaphores, counters and rate limits through both clients, and the typed errors.

Each object kind is exercised through `Client` and `AsyncClient` against a real server:
context managers acquire and release, tokens increase, limits are respected, counters are
exact, and every refusal surfaces as the exception class the problem type names.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from lockgate import (
    AsyncClient,
    Client,
    CompareAndSet,
    Conflict,
    Forbidden,
    InvalidRequest,
    Lease,
    LockgateError,
    LockHeld,
    NotOwner,
    Unauthorized,
)
from lockgate import _core as core

ALGORITHMS = ["gcra", "sliding_window", "fixed_window"]


def _foreign_lease(namespace: str, name: str) -> Lease:
    """A lease we never held: its id is unknown to the server."""
    return Lease(namespace=namespace, kind="lock", name=name, lease_id="f" * 32, token=1, ttl=5.0)


# --- locks -----------------------------------------------------------------------------------------
def test_sync_lock_context_manager_tokens_and_held(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as a, Client(base_url, namespace=namespace) as b:
        with a.lock("job", ttl=5, holder="worker-a") as first:
            status = a.lock_status("job")
            assert status.held
            assert status.token == first.token
            assert status.holder == "worker-a"
            before = b.requests_sent
            with pytest.raises(LockHeld) as refused, b.lock("job", ttl=5, wait=0):
                pytest.fail("a held lock was granted to a second client")
            assert refused.value.status == 409
            assert b.requests_sent - before == 1  # 409 is final: never retried
        assert first.released and not first.lost
        assert not a.lock_status("job").held
        with b.lock("job", ttl=5, wait=0) as second:
            assert second.token > first.token
            assert second.lease_id != first.lease_id
        assert not b.lock_status("job").held


async def test_async_lock_context_manager_tokens_and_held(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as a, AsyncClient(base_url, namespace=namespace) as b:
        async with a.lock("job", ttl=5, holder="worker-a") as first:
            status = await a.lock_status("job")
            assert status.held
            assert status.token == first.token
            assert status.holder == "worker-a"
            before = b.requests_sent
            with pytest.raises(LockHeld) as refused:
                async with b.lock("job", ttl=5, wait=0):
                    pytest.fail("a held lock was granted to a second client")
            assert refused.value.status == 409
            assert b.requests_sent - before == 1
        assert first.released and not first.lost
        assert not (await a.lock_status("job")).held
        async with b.lock("job", ttl=5, wait=0) as second:
            assert second.token > first.token
            assert second.lease_id != first.lease_id
        assert not (await b.lock_status("job")).held


def test_sync_waiting_acquire_gets_the_lock_when_released(base_url: str, namespace: str) -> None:
    """A blocking acquire (wait > 0) is granted as soon as the holder releases, with a larger token."""
    import threading

    with Client(base_url, namespace=namespace) as a, Client(base_url, namespace=namespace) as b:
        holder = a.lock("queue", ttl=5)
        first = holder.acquire()
        threading.Timer(0.3, holder.release).start()
        with b.lock("queue", ttl=5, wait=5) as second:
            assert second.token > first.token
            assert a.lock_status("queue").token == second.token


# --- semaphores --------------------------------------------------------------------------------------
def test_sync_semaphore_limit_is_respected(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as a, Client(base_url, namespace=namespace) as b:
        with a.semaphore("exports", limit=2, ttl=5) as one, b.semaphore("exports", limit=2, ttl=5) as two:
            assert one.lease_id != two.lease_id
            assert two.token > one.token
            status = a.lock_status("exports", kind="semaphore")
            assert (status.limit, status.permits_used) == (2, 2)
            with pytest.raises(LockHeld), b.semaphore("exports", limit=2, ttl=5, wait=0):
                pytest.fail("a third permit was granted with limit=2")
            assert a.lock_status("exports", kind="semaphore").permits_used == 2
        third = a.semaphore("exports", limit=2, ttl=5, wait=0)
        lease = third.acquire()
        assert lease.token > two.token
        third.release()
        assert a.lock_status("exports", kind="semaphore").permits_used == 0


async def test_async_semaphore_limit_is_respected(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as a:
        async with a.semaphore("exports", limit=2, ttl=5) as one, a.semaphore("exports", limit=2, ttl=5) as two:
            assert one.lease_id != two.lease_id
            status = await a.lock_status("exports", kind="semaphore")
            assert (status.limit, status.permits_used) == (2, 2)
            with pytest.raises(LockHeld):
                async with a.semaphore("exports", limit=2, ttl=5, wait=0):
                    pytest.fail("a third permit was granted with limit=2")
        async with a.semaphore("exports", limit=2, ttl=5, wait=0) as third:
            assert third.token > max(one.token, two.token)
        assert (await a.lock_status("exports", kind="semaphore")).permits_used == 0


def test_sync_semaphore_multi_permit_acquire(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as a, a.semaphore("pool", limit=5, permits=3, ttl=5) as big:
        assert big.permits == 3
        with pytest.raises(LockHeld), a.semaphore("pool", limit=5, permits=3, ttl=5, wait=0):
            pytest.fail("6 of 5 permits granted")
        with a.semaphore("pool", limit=5, permits=2, ttl=5, wait=0):
            assert a.lock_status("pool", kind="semaphore").permits_used == 5


# --- counters -------------------------------------------------------------------------------------------
def test_sync_counter_is_exact_and_refuses_bounds(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as lg:
        counter = lg.counter("stock")
        assert counter.get() == 0
        assert counter.add(5) == 5
        assert counter.add(-2) == 3
        assert counter.set(10) == 10
        assert counter.compare_and_set(10, 20) == CompareAndSet(swapped=True, value=20)
        assert counter.compare_and_set(10, 30) == CompareAndSet(swapped=False, value=20)
        before = lg.requests_sent
        with pytest.raises(Conflict) as over:
            counter.add(5, maximum=22)
        assert type(over.value) is Conflict
        assert over.value.status == 409
        assert lg.requests_sent - before == 1
        with pytest.raises(Conflict):
            counter.add(-21, minimum=0)
        assert counter.get() == 20  # refused adds changed nothing
        assert counter.add(2, maximum=22) == 22  # reaching the bound is allowed
        assert counter.add(-22, minimum=0) == 0
        assert counter.get() == 0


async def test_async_counter_is_exact_and_refuses_bounds(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg:
        counter = lg.counter("stock")
        assert await counter.get() == 0
        assert await counter.add(5) == 5
        assert await counter.add(-2) == 3
        assert await counter.set(10) == 10
        assert await counter.compare_and_set(10, 20) == CompareAndSet(swapped=True, value=20)
        assert await counter.compare_and_set(10, 30) == CompareAndSet(swapped=False, value=20)
        before = lg.requests_sent
        with pytest.raises(Conflict) as over:
            await counter.add(5, maximum=22)
        assert type(over.value) is Conflict
        assert lg.requests_sent - before == 1
        with pytest.raises(Conflict):
            await counter.add(-21, minimum=0)
        assert await counter.get() == 20
        assert await counter.add(2, maximum=22) == 22


# --- rate limits -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sync_rate_limit_allows_then_denies(base_url: str, namespace: str, algorithm: str) -> None:
    with Client(base_url, namespace=namespace) as lg:
        decisions = [lg.rate_limit("user:7", limit=3, per=60, algorithm=algorithm) for _ in range(3)]
        assert all(decisions)
        assert [d.remaining for d in decisions] == [2, 1, 0]
        assert all(d.retry_after == 0 for d in decisions)
        denied = lg.rate_limit("user:7", limit=3, per=60, algorithm=algorithm)
        assert not denied
        assert denied.allowed is False
        assert denied.remaining == 0
        assert 0 < denied.retry_after <= 2 * 60  # a sliding window may need part of the next window
        assert denied.limit == 3
        peek = lg.rate_limit("user:7", limit=3, per=60, cost=0, algorithm=algorithm)
        assert peek.remaining == 0  # cost=0 peeks: nothing left, nothing charged
        assert not peek and 0 < peek.retry_after <= 2 * 60  # and the next request would be denied
        assert not lg.rate_limit("user:7", limit=3, per=60, algorithm=algorithm)
        lg.reset_rate_limit("user:7")
        again = lg.rate_limit("user:7", limit=3, per=60, algorithm=algorithm)
        assert again.allowed and again.remaining == 2
        other = lg.rate_limit("user:8", limit=3, per=60, algorithm=algorithm)
        assert other.allowed and other.remaining == 2  # keys are independent


async def test_async_rate_limit_allows_then_denies(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg:
        decisions = [await lg.rate_limit("user:7", limit=3, per=60) for _ in range(3)]
        assert all(decisions)
        assert [d.remaining for d in decisions] == [2, 1, 0]
        denied = await lg.rate_limit("user:7", limit=3, per=60)
        assert not denied
        assert denied.retry_after > 0
        # GCRA at 3 per 60 s: one request's worth comes back after about 20 s.
        assert 15 < denied.retry_after <= 20.5
        peek = await lg.rate_limit("user:7", limit=3, per=60, cost=0)
        assert peek.remaining == 0
        assert not await lg.rate_limit("user:7", limit=3, per=60)
        await lg.reset_rate_limit("user:7")
        assert (await lg.rate_limit("user:7", limit=3, per=60)).allowed


# --- typed errors ------------------------------------------------------------------------------------------
def test_sync_typed_errors_not_owner_and_invalid(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as a, Client(base_url, namespace=namespace) as b:
        with b.lock("job", ttl=5) as held:
            before = a.requests_sent
            with pytest.raises(NotOwner) as foreign:
                a.run(core.release_call(_foreign_lease(namespace, "job")))
            assert foreign.value.status == 409
            assert a.requests_sent - before == 1
            assert a.lock_status("job").token == held.token  # the foreign release freed nothing
            with pytest.raises(NotOwner):
                a.renew(_foreign_lease(namespace, "job"))
        ctx = a.lock("job", ttl=5, auto_renew=False)
        lease = ctx.acquire()
        ctx.release()
        with pytest.raises(NotOwner):
            a.renew(lease)
        with pytest.raises(NotOwner):
            a.run(core.release_call(lease))
        assert a.release(lease) is False  # the friendly form: not an error
        before = a.requests_sent
        with pytest.raises(InvalidRequest) as invalid, a.lock("job", ttl=0.01, wait=0):
            pytest.fail("a 10 ms ttl was accepted")
        assert invalid.value.status == 422
        assert a.requests_sent - before == 1


async def test_async_typed_errors_not_owner_and_invalid(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as a, AsyncClient(base_url, namespace=namespace) as b:
        async with b.lock("job", ttl=5) as held:
            with pytest.raises(NotOwner):
                await a.run(core.release_call(_foreign_lease(namespace, "job")))
            assert (await a.lock_status("job")).token == held.token
        ctx = a.lock("job", ttl=5, auto_renew=False)
        lease = await ctx.acquire()
        await ctx.release()
        with pytest.raises(NotOwner):
            await a.renew(lease)
        assert await a.release(lease) is False
        with pytest.raises(InvalidRequest):
            async with a.lock("job", ttl=0.01, wait=0):
                pytest.fail("a 10 ms ttl was accepted")


def _key_entry(key: str, namespaces: list[str], rights: list[str], name: str) -> dict[str, object]:
    return {
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "namespaces": namespaces,
        "rights": rights,
        "name": name,
    }


async def test_auth_errors_are_typed_in_both_clients(start_server) -> None:  # type: ignore[no-untyped-def]
    keys = [
        _key_entry("writer-key", ["team-a"], ["write"], "writer"),
        _key_entry("reader-key", ["team-a"], ["read"], "reader"),
    ]
    server = start_server(env={"LOCKGATE_API_KEYS": json.dumps(keys)})

    with Client(server.url, namespace="team-a", api_key="writer-key") as writer:
        assert writer.counter("n").add(1) == 1
    with Client(server.url, namespace="team-a") as anonymous:
        with pytest.raises(Unauthorized) as missing:
            anonymous.counter("n").get()
        assert missing.value.status == 401
        assert anonymous.requests_sent == 1  # 401 is final
    with Client(server.url, namespace="team-a", api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.counter("n").get()
    with Client(server.url, namespace="team-b", api_key="writer-key") as elsewhere:
        with pytest.raises(Forbidden) as other_namespace:
            elsewhere.counter("n").add(1)
        assert other_namespace.value.status == 403
        assert elsewhere.requests_sent == 1
    with Client(server.url, namespace="team-a", api_key="reader-key") as reader:
        assert reader.counter("n").get() == 1
        with pytest.raises(Forbidden):
            reader.counter("n").add(1)
        with pytest.raises(Forbidden), reader.lock("job", ttl=5, wait=0):
            pytest.fail("a read-only key acquired a lock")

    async with AsyncClient(server.url, namespace="team-a") as anonymous_async:
        with pytest.raises(Unauthorized):
            await anonymous_async.counter("n").get()
    async with AsyncClient(server.url, namespace="team-a", api_key="reader-key") as reader_async:
        with pytest.raises(Forbidden):
            await reader_async.counter("n").add(1)
        # A batch of calls made in one tick: each op gets its own typed answer.
        results = await _gather_settled(reader_async.counter("n").get(), reader_async.counter("n").add(1))
        assert results[0] == 1
        assert isinstance(results[1], Forbidden)


async def _gather_settled(*calls):  # type: ignore[no-untyped-def]
    import asyncio

    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, LockgateError):
            raise result
    return results


# --- reusing a lease context ---------------------------------------------------------------------------
def test_sync_reused_lock_context_holds_a_real_lease(base_url: str, namespace: str) -> None:
    """`ctx = lg.lock(...)` entered twice: the second entry must hold the lock (or refuse loudly).

    The context builds its acquire call, request_id included, once. Entering it again sends
    the same request_id, and the server answers with the remembered first grant: a lease
    that was already released. The client then believes it holds a lock nobody holds.
    """
    with Client(base_url, namespace=namespace) as lg, Client(base_url, namespace=namespace) as other:
        context = lg.lock("job", ttl=1, wait=0)
        with context as first:
            assert lg.lock_status("job").token == first.token
        try:
            second = context.__enter__()
        except RuntimeError:
            return  # refusing to be reused is safe too
        try:
            assert second.lease_id != first.lease_id, "re-entry returned the released lease"
            status = lg.lock_status("job")
            assert status.held and status.token == second.token
            with pytest.raises(LockHeld), other.lock("job", ttl=5, wait=0):
                pytest.fail("another client got the lock while the reused context 'held' it")
            time.sleep(2.0)  # twice the ttl: the reused context must renew as well
            assert lg.lock_status("job").token == second.token
            assert not second.lost
        finally:
            context.__exit__(None, None, None)


async def test_async_reused_lock_context_holds_a_real_lease(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg, AsyncClient(base_url, namespace=namespace) as other:
        context = lg.lock("job", ttl=5, wait=0)
        async with context as first:
            assert (await lg.lock_status("job")).token == first.token
        try:
            second = await context.__aenter__()
        except RuntimeError:
            return
        try:
            assert second.lease_id != first.lease_id, "re-entry returned the released lease"
            status = await lg.lock_status("job")
            assert status.held and status.token == second.token
            with pytest.raises(LockHeld):
                async with other.lock("job", ttl=5, wait=0):
                    pytest.fail("another client got the lock while the reused context 'held' it")
        finally:
            await context.__aexit__(None, None, None)
