"""Idempotency: a repeated request_id gets the original answer, also after a restart."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lockgate_server.core.ops import (
    Acquire,
    CounterAdd,
    CounterGet,
    CounterValue,
    Failure,
    Granted,
    Inspect,
    LeaseInfo,
)
from lockgate_server.engine.node import new_lease_id

from .support import is_the_same_grant

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "idem"


async def test_a_repeated_acquire_gets_the_original_grant(engines: Engines) -> None:
    engine = await engines.start()
    acquire = Acquire(
        kind="lock", namespace=NAMESPACE, name="once", lease_id=new_lease_id(), ttl_ms=60_000, request_id="req-1"
    )
    first, _ = await engine.execute(acquire)
    assert isinstance(first, Granted)
    second, _ = await engine.execute(acquire)
    assert is_the_same_grant(second, first)  # same lease, same token
    # The repeat created no second lease: anyone else is refused.
    other = Acquire(kind="lock", namespace=NAMESPACE, name="once", lease_id=new_lease_id(), ttl_ms=60_000)
    refused, _ = await engine.execute(other)
    assert isinstance(refused, Failure) and refused.code == "held"

    # Duplicates within one tick get one answer too.
    burst = Acquire(
        kind="lock", namespace=NAMESPACE, name="burst", lease_id=new_lease_id(), ttl_ms=60_000, request_id="req-2"
    )
    answers = await asyncio.gather(*(engine.execute(burst) for _ in range(5)))
    grant = answers[0][0]
    assert isinstance(grant, Granted)
    assert all(is_the_same_grant(result, grant) for result, _ in answers)

    await engines.stop(engine)
    restarted = await engines.start()
    assert is_the_same_grant((await restarted.execute(acquire))[0], first)
    assert is_the_same_grant((await restarted.execute(burst))[0], grant)
    info, _ = await restarted.execute(Inspect(kind="lock", namespace=NAMESPACE, name="once"))
    assert isinstance(info, LeaseInfo) and info.held and info.token == first.token


async def test_a_repeated_counter_add_counts_once(engines: Engines) -> None:
    engine = await engines.start()
    add = CounterAdd(namespace=NAMESPACE, name="count", delta=5, request_id="add-1")
    assert (await engine.execute(add))[0] == CounterValue(value=5)
    assert (await engine.execute(add))[0] == CounterValue(value=5)
    await engines.stop(engine)
    restarted = await engines.start()
    assert (await restarted.execute(add))[0] == CounterValue(value=5)
    assert (await restarted.execute(CounterGet(namespace=NAMESPACE, name="count")))[0] == CounterValue(value=5)
