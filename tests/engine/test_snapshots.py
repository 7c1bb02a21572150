"""Snapshots bound the log, and snapshot + log tail rebuild exactly the state that was served."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import (
    Acquire,
    Command,
    CounterAdd,
    CounterGet,
    CounterValue,
    Granted,
    Inspect,
    LeaseInfo,
    RateCheck,
    RateDecision,
)
from lockgate_server.core.shard_state import ShardState
from lockgate_server.engine.node import Engine, new_lease_id
from lockgate_server.engine.snapshots import FORK_RETRY_S
from lockgate_server.heap import freeze_startup_heap
from lockgate_server.limits import RATE_PERIOD_MAX_MS
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import shard_keys

from .support import admin_client, log_entries, names_on_shard, replay_from_store

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "snap"
SNAPSHOT_EVERY_ENTRIES = 50
ROUNDS = 60
OPS_PER_ROUND = 50
RATE_LIMIT = 1_000_000
# Nothing in this test expires while it runs, so the sweeper adds no ops of its own.
RATE_POLICY = {"limit": RATE_LIMIT, "period_ms": RATE_PERIOD_MAX_MS, "algorithm": "fixed_window"}


def live_snapshots(engine: Engine) -> dict[int, bytes]:
    return {shard: slot.state.snapshot() for shard, slot in engine._slots.items()}


@pytest.mark.parametrize("mode", ["inline", "fork"])
async def test_snapshots_bound_the_log_and_a_restart_reproduces_the_state(
    valkey: EmbeddedValkey, engines: Engines, mode: str
) -> None:
    # inline_items_max 0: in fork mode every snapshot forks, however small the shard.
    config = engines.config(
        snapshot_every_entries=SNAPSHOT_EVERY_ENTRIES, snapshot_mode=mode, snapshot_inline_items_max=0
    )
    engine = await engines.start(config)
    counters: dict[str, int] = {}
    charges: dict[str, int] = {}
    locks: dict[str, int] = {}  # name -> token
    longest_log = 0
    async with admin_client(valkey.url) as admin:
        for round_index in range(ROUNDS):
            commands: list[Command] = []
            for index in range(round_index * OPS_PER_ROUND, (round_index + 1) * OPS_PER_ROUND):
                match index % 5:
                    case 0 | 1:
                        commands.append(CounterAdd(namespace=NAMESPACE, name=f"c{index % 37}", delta=1))
                    case 2:
                        commands.append(CounterAdd(namespace=NAMESPACE, name=f"c{index % 41}", delta=-1))
                    case 3:
                        commands.append(RateCheck(namespace=NAMESPACE, name=f"r{index % 23}", **RATE_POLICY))
                    case _:
                        lease_id = new_lease_id()
                        commands.append(
                            Acquire(
                                kind="lock", namespace=NAMESPACE, name=f"l{index}", lease_id=lease_id, ttl_ms=60_000
                            )
                        )
            answers = await asyncio.gather(*(engine.execute(cmd) for cmd in commands))
            for cmd, (result, _) in zip(commands, answers, strict=True):
                if isinstance(cmd, CounterAdd):
                    assert isinstance(result, CounterValue)
                    counters[cmd.name] = counters.get(cmd.name, 0) + cmd.delta
                elif isinstance(cmd, RateCheck):
                    assert isinstance(result, RateDecision) and result.allowed
                    charges[cmd.name] = charges.get(cmd.name, 0) + 1
                else:
                    assert isinstance(result, Granted)
                    locks[cmd.name] = result.token
            # One snapshot writer runs at a time; a shard due meanwhile waits for its next commit.
            # Letting the writer finish each round keeps the bound below independent of how long
            # a writer takes on a busy machine.
            await engine.snapshots.wait()
            sizes = [await log_entries(admin, shard) for shard in range(config.shard_count)]
            longest_log = max(longest_log, *sizes)
        await engine.snapshots.wait()
        lsns = [int(await admin.get(shard_keys(shard).lsn) or 0) for shard in range(config.shard_count)]
        snapshot_lsns = [
            int(await admin.hget(shard_keys(shard).snap, "lsn") or 0) for shard in range(config.shard_count)
        ]

    # Every shard logged far more than it keeps: snapshots trimmed the rest.
    assert min(lsns) >= 4 * SNAPSHOT_EVERY_ENTRIES
    assert all(snapshot_lsn > 0 for snapshot_lsn in snapshot_lsns), snapshot_lsns
    assert engine.snapshots.stats.taken >= config.shard_count and not engine.snapshots.stats.failed
    assert longest_log <= 2 * SNAPSHOT_EVERY_ENTRIES, f"a shard's log held {longest_log} entries"

    # Snapshot + log tail in the store rebuild exactly the state that was served.
    served = live_snapshots(engine)
    await engines.stop(engine)
    for shard, expected in served.items():
        rebuilt = await replay_from_store(valkey.url, shard)
        assert rebuilt.snapshot() == expected, f"shard {shard} rebuilt differently"

    # And a new engine serves the same values.
    restarted = await engines.start(config)
    for name, value in counters.items():
        assert (await restarted.execute(CounterGet(namespace=NAMESPACE, name=name)))[0] == CounterValue(value=value)
    for name, count in charges.items():
        decision, _ = await restarted.execute(RateCheck(namespace=NAMESPACE, name=name, cost=0, **RATE_POLICY))
        assert isinstance(decision, RateDecision) and decision.remaining == RATE_LIMIT - count
    for name, token in locks.items():
        info, _ = await restarted.execute(Inspect(kind="lock", namespace=NAMESPACE, name=name))
        assert isinstance(info, LeaseInfo) and info.held and info.token == token


async def test_a_node_that_cannot_fork_keeps_serving(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """fork can fail (no memory, no processes left): snapshots wait, commits go on."""
    config = engines.config(snapshot_every_entries=10, snapshot_mode="fork", snapshot_inline_items_max=0)
    engine = await engines.start(config)

    def no_fork() -> int:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    add = CounterAdd(namespace="nofork", name="c", delta=1)
    for expected in range(1, 51):  # several times past the snapshot threshold
        value, _ = await asyncio.wait_for(engine.execute(add), timeout=10)  # a dead committer hangs
        assert value == CounterValue(value=expected)
    assert engine.snapshots.stats.failed >= 1 and engine.snapshots.stats.taken == 0

    monkeypatch.undo()
    await asyncio.sleep(FORK_RETRY_S)
    value, _ = await engine.execute(add)  # the next commit past the threshold tries again
    assert value == CounterValue(value=51)
    await engine.snapshots.wait()
    assert engine.snapshots.stats.taken >= 1


async def test_a_snapshot_that_cannot_be_encoded_leaves_the_node_serving(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding runs in the commit loop and the sweeper: its failure must not end either."""
    config = engines.config(snapshot_every_entries=10, snapshot_mode="inline")
    engine = await engines.start(config)

    def unencodable(self: ShardState) -> bytes:
        raise OverflowError("can't serialize ints > 2**64 - 1")

    monkeypatch.setattr(ShardState, "snapshot", unencodable)
    add = CounterAdd(namespace="noencode", name="c", delta=1)
    for expected in range(1, 51):  # several times past the snapshot threshold
        value, _ = await asyncio.wait_for(engine.execute(add), timeout=10)  # a dead committer hangs
        assert value == CounterValue(value=expected)
    assert engine.snapshots.stats.failed >= 1 and engine.snapshots.stats.taken == 0
    assert engine.broken is None


async def test_a_forked_snapshot_leaves_the_start_up_heap_frozen(engines: Engines) -> None:
    """The writer's fork used to freeze and then unfreeze everything, undoing heap.py's freeze."""
    config = engines.config(snapshot_every_entries=10, snapshot_mode="fork", snapshot_inline_items_max=0)
    engine = await engines.start(config)
    started_before = [engine]  # a list: tracked by the collector, unlike a dict of atoms

    def walked() -> bool:
        return any(candidate is started_before for candidate in gc.get_objects())

    freeze_startup_heap()
    try:
        assert not walked()
        add = CounterAdd(namespace="frozen", name="c", delta=1)
        for _ in range(30):
            await engine.execute(add)
        await engine.snapshots.wait()
        assert engine.snapshots.stats.taken >= 1
        assert not walked(), "the snapshot's fork unfroze the start-up heap"
    finally:
        gc.unfreeze()


async def test_a_small_shard_is_snapshotted_without_a_fork(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork pauses the node for the whole process's page tables: a shard of a few objects
    (one hot lock) is encoded on the loop instead, and only a large one forks."""
    config = engines.config(snapshot_every_entries=10, snapshot_mode="fork", snapshot_inline_items_max=20)
    engine = await engines.start(config)
    forks = 0
    fork = os.fork

    def counted_fork() -> int:
        nonlocal forks
        forks += 1
        return fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    shard = 0
    few = [
        CounterAdd(namespace="small", name=name, delta=1)
        for name in names_on_shard(engine, "counter", "small", shard, 5)
    ]
    for cmd in few * 12:  # past the snapshot threshold, on a shard of 5 objects
        await engine.execute(cmd)
    await engine.snapshots.wait()
    assert engine.snapshots.stats.taken >= 1 and forks == 0

    many = [
        CounterAdd(namespace="large", name=name, delta=1)
        for name in names_on_shard(engine, "counter", "large", shard, 40, prefix="big")
    ]
    for cmd in many:  # 40 objects on the same shard: past inline_items_max
        await engine.execute(cmd)
    await engine.snapshots.wait()
    assert forks >= 1
