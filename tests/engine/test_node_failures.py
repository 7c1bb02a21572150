"""A bug inside the node must not leave callers waiting forever: a commit that cannot be
built fails alone, a loop of the node (or a shard's reload) that dies marks the node broken
(503 at once), and a queued acquire whose commits stall answers a retryable OutcomeUnknown."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import Acquire, CounterAdd, CounterGet, CounterValue, Granted
from lockgate_server.engine import node
from lockgate_server.engine.node import PendingCommit, new_lease_id
from lockgate_server.errors import LockgateError, OutcomeUnknown, Unavailable
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import LogRecord, record_encoder, shard_keys

from .support import admin_client, eventually, execute_until_served

if TYPE_CHECKING:
    from conftest import Engines

ADD = CounterAdd(namespace="failures", name="c", delta=1)


async def test_a_commit_that_cannot_be_built_fails_alone(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = await engines.start()
    seal = engine._seal

    def fail_once(pending: PendingCommit) -> object:
        monkeypatch.setattr(engine, "_seal", seal)
        raise RuntimeError("a bug while sealing")

    monkeypatch.setattr(engine, "_seal", fail_once)
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(engine.execute(ADD), timeout=10)
    # The shard reloaded from the store, where the add never arrived; the committer lives on.
    assert await execute_until_served(engine, ADD) == CounterValue(value=1)
    assert engine.broken is None


async def test_a_dead_loop_marks_the_node_broken(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = await engines.start(engines.config(snapshot_every_ms=1, snapshot_mode="inline"))

    def broken_take(jobs: object) -> bool:
        raise RuntimeError("a bug in the sweeper's path")

    monkeypatch.setattr(engine.snapshots, "take", broken_take)
    queued = asyncio.ensure_future(engine.execute(ADD))  # gives the sweeper a shard to snapshot
    await eventually(lambda: engine.broken is not None, timeout_s=10.0, what="the node to report itself broken")
    assert engine.broken is not None and "lockgate-sweeper" in engine.broken
    with pytest.raises(Unavailable):
        engine.submit(ADD)
    assert not engine.ready
    await asyncio.wait({queued}, timeout=10)
    assert queued.done(), "a caller of a broken node was left waiting"


async def test_a_queued_acquire_whose_commits_stall_is_outcome_unknown(
    engines: Engines, valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its turn's bare timer used to end it with a plain TimeoutError: an HTTP 500 that the SDK
    does not retry, for a store that merely stalled."""
    engine = await engines.start()
    lock = Acquire(kind="lock", namespace="failures", name="l", lease_id=new_lease_id(), ttl_ms=60_000)
    held, _ = await engine.execute(lock)
    assert isinstance(held, Granted)
    monkeypatch.setattr(node, "WAIT_GRACE_S", 0.5)  # not the default 5 s: the test stays short
    valkey.pause()  # the queued acquire's commit can neither reach the store nor fail yet
    queued = Acquire(kind="lock", namespace="failures", name="l", lease_id=new_lease_id(), ttl_ms=60_000, wait_ms=200)
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(engine.execute(queued), timeout=4)  # under the 5 s commit timeout
    valkey.resume()


async def test_a_reload_that_dies_marks_the_node_broken(engines: Engines, valkey: EmbeddedValkey) -> None:
    """Before, the reload task ended with its error unseen: the shard stayed LOADING for good
    and the node still reported healthy, so nothing restarted it or took the shard over."""
    engine = await engines.start(engines.config(shard_count=1))
    await engine.execute(ADD)
    async with admin_client(valkey.url) as store:
        # A record in a log format this version cannot read, as a newer node would append it.
        keys = shard_keys(0)
        lsn = int(await store.get(keys.lsn))
        record = LogRecord(2, lsn + 1, lsn + 1, [(int(time.time() * 1000), ADD)])
        await store.xadd(keys.log, {"r": record_encoder.encode(record)}, id=f"{lsn + 1}-0")
        await store.set(keys.lsn, lsn + 1)
    with pytest.raises(LockgateError):  # the commit is refused (the LSN moved): the shard reloads
        await engine.execute(ADD)
    await eventually(lambda: engine.broken is not None, timeout_s=10.0, what="the node to report itself broken")
    assert engine.broken is not None and "reload of shard 0" in engine.broken
    assert not engine.ready
    with pytest.raises(Unavailable):
        engine.submit(ADD)


async def test_a_node_that_breaks_with_a_commit_in_flight_answers_outcome_unknown(
    engines: Engines, valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit already sent may land after the node broke: its callers must hear "outcome
    unknown", not "unavailable" (which says nothing happened). A commit never sent did not
    happen, and says so."""
    config = engines.config(shard_count=1, commits_in_flight=1)
    engine = await engines.start(config)
    await engine.execute(ADD)
    breaking = False
    now = engine._now

    def clock() -> int:
        if breaking:
            raise RuntimeError("a bug in the sweeper's path")
        return now()

    monkeypatch.setattr(engine, "_now", clock)
    valkey.pause()
    try:
        sent = asyncio.ensure_future(engine.execute(ADD))
        await eventually(lambda: engine.pending_ops() == 1 and not engine._pending.op_count, what="a commit in flight")
        unsent = asyncio.ensure_future(engine.execute(ADD))  # waits behind it: one commit in flight at most
        await eventually(lambda: engine._pending.op_count == 1, what="a second commit waiting to be sent")
        breaking = True
        await eventually(lambda: engine.broken is not None, timeout_s=10.0, what="the node to report itself broken")
        with pytest.raises(OutcomeUnknown):
            await asyncio.wait_for(sent, timeout=5)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(unsent, timeout=5)
    finally:
        valkey.resume()
    survivor = await engines.start(config)
    # The first add was in flight and landed: "unavailable" would have told its caller otherwise.
    assert await execute_until_served(survivor, CounterGet(namespace="failures", name="c")) == CounterValue(value=2)
