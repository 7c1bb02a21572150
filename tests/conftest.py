"""Fixtures shared by every test that needs a real store: a Valkey of our own, and engines on it."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lockgate_server.clock import Clock
from lockgate_server.engine.node import Engine, EngineConfig, GateFuture
from lockgate_server.errors import Unavailable
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import RedisLog

TEST_SHARD_COUNT = 8
"""Few shards: an engine takes and replays every shard it owns when it starts."""

ENGINE_STOP_TIMEOUT_S = 10.0


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey of our own in tmp_path, AOF on with `appendfsync always`; stopped afterwards."""
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    try:
        yield server
    finally:
        server.resume()  # a test may have left it stopped with SIGSTOP
        server.stop()


class Engines:
    """Starts engines for a test and stops whatever the test left running."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.default_config = EngineConfig(shard_count=TEST_SHARD_COUNT)
        self._running: list[Engine] = []

    def config(self, **changes: object) -> EngineConfig:
        """The test configuration with some fields changed, e.g. `engines.config(commit_timeout_ms=300)`."""
        return dataclasses.replace(self.default_config, **changes)  # type: ignore[arg-type]

    async def start(
        self, config: EngineConfig | None = None, *, url: str | None = None, clock: Clock | None = None
    ) -> Engine:
        engine = Engine(RedisLog(url or self.url), config or self.default_config, clock)
        self._running.append(engine)
        await engine.start()
        return engine

    async def stop(self, engine: Engine) -> None:
        if engine in self._running:
            self._running.remove(engine)
            # Not wait_for: a stop that swallows its own cancellation would make it wait forever.
            stopping = asyncio.ensure_future(engine.stop())
            done, _ = await asyncio.wait({stopping}, timeout=ENGINE_STOP_TIMEOUT_S)
            if not done:
                stacks = io.StringIO()
                for task in asyncio.all_tasks():
                    task.print_stack(file=stacks)
                raise AssertionError(
                    f"engine.stop() did not finish within {ENGINE_STOP_TIMEOUT_S} s; tasks:\n{stacks.getvalue()}"
                )
            stopping.result()

    async def stop_all(self) -> None:
        """Stop every engine still running; fail (after trying them all) if one would not stop."""
        failures = []
        for engine in list(reversed(self._running)):
            try:
                await self.stop(engine)
            except Exception as error:
                failures.append(error)
        if failures:
            raise AssertionError(f"engines did not stop cleanly: {failures!r}")

    @staticmethod
    def release_stuck_callers() -> int:
        return release_stuck_callers()


def release_stuck_callers() -> int:
    """Fail every task still blocked on a commit gate that nobody will ever resolve.

    A gate refuses cancellation (one caller leaving must not cancel a commit for all), so a
    caller stuck on a gate the engine forgot would also block the event loop's shutdown,
    which cancels and awaits every task. Tests that find such a hang report it; this only
    keeps one failing test from hanging the whole run. Returns how many were released.
    """
    released = 0
    for task in asyncio.all_tasks():
        waiter = getattr(task, "_fut_waiter", None)
        if isinstance(waiter, GateFuture) and not waiter.done():
            # Mark the task's error as seen: an unseen one is logged from a finalizer at some
            # later garbage collection, which on CPython 3.11.7 can break pytest's own reporting.
            task.add_done_callback(_consume_outcome)
            waiter.set_exception(Unavailable("released by the test harness: this commit gate was never resolved"))
            released += 1
    return released


def _consume_outcome(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


@pytest.fixture
async def engines(valkey: EmbeddedValkey) -> AsyncIterator[Engines]:
    """Make engines on `valkey` with `await engines.start(config)`; all are stopped after the test."""
    factory = Engines(valkey.url)
    try:
        yield factory
    finally:
        try:
            await factory.stop_all()
        finally:
            release_stuck_callers()


@pytest.fixture
async def engine(engines: Engines) -> Engine:
    """One started engine on `valkey` with the test configuration (8 shards)."""
    return await engines.start()
