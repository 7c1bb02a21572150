"""The output gate: no reply, not even to a read, before the store acknowledged what it shows.

And its other half: every caller gets a reply, success or a retryable error, even when the
commit it waits for fails or the node stops.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import Acquire, CounterAdd, CounterGet, CounterValue, Granted, Inspect, LeaseInfo
from lockgate_server.engine.node import new_lease_id
from lockgate_server.errors import OutcomeUnknown, RetryableError
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import admin_client, eventually, execute_until_served, finished_within, is_the_same_grant

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "gate"
TTL_MS = 60_000


@pytest.mark.parametrize("pause", ["sigstop", "client_pause"])
async def test_no_reply_leaves_before_the_store_acknowledges(
    valkey: EmbeddedValkey, engines: Engines, pause: str
) -> None:
    engine = await engines.start(engines.config(commit_timeout_ms=15_000))  # longer than the pause
    lease_id = new_lease_id()
    acquire = Acquire(kind="lock", namespace=NAMESPACE, name="gated", lease_id=lease_id, ttl_ms=TTL_MS)
    async with admin_client(valkey.url) as admin:
        if pause == "sigstop":
            valkey.pause()
        else:
            await admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")
        try:
            op = asyncio.create_task(engine.execute(acquire))
            await asyncio.sleep(0)  # the acquire is applied in memory and waits for its commit
            read = asyncio.create_task(engine.execute(Inspect(kind="lock", namespace=NAMESPACE, name="gated")))
            unanswered = await finished_within({op, read}, 0.5)
            assert unanswered == {op, read}, "a reply left before the store acknowledged the state it shows"
        finally:
            valkey.resume()
    assert not await finished_within({op, read}, 10)
    granted, _ = op.result()
    info, _ = read.result()
    assert isinstance(granted, Granted) and granted.lease_id == lease_id
    # The read saw the grant, and was held back until that grant was durable.
    assert isinstance(info, LeaseInfo) and info.held and info.token == granted.token


async def test_commit_timeout_is_outcome_unknown_and_a_retry_gets_one_answer(
    valkey: EmbeddedValkey, engines: Engines
) -> None:
    engine = await engines.start(engines.config(commit_timeout_ms=300))  # shorter than the pause
    lease_id = new_lease_id()
    acquire = Acquire(
        kind="lock", namespace=NAMESPACE, name="unknown", lease_id=lease_id, ttl_ms=TTL_MS, request_id="acquire-1"
    )
    valkey.pause()
    try:
        op = asyncio.create_task(engine.execute(acquire))
        assert not await finished_within({op}, 5), "a caller got no answer while the store was stopped"
        with pytest.raises(OutcomeUnknown):
            op.result()
    finally:
        valkey.resume()

    # The client retries with the same request_id: one grant, whether or not the first write landed.
    granted = await execute_until_served(engine, acquire)
    assert isinstance(granted, Granted) and granted.lease_id == lease_id
    assert is_the_same_grant(await execute_until_served(engine, acquire), granted)
    await engines.stop(engine)

    fresh = await engines.start()
    assert is_the_same_grant((await fresh.execute(acquire))[0], granted)
    info, _ = await fresh.execute(Inspect(kind="lock", namespace=NAMESPACE, name="unknown"))
    assert isinstance(info, LeaseInfo) and info.held and info.token == granted.token


async def test_an_op_sequenced_behind_a_failed_commit_fails_retryably(valkey: EmbeddedValkey, engines: Engines) -> None:
    """The second op was applied on top of the first's speculative state, so it must fail too.

    It must get that answer: a caller left waiting forever is worse than any error.
    """
    engine = await engines.start(engines.config(commit_timeout_ms=400))

    def add(request_id: str) -> CounterAdd:
        return CounterAdd(namespace=NAMESPACE, name="behind", delta=1, request_id=request_id)

    await engine.execute(add("add-0"))
    valkey.pause()
    try:
        first = asyncio.create_task(engine.execute(add("add-1")))
        await asyncio.sleep(0.05)  # its commit is sent, and stuck
        assert engine.pending_ops() == 1
        second = asyncio.create_task(engine.execute(add("add-2")))
        await asyncio.sleep(0.05)
        assert engine.pending_ops() == 2  # applied on top of the first's speculative state
        assert not await finished_within({first}, 5)
        with pytest.raises(OutcomeUnknown):
            first.result()
    finally:
        valkey.resume()
    stuck = await finished_within({second}, 5)
    assert not stuck, "an op sequenced behind a failed commit got no answer at all: its caller hangs"
    with pytest.raises(RetryableError):
        second.result()
    # Retries settle it: each add counts once.
    for request_id in ("add-1", "add-2"):
        await execute_until_served(engine, add(request_id))
    assert (await engine.execute(CounterGet(namespace=NAMESPACE, name="behind")))[0] == CounterValue(value=3)
    # Both failures reached the shard in one tick; two reloads would fence each other's commits.
    assert engine.stats.reloads == 1


async def test_stop_answers_the_caller_of_the_commit_in_flight(valkey: EmbeddedValkey, engines: Engines) -> None:
    engine = await engines.start()
    add = CounterAdd(namespace=NAMESPACE, name="stopping", delta=1, request_id="add-1")
    valkey.pause()
    try:
        op = asyncio.create_task(engine.execute(add))
        await asyncio.sleep(0)
        assert engine.pending_ops() == 1
        # Sealed and sent (nothing left gathering), its reply stuck behind the paused store.
        await eventually(
            lambda: engine._pending.op_count == 0 and engine.pending_ops() == 1, what="the commit being sent"
        )
        stopping = asyncio.ensure_future(engines.stop(engine))
        await asyncio.sleep(0.2)
    finally:
        valkey.resume()
    assert not await finished_within({stopping}, 15)
    stopping.result()
    stuck = await finished_within({op}, 5)
    assert not stuck, "stop() returned while a caller still waits for the commit in flight: that caller hangs"

    fresh = await engines.start()
    value, _ = await fresh.execute(CounterGet(namespace=NAMESPACE, name="stopping"))
    assert isinstance(value, CounterValue)
    if op.exception() is None:
        assert op.result()[0] == CounterValue(value=1) == value  # acknowledged, so durable
    else:
        assert isinstance(op.exception(), RetryableError)
        assert value.value in (0, 1)


async def test_stop_during_a_reload_returns(valkey: EmbeddedValkey, engines: Engines) -> None:
    """A shard reloading when the node stops must not keep stop() waiting forever."""
    engine = await engines.start(engines.config(commit_timeout_ms=300))
    valkey.pause()
    try:
        failed = asyncio.create_task(engine.execute(CounterAdd(namespace=NAMESPACE, name="reloading", delta=1)))
        assert not await finished_within({failed}, 5)
        with pytest.raises(OutcomeUnknown):
            failed.result()
        assert not engine.ready  # the shard is reloading, blocked on the stopped store
        stopping = asyncio.create_task(engine.stop())
        await asyncio.sleep(0.2)
    finally:
        valkey.resume()
    unfinished = await finished_within({stopping}, 5)
    if unfinished:
        engines.release_stuck_callers()  # let it finish, so the failure below is the only one
    assert not unfinished, "stop() hangs: the reload it waits for waits on a commit nobody will send"
