"""Locks: ShardState run side by side with a plain reference model.

The model is a dict of lock name -> (holder, FIFO list of waiters with deadlines). It
follows the core's documented timing rule: an object is settled (due leases end, due
waiters time out, the head of the line is served) when a logged op touches it at `now`,
i.e. a lease op on it or an `Expire` whose `until_ms` covers one of its deadlines. Reads
report the object as it stands at `now` without settling it.

Tokens are not predicted, only checked: every grant's token is larger than every earlier
one, and the model adopts it so later answers (Renewed, Inspect, FenceCheck) are exact.

The machine issues `Expire(until_ms >= now)`; `until_ms < now` has its own test at the
bottom of this file.
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
    FenceAnswer,
    FenceCheck,
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

NAMES = ("a", "b")


# --- the reference model ---------------------------------------------------------------
@dataclass
class ModelLease:
    lease_id: str
    expires_at_ms: int
    holder: str
    token: int = 0  # adopted from the core's grant


@dataclass
class ModelWaiter:
    lease_id: str
    ttl_ms: int
    deadline_ms: int
    holder: str
    request_id: str | None


@dataclass
class ModelLock:
    lease: ModelLease | None = None
    waiters: list[ModelWaiter] = field(default_factory=list)

    def idle(self) -> bool:
        return self.lease is None and not self.waiters

    def next_deadline_ms(self) -> int | None:
        times = [waiter.deadline_ms for waiter in self.waiters]
        if self.lease is not None:
            times.append(self.lease.expires_at_ms)
        return min(times) if times else None


@dataclass
class Expected:
    """One op's expected answer: result, notices as (key, lease_id, summary), grants in token order."""

    result: Result | None = None
    notices: list[tuple[str, str, object]] = field(default_factory=list)
    grants: list[ModelLease] = field(default_factory=list)
    renewed: ModelLease | None = None  # its token may come from a grant in this very op


class LockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ShardState(shard=0)
        self.clock_ms = START_MS  # what the caller passes; the shard stamps max(clock, last)
        self.last_now_ms = 0
        self.locks: dict[str, ModelLock] = {}
        self.remembered: dict[str, Result] = {}  # request_id -> first answer
        self.requests: dict[str, Command] = {}  # request_id -> the command, for repeats
        self.lease_names: dict[str, str] = {}  # every lease id issued -> lock name
        self.acquire_request: dict[str, str] = {}  # lease id -> request_id of its acquire
        self.queued_ids: list[str] = []  # lease ids that were ever answered Queued
        self.queued_requests: list[str] = []  # request ids of those acquires
        self.max_token = 0
        self.line: dict[str, list[str]] = {name: [] for name in NAMES}  # FIFO as the core reported it
        self.dead: set[str] = set()  # waiters that timed out or were cancelled in line
        self.given_back: set[str] = set()  # granted while queued, then given back by CancelWait
        self.ids = 0

    # --- helpers ----------------------------------------------------------------------
    def now(self) -> int:
        return max(self.clock_ms, self.last_now_ms)

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"

    def grant(self, name: str, lock: ModelLock, waiter: ModelWaiter, now: int, out: Expected) -> Granted:
        lease = ModelLease(waiter.lease_id, now + waiter.ttl_ms, waiter.holder)
        lock.lease = lease
        out.grants.append(lease)
        return Granted(lease_id=waiter.lease_id, token=0, ttl_ms=waiter.ttl_ms)

    def serve(self, name: str, lock: ModelLock, now: int, out: Expected) -> None:
        if lock.lease is None and lock.waiters:
            head = lock.waiters.pop(0)
            granted = self.grant(name, lock, head, now, out)
            out.notices.append((key_of(name), head.lease_id, summary(granted)))

    def settle(self, name: str, lock: ModelLock, now: int, out: Expected) -> None:
        if lock.lease is not None and lock.lease.expires_at_ms <= now:
            lock.lease = None
        still = []
        for waiter in lock.waiters:
            if waiter.deadline_ms <= now:
                out.notices.append((key_of(name), waiter.lease_id, ("failure", "timeout", None)))
            else:
                still.append(waiter)
        lock.waiters = still
        self.serve(name, lock, now, out)

    def drop_if_idle(self, name: str) -> None:
        lock = self.locks.get(name)
        if lock is not None and lock.idle():
            del self.locks[name]

    # --- the model's answer to each command ---------------------------------------------
    def model_apply(self, cmd: Command, now: int) -> Expected:
        out = Expected()
        if isinstance(cmd, Expire):
            for name in sorted(self.locks):
                lock = self.locks[name]
                deadline = lock.next_deadline_ms()
                if deadline is not None and deadline <= cmd.until_ms:
                    self.settle(name, lock, now, out)
                    self.drop_if_idle(name)
            out.result = Done()
            return out
        assert isinstance(cmd, Acquire | Release | Renew | CancelWait | ForceRelease)
        name = cmd.name
        lock = self.locks.get(name)
        if lock is None and not isinstance(cmd, Acquire):
            if isinstance(cmd, Release | Renew):
                out.result = Failure(code="not_owner", detail="")
            else:
                out.result = Done() if isinstance(cmd, CancelWait) else Released()
            return out
        lock = self.locks.setdefault(name, ModelLock())
        self.settle(name, lock, now, out)
        match cmd:
            case Acquire():
                if lock.lease is None and not lock.waiters:
                    waiter = ModelWaiter(cmd.lease_id, cmd.ttl_ms, now, cmd.holder or "", cmd.request_id)
                    out.result = self.grant(name, lock, waiter, now, out)
                elif cmd.wait_ms <= 0:
                    assert lock.lease is not None
                    out.result = Failure(code="held", detail="", retry_after_ms=lock.lease.expires_at_ms - now)
                else:
                    deadline = now + cmd.wait_ms
                    lock.waiters.append(
                        ModelWaiter(cmd.lease_id, cmd.ttl_ms, deadline, cmd.holder or "", cmd.request_id)
                    )
                    out.result = Queued(lease_id=cmd.lease_id)
            case Release():
                if lock.lease is not None and lock.lease.lease_id == cmd.lease_id:
                    lock.lease = None
                    self.serve(name, lock, now, out)
                    out.result = Released()
                else:
                    out.result = Failure(code="not_owner", detail="")
            case Renew():
                if lock.lease is not None and lock.lease.lease_id == cmd.lease_id:
                    lock.lease.expires_at_ms = now + cmd.ttl_ms
                    out.result = Renewed(lease_id=cmd.lease_id, token=0, ttl_ms=cmd.ttl_ms)
                    out.renewed = lock.lease
                else:
                    out.result = Failure(code="not_owner", detail="")
            case CancelWait():
                index = next((i for i, w in enumerate(lock.waiters) if w.lease_id == cmd.lease_id), None)
                if index is not None:
                    del lock.waiters[index]
                    out.notices.append((key_of(name), cmd.lease_id, ("failure", "cancelled", None)))
                    self.serve(name, lock, now, out)
                    out.result = Done()
                elif lock.lease is not None and lock.lease.lease_id == cmd.lease_id:
                    # Granted meanwhile, but the caller left: the grant is given back, and a
                    # repeat of the acquire must not find it (the notice makes the shard forget).
                    lock.lease = None
                    out.notices.append((key_of(name), cmd.lease_id, ("failure", "cancelled", None)))
                    self.serve(name, lock, now, out)
                    out.result = Released()
                    self.given_back.add(cmd.lease_id)
                else:
                    out.result = Done()
            case ForceRelease():
                lock.lease = None
                self.serve(name, lock, now, out)
                out.result = Released()
        self.drop_if_idle(name)
        return out

    # --- running one logged op on both ----------------------------------------------------
    def check_tokens(self, applied: Applied) -> list[Granted]:
        grants = [n.result for n in applied.notices if isinstance(n.result, Granted)]
        if isinstance(applied.result, Granted):
            grants.append(applied.result)
        for granted in grants:
            assert granted.token > self.max_token, f"token {granted.token} not above earlier {self.max_token}"
            assert granted.token >= applied.lsn
            self.max_token = granted.token
            assert granted.lease_id not in self.dead, f"{granted.lease_id} granted after it timed out/was cancelled"
        return grants

    def check_fifo(self, applied: Applied) -> None:
        """Waiters leave the line by timeout or cancel anywhere, but are granted only from its head."""
        for notice in applied.notices:
            line = self.line[notice.key.split("/", 1)[1]]
            if isinstance(notice.result, Granted):
                assert line and line[0] == notice.lease_id, f"{notice.lease_id} granted out of turn; line {line}"
                line.pop(0)
            elif notice.lease_id in line:
                line.remove(notice.lease_id)
        if isinstance(applied.result, Queued):
            cmd_name = self.lease_names[applied.result.lease_id]
            self.line[cmd_name].append(applied.result.lease_id)

    def run(self, cmd: Command) -> Applied:
        request_id = getattr(cmd, "request_id", None)
        applied = self.core.apply(cmd, self.clock_ms)
        if not applied.logged:
            assert not isinstance(cmd, CancelWait), (
                f"{cmd!r} was answered from memory ({applied.result!r}) instead of being applied"
            )
            # Otherwise only a repeat the model forgot (after a give-back) may get here: see send_again.
            assert request_id is not None and request_id not in self.remembered, f"{cmd!r}: {applied!r}"
            return applied
        now = self.now()
        self.last_now_ms = now
        expected = self.model_apply(cmd, now)
        got_notices = [(n.key, n.lease_id, summary(n.result)) for n in applied.notices]
        assert got_notices == expected.notices, f"{cmd!r} at {now}: notices {got_notices} != {expected.notices}"
        grants = self.check_tokens(applied)
        assert len(grants) == len(expected.grants)
        for granted, lease in zip(grants, expected.grants, strict=True):
            lease.token = granted.token
        if expected.renewed is not None:
            expected.result = Renewed(lease_id=cmd.lease_id, token=expected.renewed.token, ttl_ms=cmd.ttl_ms)  # type: ignore[attr-defined]
        assert summary(applied.result) == summary(expected.result), (
            f"{cmd!r} at {now}: {applied.result!r} != {expected.result!r}"
        )
        self.check_fifo(applied)
        for notice in applied.notices:
            if isinstance(notice.result, Failure):
                self.dead.add(notice.lease_id)
        # Idempotency memory: the op's own answer (CancelWait's request_id names the acquire's),
        # then what became of queued acquires.
        if request_id is not None and not isinstance(cmd, CancelWait):
            self.remembered[request_id] = applied.result
        for notice in applied.notices:
            acquire_request = self.acquire_request.get(notice.lease_id)
            first = self.remembered.get(acquire_request) if acquire_request is not None else None
            if acquire_request is None or first is None:
                continue
            if isinstance(notice.result, Granted):
                if isinstance(first, Queued):
                    self.remembered[acquire_request] = notice.result  # a repeat now learns of the grant
            elif isinstance(first, Queued | Granted):
                del self.remembered[acquire_request]  # timed out, cancelled or given back: start afresh
        if isinstance(applied.result, Queued):
            self.queued_ids.append(applied.result.lease_id)
            if request_id is not None and request_id not in self.queued_requests:
                self.queued_requests.append(request_id)
        return applied

    # --- rules --------------------------------------------------------------------------
    @rule(delta_ms=st.one_of(st.integers(0, 60), st.integers(60, 1500)))
    def advance_time(self, delta_ms: int) -> None:
        self.clock_ms += delta_ms
        assert self.clock_ms - START_MS < IDEMPOTENCY_WINDOW_MS  # every remembered answer stays remembered

    @rule(back_ms=st.integers(1, 400))
    def clock_steps_back(self, back_ms: int) -> None:
        self.clock_ms -= back_ms

    @rule(
        name=st.sampled_from(NAMES),
        ttl_ms=st.integers(100, 2500),
        wait_ms=st.one_of(st.just(0), st.integers(1, 3000), st.integers(3000, 20_000)),
        with_request_id=st.booleans(),
    )
    def acquire(self, name: str, ttl_ms: int, wait_ms: int, with_request_id: bool) -> None:
        lease_id = self.new_id("L")
        request_id = self.new_id("acq") if with_request_id else None
        cmd = Acquire(
            namespace=NAMESPACE,
            name=name,
            kind="lock",
            lease_id=lease_id,
            ttl_ms=ttl_ms,
            wait_ms=wait_ms,
            holder=f"h-{lease_id}",
            request_id=request_id,
        )
        self.lease_names[lease_id] = name
        if request_id is not None:
            self.requests[request_id] = cmd
            self.acquire_request[lease_id] = request_id
        self.run(cmd)

    def held_ids(self) -> list[str]:
        return sorted(lock.lease.lease_id for lock in self.locks.values() if lock.lease is not None)

    def waiting_ids(self) -> list[str]:
        return [waiter.lease_id for name in sorted(self.locks) for waiter in self.locks[name].waiters]

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
            namespace=NAMESPACE, name=self.lease_names[lease_id], kind="lock", lease_id=lease_id, request_id=request_id
        )
        if request_id is not None:
            self.requests[request_id] = cmd
        self.run(cmd)

    @precondition(lambda self: self.lease_names)
    @rule(data=st.data(), ttl_ms=st.integers(100, 2500), with_request_id=st.booleans())
    def renew(self, data: st.DataObject, ttl_ms: int, with_request_id: bool) -> None:
        held = self.held_ids()
        lease_id = data.draw(st.sampled_from(held or sorted(self.lease_names)), label="lease_id")
        request_id = self.new_id("ren") if with_request_id else None
        cmd = Renew(
            namespace=NAMESPACE,
            name=self.lease_names[lease_id],
            kind="lock",
            lease_id=lease_id,
            ttl_ms=ttl_ms,
            request_id=request_id,
        )
        if request_id is not None:
            self.requests[request_id] = cmd
        self.run(cmd)

    @precondition(lambda self: self.queued_ids)
    @rule(data=st.data())
    def cancel_wait(self, data: st.DataObject) -> None:
        """The edge cancels only acquires it saw queued (their caller went away): mostly one still
        in line, sometimes one granted or gone since."""
        waiting = self.waiting_ids()
        lease_id = data.draw(st.sampled_from(waiting or self.queued_ids), label="lease_id")
        if data.draw(st.integers(0, 4), label="stale") == 0:
            lease_id = data.draw(st.sampled_from(self.queued_ids), label="stale_lease_id")
        request_id = self.acquire_request.get(lease_id)  # the edge passes the acquire's request_id along
        self.run(
            CancelWait(
                namespace=NAMESPACE,
                name=self.lease_names[lease_id],
                kind="lock",
                lease_id=lease_id,
                request_id=request_id,
            )
        )

    @rule(name=st.sampled_from(NAMES))
    def force_release(self, name: str) -> None:
        self.run(ForceRelease(namespace=NAMESPACE, name=name, kind="lock"))

    @rule(ahead_ms=st.integers(0, 300))
    def expire(self, ahead_ms: int) -> None:
        self.run(Expire(until_ms=self.now() + ahead_ms))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        """Send any earlier request again with its request_id."""
        self.send_again(data.draw(st.sampled_from(sorted(self.requests)), label="request_id"))

    @precondition(lambda self: self.queued_requests)
    @rule(data=st.data())
    def repeat_queued_acquire(self, data: st.DataObject) -> None:
        """The retry the conventions prescribe after an unknown outcome, for an acquire that waited."""
        self.send_again(data.draw(st.sampled_from(self.queued_requests), label="request_id"))

    def send_again(self, request_id: str) -> None:
        """The first answer if it is remembered and still true (a grant or renewal with the
        time its lease has left); a forgotten request, or one whose lease has ended since,
        runs again as a new one."""
        cmd = self.requests[request_id]
        lease_id = getattr(cmd, "lease_id", "")
        first = self.remembered.get(request_id)
        if isinstance(first, Granted | Renewed):
            lock = self.locks.get(self.lease_names[first.lease_id])
            lease = lock.lease if lock is not None else None
            if lease is not None and lease.lease_id == first.lease_id and lease.expires_at_ms > self.now():
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
            return
        was_given_back = lease_id in self.given_back
        if isinstance(cmd, Acquire):
            self.dead.discard(lease_id)
            self.given_back.discard(lease_id)
        applied = self.run(cmd)
        if not applied.logged:
            assert not (isinstance(applied.result, Granted) and was_given_back), (
                f"repeat of {request_id} answered {applied.result!r} from memory, but lease {lease_id} was given "
                f"back by CancelWait after it was granted: the client now believes it holds a lock that is free"
            )
            self.remembered[request_id] = applied.result

    @rule(name=st.sampled_from(NAMES))
    def inspect_is_a_read(self, name: str) -> None:
        before = self.core.snapshot()
        applied = self.core.apply(Inspect(namespace=NAMESPACE, name=name, kind="lock"), self.clock_ms)
        assert not applied.logged and applied.notices == []
        assert self.core.snapshot() == before

    @rule(data=st.data())
    def fence_check(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(NAMES), label="name")
        token = data.draw(st.integers(0, self.max_token + 2), label="token")
        before = self.core.snapshot()
        applied = self.core.apply(FenceCheck(namespace=NAMESPACE, name=name, kind="lock", token=token), self.clock_ms)
        assert not applied.logged
        assert self.core.snapshot() == before
        lock = self.locks.get(name)
        lease = lock.lease if lock is not None else None
        current = lease is not None and lease.expires_at_ms > self.now() and lease.token == token
        assert applied.result == FenceAnswer(current=current)

    # --- invariants --------------------------------------------------------------------------
    @invariant()
    def at_most_one_live_holder(self) -> None:
        now = self.now()
        for key, pool in self.core.locks.items():
            assert pool.limit == 1
            assert pool.used == sum(lease.permits for lease in pool.leases.values())
            assert len(pool.leases) <= 1 and pool.used <= 1, f"{key}: {pool.leases}"
            assert sum(1 for lease in pool.leases.values() if lease.expires_at_ms > now) <= 1

    @invariant()
    def idle_locks_are_dropped(self) -> None:
        assert set(self.core.locks) == {key_of(name) for name in self.locks}

    @invariant()
    def inspect_matches_model(self) -> None:
        now = self.now()
        for name in NAMES:
            applied = self.core.apply(Inspect(namespace=NAMESPACE, name=name, kind="lock"), self.clock_ms)
            assert not applied.logged
            lock = self.locks.get(name)
            if lock is None:
                expected = LeaseInfo(held=False, limit=1, permits_used=0, waiters=0)
            else:
                waiting = sum(1 for waiter in lock.waiters if waiter.deadline_ms > now)
                lease = lock.lease
                if lease is None or lease.expires_at_ms <= now:
                    expected = LeaseInfo(held=False, limit=1, permits_used=0, waiters=waiting)
                else:
                    expected = LeaseInfo(
                        held=True,
                        limit=1,
                        permits_used=1,
                        waiters=waiting,
                        holder=lease.holder,
                        token=lease.token,
                        remaining_ms=lease.expires_at_ms - now,
                    )
            assert applied.result == expected, f"{name} at {now}: {applied.result!r} != {expected!r}"


LockMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLockModel = LockMachine.TestCase


# --- targeted cases ---------------------------------------------------------------------------
def _lock(name: str, lease_id: str, ttl_ms: int, wait_ms: int = 0, request_id: str | None = None) -> Acquire:
    return Acquire(
        namespace=NAMESPACE,
        name=name,
        kind="lock",
        lease_id=lease_id,
        ttl_ms=ttl_ms,
        wait_ms=wait_ms,
        request_id=request_id,
    )


def test_waiters_are_granted_in_queue_order() -> None:
    core = ShardState(shard=0)
    assert isinstance(core.apply(_lock("x", "holder", 1000), 0).result, Granted)
    for index in range(5):
        assert core.apply(_lock("x", f"w{index}", 1000, wait_ms=60_000), 1 + index).result == Queued(
            lease_id=f"w{index}"
        )
    granted_order = []
    current = "holder"
    for step in range(5):
        applied = core.apply(Release(namespace=NAMESPACE, name="x", kind="lock", lease_id=current), 100 + step)
        assert applied.result == Released()
        (notice,) = applied.notices
        assert isinstance(notice.result, Granted)
        granted_order.append(notice.lease_id)
        current = notice.lease_id
    assert granted_order == [f"w{index}" for index in range(5)]


def _cancel(name: str, lease_id: str, request_id: str | None) -> CancelWait:
    return CancelWait(namespace=NAMESPACE, name=name, kind="lock", lease_id=lease_id, request_id=request_id)


def test_cancel_wait_with_the_acquires_request_id_takes_it_out_of_line() -> None:
    """CancelWait carries the acquire's request_id; it must be applied, never answered from memory."""
    core = ShardState(shard=0)
    assert isinstance(core.apply(_lock("q", "a", 1000), 0).result, Granted)
    acquire_b = _lock("q", "b", 1000, wait_ms=5000, request_id="req-b")
    assert core.apply(acquire_b, 1).result == Queued(lease_id="b")
    cancelled = core.apply(_cancel("q", "b", "req-b"), 2)
    assert cancelled.logged and cancelled.result == Done()
    assert [(n.lease_id, n.result.code) for n in cancelled.notices] == [("b", "cancelled")]  # type: ignore[attr-defined]
    released = core.apply(Release(namespace=NAMESPACE, name="q", kind="lock", lease_id="a"), 3)
    assert released.notices == []  # b is out of line: never granted
    retry = core.apply(acquire_b, 4)  # the client retries: a fresh acquire
    assert retry.logged and isinstance(retry.result, Granted)


def test_given_back_grant_is_not_answered_on_repeat() -> None:
    """The edge's CancelWait (with the acquire's request_id) gives a meanwhile-granted lease back;
    a retry of the acquire (same request_id, as the conventions prescribe after an unknown
    outcome) must then not be told `Granted` for a lease that is no longer held."""
    core = ShardState(shard=0)
    assert isinstance(core.apply(_lock("y", "a", 1000), 0).result, Granted)
    acquire_b = _lock("y", "b", 1000, wait_ms=5000, request_id="req-b")
    assert core.apply(acquire_b, 1).result == Queued(lease_id="b")
    released = core.apply(Release(namespace=NAMESPACE, name="y", kind="lock", lease_id="a"), 2)
    assert [notice.lease_id for notice in released.notices] == ["b"]  # b granted while its caller is leaving
    given_back = core.apply(_cancel("y", "b", "req-b"), 3)
    assert given_back.result == Released()
    info = core.apply(Inspect(namespace=NAMESPACE, name="y", kind="lock"), 4).result
    assert isinstance(info, LeaseInfo) and not info.held
    retry = core.apply(acquire_b, 4)
    if isinstance(retry.result, Granted):
        fence = core.apply(FenceCheck(namespace=NAMESPACE, name="y", kind="lock", token=retry.result.token), 4)
        assert fence.result == FenceAnswer(current=True), (
            f"retry answered {retry.result!r} (logged={retry.logged}) although lease b was given back and "
            f"'y' is free: the next acquire gets 'y' too, and two clients believe they hold it"
        )


def test_expire_settles_only_objects_due_by_until_ms() -> None:
    """Regression for a core bug: `Expire(until_ms)` also settles objects that only have a
    *stale* heap entry at or before until_ms (a lease renewed since), ending their waits
    that are due in (until_ms, now_ms]. The same op on a restored shard (fresh heap) does not."""
    core = ShardState(shard=0)
    core.apply(_lock("z", "a", 100), 0)  # deadline entry at 100
    core.apply(Renew(namespace=NAMESPACE, name="z", kind="lock", lease_id="a", ttl_ms=1000), 10)  # now due at 1010
    core.apply(_lock("z", "b", 100, wait_ms=500), 20)  # b waits until 520
    # Nothing on "z" is due by 150 (lease 1010, waiter 520): Expire(until_ms=150) must not touch it.
    applied = core.apply(Expire(until_ms=150), 600)
    assert applied.notices == [], (
        f"Expire(until_ms=150) settled 'z': {[(n.lease_id, n.result) for n in applied.notices]}"
    )
    info = core.apply(Inspect(namespace=NAMESPACE, name="z", kind="lock"), 600).result
    assert isinstance(info, LeaseInfo) and info.held and info.token == 1


def test_idle_lock_is_dropped_and_tokens_survive_it() -> None:
    core = ShardState(shard=0)
    first = core.apply(_lock("d", "a", 100), 0).result
    assert core.apply(Release(namespace=NAMESPACE, name="d", kind="lock", lease_id="a"), 1).result == Released()
    assert core.locks == {}
    second = core.apply(_lock("d", "b", 100), 2).result
    assert isinstance(first, Granted) and isinstance(second, Granted) and second.token > first.token
    core.apply(Expire(until_ms=500), 500)
    assert core.locks == {}
    info = core.apply(Inspect(namespace=NAMESPACE, name="d", kind="lock"), 500).result
    assert info == LeaseInfo(held=False, limit=1, permits_used=0, waiters=0)
