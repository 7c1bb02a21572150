"""A node: the shards it owns, applied inline on one event loop, committed once per tick.

The path of one op:
1. `execute` finds the shard and applies the command to its state right away (the event
   loop is the input gate: nothing interleaves inside `apply`);
2. a logged op joins the pending commit; the committer task seals it on the next loop turn
   and sends every touched shard's record in one fenced script call (group commit), while
   the following ops gather into the next pending commit;
3. the caller waits for the commit that covers what it saw (the output gate) — reads too;
4. if a commit fails or its outcome is unknown, every shard in it drops its speculative
   state and reloads from Redis; callers get a retryable error.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import cast

from redis.exceptions import RedisError

from .. import limits
from ..clock import Clock, WallClock
from ..core.context import Notice
from ..core.ops import (
    AnyCommand,
    CancelWait,
    Command,
    Expire,
    Granted,
    LeaseKind,
    ObjectCommand,
    Queued,
    Recover,
    Result,
)
from ..core.shard_state import Applied, ShardState
from ..errors import LockgateError, OutcomeUnknown, QuotaExceeded, Unavailable
from ..storage.log import LOG_FORMAT_VERSION, FenceRefused, LogRecord, RedisLog, ShardAppend, record_encoder
from ..storage.resp import RespError
from .routing import shard_of
from .snapshots import SnapshotJob, SnapshotMode, Snapshotter

log = logging.getLogger("lockgate.engine")

HEARTBEAT_INTERVAL_S = 1.0
RELOAD_BACKOFF_MAX_S = 2.0
WAIT_GRACE_S = 5.0


class _LeaseIds:
    """Unguessable lease ids (a lease id is the right to release), cheaply.

    One urandom read per 340 ids instead of a syscall per acquire, which profiling put
    at 3% of a node's CPU.
    """

    ID_BYTES = 12

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0

    def __call__(self) -> str:
        if self._offset + self.ID_BYTES > len(self._pool):
            self._pool = os.urandom(4080)
            self._offset = 0
        start, self._offset = self._offset, self._offset + self.ID_BYTES
        return self._pool[start : self._offset].hex()


new_lease_id = _LeaseIds()


class SlotStatus(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    LOST = "lost"  # another node took it; we never serve it again


class GateFuture(asyncio.Future[None]):
    """A commit shared by many callers: one caller leaving must not cancel it for all."""

    def cancel(self, msg: object = None) -> bool:
        return False


def _new_gate() -> GateFuture:
    gate = GateFuture()
    # Failures are delivered to every awaiting caller; nobody awaiting is not an error.
    gate.add_done_callback(lambda done: done.exception())
    return gate


class Slot:
    """One shard as this node holds it."""

    __slots__ = (
        "covering",
        "entries",
        "entries_since_snapshot",
        "epoch",
        "generation",
        "last_snapshot_ms",
        "sealed_lsn",
        "shard",
        "state",
        "status",
    )

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.state = ShardState(shard)
        self.status = SlotStatus.LOADING
        self.epoch = 0
        self.generation = 0  # bumped whenever speculative state is thrown away
        self.sealed_lsn = 0  # last LSN handed to a commit
        self.entries: list[tuple[int, AnyCommand]] = []  # applied, not yet sealed
        self.covering: GateFuture | None = None  # the commit that holds our latest entry
        self.entries_since_snapshot = 0
        self.last_snapshot_ms = 0


class PendingCommit:
    __slots__ = ("gate", "notices", "op_count", "slots")

    def __init__(self) -> None:
        self.gate = _new_gate()
        self.slots: dict[int, Slot] = {}
        self.notices: list[tuple[Slot, int, Notice]] = []  # (slot, its generation then, notice)
        self.op_count = 0


@dataclass
class EngineStats:
    """Plain counters for tests and metrics: how well group commit batches."""

    commits: int = 0
    ops_committed: int = 0
    largest_commit: int = 0
    failed_commits: int = 0
    reloads: int = 0
    expirations: int = 0
    commit_observers: list[Callable[[int, int, float], None]] = field(default_factory=list)


@dataclass(frozen=True)
class EngineConfig:
    shard_count: int = limits.SHARDS_DEFAULT
    owned: tuple[int, ...] | None = None  # None: all shards
    commit_ops_max: int = limits.COMMIT_OPS_MAX
    commit_timeout_ms: int = limits.COMMIT_TIMEOUT_MS
    sweep_interval_ms: int = limits.EXPIRY_SWEEP_INTERVAL_MS
    snapshot_every_entries: int = limits.SNAPSHOT_EVERY_ENTRIES
    snapshot_every_ms: int = limits.SNAPSHOT_EVERY_MS
    snapshot_mode: SnapshotMode = "fork"
    max_objects_per_namespace: int = limits.OBJECTS_PER_NAMESPACE_MAX


class Engine:
    def __init__(self, store: RedisLog, config: EngineConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EngineConfig()
        self._store = store
        self._clock = clock or WallClock()
        self._last_now_ms = 0
        owned = self.config.owned if self.config.owned is not None else range(self.config.shard_count)
        self._slots: dict[int, Slot] = {shard: Slot(shard) for shard in owned}
        self._pending = PendingCommit()
        self._wakeup = asyncio.Event()
        self._waiters: dict[str, tuple[int, list[asyncio.Future[Result]]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._reloading: set[int] = set()
        self.stats = EngineStats()
        self.snapshots = Snapshotter(store, self.config.snapshot_mode)

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._store.connect()
        self._tasks.append(asyncio.create_task(self._commit_loop(), name="lockgate-committer"))
        self._reloading.update(self._slots)
        try:
            await asyncio.gather(*(self._load(slot) for slot in self._slots.values()))
        finally:
            self._reloading.clear()
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="lockgate-sweeper"))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="lockgate-heartbeat"))

    async def stop(self) -> None:
        """Stop taking ops, let what was applied reach Redis (or fail it), then let go."""
        self._stopping = True
        pending = self._pending
        if pending.op_count:
            with contextlib.suppress(LockgateError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending.gate), self.config.commit_timeout_ms / 1000)
        for task in self._tasks:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for _shard, futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(Unavailable("the node is shutting down"))
        await self._store.close()

    @property
    def ready(self) -> bool:
        return all(slot.status is SlotStatus.READY for slot in self._slots.values())

    async def store_reachable(self) -> bool:
        return await self._store.ping()

    def slot_statuses(self) -> dict[int, SlotStatus]:
        return {shard: slot.status for shard, slot in self._slots.items()}

    def shard_of(self, cmd: Command) -> int:
        return shard_of(cmd, self.config.shard_count)

    def pending_ops(self) -> int:
        return self._pending.op_count

    def waiting_callers(self) -> int:
        return sum(len(futures) for _shard, futures in self._waiters.values())

    # --- the hot path ---------------------------------------------------------------------------
    async def execute(self, cmd: Command) -> tuple[Result, int]:
        """Apply `cmd` and answer once everything it observed is durable: (result, lsn)."""
        slot = self._slots.get(self.shard_of(cmd))
        if slot is None or slot.status is not SlotStatus.READY:
            raise Unavailable("this node does not serve that shard right now")
        if self._stopping:
            raise Unavailable("the node is shutting down")
        if self._pending.op_count >= self.config.commit_ops_max:
            raise Unavailable("too many operations are waiting for the store", retry_after_ms=50)
        namespace = slot.state.creates_object(cmd)
        if namespace is not None and self.objects_in(namespace) >= self.config.max_objects_per_namespace:
            raise QuotaExceeded(
                f"namespace {namespace} holds {self.config.max_objects_per_namespace} objects, its limit; "
                "existing objects keep working, new ones are refused"
            )
        applied = self._sequence(slot, cmd)
        gate = slot.covering
        generation = slot.generation
        if gate is not None and not gate.done():
            await gate
        elif gate is not None:
            gate.result()
        if slot.generation != generation:
            raise Unavailable("the shard reloaded; the operation did not happen")
        result = applied.result
        if isinstance(result, Queued):
            return await self._wait_for_turn(slot, cmd, result.lease_id)
        return result, applied.lsn

    async def held_objects(self, namespace: str) -> list[tuple[LeaseKind, str, int, int]]:
        """Admin listing: (kind, name, permits used, waiters) of held locks and semaphores."""
        now = self._now()
        held: list[tuple[LeaseKind, str, int, int]] = []
        gates = []
        prefix = namespace + "/"
        for slot in self._slots.values():
            if slot.status is not SlotStatus.READY:
                raise Unavailable("a shard is not loaded; the listing would be incomplete")
            for kind, pools in (("lock", slot.state.locks), ("semaphore", slot.state.semaphores)):
                for key, pool in pools.items():
                    live = [lease for lease in pool.leases.values() if lease.expires_at_ms > now]
                    if key.startswith(prefix) and live:
                        held.append(
                            (cast(LeaseKind, kind), key[len(prefix) :], sum(x.permits for x in live), len(pool.waiters))
                        )
            if slot.covering is not None and not slot.covering.done():
                gates.append(slot.covering)
        for gate in gates:
            await gate
        return sorted(held)

    def objects_in(self, namespace: str) -> int:
        """Objects the namespace holds on this node (speculative state included)."""
        return sum(slot.state.objects_per_namespace.get(namespace, 0) for slot in self._slots.values())

    def _now(self) -> int:
        now = self._clock.now_ms()
        if now > self._last_now_ms:
            self._last_now_ms = now
        return self._last_now_ms

    def _sequence(self, slot: Slot, cmd: Command) -> Applied:
        applied = slot.state.apply(cmd, self._now())
        if applied.logged:
            pending = self._pending
            if not pending.op_count:
                self._wakeup.set()
            pending.op_count += 1
            pending.slots[slot.shard] = slot
            slot.entries.append((slot.state.last_now_ms, cast(AnyCommand, cmd)))
            slot.covering = pending.gate
            if applied.notices:
                pending.notices.extend((slot, slot.generation, notice) for notice in applied.notices)
        return applied

    async def _wait_for_turn(self, slot: Slot, cmd: Command, lease_id: str) -> tuple[Result, int]:
        """A queued acquire: wait for the grant or the timeout; leaving takes us out of line."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(lease_id, (slot.shard, []))[1].append(future)
        wait_ms = getattr(cmd, "wait_ms", 0)
        try:
            result = await asyncio.wait_for(future, wait_ms / 1000 + WAIT_GRACE_S)
        except BaseException:
            self._leave_line(slot, cmd, lease_id)
            raise
        finally:
            self._forget_waiter(lease_id, future)
        if isinstance(result, Granted):
            return result, result.token
        return result, slot.state.lsn

    def _leave_line(self, slot: Slot, cmd: Command, lease_id: str) -> None:
        assert isinstance(cmd, ObjectCommand)
        kind = cast(LeaseKind, getattr(cmd, "kind", "lock"))
        if slot.status is SlotStatus.READY and not self._stopping:
            request_id = getattr(cmd, "request_id", None)
            cancel = CancelWait(
                kind=kind, namespace=cmd.namespace, name=cmd.name, lease_id=lease_id, request_id=request_id
            )
            self._sequence(slot, cancel)

    def _forget_waiter(self, lease_id: str, future: asyncio.Future[Result]) -> None:
        entry = self._waiters.get(lease_id)
        if entry is None:
            return
        with contextlib.suppress(ValueError):
            entry[1].remove(future)
        if not entry[1]:
            del self._waiters[lease_id]

    # --- commits ----------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            pending, self._pending = self._pending, PendingCommit()
            if not pending.slots:
                continue
            appends = self._seal(pending)
            started = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(self.config.commit_timeout_ms / 1000):
                    await self._store.commit(appends)
            except FenceRefused as refused:
                log.warning("commit refused: %s", refused)
                self._abandon(
                    pending, Unavailable(str(refused)), lost_shard=refused.shard if refused.reason == "epoch" else None
                )
                continue
            except (RedisError, RespError, OSError, TimeoutError) as error:
                log.warning("commit outcome unknown: %r", error)
                self._abandon(pending, OutcomeUnknown(f"the store did not confirm the write: {error!r}"))
                continue
            self._record_commit(pending, appends, asyncio.get_running_loop().time() - started)
            pending.gate.set_result(None)
            self._deliver(pending.notices)

    def _seal(self, pending: PendingCommit) -> list[ShardAppend]:
        appends = []
        now = self._now()
        for slot in pending.slots.values():
            first_lsn = slot.sealed_lsn + 1
            last_lsn = slot.state.lsn
            record = record_encoder.encode(LogRecord(LOG_FORMAT_VERSION, first_lsn, last_lsn, slot.entries))
            slot.entries_since_snapshot += len(slot.entries)
            slot.entries = []
            appends.append(ShardAppend(slot.shard, slot.epoch, slot.sealed_lsn, last_lsn, record))
            slot.sealed_lsn = last_lsn
        # Right after sealing, each sealed shard's state is exactly at a record boundary.
        due = [
            slot for slot in pending.slots.values() if slot.entries_since_snapshot >= self.config.snapshot_every_entries
        ]
        self._snapshot(due, now)
        return appends

    def _snapshot(self, slots: list[Slot], now: int) -> None:
        """Snapshot shards whose state is at a commit boundary (nothing applied but unsealed)."""
        assert all(slot.state.lsn == slot.sealed_lsn for slot in slots)
        jobs = [SnapshotJob(slot.shard, slot.epoch, slot.state.lsn, slot.state) for slot in slots]
        if self.snapshots.take(jobs):
            for slot in slots:
                slot.entries_since_snapshot = 0
                slot.last_snapshot_ms = now

    def _record_commit(self, pending: PendingCommit, appends: list[ShardAppend], seconds: float) -> None:
        stats = self.stats
        stats.commits += 1
        stats.ops_committed += pending.op_count
        stats.largest_commit = max(stats.largest_commit, pending.op_count)
        for observer in stats.commit_observers:
            observer(pending.op_count, len(appends), seconds)

    def _deliver(self, notices: Iterable[tuple[Slot, int, Notice]]) -> None:
        for slot, generation, notice in notices:
            if slot.generation != generation:
                continue  # built on state that was thrown away
            entry = self._waiters.get(notice.lease_id)
            if entry is None:
                continue
            for future in entry[1]:
                if not future.done():
                    future.set_result(notice.result)

    def _abandon(self, failed: PendingCommit, error: LockgateError, *, lost_shard: int | None = None) -> None:
        """Throw away the speculative state of every shard in a failed commit and reload them."""
        self.stats.failed_commits += 1
        failed.gate.set_exception(error)
        for slot in failed.slots.values():
            slot.generation += 1
            slot.entries = []
            slot.covering = None
            self._pending.slots.pop(slot.shard, None)
            self._fail_waiters(slot.shard, error)
            if slot.shard == lost_shard:
                slot.status = SlotStatus.LOST
                continue
            slot.status = SlotStatus.LOADING
            if slot.shard not in self._reloading:
                self._spawn(self._reload(slot))

    def _fail_waiters(self, shard: int, error: LockgateError) -> None:
        for waiter_shard, futures in self._waiters.values():
            if waiter_shard == shard:
                for future in futures:
                    if not future.done():
                        future.set_exception(error)

    # --- loading and reloading ---------------------------------------------------------------
    async def _load(self, slot: Slot) -> None:
        """Take the shard (bumping its epoch fences off any other owner), replay, recover."""
        epochs = await self._store.take([slot.shard])
        history = await self._store.read_history(slot.shard, epochs[slot.shard])
        state = ShardState.restore(history.snapshot) if history.snapshot else ShardState(slot.shard)
        if state.lsn != history.snapshot_lsn:
            raise RuntimeError(f"shard {slot.shard}: snapshot says LSN {history.snapshot_lsn}, holds {state.lsn}")
        for record in history.records:
            if record.version != LOG_FORMAT_VERSION:
                raise RuntimeError(f"shard {slot.shard}: log format {record.version} is not readable here")
            if record.first_lsn != state.lsn + 1:
                raise RuntimeError(
                    f"shard {slot.shard}: log gap, expected LSN {state.lsn + 1}, found {record.first_lsn}"
                )
            for now_ms, cmd in record.entries:
                applied = state.apply(cmd, now_ms)
                assert applied.logged, f"replayed entry was not a logged op: {cmd!r}"
            if state.lsn != record.last_lsn:
                raise RuntimeError(f"shard {slot.shard}: replay reached LSN {state.lsn}, record says {record.last_lsn}")
        if state.lsn != history.lsn:
            raise RuntimeError(f"shard {slot.shard}: replay reached LSN {state.lsn}, the store says {history.lsn}")
        slot.state = state
        slot.epoch = history.epoch
        slot.sealed_lsn = state.lsn
        slot.entries = []
        slot.covering = None
        slot.entries_since_snapshot = sum(len(record.entries) for record in history.records)
        slot.last_snapshot_ms = self._now()
        slot.status = SlotStatus.READY
        self._last_now_ms = max(self._last_now_ms, state.last_now_ms)
        self._sequence(slot, Recover(last_alive_ms=history.last_alive_ms))
        await cast(GateFuture, slot.covering)  # the Recover's commit

    async def _reload(self, slot: Slot) -> None:
        self.stats.reloads += 1
        self._reloading.add(slot.shard)
        delay = 0.05
        try:
            while not self._stopping:
                try:
                    await self._load(slot)
                    log.info("shard %d reloaded at LSN %d", slot.shard, slot.state.lsn)
                    return
                except (RedisError, OSError, LockgateError) as error:
                    slot.status = SlotStatus.LOADING
                    log.warning("shard %d reload failed (%r); retrying", slot.shard, error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RELOAD_BACKOFF_MAX_S)
        finally:
            self._reloading.discard(slot.shard)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- timers -----------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        """Due expiries and hand-offs become ordinary logged ops; idle shards get snapshots."""
        interval_s = self.config.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            now = self._now()
            for slot in self._slots.values():
                if slot.status is not SlotStatus.READY or self._stopping:
                    continue
                deadline = slot.state.next_deadline_ms()
                if deadline is not None and deadline <= now:
                    self.stats.expirations += 1
                    self._sequence(slot, Expire(until_ms=now))
                elif (
                    slot.entries_since_snapshot
                    and now - slot.last_snapshot_ms >= self.config.snapshot_every_ms
                    and not slot.entries
                    and slot.state.lsn == slot.sealed_lsn
                ):
                    self._snapshot([slot], now)

    async def _heartbeat_loop(self) -> None:
        """Lets a later owner know when we were last alive, so an outage never shortens leases."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            ready = [shard for shard, slot in self._slots.items() if slot.status is SlotStatus.READY]
            try:
                await self._store.heartbeat(ready, self._now())
            except (RedisError, OSError) as error:
                log.warning("heartbeat failed: %r", error)
