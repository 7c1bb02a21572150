"""A bug inside the node must not leave callers waiting forever: a commit that cannot be
built fails alone, and a loop of the node that dies marks the node broken (503 at once)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from lockgate_server.core.ops import CounterAdd, CounterValue
from lockgate_server.engine.node import PendingCommit
from lockgate_server.errors import OutcomeUnknown, Unavailable

from .support import eventually, execute_until_served

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
