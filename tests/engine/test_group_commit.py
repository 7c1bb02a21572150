"""Group commit: ops applied in one tick share one commit, so commits are far fewer than ops."""

from __future__ import annotations

import asyncio

from lockgate_server.core.ops import Acquire, Command, CounterAdd, CounterValue, Granted
from lockgate_server.engine.node import Engine, new_lease_id

from .support import names_on_shard

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
