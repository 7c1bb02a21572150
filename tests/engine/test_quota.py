"""Objects per namespace: a node refuses the create past the limit, across all its shards,
frees room when objects go away, and counts the same after a restart replays the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import (
    Acquire,
    CasOutcome,
    CounterAdd,
    CounterCompareAndSet,
    Granted,
    Release,
    Released,
)
from lockgate_server.engine.node import Engine, new_lease_id
from lockgate_server.errors import QuotaExceeded

from .support import one_name_per_shard

if TYPE_CHECKING:
    from conftest import Engines

LIMIT = 5
NAMESPACE, OTHER = "quota", "elsewhere"


def acquire(name: str, namespace: str = NAMESPACE) -> Acquire:
    return Acquire(kind="lock", namespace=namespace, name=name, lease_id=new_lease_id(), ttl_ms=60_000)


async def grant(engine: Engine, name: str, namespace: str = NAMESPACE) -> Granted:
    granted, _ = await engine.execute(acquire(name, namespace))
    assert isinstance(granted, Granted)
    return granted


def per_shard_total(engine: Engine, namespace: str) -> int:
    return sum(slot.state.objects_per_namespace.get(namespace, 0) for slot in engine._slots.values())


async def test_the_limit_holds_across_shards_and_frees_room(engines: Engines) -> None:
    engine = await engines.start(engines.config(max_objects_per_namespace=LIMIT))
    names = list(one_name_per_shard(engine, "lock", NAMESPACE).values())  # one per shard: every shard counts
    held = [await grant(engine, name) for name in names[:LIMIT]]
    assert engine.objects_in(NAMESPACE) == per_shard_total(engine, NAMESPACE) == LIMIT

    with pytest.raises(QuotaExceeded):
        await engine.execute(acquire(names[LIMIT]))
    # Existing objects keep working; other namespaces have their own count.
    await engine.execute(CounterAdd(namespace=OTHER, name="c", delta=1))
    released, _ = await engine.execute(
        Release(kind="lock", namespace=NAMESPACE, name=names[0], lease_id=held[0].lease_id)
    )
    assert isinstance(released, Released)
    assert engine.objects_in(NAMESPACE) == per_shard_total(engine, NAMESPACE) == LIMIT - 1

    await grant(engine, names[LIMIT])  # the released lock left, so there is room again
    with pytest.raises(QuotaExceeded):
        await engine.execute(CounterAdd(namespace=NAMESPACE, name="one-more", delta=1))
    assert engine.objects_in(OTHER) == 1


async def test_a_restarted_node_counts_what_it_replays(engines: Engines) -> None:
    config = engines.config(max_objects_per_namespace=LIMIT)
    engine = await engines.start(config)
    names = list(one_name_per_shard(engine, "lock", NAMESPACE).values())
    for name in names[:LIMIT]:
        await grant(engine, name)
    await engines.stop(engine)

    restarted = await engines.start(config)
    assert restarted.objects_in(NAMESPACE) == per_shard_total(restarted, NAMESPACE) == LIMIT
    with pytest.raises(QuotaExceeded):
        await restarted.execute(acquire(names[LIMIT]))


async def test_a_compare_and_set_that_creates_a_counter_counts_against_the_limit(engines: Engines) -> None:
    """A missing counter reads 0, so a CAS expecting 0 creates it: the quota applies to it too."""
    engine = await engines.start(engines.config(max_objects_per_namespace=1))
    await engine.execute(CounterAdd(namespace=NAMESPACE, name="first", delta=1))
    with pytest.raises(QuotaExceeded):
        await engine.execute(CounterCompareAndSet(namespace=NAMESPACE, name="second", expected=0, value=7))
    # One that cannot create anything answers as a CAS, not as a refusal.
    missed, _ = await engine.execute(CounterCompareAndSet(namespace=NAMESPACE, name="second", expected=3, value=7))
    assert missed == CasOutcome(swapped=False, value=0)
    swapped, _ = await engine.execute(CounterCompareAndSet(namespace=NAMESPACE, name="first", expected=1, value=2))
    assert swapped == CasOutcome(swapped=True, value=2)
    assert engine.objects_in(NAMESPACE) == 1
