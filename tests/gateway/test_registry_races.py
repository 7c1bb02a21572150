"""An acknowledged policy change is never undone by a refresh that read the store before it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from lockgate_server.gateway.registry import PolicyRegistry
from lockgate_server.storage.embedded import EmbeddedValkey

from .test_registry import per_ip, registries, requests_for_ip

__all__ = ["registries"]  # the fixture, shared with test_registry


class StalledRead:
    """Holds the answer of the next read of the policies (HGETALL, alone or in a pipeline)
    until released, as a slow store or a busy event loop would; later reads pass."""

    def __init__(self) -> None:
        self.armed = False
        self.holding = asyncio.Event()
        self.released = asyncio.Event()

    async def hold(self) -> None:
        if self.armed:
            self.armed = False
            self.holding.set()
            await self.released.wait()


@pytest.fixture
def stalled_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[StalledRead]:
    stall = StalledRead()
    real_hgetall, real_execute = Redis.hgetall, Pipeline.execute

    async def held_hgetall(self: Redis, *args: Any) -> Any:
        answer = await real_hgetall(self, *args)
        await stall.hold()
        return answer

    def hgetall(self: Redis, *args: Any) -> Any:
        if isinstance(self, Pipeline):  # queued, not sent: held in execute
            return real_hgetall(self, *args)
        return held_hgetall(self, *args)

    async def execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        reads_policies = any(str(args[0]).upper() == "HGETALL" for args, _ in self.command_stack)
        answer = await real_execute(self, raise_on_error)
        if reads_policies:
            await stall.hold()
        return answer

    monkeypatch.setattr(Redis, "hgetall", hgetall)
    monkeypatch.setattr(Pipeline, "execute", execute)
    yield stall
    stall.released.set()


async def test_a_refresh_that_read_before_a_put_never_reinstalls_the_old_policy(
    registries: Any, valkey: EmbeddedValkey, stalled_read: StalledRead
) -> None:
    node, other = registries(), registries()
    await node.start(valkey.url)
    await other.start(valkey.url)
    await other.put(per_ip(7))  # a change through another node, for the background refresh to find

    stalled_read.armed = True
    refresh = asyncio.create_task(node.refresh())  # what the watcher does every second
    await asyncio.wait_for(stalled_read.holding.wait(), 5)  # it has read the store: 7

    await node.put(per_ip(9))  # acknowledged: in force from now on
    assert requests_for_ip(node) == 9
    stalled_read.released.set()
    await refresh
    assert requests_for_ip(node) == 9  # not back to 7

    await node.refresh()  # and the next refresh sees nothing newer
    assert requests_for_ip(node) == 9


async def test_refreshes_that_overlap_leave_the_newest_state(
    registries: Any, valkey: EmbeddedValkey, stalled_read: StalledRead
) -> None:
    node: PolicyRegistry = registries()
    other: PolicyRegistry = registries()
    await node.start(valkey.url)
    await other.start(valkey.url)
    await other.put(per_ip(3))
    stalled_read.armed = True
    stale = asyncio.create_task(node.refresh())
    await asyncio.wait_for(stalled_read.holding.wait(), 5)
    await other.put(per_ip(4))
    await node.refresh()
    assert requests_for_ip(node) == 4
    stalled_read.released.set()
    await stale
    assert requests_for_ip(node) == 4
