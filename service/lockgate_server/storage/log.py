"""The shard log in Redis: fenced appends, snapshots, ownership and recovery reads.

Per shard, every key shares the hash tag `{lg:N}` so a shard lives in one Cluster slot:
  {lg:N}:epoch  owner epoch, INCR'd by every node that takes the shard
  {lg:N}:lsn    last LSN written
  {lg:N}:log    stream of records since the last snapshot, ID = first LSN of the record
  {lg:N}:snap   hash {lsn, data}: the last snapshot and the LSN it covers
  {lg:N}:alive  the owner's last heartbeat (ms); a new owner starts the outage there
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import redis
import redis.asyncio as aioredis

from ..core.ops import AnyCommand
from .resp import RespConnection, RespError, pack

LOG_FORMAT_VERSION: Final = 1
RECOVERY_PAGE_RECORDS: Final = 1000

# COMMIT: one tick's records for many shards, all or nothing, fenced.
# KEYS: per shard, 3 each: epoch, lsn, log
# ARGV: per shard, 4 each: epoch, prev_lsn, last_lsn, record
# Returns: {} when written; otherwise {'epoch'|'lsn', position, found} for the first shard
#          whose owner epoch or last LSN is not what the caller expects, and nothing is written.
COMMIT_SCRIPT: Final = """
local n = #KEYS / 3
for i = 0, n - 1 do
  local epoch = redis.call('GET', KEYS[3*i+1])
  if epoch ~= ARGV[4*i+1] then return {'epoch', i + 1, epoch or ''} end
  local lsn = redis.call('GET', KEYS[3*i+2]) or '0'
  if lsn ~= ARGV[4*i+2] then return {'lsn', i + 1, lsn} end
end
for i = 0, n - 1 do
  redis.call('XADD', KEYS[3*i+3], (tonumber(ARGV[4*i+2]) + 1) .. '-0', 'r', ARGV[4*i+4])
  redis.call('SET', KEYS[3*i+2], ARGV[4*i+3])
end
return {}
"""

# SNAPSHOT: store a shard's state as of `lsn` and trim the log it covers, fenced.
# KEYS: epoch, lsn, log, snap
# ARGV: epoch, lsn, snapshot
# Returns: 'ok'; 'epoch' (another owner); 'wait' (the log has not reached lsn yet);
#          'stale' (a snapshot at or past lsn is already stored). Only 'ok' writes.
SNAPSHOT_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'epoch' end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then return 'wait' end
if tonumber(redis.call('HGET', KEYS[4], 'lsn') or '0') >= tonumber(ARGV[2]) then return 'stale' end
redis.call('HSET', KEYS[4], 'lsn', ARGV[2], 'data', ARGV[3])
redis.call('XTRIM', KEYS[3], 'MINID', (tonumber(ARGV[2]) + 1) .. '-0')
return 'ok'
"""
SNAPSHOT_WAIT_S: Final = 10.0
"""How long a snapshot writer waits for the log to reach the snapshot's LSN."""


class LogRecord(msgspec.Struct, array_like=True):
    """One commit's entries for one shard: (now_ms, command) in sequencing order."""

    version: int
    first_lsn: int
    last_lsn: int
    entries: list[tuple[int, AnyCommand]]


record_encoder = msgspec.msgpack.Encoder()
record_decoder = msgspec.msgpack.Decoder(LogRecord)


class FenceRefused(Exception):
    """The store refused a commit: another owner took the shard, or its log moved on."""

    def __init__(self, reason: str, shard: int, found: str) -> None:
        super().__init__(f"shard {shard}: {reason} is {found!r} in the store")
        self.reason = reason
        self.shard = shard


@dataclass(frozen=True, slots=True)
class ShardAppend:
    shard: int
    epoch: int
    prev_lsn: int
    last_lsn: int
    record: bytes


@dataclass(frozen=True, slots=True)
class ShardHistory:
    epoch: int
    lsn: int
    snapshot: bytes | None
    snapshot_lsn: int
    records: list[LogRecord]
    last_alive_ms: int


def shard_keys(shard: int) -> tuple[str, str, str, str, str]:
    tag = f"{{lg:{shard}}}"
    return f"{tag}:epoch", f"{tag}:lsn", f"{tag}:log", f"{tag}:snap", f"{tag}:alive"


class RedisLog:
    """Talks to Redis over one connection for commits, so commits arrive in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._commits = RespConnection(url)  # one connection: commits reach Redis in order
        # Typed loosely: redis-py's annotations cannot tell pipelines from awaitables.
        self._other: Any = aioredis.Redis.from_url(url)
        self._commit_sha: str | None = None

    async def connect(self) -> None:
        self._commit_sha = await self._other.script_load(COMMIT_SCRIPT)

    async def close(self) -> None:
        self._commits.close()
        await self._other.aclose()

    async def store_settings(self) -> dict[str, str]:
        config = await self._other.config_get("append*")
        return {str(key): str(value) for key, value in config.items()}

    async def ping(self) -> bool:
        return bool(await self._other.ping())

    async def commit(self, appends: list[ShardAppend]) -> None:
        keys: list[str] = []
        args: list[bytes | int] = []
        for append in appends:
            epoch_key, lsn_key, log_key, _, _ = shard_keys(append.shard)
            keys += [epoch_key, lsn_key, log_key]
            args += [append.epoch, append.prev_lsn, append.last_lsn, append.record]
        assert self._commit_sha is not None, "connect() first"
        try:
            reply = await self._commits.call(pack(b"EVALSHA", self._commit_sha, len(keys), *keys, *args))
        except RespError as error:
            if "NOSCRIPT" not in str(error):
                raise
            # The store restarted and forgot the script: send it whole, once.
            reply = await self._commits.call(pack(b"EVAL", COMMIT_SCRIPT, len(keys), *keys, *args))
        if reply:
            reason, position, found = reply
            raise FenceRefused(reason.decode(), appends[int(position) - 1].shard, found.decode())

    async def write_snapshot(self, shard: int, epoch: int, lsn: int, snapshot: bytes) -> str:
        """Store a snapshot once the log has reached its LSN; the script's answer."""
        epoch_key, lsn_key, log_key, snap_key, _ = shard_keys(shard)
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        while True:
            answer = await self._other.eval(
                SNAPSHOT_SCRIPT, 4, epoch_key, lsn_key, log_key, snap_key, epoch, lsn, snapshot
            )
            answer = answer.decode() if isinstance(answer, bytes) else str(answer)
            if answer != "wait" or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.01)

    async def take(self, shards: list[int]) -> dict[int, int]:
        """Become the owner of `shards`: every other owner's next append is refused."""
        async with self._other.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.incr(shard_keys(shard)[0])
            epochs = await pipe.execute()
        return dict(zip(shards, (int(epoch) for epoch in epochs), strict=True))

    async def heartbeat(self, shards: list[int], now_ms: int) -> None:
        async with self._other.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.set(shard_keys(shard)[4], now_ms)
            await pipe.execute()

    async def read_history(self, shard: int, epoch: int) -> ShardHistory:
        _, lsn_key, log_key, snap_key, alive_key = shard_keys(shard)
        async with self._other.pipeline(transaction=False) as pipe:
            pipe.get(lsn_key).hmget(snap_key, "lsn", "data").get(alive_key)
            lsn_raw, (snap_lsn_raw, snapshot), alive_raw = await pipe.execute()
        snapshot_lsn = int(snap_lsn_raw or 0)
        records: list[LogRecord] = []
        start = f"{snapshot_lsn + 1}-0"
        while True:
            page = await self._other.xrange(log_key, min=start, max="+", count=RECOVERY_PAGE_RECORDS)
            for _entry_id, fields in page:
                records.append(record_decoder.decode(fields[b"r"]))
            if len(page) < RECOVERY_PAGE_RECORDS:
                break
            start = "(" + page[-1][0].decode()
        return ShardHistory(
            epoch=epoch,
            lsn=int(lsn_raw or 0),
            snapshot=snapshot,
            snapshot_lsn=snapshot_lsn,
            records=records,
            last_alive_ms=int(alive_raw or 0),
        )


def write_snapshot_blocking(url: str, shard: int, epoch: int, lsn: int, snapshot: bytes) -> str:
    """The same as RedisLog.write_snapshot, for a forked snapshot process (no event loop)."""
    epoch_key, lsn_key, log_key, snap_key, _ = shard_keys(shard)
    client: Any = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        # Wait cheaply for the commit carrying `lsn` before sending a large blob.
        while int(client.get(lsn_key) or 0) < lsn and time.monotonic() < deadline:
            time.sleep(0.005)
        answer = client.eval(SNAPSHOT_SCRIPT, 4, epoch_key, lsn_key, log_key, snap_key, epoch, lsn, snapshot)
        return answer.decode() if isinstance(answer, bytes) else str(answer)
    finally:
        client.close()
