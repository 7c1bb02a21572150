"""The state of one shard: every object pinned to it, and the one `apply` that changes it.

Pure and deterministic: time arrives as an argument, lease ids in the commands, tokens
from the LSN. Applying the same commands with the same times to the same snapshot
always gives the same state, which is what recovery by replay relies on.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, cast

import msgspec

from ..limits import IDEMPOTENCY_ENTRIES_PER_SHARD_MAX, IDEMPOTENCY_WINDOW_MS
from . import counter, leases, lock, ratelimit, semaphore
from .context import Context, Notice
from .leases import LeasePool
from .ops import (
    Acquire,
    AnyResult,
    CancelWait,
    Command,
    CounterAdd,
    CounterCompareAndSet,
    CounterGet,
    CounterSet,
    CounterValue,
    Done,
    Expire,
    FenceCheck,
    ForceRelease,
    Granted,
    Inspect,
    LeaseKind,
    ObjectCommand,
    Queued,
    RateCheck,
    RateCheckAll,
    RateDecisions,
    RateReset,
    RateResetAll,
    Recover,
    Release,
    Released,
    Renew,
    Renewed,
    Result,
    is_read,
)
from .ratelimit import GcraStateV1, RateState, StoredRateState
from .wheel import ExpiryWheel, bucket_complete

SNAPSHOT_FORMAT_VERSION: Final = 1


class Applied(NamedTuple):
    result: Result
    notices: list[Notice]
    logged: bool  # False for reads and for repeats answered from memory
    lsn: int  # the op's own LSN if logged, else the LSN of the state it read


class Remembered(msgspec.Struct, array_like=True, gc=False):
    expires_at_ms: int
    result: AnyResult


class Snapshot(msgspec.Struct, array_like=True):
    version: int
    shard: int
    lsn: int
    last_now_ms: int
    locks: dict[str, LeasePool]
    semaphores: dict[str, LeasePool]
    counters: dict[str, int]
    rates: Mapping[str, StoredRateState]  # read-only here: written as RateState, read also as older forms
    remembered: dict[str, Remembered]


_ABSENT: Final = object()
_REMEMBERED: Final[dict[type, tuple[str, str | None]]] = {
    Acquire: ("acq", None),  # None: the command's own kind (lock or semaphore)
    Release: ("rel", None),
    Renew: ("ren", None),
    CounterAdd: ("add", "counter"),
    CounterSet: ("set", "counter"),
    CounterCompareAndSet: ("cas", "counter"),
    RateCheck: ("chk", "ratelimit"),
    RateReset: ("rst", "ratelimit"),
    RateCheckAll: ("all", "ratelimit"),
}
"""Commands whose first answer a repeat of their request_id gets: the operation and the kind
their memory key names.

The operation is part of the key: a release that reuses its acquire's request_id is a new
request, and must not be answered "released" with the acquire's grant while the lock stays
held. A lookup by type, as `_READERS` and `_MUTATORS`: isinstance over unions showed in the
hot path."""
_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)

_KINDS_WITH_LEASES: Final = {"lock": lock, "semaphore": semaphore}


def object_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _add(counts: dict[str, int], namespace: str, delta: int) -> None:
    left = counts.get(namespace, 0) + delta
    if left:
        counts[namespace] = left
    else:
        counts.pop(namespace, None)


def _memory_key(op: str, kind: str, namespace: str, name: str, request_id: str) -> str:
    return f"{op}:{kind}/{namespace}/{name}#{request_id}"


def _memory_key_of(cmd: ObjectCommand, request_id: str) -> str:
    op, kind = _REMEMBERED[type(cmd)]
    if kind is None:  # a lease command; a release or renew also names its lease
        lease_cmd = cast(Acquire | Release | Renew, cmd)
        kind = lease_cmd.kind
        if op != "acq":
            request_id = f"{request_id}@{lease_cmd.lease_id}"
    return _memory_key(op, kind, cmd.namespace, cmd.name, request_id)


class ShardState:
    def __init__(self, shard: int, tally: dict[str, int] | None = None) -> None:
        self.shard = shard
        self.lsn = 0
        self.last_now_ms = 0
        self.locks: dict[str, LeasePool] = {}
        self.semaphores: dict[str, LeasePool] = {}
        self.counters: dict[str, int] = {}
        self.rates: dict[str, RateState] = {}
        self.remembered: dict[str, Remembered] = {}
        # Derived, never persisted; entries may be stale (early), never late.
        self._deadlines: list[tuple[int, str, str]] = []  # lease pools: (at_ms, kind, key)
        self._rate_wheel = ExpiryWheel()  # rate-limit keys, by when they are full again
        self.objects_per_namespace: dict[str, int] = {}
        # Objects per namespace summed over every shard of a node, so the quota check on a
        # create is one lookup instead of a sum over all shards.
        self._tally: dict[str, int] = tally if tally is not None else {}

    # --- the one entry point ---------------------------------------------------------
    def apply(self, cmd: Command, now_ms: int) -> Applied:
        """Apply one command at `now_ms` (the sequencer's stamp, never earlier than the last)."""
        now_ms = max(now_ms, self.last_now_ms)
        read = self._read(cmd, now_ms)
        if read is not None:
            return Applied(read, [], False, self.lsn)
        memory_key = None
        # CancelWait carries the acquire's request_id to forget it, not to be remembered by it.
        request_id = None if isinstance(cmd, CancelWait) else getattr(cmd, "request_id", None)
        if request_id is not None:
            assert type(cmd) in _REMEMBERED, f"{type(cmd).__name__} takes no request_id"
            memory_key = _memory_key_of(cast(ObjectCommand, cmd), request_id)
            remembered = self.remembered.get(memory_key)
            if remembered is not None and remembered.expires_at_ms > now_ms:
                answer = self._still_true(remembered.result, cast(ObjectCommand, cmd), now_ms)
                if answer is not None:
                    return Applied(answer, [], False, self.lsn)
                # Its lease has ended since: the repeat is a new request (and is logged).
        previous_now_ms, self.last_now_ms = self.last_now_ms, now_ms
        self.lsn += 1
        op_lsn = self.lsn
        ctx = Context(now_ms, op_lsn)
        result = self._mutate(cmd, ctx, previous_now_ms)
        self.lsn = ctx.lsn
        self._forget_old_answers(now_ms)
        if memory_key is not None:
            self.remembered[memory_key] = Remembered(now_ms + IDEMPOTENCY_WINDOW_MS, cast(AnyResult, result))
        for notice in ctx.notices:
            self._remember_notice(notice)
        return Applied(result, ctx.notices, True, op_lsn)

    def _still_true(self, result: AnyResult, cmd: ObjectCommand, now_ms: int) -> AnyResult | None:
        """A first answer as it stands now, for a repeat of its request; None once a grant or
        renewal it reported has ended (expired or force-released): a client retrying after a
        lost answer must not be told it holds a lease that another may hold by now. Reads
        state only, so a replay decides the same."""
        if not isinstance(result, Granted | Renewed):
            return result
        pool = self._pools(cast(Acquire | Renew, cmd).kind).get(object_key(cmd.namespace, cmd.name))
        lease = pool.leases.get(result.lease_id) if pool is not None else None
        if lease is None or lease.expires_at_ms <= now_ms:
            return None
        return msgspec.structs.replace(result, ttl_ms=lease.expires_at_ms - now_ms)

    # --- reads ---------------------------------------------------------------------------
    # Both dispatch on the command's type through a table (see the end of the module): a
    # `match` over class patterns tries each case in turn, which showed in the hot path.
    def _read(self, cmd: Command, now_ms: int) -> Result | None:
        reader = _READERS.get(type(cmd))
        return None if reader is None else reader(self, cmd, now_ms)

    def _read_pool(self, cmd: Inspect | FenceCheck, now_ms: int) -> Result:
        pool = self._pools(cmd.kind).get(object_key(cmd.namespace, cmd.name))
        if isinstance(cmd, Inspect):
            return leases.inspect(pool, now_ms, default_limit=1)
        return leases.fence_check(pool, cmd.token, now_ms)

    def _read_counter(self, cmd: CounterGet, now_ms: int) -> Result:
        return CounterValue(value=self.counters.get(object_key(cmd.namespace, cmd.name), 0))

    def _peek_rate(self, cmd: RateCheck, now_ms: int) -> Result | None:
        if cmd.cost:
            return None
        return ratelimit.peek(self.rates.get(object_key(cmd.namespace, cmd.name)), cmd, now_ms)

    def _peek_all(self, cmd: RateCheckAll, now_ms: int) -> Result | None:
        return self._check_all(cmd, now_ms, charge=False) if is_read(cmd) else None

    # --- writes --------------------------------------------------------------------------
    def _mutate(self, cmd: Command, ctx: Context, previous_now_ms: int) -> Result:
        mutator = _MUTATORS.get(type(cmd))
        if mutator is None:
            raise AssertionError(f"unknown command {cmd!r}")
        return mutator(self, cmd, ctx, previous_now_ms)

    def _mutate_lease(
        self, cmd: Acquire | Release | Renew | CancelWait | ForceRelease, ctx: Context, previous_now_ms: int
    ) -> Result:
        return self._apply_lease(cmd, ctx)

    def _mutate_counter(
        self, cmd: CounterAdd | CounterSet | CounterCompareAndSet, ctx: Context, previous_now_ms: int
    ) -> Result:
        key = object_key(cmd.namespace, cmd.name)
        value, result = counter.apply(self.counters.get(key, 0), cmd)
        if value:
            self._put(self.counters, key, value)
        else:
            self._remove(self.counters, key)  # 0 reads the same as absent
        return result

    def _mutate_rate(self, cmd: RateCheck, ctx: Context, previous_now_ms: int) -> Result:
        return self._apply_rate(cmd, ctx.now_ms)

    def _mutate_reset(self, cmd: RateReset | RateResetAll, ctx: Context, previous_now_ms: int) -> Result:
        for key in cmd.keys if isinstance(cmd, RateResetAll) else (cmd.name,):
            self._remove(self.rates, object_key(cmd.namespace, key))
        return Done()

    def _mutate_all(self, cmd: RateCheckAll, ctx: Context, previous_now_ms: int) -> Result:
        return self._check_all(cmd, ctx.now_ms, charge=True)

    def _mutate_expire(self, cmd: Expire, ctx: Context, previous_now_ms: int) -> Result:
        self._expire(cmd.until_ms, ctx)
        return Done()

    def _mutate_recover(self, cmd: Recover, ctx: Context, previous_now_ms: int) -> Result:
        self._recover(ctx, max(previous_now_ms, cmd.last_alive_ms))
        return Done()

    def _pools(self, kind: LeaseKind | str) -> dict[str, LeasePool]:
        return self.locks if kind == "lock" else self.semaphores

    def _apply_lease(self, cmd: Acquire | Release | Renew | CancelWait | ForceRelease, ctx: Context) -> Result:
        pools = self._pools(cmd.kind)
        key = object_key(cmd.namespace, cmd.name)
        pool = pools.get(key)
        if pool is None:
            if isinstance(cmd, Release | Renew):
                return leases.apply(LeasePool(limit=1), cmd, ctx)  # answers not_owner
            if not isinstance(cmd, Acquire):
                return Done() if isinstance(cmd, CancelWait) else Released()
            pool = _KINDS_WITH_LEASES[cmd.kind].new_state(cmd)
            self._put(pools, key, pool)
        ctx.kind, ctx.key = cmd.kind, key
        result: Result = _KINDS_WITH_LEASES[cmd.kind].apply(pool, cmd, ctx)
        self._after_pool_change(cmd.kind, key, pool, ctx)
        return result

    def _after_pool_change(self, kind: str, key: str, pool: LeasePool, ctx: Context) -> None:
        if leases.is_idle(pool):
            self._remove(self._pools(kind), key)
        elif ctx.earliest_deadline_ms is not None:
            heapq.heappush(self._deadlines, (ctx.earliest_deadline_ms, kind, key))
        ctx.earliest_deadline_ms = None

    def _apply_rate(self, cmd: RateCheck, now_ms: int) -> Result:
        key = object_key(cmd.namespace, cmd.name)
        old = self.rates.get(key)
        new, decision = ratelimit.check(old, cmd, now_ms)
        self._store_rate(key, old, new)
        return decision

    def _store_rate(self, key: str, old: RateState | None, new: RateState | None) -> None:
        if new is old or new is None:
            return
        self._put(self.rates, key, new)
        reset_at = ratelimit.reset_at_ms(new)
        # One entry per key is enough while its time only moves later.
        if old is None or reset_at < ratelimit.reset_at_ms(old):
            self._rate_wheel.add(reset_at, key)

    def _check_all(self, cmd: RateCheckAll, now_ms: int, *, charge: bool) -> RateDecisions:
        checked = []
        for item in cmd.items:
            key = object_key(cmd.namespace, item.key)
            old = self.rates.get(key)
            new, decision = ratelimit.check(old, item, now_ms)
            checked.append((key, old, new, decision))
        allowed = all(decision.allowed or item.shadow for item, (*_, decision) in zip(cmd.items, checked, strict=True))
        if charge and allowed:
            for key, old, new, decision in checked:
                if decision.allowed:
                    self._store_rate(key, old, new)
        return RateDecisions(allowed=allowed, decisions=[decision for *_, decision in checked])

    def _expire(self, until_ms: int, ctx: Context) -> None:
        until_ms = min(until_ms, ctx.now_ms)  # nothing is due later than now
        self._drop_full_rate_keys(until_ms)
        due: set[tuple[str, str]] = set()
        while self._deadlines and self._deadlines[0][0] <= until_ms:
            _, kind, key = heapq.heappop(self._deadlines)
            due.add((kind, key))
        # Sorted, not heap order; and only objects whose real deadline is due, so a stale
        # heap entry (which a replayed state does not have) changes nothing.
        for kind, key in sorted(due):
            pool = self._pools(kind).get(key)
            if pool is None:
                continue
            upcoming = leases.next_deadline_ms(pool)
            if upcoming is None or upcoming > until_ms:
                if upcoming is not None:
                    heapq.heappush(self._deadlines, (upcoming, kind, key))
                continue
            ctx.kind, ctx.key = kind, key
            leases.settle(pool, ctx)
            upcoming = leases.next_deadline_ms(pool)
            if upcoming is not None:
                ctx.deadline(upcoming)
            self._after_pool_change(kind, key, pool, ctx)

    def _drop_full_rate_keys(self, until_ms: int) -> None:
        """Drop keys full again by a complete wheel bucket; the rule, not the wheel's
        (possibly stale) entries, decides, so live and replayed state agree."""
        for key in self._rate_wheel.pop_complete(until_ms):
            state = self.rates.get(key)
            if state is None:
                continue
            reset_at = ratelimit.reset_at_ms(state)
            if bucket_complete(reset_at, until_ms):
                self._remove(self.rates, key)
            else:
                self._rate_wheel.add(reset_at, key)

    def _recover(self, ctx: Context, outage_began_ms: int) -> None:
        outage_ms = ctx.now_ms - outage_began_ms
        for kind in ("lock", "semaphore"):
            pools = self._pools(kind)
            for key in list(pools):
                pool = pools[key]
                for waiter in leases.shift_for_outage(pool, outage_ms):
                    if waiter.request_id is not None:
                        self.forget_waiter(kind, key, waiter.request_id)
                if leases.is_idle(pool):
                    self._remove(pools, key)
        self._rebuild_deadlines()

    # --- object accounting ---------------------------------------------------------------------
    def _put(self, table: dict[str, Any], key: str, value: Any) -> None:
        if key not in table:
            namespace = key.partition("/")[0]
            _add(self.objects_per_namespace, namespace, 1)
            _add(self._tally, namespace, 1)
        table[key] = value

    def _remove(self, table: dict[str, Any], key: str) -> None:
        if table.pop(key, _ABSENT) is not _ABSENT:
            namespace = key.partition("/")[0]
            _add(self.objects_per_namespace, namespace, -1)
            _add(self._tally, namespace, -1)

    def attach(self, tally: dict[str, int]) -> None:
        """Count this shard's objects in a node's `tally` from now on."""
        self._tally = tally
        for namespace, count in self.objects_per_namespace.items():
            _add(tally, namespace, count)

    def detach(self) -> None:
        """Take this shard's objects out of the node's tally (the state is being replaced)."""
        for namespace, count in self.objects_per_namespace.items():
            _add(self._tally, namespace, -count)
        self._tally = {}

    def creates_object(self, cmd: Command) -> str | None:
        """The namespace `cmd` would add a new object to, if it would (a read of state)."""
        # By type identity, not `match` on class patterns: this runs for every command.
        kind = type(cmd)
        table: Mapping[str, Any]
        if kind is RateCheck:
            if not cast(RateCheck, cmd).cost:
                return None
            table = self.rates
        elif kind is Acquire:
            table = self._pools(cast(Acquire, cmd).kind)
        elif kind is CounterAdd or kind is CounterSet:
            table = self.counters
        elif kind is CounterCompareAndSet:
            swap = cast(CounterCompareAndSet, cmd)
            if swap.expected != 0 or swap.value == 0:
                return None  # a missing counter reads 0: only "expect 0, set non-zero" can create it
            table = self.counters
        elif kind is RateCheckAll:
            check_all = cast(RateCheckAll, cmd)
            if is_read(check_all):
                return None
            namespace = check_all.namespace
            missing = any(object_key(namespace, item.key) not in self.rates for item in check_all.items)
            return namespace if missing else None
        else:
            return None
        target = cast(ObjectCommand, cmd)
        return None if object_key(target.namespace, target.name) in table else target.namespace

    def _count_objects(self) -> None:
        counts: dict[str, int] = {}
        for table in (self.locks, self.semaphores, self.counters, self.rates):
            for key in table:
                namespace = key.partition("/")[0]
                counts[namespace] = counts.get(namespace, 0) + 1
        tally = self._tally
        self.detach()
        self.objects_per_namespace = counts
        self.attach(tally)

    # --- idempotency memory -------------------------------------------------------------------
    def _forget_old_answers(self, now_ms: int) -> None:
        remembered = self.remembered
        while remembered:
            oldest_key = next(iter(remembered))
            if remembered[oldest_key].expires_at_ms > now_ms and len(remembered) <= IDEMPOTENCY_ENTRIES_PER_SHARD_MAX:
                break
            del remembered[oldest_key]

    def _remember_notice(self, notice: Notice) -> None:
        """A queued acquire's answer replaces its remembered 'queued'; anything but a grant forgets it."""
        if notice.request_id is None:
            return
        namespace, name = notice.key.split("/", 1)
        key = _memory_key("acq", notice.kind, namespace, name, notice.request_id)
        remembered = self.remembered.get(key)
        if remembered is None:
            return
        first = remembered.result
        if isinstance(notice.result, Granted):
            if isinstance(first, Queued):
                remembered.result = notice.result
        elif isinstance(first, Queued) or (isinstance(first, Granted) and first.lease_id == notice.lease_id):
            del self.remembered[key]  # a repeat must start afresh, not find a grant that is gone

    def forget_waiter(self, kind: str, key: str, request_id: str) -> None:
        namespace, name = key.split("/", 1)
        self.remembered.pop(_memory_key("acq", kind, namespace, name, request_id), None)

    # --- deadlines ------------------------------------------------------------------------------
    def next_deadline_ms(self) -> int | None:
        times = [self._deadlines[0][0]] if self._deadlines else []
        wheel_due = self._rate_wheel.next_due_ms()
        if wheel_due is not None:
            times.append(wheel_due)
        return min(times) if times else None

    def _rebuild_deadlines(self) -> None:
        entries: list[tuple[int, str, str]] = []
        for kind in ("lock", "semaphore"):
            for key, pool in self._pools(kind).items():
                at = leases.next_deadline_ms(pool)
                if at is not None:
                    entries.append((at, kind, key))
        heapq.heapify(entries)
        self._deadlines = entries
        self._rate_wheel = ExpiryWheel()
        for key, state in self.rates.items():
            self._rate_wheel.add(ratelimit.reset_at_ms(state), key)

    # --- snapshots --------------------------------------------------------------------------------
    def snapshot_items(self) -> int:
        """How much a snapshot has to encode: objects and remembered answers."""
        return len(self.locks) + len(self.semaphores) + len(self.counters) + len(self.rates) + len(self.remembered)

    def snapshot(self) -> bytes:
        return _snapshot_encoder.encode(
            Snapshot(
                version=SNAPSHOT_FORMAT_VERSION,
                shard=self.shard,
                lsn=self.lsn,
                last_now_ms=self.last_now_ms,
                locks=self.locks,
                semaphores=self.semaphores,
                counters=self.counters,
                rates=self.rates,
                remembered=self.remembered,
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> ShardState:
        snap = _snapshot_decoder.decode(data)
        if snap.version != SNAPSHOT_FORMAT_VERSION:
            raise ValueError(
                f"snapshot format {snap.version} is not readable by this version ({SNAPSHOT_FORMAT_VERSION})"
            )
        state = cls(snap.shard)
        state.lsn = snap.lsn
        state.last_now_ms = snap.last_now_ms
        state.locks = snap.locks
        state.semaphores = snap.semaphores
        state.counters = snap.counters
        state.rates = {
            key: rate.upgraded() if isinstance(rate, GcraStateV1) else rate for key, rate in snap.rates.items()
        }
        state.remembered = snap.remembered
        state._rebuild_deadlines()
        state._count_objects()
        return state


_READERS: Final[dict[type, Callable[[ShardState, Any, int], Result | None]]] = {
    Inspect: ShardState._read_pool,
    FenceCheck: ShardState._read_pool,
    CounterGet: ShardState._read_counter,
    RateCheck: ShardState._peek_rate,
    RateCheckAll: ShardState._peek_all,
}
_MUTATORS: Final[dict[type, Callable[[ShardState, Any, Context, int], Result]]] = {
    Acquire: ShardState._mutate_lease,
    Release: ShardState._mutate_lease,
    Renew: ShardState._mutate_lease,
    CancelWait: ShardState._mutate_lease,
    ForceRelease: ShardState._mutate_lease,
    CounterAdd: ShardState._mutate_counter,
    CounterSet: ShardState._mutate_counter,
    CounterCompareAndSet: ShardState._mutate_counter,
    RateCheck: ShardState._mutate_rate,
    RateReset: ShardState._mutate_reset,
    RateResetAll: ShardState._mutate_reset,
    RateCheckAll: ShardState._mutate_all,
    Expire: ShardState._mutate_expire,
    Recover: ShardState._mutate_recover,
}
