"""Small helpers for the engine tests: names pinned to shards, bounded polling, store access."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as redis

from lockgate_server.core.ops import Command, CounterGet, Granted, Result
from lockgate_server.core.shard_state import ShardState
from lockgate_server.engine.node import Engine
from lockgate_server.engine.routing import shard_for
from lockgate_server.errors import RetryableError
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import RedisLog, ShardHistory, record_decoder, shard_keys


def names_on_shard(engine: Engine, kind: str, namespace: str, shard: int, count: int, prefix: str = "n") -> list[str]:
    """`count` object names of `kind` in `namespace` that the engine places on `shard`."""
    names: list[str] = []
    index = 0
    while len(names) < count:
        name = f"{prefix}{index}"
        if shard_for(kind, namespace, name, engine.config.shard_count) == shard:
            names.append(name)
        index += 1
    return names


def one_name_per_shard(engine: Engine, kind: str, namespace: str, prefix: str = "n") -> dict[int, str]:
    return {
        shard: names_on_shard(engine, kind, namespace, shard, 1, prefix)[0]
        for shard in range(engine.config.shard_count)
    }


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 5.0, what: str = "the condition"
) -> None:
    """Poll `predicate` (sync or async) until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(0.01)


async def finished_within(tasks: set[asyncio.Task[object]], timeout_s: float) -> set[asyncio.Task[object]]:
    """Wait without cancelling anything (a task stuck on a commit gate cannot be cancelled).

    Returns the tasks that did not finish.
    """
    if not tasks:
        return set()
    _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    return pending


@contextlib.contextmanager
def restarted(old: EmbeddedValkey) -> Iterator[EmbeddedValkey]:
    """A new Valkey process on the same data folder and port as `old` (which must be dead)."""
    new = EmbeddedValkey(old.data_dir, port=old.port, appendfsync=old.appendfsync)
    new.start()
    try:
        yield new
    finally:
        new.resume()
        new.stop()


@contextlib.asynccontextmanager
async def admin_client(url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def shard_epochs(client: redis.Redis, shard_count: int) -> dict[int, int]:
    values = [await client.get(shard_keys(shard).epoch) for shard in range(shard_count)]
    return {shard: int(value or 0) for shard, value in enumerate(values)}


async def replay_from_store(url: str, shard: int) -> ShardState:
    """Rebuild a shard the way recovery does (snapshot, then the log after it), without taking it."""
    store = RedisLog(url)
    await store.connect()
    try:
        async with admin_client(url) as client:
            epoch = (await shard_epochs(client, shard + 1))[shard]
        history = await store.read_history(shard, epoch)
    finally:
        await store.close()
    state = ShardState.restore(history.snapshot) if history.snapshot else ShardState(shard)
    assert state.lsn == history.snapshot_lsn
    for record in history.records:
        assert record.first_lsn == state.lsn + 1, f"log gap before LSN {record.first_lsn}"
        for now_ms, cmd in record.entries:
            state.apply(cmd, now_ms)
        assert state.lsn == record.last_lsn
    assert state.lsn == history.lsn
    return state


def is_the_same_grant(repeat: object, first: Granted) -> bool:
    """A repeated acquire's answer: the first grant's lease and token. Its ttl_ms is the time the
    lease has left then (tests/core/test_repeat_after_lease_ended.py), which a restart's
    Recover may have extended past the first answer's."""
    return (
        isinstance(repeat, Granted)
        and (repeat.lease_id, repeat.token, repeat.permits) == (first.lease_id, first.token, first.permits)
        and repeat.ttl_ms > 0
    )


async def execute_until_served(engine: Engine, cmd: Command, *, timeout_s: float = 15.0) -> Result:
    """Retry `cmd` (same request_id) through retryable errors, as a client would; its result."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result, _ = await engine.execute(cmd)
        except RetryableError as error:
            if time.monotonic() >= deadline:
                raise AssertionError(f"still {error!r} after {timeout_s} s of retries") from error
            await asyncio.sleep(0.02)
            continue
        return result


async def log_entries(client: redis.Redis, shard: int) -> int:
    """How many ops the shard's log in the store holds (entries of all its records)."""
    records = await client.xrange(shard_keys(shard).log)
    return sum(len(record_decoder.decode(fields[b"r"]).entries) for _id, fields in records)


async def settle(engine: Engine, *, timeout_s: float = 20.0) -> None:
    """Wait until every shard is loaded and the commit of its reload is acknowledged.

    A read waits for the commit covering its shard, so one read per shard is enough.
    """
    await eventually(lambda: engine.ready, timeout_s=timeout_s, what="every shard loaded")
    for shard in range(engine.config.shard_count):
        name = names_on_shard(engine, "counter", "settle", shard, 1)[0]
        await execute_until_served(engine, CounterGet(namespace="settle", name=name), timeout_s=timeout_s)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def passing_on_to(port: int, ends: tuple[type[BaseException], ...] = (ConnectionError,)) -> Handler:
    """A connection handler passing bytes both ways to 127.0.0.1:port (a stand-in for a store's
    TLS port or unix socket in front of the test's Valkey); `ends`: errors that end a direction."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ends:
            pass
        finally:
            sink.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return handle


def make_loads_slow(monkeypatch: pytest.MonkeyPatch, *, all_shards_s: float, shard_count: int) -> None:
    """Loading every shard takes `all_shards_s`, one shard after another, as replaying a large
    store does (replay is CPU work)."""
    replaying = asyncio.Lock()
    read_history = RedisLog.read_history

    async def slow_read(self: RedisLog, shard: int, epoch: int) -> ShardHistory:
        async with replaying:
            await asyncio.sleep(all_shards_s / shard_count)
            return await read_history(self, shard, epoch)

    monkeypatch.setattr(RedisLog, "read_history", slow_read)
