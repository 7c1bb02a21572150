"""Standby and failover: a second node on the same store waits while the owner lives, and
takes every shard over, with all that was acknowledged, once the owner stops renewing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import Acquire, CounterAdd, CounterGet, CounterValue, Granted, Inspect, LeaseInfo
from lockgate_server.engine.node import Engine, SlotStatus, new_lease_id
from lockgate_server.errors import Unavailable
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import shard_keys

from .support import admin_client, eventually, execute_until_served, make_loads_slow, shard_epochs

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "standby"
LEASE_MS = 1_000  # short leases keep the waits of these tests short
POLL_MS = 100
ADD = CounterAdd(namespace=NAMESPACE, name="c", delta=1)
LOCK = Acquire(kind="lock", namespace=NAMESPACE, name="l", lease_id=new_lease_id(), ttl_ms=60_000)


async def owner_and_standby(engines: Engines) -> tuple[Engine, Engine, Granted]:
    config = engines.config(owner_lease_ms=LEASE_MS, standby_poll_ms=POLL_MS)
    owner = await engines.start(config)
    await owner.execute(ADD)
    granted, _ = await owner.execute(LOCK)
    assert isinstance(granted, Granted)
    standby = await engines.start(config)
    return owner, standby, granted


async def assert_took_over(engine: Engine, granted: Granted) -> None:
    assert await execute_until_served(engine, CounterGet(namespace=NAMESPACE, name="c")) == CounterValue(value=1)
    info, _ = await engine.execute(Inspect(kind="lock", namespace=NAMESPACE, name="l"))
    assert isinstance(info, LeaseInfo) and info.held and info.token == granted.token


async def test_a_second_node_stands_by_while_the_owner_lives(valkey: EmbeddedValkey, engines: Engines) -> None:
    async with admin_client(valkey.url) as admin:
        config = engines.config(owner_lease_ms=LEASE_MS, standby_poll_ms=POLL_MS)
        owner = await engines.start(config)
        await owner.execute(ADD)
        epochs = await shard_epochs(admin, config.shard_count)
        standby = await engines.start(config)  # returns once the owner has renewed past its lease
        assert standby.standing_by and not standby.ready
        assert set(standby.slot_statuses().values()) == {SlotStatus.STANDBY}
        with pytest.raises(Unavailable):
            await standby.execute(CounterGet(namespace=NAMESPACE, name="c"))
        await asyncio.sleep(3 * POLL_MS / 1000)  # the standby polls a few times meanwhile
        # It fenced nothing: the owner keeps every shard and keeps serving.
        assert await shard_epochs(admin, config.shard_count) == epochs
        assert owner.ready
        assert (await owner.execute(ADD))[0] == CounterValue(value=2)


async def test_the_standby_takes_over_when_the_owner_stops(valkey: EmbeddedValkey, engines: Engines) -> None:
    owner, standby, granted = await owner_and_standby(engines)
    assert standby.standing_by
    await engines.stop(owner)
    async with admin_client(valkey.url) as admin:
        owners = {await admin.get(shard_keys(shard).owner) for shard in range(owner.config.shard_count)}
    # A clean stop lets go of every shard: nobody waits out its lease.
    assert owners <= {None, standby.node_id.encode()}, owners
    await eventually(lambda: standby.ready, timeout_s=10, what="the standby serving every shard")
    await assert_took_over(standby, granted)


async def test_the_standby_takes_over_from_an_owner_cut_off_from_the_store(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner cannot renew (a partition, a long pause): it stops serving before its lease
    runs out, the standby takes every shard after it, and the owner, back, stands by."""
    owner, standby, granted = await owner_and_standby(engines)
    renew = owner._store.renew

    async def cut_off(*args: object, **kwargs: object) -> list[int]:
        raise ConnectionError("the owner cannot reach the store")

    monkeypatch.setattr(owner._store, "renew", cut_off)
    await eventually(lambda: standby.ready, timeout_s=10, what="the standby serving every shard")
    assert not owner.ready, "the old owner still believed it served shards the standby has taken"
    await assert_took_over(standby, granted)

    monkeypatch.setattr(owner._store, "renew", renew)
    await eventually(lambda: owner.standing_by and not owner._loading, timeout_s=10, what="the old owner standing by")
    assert set(owner.slot_statuses().values()) == {SlotStatus.STANDBY}
    assert standby.ready
    assert (await standby.execute(ADD))[0] == CounterValue(value=2)


async def test_an_owner_whose_shards_load_longer_than_its_lease_keeps_them(
    valkey: EmbeddedValkey, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading every shard of a large store can take longer than the ownership lease. Before,
    nothing renewed the claim meanwhile: a standby took the shards from the loading owner (and
    each could fence the other in turn), and a single node reloaded every shard once more."""
    config = engines.config(owner_lease_ms=LEASE_MS, standby_poll_ms=POLL_MS)
    first = await engines.start(config)
    await first.execute(ADD)
    await engines.stop(first)
    make_loads_slow(monkeypatch, all_shards_s=2 * LEASE_MS / 1000, shard_count=config.shard_count)

    async def standby_later() -> Engine:
        await asyncio.sleep(LEASE_MS / 1000 / 4)
        return await engines.start(config)

    owner, standby = await asyncio.gather(engines.start(config), standby_later())
    async with admin_client(valkey.url) as admin:
        epochs = await shard_epochs(admin, config.shard_count)
        await asyncio.sleep(2 * LEASE_MS / 1000)
        assert await shard_epochs(admin, config.shard_count) == epochs, "a shard changed hands"
    assert owner.ready and owner.stats.reloads == 0
    assert standby.standing_by
    assert (await owner.execute(CounterGet(namespace=NAMESPACE, name="c")))[0] == CounterValue(value=1)
