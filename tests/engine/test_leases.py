"""Leases through the engine: outages never shorten them, waiters are served FIFO, callers that
left are never granted, and expiry hands the lock to the head of the line."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import Acquire, Failure, Granted, Inspect, LeaseInfo, Release, Released
from lockgate_server.engine.node import Engine, new_lease_id

from .support import eventually, finished_within, make_loads_slow

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "leases"
TTL_MS = 60_000
WAIT_MS = 30_000


def acquire(name: str, *, holder: str | None = None, ttl_ms: int = TTL_MS, wait_ms: int = 0) -> Acquire:
    return Acquire(
        kind="lock",
        namespace=NAMESPACE,
        name=name,
        lease_id=new_lease_id(),
        ttl_ms=ttl_ms,
        wait_ms=wait_ms,
        holder=holder,
    )


async def inspect(engine: Engine, name: str) -> LeaseInfo:
    info, _ = await engine.execute(Inspect(kind="lock", namespace=NAMESPACE, name=name))
    assert isinstance(info, LeaseInfo)
    return info


async def release(engine: Engine, name: str, lease_id: str) -> None:
    released, _ = await engine.execute(Release(kind="lock", namespace=NAMESPACE, name=name, lease_id=lease_id))
    assert released == Released()


async def queue_up(engine: Engine, name: str, holders: list[str]) -> list[asyncio.Task[object]]:
    """Start one blocking acquire per holder, each in line before the next one starts."""
    tasks: list[asyncio.Task[object]] = []
    for holder in holders:
        tasks.append(asyncio.create_task(engine.execute(acquire(name, holder=holder, wait_ms=WAIT_MS))))
        count = len(tasks)
        await eventually(lambda count=count: engine.waiting_callers() == count, what=f"{holder} waiting in line")
    assert (await inspect(engine, name)).waiters == len(holders)
    return tasks


@pytest.mark.parametrize("slow_load", [False, True], ids=["quick-load", "load-longer-than-the-owner-lease"])
async def test_an_outage_never_shortens_a_lease(
    engines: Engines, monkeypatch: pytest.MonkeyPatch, slow_load: bool
) -> None:
    """Also when the next owner renews its claim while it loads: those renewals once overwrote
    the last heartbeat of the previous owner, where the outage starts."""
    config = engines.config(owner_lease_ms=1_000)
    first = await engines.start(config)
    ttl_ms = 3000
    granted, _ = await first.execute(acquire("outage", ttl_ms=ttl_ms))
    assert isinstance(granted, Granted)
    original_deadline = time.monotonic() + ttl_ms / 1000
    before = await inspect(first, "outage")
    assert before.remaining_ms is not None
    await engines.stop(first)

    await asyncio.sleep(1.5)  # the outage: half the TTL passes with nobody serving the lock

    if slow_load:
        make_loads_slow(monkeypatch, all_shards_s=2 * config.owner_lease_ms / 1000, shard_count=config.shard_count)
    second = await engines.start(config)
    after = await inspect(second, "outage")
    assert after.held and after.token == granted.token
    assert after.remaining_ms is not None
    margin_ms = 100
    assert after.remaining_ms >= before.remaining_ms - margin_ms, (
        f"{after.remaining_ms} ms left after the outage, {before.remaining_ms} ms when the node stopped"
    )
    assert after.remaining_ms <= ttl_ms
    # Past the lease's original deadline, the sweeper of the new owner still leaves it alone.
    await asyncio.sleep(max(0.0, original_deadline - time.monotonic()) + 0.2)
    still = await inspect(second, "outage")
    assert still.held and still.token == granted.token


async def test_waiters_are_served_in_order_and_a_cancelled_one_never(engine: Engine) -> None:
    holder = acquire("fifo", holder="first-holder")
    granted, _ = await engine.execute(holder)
    assert isinstance(granted, Granted)
    waiters = await queue_up(engine, "fifo", ["w0", "w1", "w2"])

    waiters[1].cancel()  # w1's caller leaves while queued
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    await eventually(lambda: _waiters_are(engine, "fifo", 2), what="w1 leaving the line")

    await release(engine, "fifo", holder.lease_id)
    assert not await finished_within({waiters[0]}, 5)
    w0, _ = waiters[0].result()  # type: ignore[misc]
    assert isinstance(w0, Granted) and w0.token > granted.token
    info = await inspect(engine, "fifo")
    assert info.holder == "w0" and info.token == w0.token and info.waiters == 1
    assert not waiters[2].done()

    await release(engine, "fifo", w0.lease_id)
    assert not await finished_within({waiters[2]}, 5)
    w2, _ = waiters[2].result()  # type: ignore[misc]
    assert isinstance(w2, Granted) and w2.token > w0.token
    info = await inspect(engine, "fifo")
    assert info.holder == "w2" and info.token == w2.token and info.waiters == 0


async def _waiters_are(engine: Engine, name: str, count: int) -> bool:
    return (await inspect(engine, name)).waiters == count


async def test_a_waiter_cancelled_before_its_queueing_is_durable_is_never_granted(engine: Engine) -> None:
    """The caller leaves while its acquire (queued behind the holder) still waits for its commit."""
    granted, _ = await engine.execute(acquire("departed"))
    assert isinstance(granted, Granted)
    departed = acquire("departed", holder="departed", wait_ms=WAIT_MS)
    waiter = asyncio.create_task(engine.execute(departed))
    await asyncio.sleep(0)  # applied (queued in the shard), its commit not yet acknowledged
    assert not waiter.done() and engine.pending_ops() > 0
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    await release(engine, "departed", granted.lease_id)

    async def free() -> bool:
        info = await inspect(engine, "departed")
        return not info.held and info.waiters == 0

    try:
        await eventually(free, timeout_s=2, what="the lock being free")
    except AssertionError:
        info = await inspect(engine, "departed")
        raise AssertionError(f"the lock went to a caller that had left: {info!r}") from None
    given, _ = await engine.execute(
        Release(kind="lock", namespace=NAMESPACE, name="departed", lease_id=departed.lease_id)
    )
    assert isinstance(given, Failure) and given.code == "not_owner"
    fresh, _ = await engine.execute(acquire("departed"))
    assert isinstance(fresh, Granted)


async def test_expiry_hands_the_lock_to_the_head_waiter(engine: Engine) -> None:
    granted, _ = await engine.execute(acquire("expiring", ttl_ms=300))
    assert isinstance(granted, Granted)
    waiters = await queue_up(engine, "expiring", ["head", "next"])
    expirations = engine.stats.expirations

    assert not await finished_within({waiters[0]}, 5), "the head waiter was not served after the lease expired"
    head, _ = waiters[0].result()  # type: ignore[misc]
    assert isinstance(head, Granted) and head.token > granted.token
    assert engine.stats.expirations > expirations
    info = await inspect(engine, "expiring")
    assert info.holder == "head" and info.token == head.token and info.waiters == 1
    assert not waiters[1].done()

    await release(engine, "expiring", head.lease_id)
    assert not await finished_within({waiters[1]}, 5)
    nxt, _ = waiters[1].result()  # type: ignore[misc]
    assert isinstance(nxt, Granted) and nxt.token > head.token


def step_the_system_clock(monkeypatch: pytest.MonkeyPatch, by_ms: int) -> None:
    """As NTP or a resumed VM would: every later read of wall time is off by `by_ms`."""
    time_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: time_ns() + by_ms * 1_000_000)


async def test_a_clock_stepped_forward_does_not_end_a_lease_early(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lease time is elapsed time: a wall clock stepped by a minute while a 30 s lease is held
    used to hand the lock to a second client at once, while the first one still held it."""
    engine = await engines.start()
    held, _ = await engine.execute(acquire("stepped", ttl_ms=30_000))
    assert isinstance(held, Granted)
    step_the_system_clock(monkeypatch, 60_000)
    second, _ = await engine.execute(acquire("stepped"))
    assert isinstance(second, Failure)
    info = await inspect(engine, "stepped")
    assert info.held and info.token == held.token and 25_000 < info.remaining_ms <= 30_000


async def test_a_node_restarted_with_its_clock_behind_lets_leases_expire(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, time stood still until the clock caught up with the stamps in the log: a 1 s
    lease was held 20 s past its TTL (and windows, waits and idempotency memory froze too)."""
    engine = await engines.start()
    held, _ = await engine.execute(acquire("behind", ttl_ms=1_000))
    assert isinstance(held, Granted)
    await engines.stop(engine)
    step_the_system_clock(monkeypatch, -20_000)
    restarted = await engines.start()
    assert (await inspect(restarted, "behind")).held  # an outage never shortens a lease
    await eventually(lambda: _not_held(restarted, "behind"), timeout_s=5.0, what="the 1 s lease to expire")


async def _not_held(engine: Engine, name: str) -> bool:
    return not (await inspect(engine, name)).held
