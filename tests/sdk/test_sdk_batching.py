"""Auto-batching: calls made in the same event-loop tick leave as one POST /v1/batch.

Each test runs its own server, so `lockgate_http_requests_total{route="v1"}` counts only the
requests of that test. The server's count and the client's `requests_sent` must agree, be far
below the number of calls, and every call must still get its own exact answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lockgate import AsyncClient, Conflict, LockHeld, _core
from lockgate._async import MAX_BATCH_OPS

if TYPE_CHECKING:
    from conftest import ServerFactory, ServerProcess

N = 200
FEW = -(-N // MAX_BATCH_OPS) + 2  # N calls in batches of MAX_BATCH_OPS, give or take a tick boundary
V1_REQUESTS = ("lockgate_http_requests_total", 'route="v1"')


def _v1_requests(server: ServerProcess) -> float:
    return server.metric(*V1_REQUESTS)


async def test_concurrent_counter_adds_share_few_requests(start_server: ServerFactory) -> None:
    server = start_server()
    async with AsyncClient(server.url, namespace="batch") as lg:
        served_before, sent_before = _v1_requests(server), lg.requests_sent
        results = await asyncio.gather(*(lg.counter("c").add(1) for _ in range(N)))
        sent = lg.requests_sent - sent_before
        served = _v1_requests(server) - served_before
        assert sorted(results) == list(range(1, N + 1))  # every add got its own, exact answer
        assert await lg.counter("c").get() == N
        assert sent == served  # the server saw exactly what the client sent
        assert 1 <= sent <= FEW, f"{N} concurrent adds took {sent} HTTP requests"


async def test_concurrent_rate_checks_share_few_requests_and_are_exact(start_server: ServerFactory) -> None:
    server = start_server()
    async with AsyncClient(server.url, namespace="batch") as lg:
        served_before, sent_before = _v1_requests(server), lg.requests_sent
        decisions = await asyncio.gather(*(lg.rate_limit("api", limit=150, per=3600) for _ in range(N)))
        sent = lg.requests_sent - sent_before
        assert sent == _v1_requests(server) - served_before
        assert sent <= FEW
        assert sum(1 for d in decisions if d.allowed) == 150
        assert all(d.retry_after > 0 for d in decisions if not d.allowed)
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(150))


async def test_mixed_batch_keeps_each_answer_and_error_apart(start_server: ServerFactory) -> None:
    """One tick of different ops, some refused: refusals stay with their own callers."""
    server = start_server()
    async with AsyncClient(server.url, namespace="batch") as lg, AsyncClient(server.url, namespace="batch") as other:
        holder = other.lock("held", ttl=10, wait=0)
        await holder.acquire()
        sent_before = lg.requests_sent
        bounded = [lg.counter("bounded").add(1, maximum=100) for _ in range(150)]
        results = await asyncio.gather(
            *bounded,
            lg.counter("plain").add(5),
            lg.rate_limit("k", limit=10, per=60),
            lg.lock("held", ttl=5, wait=0).acquire(),
            lg.lock_status("held"),
            return_exceptions=True,
        )
        assert lg.requests_sent - sent_before <= -(-154 // MAX_BATCH_OPS) + 2
        adds, (plain, decision, refused, status) = results[:150], results[150:]
        granted = [value for value in adds if isinstance(value, int)]
        assert sorted(granted) == list(range(1, 101))
        assert all(isinstance(value, Conflict) for value in adds if not isinstance(value, int))
        assert len(granted) == 100
        assert await lg.counter("bounded").get() == 100
        assert plain == 5
        assert decision.allowed
        assert isinstance(refused, LockHeld)
        assert status.held and status.token == holder.lease.token  # type: ignore[union-attr]
        await holder.release()


async def test_large_fan_out_is_split_by_max_batch_ops(start_server: ServerFactory) -> None:
    server = start_server()
    async with AsyncClient(server.url, namespace="batch", max_batch_ops=64) as lg:
        served_before = _v1_requests(server)
        results = await asyncio.gather(*(lg.counter("c").add(1) for _ in range(N)))
        sent = lg.requests_sent
        assert sorted(results) == list(range(1, N + 1))
        assert sent == _v1_requests(server) - served_before
        assert 4 <= sent <= 8  # ceil(200 / 64) batches, give or take a tick boundary


async def test_without_batching_every_call_is_a_request(start_server: ServerFactory) -> None:
    """The control: the same fan-out with batching off costs one request per call."""
    server = start_server()
    async with AsyncClient(server.url, namespace="batch", batching=False) as lg:
        served_before = _v1_requests(server)
        results = await asyncio.gather(*(lg.counter("c").add(1) for _ in range(N)))
        assert sorted(results) == list(range(1, N + 1))
        assert lg.requests_sent == N
        assert _v1_requests(server) - served_before == N


async def test_a_batch_larger_than_the_servers_body_limit_is_split(start_server: ServerFactory) -> None:
    """The server takes at most 1 KiB per body: a 413 for a batch splits it instead of failing every call."""
    server = start_server({"LOCKGATE_MAX_BODY_BYTES": "1024"})
    async with AsyncClient(server.url, namespace="batch") as lg:
        results = await asyncio.gather(*(lg.counter("c").add(1) for _ in range(100)))
        assert sorted(results) == list(range(1, 101))
        assert await lg.counter("c").get() == 100
        sent = lg.requests_sent
        await asyncio.gather(*(lg.counter("c").add(1) for _ in range(100)))  # the client learnt the bound
        assert lg.requests_sent - sent < sent


async def test_a_grant_whose_caller_was_cancelled_in_flight_is_given_back(start_server: ServerFactory) -> None:
    """The grant arrived in the batch's answer and was dropped: the lock stayed held by nobody
    for its whole TTL. (A caller that timed out instead retries with its request_id and gets
    the same lease back, so only a cancelled caller's grant is released.)"""
    server = start_server()
    async with AsyncClient(server.url, namespace="batch") as lg:
        sent_before = lg.requests_sent
        victim = asyncio.ensure_future(lg.run(_core.acquire_call("batch", "lock", "cancelled", ttl=30, wait=0)))
        others = [asyncio.ensure_future(lg.counter(f"c{index}").add(1)) for index in range(20)]
        while lg.requests_sent == sent_before:  # until the batch carrying the acquire is on its way
            await asyncio.sleep(0)
        victim.cancel()
        await asyncio.gather(*others)
        assert victim.cancelled()
        async with lg.lock("cancelled", ttl=5, wait=5) as lease:  # free again, long before 30 s
            assert lease.token > 0
