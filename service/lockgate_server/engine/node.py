"""A node: the shards it owns, applied inline on one event loop, committed per tick.

The path of one op:
1. `execute` finds the shard and applies the command to its state right away (the event
   loop is the input gate: nothing interleaves inside `apply`);
2. a logged op joins the pending commit; the committer seals it on the next loop turn in
   which anyone waits for it, and sends every touched shard's record in one fenced script
   call (group commit).
   Up to `commits_in_flight` commits are pipelined on one connection, so they reach the
   store in order while the next ones gather;
3. the caller waits for the commit that covers what it saw (the output gate) — reads too;
4. if a commit fails or its outcome is unknown, every shard in it drops its speculative
   state and reloads from Redis; callers get a retryable error.

Ownership: a node holds each shard through an expiring lease in the store, renewed every
third of its length. Taking a shard bumps its epoch (fencing the previous owner's commits);
a node serves a shard — reads included — only while its own lease is surely valid, so two
nodes never answer for one shard at once. A node that finds its shards owned by a live node
stands by, and takes them all once that node stops renewing them (failover).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

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
from ..storage.log import (
    LOG_FORMAT_VERSION,
    Claimed,
    ClaimMode,
    FenceRefused,
    HistoryMoved,
    LogRecord,
    RedisLog,
    ShardAppend,
    check_commit,
    record_encoder,
)
from ..storage.resp import RespError
from .routing import shard_of
from .slots import GateFuture, PendingCommit, Slot, SlotStatus, new_lease_id, wait_gate
from .snapshots import SnapshotJob, SnapshotMode, Snapshotter

__all__ = ["Engine", "EngineConfig", "EngineStats", "GateFuture", "SlotStatus", "Submitted", "new_lease_id"]

log = logging.getLogger("lockgate.engine")

T = TypeVar("T")
RELOAD_BACKOFF_MAX_S = 2.0
WAIT_GRACE_S = 5.0
_TURN_TIMED_OUT = "no answer for a queued acquire within its wait and the grace"
STORE_ERRORS = (RedisError, RespError, OSError, TimeoutError)


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


class Submitted(NamedTuple):
    """A sequenced command whose answer is not yet released (see Engine.submit); one per
    op, so a tuple rather than a frozen dataclass, whose __init__ costs several times more."""

    cmd: Command
    slot: Slot
    generation: int
    applied: Applied
    turn: asyncio.Future[Result] | None  # a queued acquire's grant or timeout


@dataclass(frozen=True)
class EngineConfig:
    shard_count: int = limits.SHARDS_DEFAULT
    owned: tuple[int, ...] | None = None  # None: all shards
    commit_ops_max: int = limits.COMMIT_OPS_MAX
    commit_timeout_ms: int = limits.COMMIT_TIMEOUT_MS
    commits_in_flight: int = limits.COMMITS_IN_FLIGHT
    sweep_interval_ms: int = limits.EXPIRY_SWEEP_INTERVAL_MS
    snapshot_every_entries: int = limits.SNAPSHOT_EVERY_ENTRIES
    snapshot_every_ms: int = limits.SNAPSHOT_EVERY_MS
    snapshot_mode: SnapshotMode = "fork"
    snapshot_inline_items_max: int = limits.SNAPSHOT_INLINE_ITEMS_MAX
    max_objects_per_namespace: int = limits.OBJECTS_PER_NAMESPACE_MAX
    owner_lease_ms: int = limits.OWNER_LEASE_MS
    standby_poll_ms: int = limits.STANDBY_POLL_MS
    advertise_url: str | None = None  # where standbys relay requests to while we own the shards
    # Take the shards at start even from a live owner, fencing it off (after its lease):
    # what a node does to one that is wedged but still renewing. Tests use it.
    take_over: bool = False


class Engine:
    def __init__(self, store: RedisLog, config: EngineConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EngineConfig()
        self.node_id = os.urandom(8).hex()
        self._store = store
        self._clock = clock or WallClock()
        self._last_now_ms = 0
        self._ahead_ms = 0  # how far the time line runs ahead of our clock, to continue the log's stamps
        owned = self.config.owned if self.config.owned is not None else range(self.config.shard_count)
        self._object_tally: dict[str, int] = {}  # objects per namespace over every slot below
        self._statuses: collections.Counter[SlotStatus] = collections.Counter()
        self._slots: dict[int, Slot] = {shard: Slot(shard, self._object_tally, self._statuses) for shard in owned}
        self._pending = PendingCommit()
        self._wakeup = asyncio.Event()
        self._in_flight: collections.deque[tuple[PendingCommit, list[ShardAppend], asyncio.Future[Any], float]] = (
            collections.deque()
        )
        self._replied = asyncio.Event()
        self._waiters: dict[str, tuple[int, list[asyncio.Future[Result]]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.broken: str | None = None  # why the node can no longer serve, if one of its loops died
        self._loading: set[int] = set()  # shards a task is loading right now
        self.stats = EngineStats()
        self.snapshots = Snapshotter(store, self.config.snapshot_mode, self.config.snapshot_inline_items_max)

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every shard, or stand by if a live node owns them.

        An owner that crashed leaves leases behind: start waits them out (one lease at most),
        so a restarted node is ready when this returns. An owner that keeps renewing is alive:
        then this returns standing by, and the node takes over once that owner stops.
        """
        await self._store.connect()
        self._run_loop(self._commit_loop(), "lockgate-committer")
        self._run_loop(self._reply_loop(), "lockgate-replies")
        self._run_loop(self._renew_loop(), "lockgate-ownership")  # loading every shard may outlast a lease
        slots = list(self._slots.values())
        mode: ClaimMode = "force" if self.config.take_over else "free"
        poll_s = self.config.standby_poll_ms / 1000
        give_up_at = time.monotonic() + self.config.owner_lease_ms / 1000 + poll_s
        self._loading.update(self._slots)
        try:
            while True:
                claimed, taken_at = await self._claim(slots, mode)
                if claimed.ok:
                    # Nobody can renew a lease before the node serves, so every shard recovers
                    # (and its leases' clocks start again) once the last one has replayed.
                    replayed = asyncio.Barrier(len(slots))
                    try:
                        await asyncio.gather(*(self._load(slot, claimed, taken_at, replayed) for slot in slots))
                    except BaseException:
                        await replayed.abort()  # the other loads must not wait for this one forever
                        raise
                    await self._announce()
                    break
                if time.monotonic() >= give_up_at:
                    for slot in slots:
                        slot.status = SlotStatus.STANDBY
                    log.warning("standing by: a live node owns the shards; taking them over once it stops")
                    break
                await asyncio.sleep(min(claimed.wait_ms / 1000 + 0.005, poll_s))
        finally:
            self._loading.clear()
        self._run_loop(self._sweep_loop(), "lockgate-sweeper")
        self._run_loop(self._standby_loop(), "lockgate-standby")

    async def owner_url(self) -> str | None:
        """Where the live owner of the shards this node stands by for serves (None: nobody, or us)."""
        waiting = [shard for shard, slot in self._slots.items() if slot.status is SlotStatus.STANDBY]
        try:
            url = await self._store.owner_url(waiting[0] if waiting else next(iter(self._slots)))
        except STORE_ERRORS as error:
            raise Unavailable(f"cannot reach the store to find the active node: {error!r}") from error
        return None if url == self.config.advertise_url else url

    async def _announce(self) -> None:
        """Tell standbys where we serve (renewed with our ownership; a failure waits for the next)."""
        if self.config.advertise_url is None or self._stopping:
            return
        try:
            url, lease_ms = self.config.advertise_url, self.config.owner_lease_ms
            await _cancellable(self._store.announce(self.node_id, url, lease_ms))
        except STORE_ERRORS as error:
            log.warning("could not announce this node's URL: %r", error)

    @property
    def standing_by(self) -> bool:
        """Waiting to take over from a live node (not a node that is stopping or broken)."""
        return not self._stopping and self._statuses[SlotStatus.STANDBY] > 0

    def _run_loop(self, loop: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(loop, name=name)
        task.add_done_callback(self._on_loop_ended)
        self._tasks.append(task)

    def _on_loop_ended(self, task: asyncio.Task[None]) -> None:
        """The node's loops only end when stopped. One that died of a bug leaves a node that
        cannot commit, expire or keep its shards: answer 503 at once instead of letting callers
        wait forever, and report unhealthy so the supervisor restarts the process (the store
        holds everything acknowledged)."""
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        self.broken = f"{task.get_name()} ended: {error!r}"
        log.critical("%s; this node stops serving", self.broken, exc_info=error)
        self.begin_shutdown()
        self._fail_commits(f"the node failed ({self.broken})")
        for slot in self._slots.values():
            slot.status = SlotStatus.STANDBY  # never claimed again: the node is stopping

    def _fail_commits(self, why: str) -> None:
        """A commit already sent may still land (its callers retry with their request_id to
        learn which); one never sent did not happen."""
        sent = OutcomeUnknown(f"{why} before the store confirmed the write; retry with the same request_id")
        for pending, *_ in self._in_flight:
            _fail_gate(pending.gate, sent)
        _fail_gate(self._pending.gate, Unavailable(f"{why}; retry on a healthy node"))

    def begin_shutdown(self) -> None:
        """Refuse new ops and answer every queued acquire with a retryable 503 now."""
        self._stopping = True
        for _shard, futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(Unavailable("the node is shutting down; retry elsewhere or later"))

    async def stop(self) -> None:
        """Stop taking ops, let what was applied reach Redis (or fail it), then let go."""
        self.begin_shutdown()
        deadline = time.monotonic() + self.config.commit_timeout_ms / 1000
        while (self._pending.op_count or self._in_flight) and time.monotonic() < deadline:
            self._want_pending()
            await asyncio.sleep(0.005)
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        # Whatever never reached the store now fails, so no caller (or reload) waits forever.
        self._store.reset_commits()
        self._fail_commits("the node stopped")
        self._in_flight.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*STORE_ERRORS):
            await self._store.release(
                [shard for shard, slot in self._slots.items() if slot.status is SlotStatus.READY], self.node_id
            )
        await self._store.close()

    @property
    def ready(self) -> bool:
        return all(slot.serving() for slot in self._slots.values())

    async def store_reachable(self) -> bool:
        return await self._store.ping()

    def slot_statuses(self) -> dict[int, SlotStatus]:
        return {shard: slot.status for shard, slot in self._slots.items()}

    def shard_of(self, cmd: Command) -> int:
        return shard_of(cmd, self.config.shard_count)

    def pending_ops(self) -> int:
        """Ops applied but not yet durable: gathering for a commit, or in one on its way."""
        return self._pending.op_count + sum(pending.op_count for pending, *_ in self._in_flight)

    def waiting_callers(self) -> int:
        return sum(len(futures) for _shard, futures in self._waiters.values())

    def objects_in(self, namespace: str) -> int:
        """Objects the namespace holds on this node (speculative state included)."""
        return self._object_tally.get(namespace, 0)

    # --- the hot path ---------------------------------------------------------------------------
    async def execute(self, cmd: Command, *, gate_timeout_s: float | None = None) -> tuple[Result, int]:
        """Apply `cmd` and answer once everything it observed is durable: (result, lsn).

        With `gate_timeout_s`, TimeoutError if that wait for durability takes longer (the
        commit goes on); a command that queues for its turn waits by its own `wait_ms` instead.
        """
        return await self.finish(self.submit(cmd), gate_timeout_s=gate_timeout_s)

    def submit(self, cmd: Command) -> Submitted:
        """The synchronous half of `execute`: sequence `cmd` now; `finish` waits for its answer.

        A batch submits all its commands first, so they join one commit, then finishes each.
        """
        slot = self._slots.get(self.shard_of(cmd))
        if slot is None or not slot.serving():
            if slot is not None and slot.status is SlotStatus.STANDBY and not self._stopping:
                raise Unavailable("this node is a standby: another node serves that shard; retry there")
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
        generation = slot.generation
        applied = self._sequence(slot, cmd)
        turn = None
        if isinstance(applied.result, Queued):
            # Registered before any await, so a grant committed right behind us is not missed.
            turn = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(applied.result.lease_id, (slot.shard, []))[1].append(turn)
        return Submitted(cmd, slot, generation, applied, turn)

    async def finish(self, submitted: Submitted, *, gate_timeout_s: float | None = None) -> tuple[Result, int]:
        slot, applied, turn = submitted.slot, submitted.applied, submitted.turn
        result = applied.result
        if turn is None:
            await self._through_gate(slot, submitted.generation, gate_timeout_s)
            return result, applied.lsn
        assert isinstance(result, Queued)
        try:
            # No gate: the caller sees nothing until its turn, whose commit also carries the
            # queueing (same shard, earlier LSN); a dropped speculation fails the turn.
            if slot.generation != submitted.generation:
                raise OutcomeUnknown("the shard reloaded from the store; retry with the same request_id")
            # A bare timer on the caller's own future, not wait_for: wait_for relays the
            # answer through a future of its own, one more loop turn in every lock hand-off.
            limit_s = getattr(submitted.cmd, "wait_ms", 0) / 1000 + WAIT_GRACE_S
            timer = asyncio.get_running_loop().call_later(limit_s, _time_out, turn, _TURN_TIMED_OUT)
            try:
                answer = await turn
            except TimeoutError as late:  # commits stalled behind a store that stopped answering
                raise OutcomeUnknown(f"{late}; retry with the same request_id") from None
            finally:
                timer.cancel()
        except BaseException:
            self._leave_line(slot, submitted.cmd, result.lease_id)
            raise
        finally:
            self._forget_waiter(result.lease_id, turn)
        if isinstance(answer, Granted):
            return answer, answer.token
        return answer, slot.state.lsn

    async def _through_gate(self, slot: Slot, generation: int, timeout_s: float | None = None) -> None:
        """The output gate: return once the commit covering what the caller saw is durable."""
        gate = slot.covering
        if gate is self._pending.gate:
            self._want_pending()
        if gate is not None:
            if gate.done():
                gate.result()
            elif timeout_s is None:
                await gate
            else:
                await wait_gate(gate, timeout_s)
        if slot.generation != generation:
            raise OutcomeUnknown("the shard reloaded from the store; retry with the same request_id")

    def _now(self) -> int:
        now = self._clock.now_ms() + self._ahead_ms
        if now > self._last_now_ms:
            self._last_now_ms = now
        return self._last_now_ms

    def _sequence(self, slot: Slot, cmd: Command) -> Applied:
        applied = slot.state.apply(cmd, self._now())
        if applied.logged:
            pending = self._pending
            pending.op_count += 1
            pending.slots[slot.shard] = slot
            slot.entries.append((slot.state.last_now_ms, cast(AnyCommand, cmd)))
            slot.covering = pending.gate
            if applied.notices:
                pending.notices.extend((slot, slot.generation, notice) for notice in applied.notices)
                self._want_pending()
        return applied

    def _want_pending(self) -> None:
        if not self._pending.wanted:
            self._pending.wanted = True
            self._wakeup.set()

    def give_up(self, submitted: Submitted) -> None:
        """Its caller will never `finish` a queued acquire (a batch whose client left): take
        it out of line, or give back the grant nobody will hear of."""
        if submitted.turn is None:
            return
        lease_id = cast(Queued, submitted.applied.result).lease_id
        self._leave_line(submitted.slot, submitted.cmd, lease_id)
        self._forget_waiter(lease_id, submitted.turn)

    def _leave_line(self, slot: Slot, cmd: Command, lease_id: str) -> None:
        """The caller of a queued acquire left: take it out of line (or give back its grant)."""
        assert isinstance(cmd, ObjectCommand)
        if slot.status is SlotStatus.READY and not self._stopping:
            cancel = CancelWait(
                kind=cast(LeaseKind, getattr(cmd, "kind", "lock")),
                namespace=cmd.namespace,
                name=cmd.name,
                lease_id=lease_id,
                request_id=getattr(cmd, "request_id", None),
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

    async def held_objects(self, namespace: str) -> list[tuple[LeaseKind, str, int, int]]:
        """Admin listing: (kind, name, permits used, waiters) of held locks and semaphores."""
        now = self._now()
        held: list[tuple[LeaseKind, str, int, int]] = []
        prefix = namespace + "/"
        slots = list(self._slots.values())
        for slot in slots:
            if not slot.serving():
                raise Unavailable("a shard is not loaded; the listing would be incomplete")
            for kind, pools in (("lock", slot.state.locks), ("semaphore", slot.state.semaphores)):
                for key, pool in pools.items():
                    live = [lease for lease in pool.leases.values() if lease.expires_at_ms > now]
                    if key.startswith(prefix) and live:
                        used = sum(lease.permits for lease in live)
                        held.append((cast(LeaseKind, kind), key[len(prefix) :], used, len(pool.waiters)))
        for slot in slots:
            await self._through_gate(slot, slot.generation)
        return sorted(held)

    # --- commits ----------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        """Seal and send pending commits, up to `commits_in_flight` at once, in order."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending.wanted and len(self._in_flight) < self.config.commits_in_flight:
                pending, self._pending = self._pending, PendingCommit()
                if not pending.slots:
                    # Every shard in it was abandoned: its callers learn that at the gate.
                    pending.gate.set_result(None)
                    continue
                try:
                    appends = self._seal(pending)
                    reply = await self._store.send_commit(appends)
                except STORE_ERRORS as error:
                    self._abandon(pending, OutcomeUnknown(f"the store could not be reached: {error!r}"))
                    continue
                except Exception as error:  # a bug in sealing: lose this commit, not the committer
                    log.exception("could not build a commit; its shards reload from the store")
                    self._abandon(pending, OutcomeUnknown(f"the node could not write the commit: {error!r}"))
                    continue
                self._in_flight.append((pending, appends, reply, time.perf_counter()))
                self._replied.set()

    async def _reply_loop(self) -> None:
        """Settle commits in the order they were sent (replies arrive in that order)."""
        timeout_s = self.config.commit_timeout_ms / 1000
        late = f"no reply to a commit within {timeout_s:.3f} s"
        while True:
            if not self._in_flight:
                self._replied.clear()
                await self._replied.wait()
                continue
            pending, appends, reply, sent_at = self._in_flight[0]
            # A timer that fails the reply, not asyncio.timeout around a shield: the shield
            # relayed every commit's reply through one more future, one more loop turn
            # before any caller of the commit could be answered.
            left_s = max(0.0, sent_at + timeout_s - time.perf_counter())
            timer = asyncio.get_running_loop().call_later(left_s, _time_out, reply, late)
            try:
                check_commit(await reply, appends)
            except FenceRefused as refused:
                # Another node may have taken the shards, or our own take outran this commit:
                # the reloads tell which, and take back only what is still ours.
                log.warning("commit refused: %s", refused)
                self._settle_first(pending, Unavailable(str(refused)))
            except STORE_ERRORS as error:
                log.warning("commit outcome unknown: %r", error)
                # Replies behind this one can no longer be matched to their commits.
                self._store.reset_commits()
                self._settle_first(pending, OutcomeUnknown(f"the store did not confirm the write: {error!r}"))
            else:
                self._in_flight.popleft()
                self._record_commit(pending, appends, time.perf_counter() - sent_at)
                pending.gate.set_result(None)
                self._deliver(pending.notices)
            finally:
                timer.cancel()
            if self._pending.wanted:
                self._wakeup.set()

    def _settle_first(self, pending: PendingCommit, error: LockgateError) -> None:
        self._in_flight.popleft()
        self._abandon(pending, error)

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

    def _abandon(self, failed: PendingCommit, error: LockgateError) -> None:
        """Throw away the speculative state of every shard in a failed commit and reload them."""
        self.stats.failed_commits += 1
        _fail_gate(failed.gate, error)
        for slot in failed.slots.values():
            self._drop_speculation(slot, error)
            self._begin_reload(slot)

    def _drop_speculation(self, slot: Slot, error: LockgateError) -> None:
        slot.generation += 1
        slot.entries = []
        slot.covering = None
        self._pending.slots.pop(slot.shard, None)
        for waiter_shard, futures in self._waiters.values():
            if waiter_shard == slot.shard:
                for future in futures:
                    if not future.done():
                        future.set_exception(error)

    def _stand_by(self, slot: Slot, why: str) -> None:
        if slot.status is SlotStatus.STANDBY:
            return
        log.warning("shard %d: %s; standing by for it", slot.shard, why)
        self._drop_speculation(slot, Unavailable(f"shard moved: {why}"))
        slot.status = SlotStatus.STANDBY

    # --- claiming, loading and reloading ----------------------------------------------------
    async def _claim(self, slots: list[Slot], mode: ClaimMode) -> tuple[Claimed, float]:
        """Claim `slots` in the store, all or none; also when the claim was sent (monotonic)."""
        taken_at = time.monotonic()
        claimed = await self._store.claim(
            [slot.shard for slot in slots], self.node_id, self.config.owner_lease_ms, mode
        )
        return claimed, taken_at

    async def _load(
        self, slot: Slot, claimed: Claimed, taken_at: float, replayed: asyncio.Barrier | None = None
    ) -> None:
        """Replay a claimed shard and recover it (once every shard of `replayed` has replayed);
        it serves once the recovery is durable."""
        if claimed.wait_ms:
            # A previous owner may serve until its lease runs out: start after it.
            await asyncio.sleep(claimed.wait_ms / 1000)
        epoch = claimed.epochs[slot.shard]
        history = await self._store.read_history(slot.shard, epoch)
        state = ShardState.restore(history.snapshot) if history.snapshot else ShardState(slot.shard)
        _replay(slot.shard, state, history.snapshot_lsn, history.records, history.lsn)
        if self._stopping:
            raise Unavailable("the node is shutting down")
        slot.state.detach()
        state.attach(self._object_tally)
        slot.state = state
        slot.epoch = epoch
        slot.sealed_lsn = state.lsn
        slot.entries = []
        slot.covering = None
        slot.entries_since_snapshot = sum(len(record.entries) for record in history.records)
        slot.last_snapshot_ms = self._now()
        lease_s = claimed.wait_ms / 1000 + self.config.owner_lease_ms / 1000
        # Renewals while it loaded may have extended the claim beyond what it first granted.
        slot.owned_until = max(slot.owned_until, taken_at + lease_s * (1 - limits.OWNER_LEASE_SAFETY))
        # Stamps ahead of our clock (the previous owner's clock ran ahead, or ours was set back
        # across a restart): time goes on from them. Standing still until our clock caught up
        # held every lease, wait and window that much longer.
        self._ahead_ms = max(self._ahead_ms, state.last_now_ms - self._clock.now_ms())
        self._last_now_ms = max(self._last_now_ms, state.last_now_ms)
        generation = slot.generation
        if replayed is not None:
            await replayed.wait()
        self._sequence(slot, Recover(last_alive_ms=history.last_alive_ms))
        await self._through_gate(slot, generation)  # the Recover is durable before anyone is served
        slot.status = SlotStatus.READY

    def _begin_reload(self, slot: Slot) -> None:
        """Stop serving `slot` until it is reloaded; only the store's claim may hand it to another node."""
        if slot.status is SlotStatus.STANDBY:
            return
        slot.status = SlotStatus.LOADING
        if slot.shard not in self._loading and not self._stopping:
            # Marked now, not when the task starts: two failures in one tick must not start two
            # reloads, whose claims would fence each other's commits forever.
            self._loading.add(slot.shard)
            self.stats.reloads += 1
            self._spawn(self._reload(slot), f"reload of shard {slot.shard}")

    async def _reload(self, slot: Slot, claim: tuple[Claimed, float] | None = None) -> None:
        """Load `slot`, claimed already or claimed back if no other node took it; retry store failures."""
        delay = 0.05
        try:
            while not self._stopping and slot.status is SlotStatus.LOADING:
                try:
                    if claim is None:
                        await self._store.connect()  # a store restarted from its AOF has forgotten our scripts
                        claim = await _cancellable(self._claim([slot], "ours"))
                        if not claim[0].ok:
                            self._stand_by(slot, "another node has taken it")
                            return
                    await _cancellable(self._load(slot, *claim))
                    log.info("shard %d loaded at LSN %d", slot.shard, slot.state.lsn)
                    return
                except (*STORE_ERRORS, LockgateError, HistoryMoved) as error:
                    claim = None  # claiming it again tells whether another node has it now
                    log.warning("shard %d reload failed (%r); retrying", slot.shard, error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RELOAD_BACKOFF_MAX_S)
        finally:
            self._loading.discard(slot.shard)

    def _spawn(self, coroutine: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._on_background_ended)

    def _on_background_ended(self, task: asyncio.Task[None]) -> None:
        """A reload that died of an unexpected error (a bug, a log record this version cannot
        read) would leave its shard LOADING for good while the node looked healthy: the node is
        broken, as when one of its loops dies, so it reports unhealthy and gets restarted."""
        if not task.cancelled() and task.exception() is not None:
            self._on_loop_ended(task)

    # --- timers -----------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        """Due expiries and hand-offs become ordinary logged ops; idle shards get snapshots."""
        interval_s = self.config.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            if self._pending.op_count:
                self._want_pending()  # bounds how long an op nobody waits for stays unsealed
            now = self._now()
            for slot in self._slots.values():
                if not slot.serving() or self._stopping:
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

    async def _renew_loop(self) -> None:
        """Keep our ownership leases (and tell a later owner when we were last alive)."""
        lease_s = self.config.owner_lease_ms / 1000
        while True:
            await asyncio.sleep(lease_s / 3)
            serving = [slot.shard for slot in self._slots.values() if slot.status is SlotStatus.READY]
            loading = [slot.shard for slot in self._slots.values() if slot.status is SlotStatus.LOADING]
            held = [self._slots[shard] for shard in serving + loading]
            if not held:
                continue
            sent_at = time.monotonic()
            try:
                lost = set(
                    await _cancellable(
                        self._store.renew(serving, loading, self.node_id, self.config.owner_lease_ms, self._now())
                    )
                )
            except STORE_ERRORS as error:
                log.warning("ownership renewal failed: %r", error)
                continue
            for slot in held:
                if slot.shard not in lost:
                    slot.owned_until = sent_at + lease_s * (1 - limits.OWNER_LEASE_SAFETY)
                elif slot.status is SlotStatus.READY:
                    # Taken by another node, or our lease ran out while the store was away:
                    # a reload tells which (it takes the shard back only if nobody else did).
                    self._drop_speculation(slot, Unavailable("ownership of the shard is being re-established"))
                    self._begin_reload(slot)
                # A loading shard not (or no longer) ours: its load's own claim and fence decide.
            if any(slot.status is SlotStatus.READY for slot in held):
                await self._announce()  # not before we serve: standbys would relay to a node still loading

    async def _standby_loop(self) -> None:
        """Take over the shards of a node that stopped renewing them: all at once, so no two
        nodes end up serving halves of the shard space."""
        interval_s = self.config.standby_poll_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            waiting = [slot for slot in self._slots.values() if slot.status is SlotStatus.STANDBY]
            if not waiting or self._stopping:
                continue
            try:
                claim = await _cancellable(self._claim(waiting, "free"))
            except STORE_ERRORS as error:
                # Applied or not, the next poll settles it: a claim of ours counts as free.
                log.debug("standby claim failed: %r", error)
                continue
            if not claim[0].ok or self._stopping:
                continue
            log.warning("taking over %d shards their owner stopped renewing", len(waiting))
            for slot in waiting:
                slot.status = SlotStatus.LOADING
                self._loading.add(slot.shard)
                self._spawn(self._reload(slot, claim), f"reload of shard {slot.shard}")
            await self._announce()


async def _cancellable(call: Awaitable[T]) -> T:
    """Await a redis-py call; a cancellation it swallowed (or turned into an error) is re-raised.

    Seen in tests: the standby loop, cancelled by stop() during a claim, got the claim's
    answer, carried on, and stop() waited for it forever.
    """
    try:
        return await call
    finally:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


def _time_out(future: asyncio.Future[Any], reason: str) -> None:
    """A bare timer's end for a future only its own caller awaits (a commit's reply, a queued
    turn); whoever sets it later finds it done and leaves it."""
    if not future.done():
        future.set_exception(TimeoutError(reason))


def _fail_gate(gate: GateFuture, error: LockgateError) -> None:
    if not gate.done():
        gate.set_exception(error)


def _replay(shard: int, state: ShardState, snapshot_lsn: int, records: list[LogRecord], store_lsn: int) -> None:
    """Bring a restored snapshot up to the store's LSN, checking every record as it goes."""
    if state.lsn != snapshot_lsn:
        raise RuntimeError(f"shard {shard}: snapshot says LSN {snapshot_lsn}, holds {state.lsn}")
    for record in records:
        if record.version != LOG_FORMAT_VERSION:
            raise RuntimeError(f"shard {shard}: log format {record.version} is not readable here")
        if record.first_lsn != state.lsn + 1:
            raise RuntimeError(f"shard {shard}: log gap, expected LSN {state.lsn + 1}, found {record.first_lsn}")
        for now_ms, cmd in record.entries:
            applied = state.apply(cmd, now_ms)
            assert applied.logged, f"replayed entry was not a logged op: {cmd!r}"
        if state.lsn != record.last_lsn:
            raise RuntimeError(f"shard {shard}: replay reached LSN {state.lsn}, record says {record.last_lsn}")
    if state.lsn != store_lsn:
        raise RuntimeError(f"shard {shard}: replay reached LSN {state.lsn}, the store says {store_lsn}")
