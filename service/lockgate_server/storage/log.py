"""The shard log in Redis: fenced appends, snapshots, ownership and recovery reads.

Per shard, every key shares the hash tag `{lg:N}` so a shard lives in one Cluster slot:
  {lg:N}:epoch  owner epoch, INCR'd by every node that claims the shard
  {lg:N}:lsn    last LSN written
  {lg:N}:log    stream of records since the last snapshot, ID = first LSN of the record
  {lg:N}:snap   hash {lsn, data}: the last snapshot and the LSN it covers
  {lg:N}:alive  the owner's last heartbeat (ms); a new owner starts the outage there
  {lg:N}:owner  the owning node's id, expiring (PX) unless renewed: the ownership lease
  {lg:N}:taker  the id of the node that claimed the latest epoch (never expires)
and once, {lg}:shards: the number of shards the data is laid out in.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import msgspec
import redis
import redis.asyncio as aioredis

from ..core.ops import AnyCommand
from ..limits import COMMIT_TIMEOUT_MS
from .resp import RespConnection, bulk, int_bulk

LOG_FORMAT_VERSION: Final = 1
RECOVERY_PAGE_RECORDS: Final = 1000

# COMMIT: one tick's records for many shards, all or nothing, fenced.
# KEYS: per shard, 3 each: epoch, lsn, log
# ARGV: per shard, 4 each: epoch, prev_lsn, last_lsn, record
# Returns: {} when written. Otherwise nothing is written and it returns {'epoch', positions,
#          found} listing every shard another owner took, or {'lsn', {position}, found} for
#          the first shard whose last LSN is not the one this commit builds on.
COMMIT_SCRIPT: Final = """
local n = #KEYS / 3
local taken = {}
local found = ''
for i = 0, n - 1 do
  local epoch = redis.call('GET', KEYS[3*i+1])
  if epoch ~= ARGV[4*i+1] then
    taken[#taken + 1] = i + 1
    found = epoch or ''
  end
end
if #taken > 0 then return {'epoch', taken, found} end
for i = 0, n - 1 do
  local lsn = redis.call('GET', KEYS[3*i+2]) or '0'
  if lsn ~= ARGV[4*i+2] then return {'lsn', {i + 1}, lsn} end
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


# CLAIM: become the owner of some shards, all of them or none.
# KEYS: per shard, 3 each: epoch, owner, taker
# ARGV: node_id, lease_ms, mode:
#   'ours'  (a reload) only if no other node has taken any of them since this node last did;
#   'free'  (a node starting, or a standby) only if no other node's ownership lease is live;
#   'force' whoever holds them, waiting out the previous owners' leases.
# Returns: {'ok', wait_ms, epoch per shard}: the new epochs, and how long a previous owner
#          may still believe it owns a shard (serve nothing before that; our lease covers
#          the wait plus lease_ms); {'moved', 0} or {'busy', ms the live owner's lease has left}
#          when the mode refuses, and then nothing is written.
# `taker` (who took the latest epoch, never expires) answers "still ours?" even when our own
# earlier claim was applied but its reply was lost, which a comparison of epochs cannot.
CLAIM_SCRIPT: Final = """
local n = #KEYS / 3
local mode = ARGV[3]
local wait = 0
for i = 0, n - 1 do
  if mode == 'ours' and redis.call('GET', KEYS[3*i+3]) ~= ARGV[1] then return {'moved', 0} end
  local owner = redis.call('GET', KEYS[3*i+2])
  if owner and owner ~= ARGV[1] then
    local left = redis.call('PTTL', KEYS[3*i+2])
    if left < 0 then left = 0 end
    if mode == 'free' then return {'busy', left} end
    if left > wait then wait = left end
  end
end
local answer = {'ok', wait}
for i = 0, n - 1 do
  answer[#answer + 1] = redis.call('INCR', KEYS[3*i+1])
  redis.call('SET', KEYS[3*i+2], ARGV[1], 'PX', tonumber(ARGV[2]) + wait)
  redis.call('SET', KEYS[3*i+3], ARGV[1])
end
return answer
"""
ClaimMode = Literal["ours", "free", "force"]

# RENEW: extend the ownership lease of many shards and record that the owner is alive.
# KEYS: per shard, 2 each: owner, alive
# ARGV: node_id, lease_ms, now_ms, serving: the first `serving` shards are served, and only
#       theirs get `alive`; a shard still loading keeps its previous owner's last heartbeat,
#       where its outage starts.
# Returns: the (1-based) positions of shards this node no longer owns.
RENEW_SCRIPT: Final = """
local lost = {}
local serving = tonumber(ARGV[4])
for i = 0, #KEYS / 2 - 1 do
  if redis.call('GET', KEYS[2*i+1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[2*i+1], ARGV[2])
    if i < serving then redis.call('SET', KEYS[2*i+2], ARGV[3]) end
  else
    lost[#lost + 1] = i + 1
  end
end
return lost
"""


# RELEASE: give up ownership of shards on a clean stop, so the next owner need not wait.
# KEYS: owner keys; ARGV: node_id. Returns nothing useful.
RELEASE_SCRIPT: Final = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
"""


NODE_URL_PREFIX: Final = "lg:node:"
"""node id -> the URL it serves on; expires with the node's ownership lease unless renewed."""


class LogRecord(msgspec.Struct, array_like=True):
    """One commit's entries for one shard: (now_ms, command) in sequencing order."""

    version: int
    first_lsn: int
    last_lsn: int
    entries: list[tuple[int, AnyCommand]]


record_encoder = msgspec.msgpack.Encoder()
record_decoder = msgspec.msgpack.Decoder(LogRecord)


def check_commit(reply: Any, appends: list[ShardAppend]) -> None:
    """Raise FenceRefused unless the COMMIT script wrote everything."""
    if reply:
        reason, positions, found = reply
        shards = [appends[int(position) - 1].shard for position in positions]
        raise FenceRefused(reason.decode(), shards, found.decode())


class HistoryMoved(Exception):
    """Another node claimed a shard while this one read its history: what was read may mix
    two owners' writes and must not be replayed."""


class FenceRefused(Exception):
    """The store refused a commit: another owner took the shard, or its log moved on."""

    def __init__(self, reason: str, shards: list[int], found: str) -> None:
        super().__init__(f"shards {shards}: {reason} is not as expected (e.g. {found!r}) in the store")
        self.reason = reason
        self.shards = shards


@dataclass(frozen=True, slots=True)
class ShardAppend:
    shard: int
    epoch: int
    prev_lsn: int
    last_lsn: int
    record: bytes


@dataclass(frozen=True, slots=True)
class Claimed:
    outcome: str  # 'ok', 'moved' or 'busy'
    epochs: dict[int, int]  # shard -> its new epoch, when ok
    wait_ms: int  # ok: a previous owner's lease may run this much longer; busy: the live owner's

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class ShardHistory:
    epoch: int
    lsn: int
    snapshot: bytes | None
    snapshot_lsn: int
    records: list[LogRecord]
    last_alive_ms: int


class ShardKeys(NamedTuple):
    epoch: str
    lsn: str
    log: str
    snap: str
    alive: str
    owner: str
    taker: str


SHARD_COUNT_KEY: Final = "{lg}:shards"
"""How many shards the data is laid out in: an object's shard depends on it."""


@functools.cache  # every commit names each shard's keys: build them once per shard
def shard_keys(shard: int) -> ShardKeys:
    tag = f"{{lg:{shard}}}"
    return ShardKeys(*(f"{tag}:{part}" for part in ShardKeys._fields))


def commit_command(sha: str, appends: list[ShardAppend]) -> bytes:
    """EVALSHA of COMMIT_SCRIPT, as RESP. Built here rather than by `pack`: it runs for every
    commit with 7 arguments per shard touched, and `pack`'s per-argument work was about a
    seventh of the node's CPU under batched checks."""
    count = len(appends)
    out = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + 7 * count), bulk(sha.encode()), int_bulk(3 * count)]
    out += [_commit_key_bulks(append.shard) for append in appends]
    for append in appends:
        out += (int_bulk(append.epoch), int_bulk(append.prev_lsn), int_bulk(append.last_lsn), bulk(append.record))
    return b"".join(out)


@functools.cache  # one entry per shard of the node
def _commit_key_bulks(shard: int) -> bytes:
    keys = shard_keys(shard)
    return b"".join(bulk(key.encode()) for key in (keys.epoch, keys.lsn, keys.log))


def _claim_keys(shard: int) -> tuple[str, str, str]:
    keys = shard_keys(shard)
    return keys.epoch, keys.owner, keys.taker


class RedisLog:
    """Talks to Redis over one connection for commits, so commits arrive in order."""

    def __init__(self, url: str, *, commit_timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        """`commit_timeout_ms` also bounds (re)opening the commit connection."""
        self.url = url
        # One connection: commits reach Redis in order.
        self._commits = RespConnection(url, connect_timeout_s=commit_timeout_ms / 1000)
        # Typed loosely: redis-py's annotations cannot tell pipelines from awaitables.
        self._other: Any = aioredis.Redis.from_url(url)
        self._commit_sha: str | None = None

    async def connect(self) -> None:
        """Load the scripts (again: a store restarted from its AOF has forgotten them)."""
        self._commit_sha = await self._other.script_load(COMMIT_SCRIPT)

    async def close(self) -> None:
        self._commits.close()
        await self._other.aclose()

    async def store_settings(self) -> dict[str, str]:
        """What decides whether an acknowledged write can be lost: AOF, fsync and eviction."""
        settings: dict[str, str] = {}
        for pattern in ("append*", "maxmemory", "maxmemory-policy"):
            config = await self._other.config_get(pattern)
            settings.update({str(key): str(value) for key, value in config.items()})
        return settings

    async def shard_count_of_data(self, shard_count: int, most: int) -> int:
        """How many shards the store's data is laid out in; a store holding none is laid out
        for `shard_count` from now on. Data from before the count was recorded is told by its
        epoch keys: every node claims every shard as it starts (`most`: the highest count)."""
        recorded = await self._other.get(SHARD_COUNT_KEY)
        if recorded is None:
            async with self._other.pipeline(transaction=False) as pipe:
                for shard in range(most + 1):
                    pipe.exists(shard_keys(shard).epoch)
                claimed = await pipe.execute()
            laid_out = claimed.index(0) if 0 in claimed else len(claimed)
            await self._other.set(SHARD_COUNT_KEY, laid_out or shard_count, nx=True)
            recorded = await self._other.get(SHARD_COUNT_KEY)
        return int(recorded)

    async def ping(self) -> bool:
        return bool(await self._other.ping())

    async def send_commit(self, appends: list[ShardAppend]) -> asyncio.Future[Any]:
        """Write one commit to the commit connection now; the future gets the script's reply.

        Commits are pipelined and reach the store in the order sent. Check the reply with
        `check_commit`.
        """
        assert self._commit_sha is not None, "connect() first"
        await self._commits.connect()
        return self._commits.send(commit_command(self._commit_sha, appends))

    def reset_commits(self) -> None:
        """Drop the commit connection: every commit still awaiting a reply has an unknown outcome."""
        self._commits.close()

    async def write_snapshot(self, shard: int, epoch: int, lsn: int, snapshot: bytes) -> str:
        """Store a snapshot once the log has reached its LSN; the script's answer."""
        keys = shard_keys(shard)
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        while True:
            answer = await self._other.eval(
                SNAPSHOT_SCRIPT, 4, keys.epoch, keys.lsn, keys.log, keys.snap, epoch, lsn, snapshot
            )
            answer = answer.decode() if isinstance(answer, bytes) else str(answer)
            if answer != "wait" or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.01)

    async def claim(self, shards: list[int], node_id: str, lease_ms: int, mode: ClaimMode) -> Claimed:
        """Become the owner of all of `shards` or of none (see CLAIM_SCRIPT for the modes).

        Every other owner's next commit to them is refused.
        """
        keys = [key for shard in shards for key in _claim_keys(shard)]
        outcome, wait_ms, *epochs = await self._other.eval(CLAIM_SCRIPT, len(keys), *keys, node_id, lease_ms, mode)
        epochs_by_shard = dict(zip(shards, map(int, epochs), strict=True)) if epochs else {}
        return Claimed(outcome.decode(), epochs_by_shard, int(wait_ms))

    async def renew(
        self, serving: list[int], loading: list[int], node_id: str, lease_ms: int, now_ms: int
    ) -> list[int]:
        """Extend our ownership of the shards, noting we are alive on those we serve; returns
        the shards we lost."""
        shards = serving + loading
        keys = [key for shard in shards for key in (shard_keys(shard).owner, shard_keys(shard).alive)]
        lost = await self._other.eval(RENEW_SCRIPT, len(keys), *keys, node_id, lease_ms, now_ms, len(serving))
        return [shards[int(position) - 1] for position in lost]

    async def release(self, shards: list[int], node_id: str) -> None:
        if shards:
            keys = [shard_keys(shard).owner for shard in shards]
            await self._other.eval(RELEASE_SCRIPT, len(keys), *keys, node_id)

    async def announce(self, node_id: str, url: str, lease_ms: int) -> None:
        """Tell standbys where this node serves, for as long as its ownership lease lasts."""
        await self._other.set(NODE_URL_PREFIX + node_id, url, px=lease_ms)

    async def owner_url(self, shard: int) -> str | None:
        """Where the node whose ownership of `shard` is live serves, if it announced it."""
        owner = await self._other.get(shard_keys(shard).owner)
        if owner is None:
            return None
        url = await self._other.get(NODE_URL_PREFIX + owner.decode())
        return url.decode() if url is not None else None

    async def read_history(self, shard: int, epoch: int) -> ShardHistory:
        keys = shard_keys(shard)
        async with self._other.pipeline(transaction=False) as pipe:
            pipe.get(keys.epoch).get(keys.lsn).hmget(keys.snap, "lsn", "data").get(keys.alive)
            epoch_raw, lsn_raw, (snap_lsn_raw, snapshot), alive_raw = await pipe.execute()
        snapshot_lsn = int(snap_lsn_raw or 0)
        records: list[LogRecord] = []
        start = f"{snapshot_lsn + 1}-0"
        while True:
            page = await self._other.xrange(keys.log, min=start, max="+", count=RECOVERY_PAGE_RECORDS)
            for _entry_id, fields in page:
                records.append(record_decoder.decode(fields[b"r"]))
            if len(page) < RECOVERY_PAGE_RECORDS:
                break
            start = "(" + page[-1][0].decode()
        # Only the owner of `epoch` writes the shard while it stays at `epoch`: these reads in
        # several steps are one consistent view if no other node claimed it in between.
        if int(epoch_raw or 0) != epoch or int(await self._other.get(keys.epoch) or 0) != epoch:
            raise HistoryMoved(f"shard {shard} was claimed by another node while its history was read")
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
    keys = shard_keys(shard)
    client: Any = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        # Wait cheaply for the commit carrying `lsn` before sending a large blob.
        while int(client.get(keys.lsn) or 0) < lsn and time.monotonic() < deadline:
            time.sleep(0.005)
        answer = client.eval(SNAPSHOT_SCRIPT, 4, keys.epoch, keys.lsn, keys.log, keys.snap, epoch, lsn, snapshot)
        return answer.decode() if isinstance(answer, bytes) else str(answer)
    finally:
        client.close()
