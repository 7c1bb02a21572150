"""Group commit: ops applied in one tick share one commit, so commits are far fewer than ops."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lockgate_server.core.ops import Acquire, Command, CounterAdd, CounterValue, Granted, Release, Released
from lockgate_server.engine.node import Engine, new_lease_id

from .support import eventually, names_on_shard

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "group"
OPS = 500


async def test_concurrent_ops_on_one_shard_share_commits(engine: Engine) -> None:
    add = CounterAdd(namespace=NAMESPACE, name="hot", delta=1)
    shard = engine.shard_of(add)
    lock_names = names_on_shard(engine, "lock", NAMESPACE, shard, OPS // 2, prefix="lock")
    commands: list[Command] = [add] * (OPS // 2)
    commands += [
        Acquire(kind="lock", namespace=NAMESPACE, name=name, lease_id=new_lease_id(), ttl_ms=60_000)
        for name in lock_names
    ]
    assert {engine.shard_of(cmd) for cmd in commands} == {shard}
    commits_before, ops_before = engine.stats.commits, engine.stats.ops_committed

    answers = await asyncio.gather(*(engine.execute(cmd) for cmd in commands))

    commits = engine.stats.commits - commits_before
    ops = engine.stats.ops_committed - ops_before
    assert ops == OPS
    assert 1 <= commits <= OPS // 5, f"{OPS} ops took {commits} commits"
    values = sorted(result.value for result, _ in answers if isinstance(result, CounterValue))
    assert values == list(range(1, OPS // 2 + 1))
    grants = [result for result, _ in answers if isinstance(result, Granted)]
    assert len(grants) == OPS // 2
    assert len({grant.token for grant in grants}) == OPS // 2


async def test_a_queued_acquire_rides_with_the_commit_that_grants_it(engines: Engines) -> None:
    """Nobody hears about a queued acquire until its turn, so it pays for no commit of its
    own: it joins the one that carries the release handing the lock over."""
    engine = await engines.start(engines.config(sweep_interval_ms=60_000))  # no sweeper flush
    holder = Acquire(kind="lock", namespace=NAMESPACE, name="line", lease_id=new_lease_id(), ttl_ms=60_000)
    held, _ = await engine.execute(holder)
    assert isinstance(held, Granted)
    commits_before, ops_before = engine.stats.commits, engine.stats.ops_committed

    waiter = Acquire(
        kind="lock", namespace=NAMESPACE, name="line", lease_id=new_lease_id(), ttl_ms=60_000, wait_ms=30_000
    )
    waiting = asyncio.ensure_future(engine.execute(waiter))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert engine.stats.commits == commits_before, "the queued acquire was committed on its own"

    release = Release(kind="lock", namespace=NAMESPACE, name="line", lease_id=held.lease_id)
    released, _ = await engine.execute(release)
    assert isinstance(released, Released)
    granted, _ = await waiting
    assert isinstance(granted, Granted) and granted.token > held.token
    assert engine.stats.commits == commits_before + 1
    assert engine.stats.ops_committed == ops_before + 2


async def test_the_sweeper_seals_what_nobody_waits_for(engine: Engine) -> None:
    holder = Acquire(kind="lock", namespace=NAMESPACE, name="swept", lease_id=new_lease_id(), ttl_ms=60_000)
    await engine.execute(holder)
    commits_before = engine.stats.commits
    waiter = Acquire(
        kind="lock", namespace=NAMESPACE, name="swept", lease_id=new_lease_id(), ttl_ms=60_000, wait_ms=30_000
    )
    waiting = asyncio.ensure_future(engine.execute(waiter))
    await eventually(lambda: engine.stats.commits > commits_before, timeout_s=5.0)
    assert engine.pending_ops() == 0  # the queueing is in the store although nobody was answered
    waiting.cancel()
