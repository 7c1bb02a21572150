"""Semaphores: ShardState run side by side with a plain reference model.

The model: per name a fixed limit, the leases held (permits, expiry) and a FIFO list of
waiters. The head of the line is served while its permits fit, and nobody overtakes it:
a large request at the head blocks smaller ones behind it (no starvation). Like the core,
the model settles an object only when a logged op touches it at `now` (a lease op on it,
or an Expire whose until_ms covers one of its deadlines); reads show it as it stands.

CancelWait carries the acquire's request_id, as the edge sends it: a waiter taken out of
line, or a grant given back because its caller left, is forgotten, so a repeat of the
acquire runs afresh. `Expire(until_ms < now)` is left to test_lock_model and test_replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockgate_server.core.ops import (
    Acquire,
    CancelWait,
    Command,
    Done,
    Expire,
    Failure,
    ForceRelease,
    Granted,
    Inspect,
    LeaseInfo,
    Queued,
    Release,
    Released,
    Renew,
    Renewed,
    Result,
)
from lockgate_server.core.shard_state import Applied, ShardState
from lockgate_server.limits import IDEMPOTENCY_WINDOW_MS

from .modeling import NAMESPACE, START_MS, key_of, summary

LIMITS = {"p": 3, "q": 2}
NAMES = tuple(LIMITS)


# --- the reference model ---------------------------------------------------------------
@dataclass
class ModelLease:
    lease_id: str
    permits: int
    expires_at_ms: int
    holder: str
    token: int = 0  # adopted from the core's grant


@dataclass
class ModelWaiter:
    lease_id: str
    permits: int
    ttl_ms: int
    deadline_ms: int
    holder: str


@dataclass
class ModelSemaphore:
    limit: int
    leases: dict[str, ModelLease] = field(default_factory=dict)
    waiters: list[ModelWaiter] = field(default_factory=list)

    def used(self) -> int:
        return sum(lease.permits for lease in self.leases.values())

    def idle(self) -> bool:
        return not self.leases and not self.waiters

    def next_deadline_ms(self) -> int | None:
        times = [lease.expires_at_ms for lease in self.leases.values()]
        times.extend(waiter.deadline_ms for waiter in self.waiters)
        return min(times) if times else None


@dataclass
class Expected:
    result: Result | None = None
    notices: list[tuple[str, str, object]] = field(default_factory=list)
    grants: list[ModelLease] = field(default_factory=list)  # in the order the core hands out tokens
    renewed: ModelLease | None = None


class SemaphoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ShardState(shard=0)
        self.clock_ms = START_MS
        self.last_now_ms = 0
        self.sems: dict[str, ModelSemaphore] = {}
        self.remembered: dict[str, Result] = {}
        self.requests: dict[str, Command] = {}
        self.lease_names: dict[str, str] = {}
        self.waited_ids: list[str] = []  # lease ids ever answered Queued
        self.acquire_request: dict[str, str] = {}
        self.line: dict[str, list[str]] = {name: [] for name in NAMES}
        self.max_token = 0
        self.ids = 0

    def now(self) -> int:
        return max(self.clock_ms, self.last_now_ms)

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"

    # --- model ----------------------------------------------------------------------------
    def grant(self, sem: ModelSemaphore, waiter: ModelWaiter, now: int, out: Expected) -> Granted:
        lease = ModelLease(waiter.lease_id, waiter.permits, now + waiter.ttl_ms, waiter.holder)
        sem.leases[waiter.lease_id] = lease
        out.grants.append(lease)
        return Granted(lease_id=waiter.lease_id, token=0, ttl_ms=waiter.ttl_ms, permits=waiter.permits)

    def serve(self, name: str, sem: ModelSemaphore, now: int, out: Expected) -> None:
        while sem.waiters and sem.waiters[0].permits <= sem.limit - sem.used():
            head = sem.waiters.pop(0)
            out.notices.append((key_of(name), head.lease_id, summary(self.grant(sem, head, now, out))))

    def settle(self, name: str, sem: ModelSemaphore, now: int, out: Expected) -> None:
        sem.leases = {lease_id: lease for lease_id, lease in sem.leases.items() if lease.expires_at_ms > now}
        for waiter in sem.waiters:
            if waiter.deadline_ms <= now:
                out.notices.append((key_of(name), waiter.lease_id, ("failure", "timeout", None)))
        sem.waiters = [waiter for waiter in sem.waiters if waiter.deadline_ms > now]
        self.serve(name, sem, now, out)

    def model_apply(self, cmd: Command, now: int) -> Expected:
        out = Expected()
        if isinstance(cmd, Expire):
            for name in sorted(self.sems):
                sem = self.sems[name]
                deadline = sem.next_deadline_ms()
                if deadline is not None and deadline <= cmd.until_ms:
                    self.settle(name, sem, now, out)
                    if sem.idle():
                        del self.sems[name]
            out.result = Done()
            return out
        assert isinstance(cmd, Acquire | Release | Renew | CancelWait | ForceRelease)
        name = cmd.name
        if name not in self.sems and not isinstance(cmd, Acquire):
            if isinstance(cmd, Release | Renew):
                out.result = Failure(code="not_owner", detail="")
            else:
                out.result = Done() if isinstance(cmd, CancelWait) else Released()
            return out
        sem = self.sems.setdefault(name, ModelSemaphore(limit=LIMITS[name]))
        self.settle(name, sem, now, out)  # every lease op first ends what is due, refused or not
        if isinstance(cmd, Acquire) and cmd.permits > sem.limit:
            out.result = Failure(code="conflict", detail="")
        else:
            self.model_lease_op(name, sem, cmd, now, out)
        if sem.idle():
            del self.sems[name]
        return out

    def model_lease_op(self, name: str, sem: ModelSemaphore, cmd: Command, now: int, out: Expected) -> None:
        match cmd:
            case Acquire():
                if not sem.waiters and sem.used() + cmd.permits <= sem.limit:
                    waiter = ModelWaiter(cmd.lease_id, cmd.permits, cmd.ttl_ms, now, cmd.holder or "")
                    out.result = self.grant(sem, waiter, now, out)
                elif cmd.wait_ms <= 0:
                    soonest = min((lease.expires_at_ms for lease in sem.leases.values()), default=now + 1)
                    out.result = Failure(code="held", detail="", retry_after_ms=max(1, soonest - now))
                else:
                    waiter = ModelWaiter(cmd.lease_id, cmd.permits, cmd.ttl_ms, now + cmd.wait_ms, cmd.holder or "")
                    sem.waiters.append(waiter)
                    out.result = Queued(lease_id=cmd.lease_id)
            case Release():
                if sem.leases.pop(cmd.lease_id, None) is None:
                    out.result = Failure(code="not_owner", detail="")
                else:
                    self.serve(name, sem, now, out)
                    out.result = Released()
            case Renew():
                lease = sem.leases.get(cmd.lease_id)
                if lease is None:
                    out.result = Failure(code="not_owner", detail="")
                else:
                    lease.expires_at_ms = now + cmd.ttl_ms
                    out.result = Renewed(lease_id=cmd.lease_id, token=0, ttl_ms=cmd.ttl_ms)
                    out.renewed = lease
            case CancelWait():
                index = next((i for i, w in enumerate(sem.waiters) if w.lease_id == cmd.lease_id), None)
                if index is not None:
                    del sem.waiters[index]
                    out.notices.append((key_of(name), cmd.lease_id, ("failure", "cancelled", None)))
                    self.serve(name, sem, now, out)
                    out.result = Done()
                elif sem.leases.pop(cmd.lease_id, None) is not None:  # granted meanwhile: given back
                    out.notices.append((key_of(name), cmd.lease_id, ("failure", "cancelled", None)))
                    self.serve(name, sem, now, out)
                    out.result = Released()
                else:
                    out.result = Done()
            case ForceRelease():
                sem.leases.clear()
                self.serve(name, sem, now, out)
                out.result = Released()

    # --- running one logged op on both ------------------------------------------------------
    def run(self, cmd: Command) -> Applied:
        request_id = getattr(cmd, "request_id", None)
        applied = self.core.apply(cmd, self.clock_ms)
        assert applied.logged, (
            f"{cmd!r} was answered from memory ({applied.result!r}) but must be applied: a CancelWait, or the "
            f"repeat of an acquire that timed out, was cancelled or given back"
        )
        now = self.now()
        self.last_now_ms = now
        expected = self.model_apply(cmd, now)
        got_notices = [(n.key, n.lease_id, summary(n.result)) for n in applied.notices]
        assert got_notices == expected.notices, f"{cmd!r} at {now}: notices {got_notices} != {expected.notices}"
        grants = [n.result for n in applied.notices if isinstance(n.result, Granted)]
        if isinstance(applied.result, Granted):
            grants.append(applied.result)
        assert len(grants) == len(expected.grants)
        for granted, lease in zip(grants, expected.grants, strict=True):
            assert granted.token > self.max_token, f"token {granted.token} not above earlier {self.max_token}"
            self.max_token = granted.token
            lease.token = granted.token
        if expected.renewed is not None:
            assert isinstance(cmd, Renew)
            expected.result = Renewed(lease_id=cmd.lease_id, token=expected.renewed.token, ttl_ms=cmd.ttl_ms)
        assert summary(applied.result) == summary(expected.result), (
            f"{cmd!r} at {now}: {applied.result!r} != {expected.result!r}"
        )
        self.check_fifo(applied, cmd)
        if request_id is not None and not isinstance(cmd, CancelWait):  # CancelWait's names the acquire
            self.remembered[request_id] = applied.result
        for notice in applied.notices:
            acquire_request = self.acquire_request.get(notice.lease_id)
            first = self.remembered.get(acquire_request) if acquire_request is not None else None
            if acquire_request is None or first is None:
                continue
            if isinstance(notice.result, Granted):
                if isinstance(first, Queued):
                    self.remembered[acquire_request] = notice.result
            elif isinstance(first, Queued | Granted):
                del self.remembered[acquire_request]  # timed out, cancelled or given back: start afresh
        if isinstance(applied.result, Queued):
            self.waited_ids.append(applied.result.lease_id)
        return applied

    def check_fifo(self, applied: Applied, cmd: Command) -> None:
        """Grants from the line follow queue order; nobody is granted while someone queued earlier waits."""
        for notice in applied.notices:
            line = self.line[notice.key.split("/", 1)[1]]
            if isinstance(notice.result, Granted):
                assert line and line[0] == notice.lease_id, f"{notice.lease_id} granted out of turn; line {line}"
                line.pop(0)
            elif notice.lease_id in line:
                line.remove(notice.lease_id)
        if isinstance(applied.result, Granted):
            assert isinstance(cmd, Acquire)
            assert not self.line[cmd.name], f"{cmd.lease_id} overtook the line {self.line[cmd.name]}"
        if isinstance(applied.result, Queued):
            assert isinstance(cmd, Acquire)
            self.line[cmd.name].append(cmd.lease_id)

    # --- rules --------------------------------------------------------------------------------
    @rule(delta_ms=st.one_of(st.integers(0, 60), st.integers(60, 1000)))
    def advance_time(self, delta_ms: int) -> None:
        self.clock_ms += delta_ms
        assert self.clock_ms - START_MS < IDEMPOTENCY_WINDOW_MS

    @rule(back_ms=st.integers(1, 400))
    def clock_steps_back(self, back_ms: int) -> None:
        self.clock_ms -= back_ms

    @rule(
        data=st.data(),
        name=st.sampled_from(NAMES),
        ttl_ms=st.integers(100, 2500),
        wait_ms=st.one_of(st.just(0), st.integers(1, 3000), st.integers(3000, 20_000)),
        with_request_id=st.booleans(),
    )
    def acquire(self, data: st.DataObject, name: str, ttl_ms: int, wait_ms: int, with_request_id: bool) -> None:
        limit = LIMITS[name]
        permits = data.draw(st.one_of(st.integers(1, limit), st.just(limit + 1)), label="permits")
        self.send_acquire(name, permits, ttl_ms, wait_ms, with_request_id)

    @rule(
        name=st.sampled_from(NAMES),
        small=st.booleans(),
        ttl_ms=st.integers(500, 5000),
        wait_ms=st.integers(1000, 20_000),
        with_request_id=st.booleans(),
    )
    def acquire_and_wait(self, name: str, small: bool, ttl_ms: int, wait_ms: int, with_request_id: bool) -> None:
        """Contention: one permit or the whole semaphore, waiting long enough to be served."""
        permits = 1 if small else LIMITS[name]
        self.send_acquire(name, permits, ttl_ms, wait_ms, with_request_id)

    def send_acquire(self, name: str, permits: int, ttl_ms: int, wait_ms: int, with_request_id: bool) -> None:
        limit = LIMITS[name]
        lease_id = self.new_id("L")
        request_id = self.new_id("acq") if with_request_id else None
        cmd = Acquire(
            namespace=NAMESPACE,
            name=name,
            kind="semaphore",
            lease_id=lease_id,
            ttl_ms=ttl_ms,
            wait_ms=wait_ms,
            limit=limit,
            permits=permits,
            holder=f"h-{lease_id}",
            request_id=request_id,
        )
        self.lease_names[lease_id] = name
        if request_id is not None:
            self.requests[request_id] = cmd
            self.acquire_request[lease_id] = request_id
        self.run(cmd)

    def held_ids(self) -> list[str]:
        return sorted(lease_id for sem in self.sems.values() for lease_id in sem.leases)

    def waiting_ids(self) -> list[str]:
        return [waiter.lease_id for name in sorted(self.sems) for waiter in self.sems[name].waiters]

    @precondition(lambda self: self.lease_names)
    @rule(data=st.data(), with_request_id=st.booleans())
    def release(self, data: st.DataObject, with_request_id: bool) -> None:
        """Mostly a lease the model holds, sometimes any lease id ever issued (gone, waiting, unknown)."""
        held = self.held_ids()
        everything = sorted(self.lease_names)
        lease_id = data.draw(st.sampled_from(held) if held else st.sampled_from(everything), label="lease_id")
        if data.draw(st.integers(0, 4), label="stale") == 0:
            lease_id = data.draw(st.sampled_from(everything), label="stale_lease_id")
        request_id = self.new_id("rel") if with_request_id else None
        cmd = Release(
            namespace=NAMESPACE,
            name=self.lease_names[lease_id],
            kind="semaphore",
            lease_id=lease_id,
            request_id=request_id,
        )
        if request_id is not None:
            self.requests[request_id] = cmd
        self.run(cmd)

    @precondition(lambda self: self.lease_names)
    @rule(data=st.data(), ttl_ms=st.integers(100, 2500))
    def renew(self, data: st.DataObject, ttl_ms: int) -> None:
        held = self.held_ids()
        lease_id = data.draw(st.sampled_from(held or sorted(self.lease_names)), label="lease_id")
        self.run(
            Renew(
                namespace=NAMESPACE, name=self.lease_names[lease_id], kind="semaphore", lease_id=lease_id, ttl_ms=ttl_ms
            )
        )

    @precondition(lambda self: self.waited_ids)
    @rule(data=st.data())
    def cancel_wait(self, data: st.DataObject) -> None:
        """Mostly an acquire still in line, sometimes one that waited earlier (granted or gone since)."""
        waiting = self.waiting_ids()
        lease_id = data.draw(st.sampled_from(waiting or self.waited_ids), label="lease_id")
        if data.draw(st.integers(0, 4), label="stale") == 0:
            lease_id = data.draw(st.sampled_from(self.waited_ids), label="stale_lease_id")
        request_id = self.acquire_request.get(lease_id)  # the edge passes the acquire's request_id along
        self.run(
            CancelWait(
                namespace=NAMESPACE,
                name=self.lease_names[lease_id],
                kind="semaphore",
                lease_id=lease_id,
                request_id=request_id,
            )
        )

    @rule(name=st.sampled_from(NAMES))
    def force_release(self, name: str) -> None:
        self.run(ForceRelease(namespace=NAMESPACE, name=name, kind="semaphore"))

    @rule(ahead_ms=st.integers(0, 300))
    def expire(self, ahead_ms: int) -> None:
        self.run(Expire(until_ms=self.now() + ahead_ms))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.requests)), label="request_id")
        cmd = self.requests[request_id]
        first = self.remembered.get(request_id)
        if isinstance(first, Granted | Renewed):  # still true only while its lease stands
            sem = self.sems.get(self.lease_names[first.lease_id])
            lease = sem.leases.get(first.lease_id) if sem is not None else None
            if lease is not None and lease.expires_at_ms > self.now():
                first = msgspec.structs.replace(first, ttl_ms=lease.expires_at_ms - self.now())
            else:
                del self.remembered[request_id]
                first = None
        if first is not None:
            before = self.core.snapshot()
            applied = self.core.apply(cmd, self.clock_ms)
            assert not applied.logged and applied.notices == []
            assert applied.result == first
            assert self.core.snapshot() == before
        else:
            self.run(cmd)  # forgotten (timed out, cancelled, given back, its lease ended): a new request

    # --- invariants -------------------------------------------------------------------------------
    @invariant()
    def permits_never_over_granted(self) -> None:
        now = self.now()
        for key, pool in self.core.semaphores.items():
            name = key.split("/", 1)[1]
            assert pool.limit == LIMITS[name]
            assert pool.used == sum(lease.permits for lease in pool.leases.values())
            assert 0 <= pool.used <= pool.limit, f"{key}: {pool.used} permits used of {pool.limit}"
            assert sum(lease.permits for lease in pool.leases.values() if lease.expires_at_ms > now) <= pool.limit
            if pool.waiters:  # the head waits only because it does not fit: nobody may overtake it
                assert pool.waiters[0].permits > pool.limit - pool.used

    @invariant()
    def idle_semaphores_are_dropped(self) -> None:
        assert set(self.core.semaphores) == {key_of(name) for name in self.sems}

    @invariant()
    def inspect_matches_model(self) -> None:
        now = self.now()
        for name in NAMES:
            applied = self.core.apply(Inspect(namespace=NAMESPACE, name=name, kind="semaphore"), self.clock_ms)
            assert not applied.logged
            sem = self.sems.get(name)
            if sem is None:
                expected = LeaseInfo(held=False, limit=1, permits_used=0, waiters=0)
            else:
                live = [lease for lease in sem.leases.values() if lease.expires_at_ms > now]
                waiting = sum(1 for waiter in sem.waiters if waiter.deadline_ms > now)
                if not live:
                    expected = LeaseInfo(held=False, limit=sem.limit, permits_used=0, waiters=waiting)
                else:
                    newest = max(live, key=lambda lease: lease.token)
                    expected = LeaseInfo(
                        held=True,
                        limit=sem.limit,
                        permits_used=sum(lease.permits for lease in live),
                        waiters=waiting,
                        holder=newest.holder,
                        token=newest.token,
                        remaining_ms=newest.expires_at_ms - now,
                    )
            assert applied.result == expected, f"{name} at {now}: {applied.result!r} != {expected!r}"


SemaphoreMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSemaphoreModel = SemaphoreMachine.TestCase


# --- targeted cases ---------------------------------------------------------------------------
def _sem(lease_id: str, permits: int, *, limit: int = 3, wait_ms: int = 0, ttl_ms: int = 10_000) -> Acquire:
    return Acquire(
        namespace=NAMESPACE,
        name="s",
        kind="semaphore",
        lease_id=lease_id,
        ttl_ms=ttl_ms,
        wait_ms=wait_ms,
        limit=limit,
        permits=permits,
    )


def _release(lease_id: str) -> Release:
    return Release(namespace=NAMESPACE, name="s", kind="semaphore", lease_id=lease_id)


def test_large_head_request_blocks_later_small_ones() -> None:
    core = ShardState(shard=0)
    assert isinstance(core.apply(_sem("a", 2), 0).result, Granted)
    assert core.apply(_sem("big", 3, wait_ms=60_000), 1).result == Queued(lease_id="big")
    # One permit is free, but "big" is first in line: a small request must not overtake it.
    held = core.apply(_sem("small-now", 1), 2).result
    assert isinstance(held, Failure) and held.code == "held"
    assert core.apply(_sem("small", 1, wait_ms=60_000), 3).result == Queued(lease_id="small")
    released = core.apply(_release("a"), 4)
    assert [(n.lease_id, type(n.result)) for n in released.notices] == [("big", Granted)]
    released = core.apply(_release("big"), 5)
    assert [(n.lease_id, type(n.result)) for n in released.notices] == [("small", Granted)]


def test_one_release_grants_several_waiters_in_order_with_increasing_tokens() -> None:
    core = ShardState(shard=0)
    core.apply(_sem("a", 3), 0)
    for index in range(3):
        assert core.apply(_sem(f"w{index}", 1, wait_ms=60_000), 1 + index).result == Queued(lease_id=f"w{index}")
    released = core.apply(_release("a"), 10)
    granted = [notice.result for notice in released.notices]
    assert [result.lease_id for result in granted if isinstance(result, Granted)] == ["w0", "w1", "w2"]
    tokens = [result.token for result in granted if isinstance(result, Granted)]
    assert tokens == sorted(set(tokens)) and tokens[0] >= released.lsn
    later = core.apply(_sem("x", 1), 11)
    assert isinstance(later.result, Failure)  # all three permits are out
    assert core.apply(_release("w0"), 12).result == Released()
    regranted = core.apply(_sem("y", 1), 13).result
    assert isinstance(regranted, Granted) and regranted.token > tokens[-1]


def test_new_limit_is_accepted_once_every_lease_has_expired() -> None:
    """Regression for a core bug: "the first acquire fixes the limit; it holds until the
    semaphore is idle again". At t=500 the only lease (ttl 100) ended long ago and Inspect
    says nothing is held and nobody waits, yet an acquire with a new limit is refused with
    `conflict`, because leases.acquire checks the limit before settling the pool. It succeeds
    only after some other op (an Expire) has settled the semaphore."""
    core = ShardState(shard=0)
    assert isinstance(core.apply(_sem("a", 1, limit=3, ttl_ms=100), 0).result, Granted)
    info = core.apply(Inspect(namespace=NAMESPACE, name="s", kind="semaphore"), 500).result
    assert info == LeaseInfo(held=False, limit=3, permits_used=0, waiters=0)
    result = core.apply(_sem("b", 1, limit=5, ttl_ms=100), 500).result
    assert isinstance(result, Granted), f"acquire with limit 5 on an idle semaphore answered {result!r}"
